//! Multiline joining as the agent drives it: one joiner per stream, timeouts, rotation.

use std::time::{Duration, Instant};

use ferry_parsers::{Joined, Line, MultilineJoiner, RuleSet, Scratch};
use serde_json::Value;

use crate::util::record;

const JAVA: &str = "2026-11-28 08:00:05.200 ERROR 1 --- [exec-3] c.e.Web : request failed
java.lang.IllegalStateException: boom
\tat com.example.Web.handle(Web.java:42)
\tat com.example.Web.serve(Web.java:10)
Caused by: java.io.IOException: broken pipe
\tat java.base/sun.nio.ch.SocketDispatcher.write0(Native Method)
\t... 12 more";

const PYTHON: &str = "Traceback (most recent call last):
  File \"/app/main.py\", line 3, in <module>
    main()
  File \"/app/main.py\", line 2, in main
    raise KeyError('user')
KeyError: 'user'";

const GO: &str = "panic: runtime error: index out of range [5] with length 3

goroutine 1 [running]:
main.pick(...)
\t/app/main.go:9
main.main()
\t/app/main.go:14 +0x1d
exit status 2";

/// Pushes lines, collecting what comes out.
fn feed(j: &mut MultilineJoiner, lines: &[(&str, u64)], at: Instant, out: &mut Vec<Joined>) {
    for &(text, offset) in lines {
        out.extend(j.push(Line {
            text: text.to_owned(),
            offset,
            at,
        }));
    }
}

fn parse(set: &RuleSet, rule: &str, joined: &Joined) -> Value {
    let mut r = record(&joined.text);
    set.select(Some(rule), None)
        .apply(&mut r, &mut Scratch::new());
    Value::Object(ferry_parsers::flatten_record(&r))
}

#[test]
fn traces_interleaved_on_stdout_and_stderr_come_out_whole() {
    let set = RuleSet::builtin();
    for (rule, trace, error_type) in [
        ("java_exception", JAVA, "java.lang.IllegalStateException"),
        ("python_traceback", PYTHON, "KeyError"),
        ("go_panic", GO, "panic"),
    ] {
        let selection = set.select(Some(rule), None);
        let mut stdout = selection.joiner().expect("multiline rule");
        let mut stderr = selection.joiner().expect("multiline rule");
        let t0 = Instant::now();
        let (mut out_stdout, mut out_stderr) = (Vec::new(), Vec::new());
        let lines: Vec<&str> = trace.lines().collect();
        let mut offset = 0;
        // The same trace on both streams, line by line interleaved, then one plain line each.
        for line in lines.iter().chain(["plain line after"].iter()) {
            feed(&mut stdout, &[(line, offset)], t0, &mut out_stdout);
            feed(&mut stderr, &[(line, offset + 1)], t0, &mut out_stderr);
            offset += 100;
        }
        out_stdout.extend(stdout.flush());
        out_stderr.extend(stderr.flush());
        for out in [&out_stdout, &out_stderr] {
            assert_eq!(out.len(), 2, "{rule}: {out:#?}");
            assert_eq!(out[0].text, trace, "{rule}: the trace comes out whole");
            assert!(out[0].is_multiline());
            assert_eq!(out[0].lines, lines.len());
            assert_eq!(out[1].text, "plain line after");
            let parsed = parse(&set, rule, &out[0]);
            assert_eq!(parsed["error.type"], error_type, "{rule}: {parsed}");
            assert_eq!(parsed["error.stack_trace"], trace);
            assert!(parsed.get("parse.error").is_none(), "{parsed}");
        }
        assert_eq!(out_stdout[0].first_offset, 0);
        assert_eq!(out_stderr[0].first_offset, 1);
        assert_eq!(out_stdout[0].last_offset, (lines.len() as u64 - 1) * 100);
    }
}

#[test]
fn a_trace_at_the_end_is_flushed_within_the_timeout() {
    let set = RuleSet::builtin();
    let mut j = set.select(Some("go_panic"), None).joiner().unwrap();
    let t0 = Instant::now();
    let mut out = Vec::new();
    let lines: Vec<(&str, u64)> = GO.lines().zip((0..).map(|i| i * 50)).collect();
    feed(&mut j, &lines, t0, &mut out);
    assert!(out.is_empty(), "the trace is still open");
    assert_eq!(j.pending_start_offset(), Some(0));
    assert_eq!(j.next_deadline(), Some(t0 + Duration::from_millis(1000)));
    assert!(j.flush_expired(t0 + Duration::from_millis(999)).is_none());
    let joined = j
        .flush_expired(t0 + Duration::from_millis(1000))
        .expect("due");
    assert_eq!(joined.text, GO);
    assert_eq!(joined.last_offset, 50 * (lines.len() as u64 - 1));
    assert_eq!(j.pending_start_offset(), None);
    assert!(j.flush().is_none());
}

#[test]
fn a_trace_split_by_rotation_is_still_one_event() {
    let set = RuleSet::builtin();
    let mut j = set.select(Some("java_exception"), None).joiner().unwrap();
    let t0 = Instant::now();
    let lines: Vec<&str> = JAVA.lines().collect();
    let (before, after) = lines.split_at(3);
    let mut out = Vec::new();
    // Old file: offsets 9000…; the caller reads it to EOF, then continues with the new file
    // (offsets from 0) into the same joiner.
    let old: Vec<(&str, u64)> = before
        .iter()
        .copied()
        .zip((0..).map(|i| 9000 + i * 80))
        .collect();
    feed(&mut j, &old, t0, &mut out);
    assert!(out.is_empty());
    assert_eq!(j.pending_start_offset(), Some(9000));
    let new: Vec<(&str, u64)> = after.iter().copied().zip((0..).map(|i| i * 80)).collect();
    feed(&mut j, &new, t0 + Duration::from_millis(200), &mut out);
    feed(
        &mut j,
        &[(
            "2026-11-28 08:00:06.000  INFO 1 --- [main] c.e.Web : next",
            400,
        )],
        t0,
        &mut out,
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].text, JAVA);
    assert_eq!(
        (out[0].first_offset, out[0].last_offset),
        (9000, 80 * (after.len() as u64 - 1))
    );
    assert_eq!(j.pending_start_offset(), Some(400));
}

#[test]
fn single_lines_of_a_multiline_container_are_auto_detected_without_error() {
    let set = RuleSet::builtin();
    let selection = set.select(Some("java_exception"), None);
    let mut r = record("level=info msg=\"ready\" port=8080");
    selection.apply(&mut r, &mut Scratch::new());
    assert_eq!(r.message, "ready");
    assert!(!r.fields.contains_key("parse"));
    // A joined event the rule cannot read is a miss.
    let mut r = record("first line\nsecond line");
    selection.apply(&mut r, &mut Scratch::new());
    assert_eq!(r.fields["parse"]["rule"], "java_exception");
}
