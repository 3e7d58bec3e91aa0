//! Multiline: stack traces joined per stream in real files, flushed on time, across a rename
//! rotation and across an agent restart, each exactly once and in offset order.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_wire::{Flag, LogRecord};

use super::util::*;

/// A CRI pod log under `<dir>/pods/…/app/0.log`, with CRI lines appended one by one.
struct Cri {
    path: std::path::PathBuf,
    n: u32,
}

impl Cri {
    fn new(dir: &Path) -> Self {
        let pdir = dir.join("pods/shop_api-1_u-1/app");
        std::fs::create_dir_all(&pdir).unwrap();
        Cri {
            path: pdir.join("0.log"),
            n: 0,
        }
    }

    /// The timestamp of the next line.
    fn time(&self) -> String {
        format!(
            "2026-11-28T08:00:{:02}.{:09}Z",
            self.n / 1000,
            self.n % 1000
        )
    }

    fn write(&mut self, stream: &str, tag: &str, text: &str) {
        let line = format!("{} {stream} {tag} {text}", self.time());
        append(&self.path, &[line]);
        self.n += 1;
    }
}

/// Writes the streams' lines alternately (stdout first); returns each expected event's text
/// and the timestamp of its first line, per stream.
fn interleave(cri: &mut Cri, out: &[Vec<&str>], err: &[Vec<&str>]) -> Vec<(String, String)> {
    let flat = |events: &[Vec<&str>], stream: &'static str| -> Vec<(usize, &'static str, String)> {
        events
            .iter()
            .enumerate()
            .flat_map(|(i, e)| e.iter().map(move |l| (i, stream, l.to_string())))
            .collect()
    };
    let (o, e) = (flat(out, "stdout"), flat(err, "stderr"));
    let mut first_time: HashMap<(&str, usize), String> = HashMap::new();
    for i in 0..o.len().max(e.len()) {
        for line in [o.get(i), e.get(i)].into_iter().flatten() {
            let (event, stream, text) = line;
            first_time
                .entry((*stream, *event))
                .or_insert_with(|| cri.time());
            cri.write(stream, "F", text);
        }
    }
    let mut expected = Vec::new();
    for (stream, events) in [("stdout", out), ("stderr", err)] {
        for (i, lines) in events.iter().enumerate() {
            expected.push((lines.join("\n"), first_time[&(stream, i)].clone()));
        }
    }
    expected
}

/// Every record stored once, none dropped as a replay or out of order, ids from fingerprint and
/// offset, offsets strictly increasing per fingerprint.
fn assert_clean(agg: &TestAggregator) -> Vec<LogRecord> {
    let stored = agg.stored();
    let raw = agg.state.accepted_raw.lock().unwrap().clone();
    assert_eq!(raw.len(), stored.len(), "records were replayed or dropped");
    let mut last: HashMap<&str, u64> = HashMap::new();
    for r in &raw {
        let fp = r.log.file.fingerprint.as_str();
        if let Some(prev) = last.insert(fp, r.log.offset) {
            assert!(
                prev < r.log.offset,
                "offset order broken: {prev} then {r:?}"
            );
        }
        assert_eq!(r.event.id, ferry_wire::event_id(fp, r.log.offset));
    }
    stored
}

/// The lines of each event, stdout then stderr.
type Events = (Vec<Vec<&'static str>>, Vec<Vec<&'static str>>);
/// Rule, its events, the `error.type` one of them has.
type Case = (&'static str, fn() -> Events, &'static str);

fn stack(r: &LogRecord) -> Option<&str> {
    r.fields.get("error")?["stack_trace"].as_str()
}

fn java_events() -> Events {
    let out = vec![
        vec!["Starting shop on port 8080"],
        vec![
            "2026-11-28 08:00:00.123 ERROR 1 --- [nio-8080-exec-1] o.a.c.c.C.[.[.[/].[dispatcherServlet] : Servlet.service() threw exception",
            "java.lang.IllegalStateException: cart is locked",
            "\tat com.shop.Cart.add(Cart.java:42)",
            "\tat com.shop.Api.post(Api.java:7)",
            "Caused by: java.io.IOException: disk full",
            "\tat com.shop.Disk.write(Disk.java:3)",
            "\t... 2 more",
        ],
        vec!["GET /health 200"],
    ];
    // An exception line right after an ordinary line is joined to it (Logback style), so each
    // trace here follows another trace or starts the stream.
    let err = vec![
        vec![
            "java.lang.OutOfMemoryError: Java heap space",
            "\tat com.shop.Cache.fill(Cache.java:99)",
        ],
        vec![
            "Exception in thread \"worker-2\" java.lang.NullPointerException: user is null",
            "\tat com.shop.Worker.run(Worker.java:11)",
            "\tat java.base/java.lang.Thread.run(Thread.java:1583)",
        ],
        vec!["worker-2 restarted"],
    ];
    (out, err)
}

fn python_events() -> Events {
    let out = vec![
        vec!["INFO:root:serving on :8000"],
        vec![
            "Traceback (most recent call last):",
            "  File \"/app/main.py\", line 12, in <module>",
            "    main()",
            "  File \"/app/main.py\", line 9, in main",
            "    raise ValueError(\"bad input\")",
            "ValueError: bad input",
        ],
        vec!["INFO:root:still serving"],
    ];
    let err = vec![
        vec![
            "Traceback (most recent call last):",
            "  File \"/app/worker.py\", line 4, in handle",
            "    user = users[key]",
            "KeyError: 'alice'",
        ],
        vec!["WARNING:root:worker restarted"],
        vec![
            "Traceback (most recent call last):",
            "  File \"/app/db.py\", line 1, in <module>",
            "ZeroDivisionError: division by zero",
        ],
    ];
    (out, err)
}

fn go_events() -> Events {
    let out = vec![
        vec!["listening on :8080"],
        vec![
            "fatal error: all goroutines are asleep - deadlock!",
            "",
            "goroutine 1 [chan receive]:",
            "main.main()",
            "\t/app/main.go:5 +0x2a",
            "exit status 2",
        ],
        vec!["restarted"],
    ];
    let err = vec![
        vec![
            "panic: runtime error: index out of range [5] with length 3",
            "",
            "goroutine 7 [running]:",
            "main.(*Server).handle(0xc000010000, {0x0, 0x0})",
            "\t/app/server.go:42 +0x1d",
            "created by main.main in goroutine 1",
            "\t/app/main.go:20 +0x65",
        ],
        vec!["panic recovered"],
    ];
    (out, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_java_python_and_go_traces_on_stdout_and_stderr_are_whole_events_once() {
    let cases: [Case; 3] = [
        (
            "java_exception",
            java_events,
            "java.lang.IllegalStateException",
        ),
        ("python_traceback", python_events, "ValueError"),
        ("go_panic", go_events, "fatal error"),
    ];
    for (rule, events, error_type) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut cri = Cri::new(dir.path());
        let (out, err) = events();
        let expected = interleave(&mut cri, &out, &err);
        let agg = TestAggregator::start().await;
        let mut cfg = config(dir.path(), &agg.url());
        cfg.include = vec![format!("{}/pods/*/*/*.log", dir.path().display())];
        cfg.parser = Some(rule.into());
        let agent = crate::start(cfg).await.unwrap();
        wait_until(&format!("{rule}: {} events", expected.len()), || {
            agg.stored().len() >= expected.len()
        })
        .await;
        // Nothing more trickles in (a cut trace would show up as extra records).
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let stored = assert_clean(&agg);
        let mut got: Vec<(String, String)> = stored
            .iter()
            .map(|r| {
                let text = stack(r).map_or(r.message.clone(), str::to_string);
                (text, r.event.created.clone().unwrap_or(r.timestamp.clone()))
            })
            .collect();
        let mut want = expected.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{rule}");
        for r in &stored {
            let lines = stack(r).map_or(1, |t| t.lines().count());
            assert_eq!(
                r.log.flags.contains(&Flag::Multiline),
                lines > 1,
                "{rule}: {r:?}"
            );
            if lines > 1 {
                assert!(
                    r.fields["error"]["type"].is_string(),
                    "{rule}: parsed {r:?}"
                );
                assert!(!r.fields.contains_key("parse"), "{rule}: {r:?}");
            }
        }
        assert!(
            stored.iter().any(|r| r
                .fields
                .get("error")
                .and_then(|e| e["type"].as_str())
                .is_some_and(|t| t.starts_with(error_type))),
            "{rule}"
        );
        agent.shutdown().await;
    }
}

/// A plain file tailed with one rule.
fn plain_config(dir: &Path, url: &str, rule: &str) -> crate::AgentConfig {
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let mut cfg = config(dir, url);
    cfg.parser = Some(rule.into());
    cfg
}

fn strings(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|l| l.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_at_the_end_of_a_file_is_flushed_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let agg = TestAggregator::start().await;
    let agent = crate::start(plain_config(dir.path(), &agg.url(), "java_exception"))
        .await
        .unwrap();
    let log = dir.path().join("logs/app.log");
    let trace = [
        "java.lang.IllegalArgumentException: negative amount",
        "\tat com.shop.Pay.charge(Pay.java:8)",
        "\tat com.shop.Api.pay(Api.java:3)",
    ];
    let written = Instant::now();
    append(&log, &strings(&trace));
    wait_until("the held trace", || agg.stored().len() == 1).await;
    let took = written.elapsed();
    let stored = assert_clean(&agg);
    assert_eq!(stored[0].fields["error"]["stack_trace"], trace.join("\n"));
    assert_eq!(stored[0].log.flags, [Flag::Multiline]);
    // Held for the rule's flush_timeout_ms (1000), then sent within a poll and a batch age.
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let offset = (trace[0].len() + trace[1].len() + 2) as u64;
    assert_eq!(stored[0].log.offset, offset, "identity: the last line");
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_split_by_a_rename_rotation_is_one_event() {
    let dir = tempfile::tempdir().unwrap();
    let agg = TestAggregator::start().await;
    let agent = crate::start(plain_config(dir.path(), &agg.url(), "java_exception"))
        .await
        .unwrap();
    let log = dir.path().join("logs/app.log");
    append(&log, &strings(&["before rotation"]));
    let head = [
        "Exception in thread \"main\" java.lang.IllegalStateException: boom",
        "\tat com.shop.A.a(A.java:1)",
    ];
    append(&log, &strings(&head));
    wait_until("head read", || agent.status().lines_read == 3).await;
    std::fs::rename(&log, dir.path().join("logs/app.log.1")).unwrap();
    let tail = ["\tat com.shop.B.b(B.java:2)", "\t... 4 more"];
    append(&log, &strings(&tail));
    append(&log, &strings(&["after rotation"]));
    wait_until("3 records", || agg.stored().len() == 3).await;
    wait_until("old file closed", || agent.status().files_tailed == 1).await;
    let stored = assert_clean(&agg);
    let messages: Vec<&str> = stored.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(messages[0], "before rotation");
    assert_eq!(messages[2], "after rotation");
    let trace = &stored[1];
    assert_eq!(
        trace.fields["error"]["stack_trace"],
        [&head[..], &tail[..]].concat().join("\n")
    );
    assert!(trace.log.flags.contains(&Flag::Multiline));
    // Its identity is its last line's: in the new file.
    assert_eq!(trace.log.file.fingerprint, stored[2].log.file.fingerprint);
    assert_ne!(trace.log.file.fingerprint, stored[0].log.file.fingerprint);
    assert_eq!(trace.log.offset, tail[0].len() as u64 + 1);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_in_the_middle_of_a_held_trace_rebuilds_the_same_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let agg = TestAggregator::start().await;
    let cfg = plain_config(dir.path(), &agg.url(), "java_exception");
    let log = dir.path().join("logs/app.log");
    let before = ["first line", "second line"];
    let head = [
        "2026-11-28 08:00:00 ERROR Request failed",
        "java.lang.IllegalStateException: boom",
        "\tat com.shop.A.a(A.java:1)",
    ];
    append(&log, &strings(&before));
    append(&log, &strings(&head));
    let agent = crate::start(cfg.clone()).await.unwrap();
    wait_until("lines before the trace", || agg.stored().len() == 2).await;
    wait_until("head read", || agent.status().lines_read == 5).await;
    agent.shutdown().await;
    let fp = agg.stored()[0].log.file.fingerprint.clone();
    let trace_start = (before[0].len() + before[1].len() + 2) as u64;
    assert_eq!(
        checkpoint_offsets(dir.path())[&fp],
        trace_start,
        "the checkpoint stops at the held trace"
    );

    let tail = ["\tat com.shop.B.b(B.java:2)"];
    append(&log, &strings(&tail));
    append(&log, &strings(&["after the trace"]));
    let agent = crate::start(cfg).await.unwrap();
    wait_until("all records", || agg.stored().len() == 4).await;
    let stored = assert_clean(&agg);
    let trace = &stored[2];
    assert_eq!(
        trace.log.file.fingerprint, fp,
        "same source after the restart"
    );
    assert_eq!(trace.message, head[0]);
    assert_eq!(
        trace.fields["error"]["stack_trace"],
        [&head[..], &tail[..]].concat().join("\n")
    );
    let last_line = trace_start + head.iter().map(|l| l.len() as u64 + 1).sum::<u64>();
    assert_eq!(trace.log.offset, last_line);
    assert_eq!(trace.event.id, ferry_wire::event_id(&fp, last_line));
    assert_eq!(stored[3].message, "after the trace");
    agent.shutdown().await;
}
