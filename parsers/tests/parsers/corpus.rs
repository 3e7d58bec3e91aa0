//! Every built-in rule against `rules/corpus/<rule>.txt`, the shapes the rule was written for,
//! and `rules/corpus/<rule>.variants.txt`, the variants real software writes (syslog without a
//! host, logfmt with bare keys, Apache's ErrorLogFormat forms, …); the expected events are the
//! `.jsonl` beside each (one flattened JSON object per event, as `ferry parse` prints them),
//! written by hand for the variants. The benchmarks read only `<rule>.txt`, so their figures
//! compare across changes to the variants. Set `FERRY_BLESS=1` to rewrite the expectations after
//! reviewing a change.

use std::path::Path;

use ferry_parsers::{parse_lines, RuleSet, Scratch};
use serde_json::Value;

use crate::util::{corpus_dir, record, READ_TIME};

const MULTILINE: &[&str] = &["go_panic", "java_exception", "python_traceback"];

/// The rules whose variants corpus must exist (the families the rule library was extended for).
const WITH_VARIANTS: &[&str] = &[
    "nginx_access",
    "nginx_error",
    "apache_access",
    "apache_error",
    "syslog_rfc3164",
    "syslog_rfc5424",
    "logfmt",
    "klog",
    "postgresql",
    "redis",
];

/// The text of a rule's corpora: `<rule>.txt`, then `<rule>.variants.txt` when there is one.
fn corpus_texts(name: &str) -> Vec<String> {
    ["", ".variants"]
        .iter()
        .filter_map(|suffix| {
            std::fs::read_to_string(corpus_dir().join(format!("{name}{suffix}.txt"))).ok()
        })
        .collect()
}

/// Parses one corpus file with `rule` and compares the events with the expectations beside it;
/// returns the events, or what differs.
fn check_corpus(set: &RuleSet, rule: &str, input_path: &Path) -> Result<Vec<Value>, Vec<String>> {
    let label = input_path.file_name().unwrap().to_string_lossy();
    let expected_path = input_path.with_extension("jsonl");
    let input = std::fs::read_to_string(input_path)
        .unwrap_or_else(|e| panic!("{rule}: no corpus at {}: {e}", input_path.display()));
    let mut out = Vec::new();
    let summary = parse_lines(set, rule, input.as_bytes(), &mut out, Some(READ_TIME)).unwrap();
    let got = String::from_utf8(out).unwrap();
    if summary.missed != 0 {
        let missed: Vec<&str> = got
            .lines()
            .filter(|l| l.contains("\"parse.error\"") && !l.contains("logfmt.unparsed"))
            .collect();
        if !missed.is_empty() {
            return Err(vec![format!(
                "{label}: lines the rule does not read:\n{}",
                missed.join("\n")
            )]);
        }
    }
    if std::env::var_os("FERRY_BLESS").is_some() {
        std::fs::write(&expected_path, &got).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
        panic!(
            "{label}: no expectations at {}: {e}",
            expected_path.display()
        )
    });
    let got: Vec<Value> = got
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let want: Vec<Value> = expected
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: invalid line {l}: {e}", expected_path.display()))
        })
        .collect();
    if got.len() != want.len() {
        return Err(vec![format!(
            "{label}: {} events, expected {}",
            got.len(),
            want.len()
        )]);
    }
    let failures: Vec<String> = got
        .iter()
        .zip(&want)
        .enumerate()
        .filter(|(_, (g, w))| g != w)
        .map(|(i, (g, w))| format!("{label} event {}:\n  got  {g}\n  want {w}", i + 1))
        .collect();
    if failures.is_empty() {
        Ok(got)
    } else {
        Err(failures)
    }
}

#[test]
fn every_builtin_rule_passes_its_corpus() {
    let set = RuleSet::builtin();
    let mut failures = Vec::new();
    let names: Vec<String> = set.rule_names().map(str::to_owned).collect();
    for name in &names {
        let got = match check_corpus(&set, name, &corpus_dir().join(format!("{name}.txt"))) {
            Ok(got) => got,
            Err(f) => {
                failures.extend(f);
                continue;
            }
        };
        assert!(got.len() >= 10, "{name}: only {} corpus events", got.len());
        if MULTILINE.contains(&name.as_str()) {
            let joined = got.iter().filter(|e| e.get("log.flags").is_some()).count();
            assert!(joined >= 3, "{name}: only {joined} joined events");
            assert!(
                got.iter()
                    .filter(|e| e.get("error.stack_trace").is_some())
                    .count()
                    == joined,
                "{name}: every joined event is a parsed trace"
            );
        } else {
            let parsed = got
                .iter()
                .filter(|e| e.as_object().is_some_and(|o| o.len() > 2))
                .count();
            assert!(parsed >= 20, "{name}: only {parsed} lines gave fields");
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every variant line is read (no `parse.error`, except logfmt's flagged partial lines, which
/// must say what they did not read) and gives the fields written by hand.
#[test]
fn every_variant_corpus_passes() {
    let set = RuleSet::builtin();
    let mut failures = Vec::new();
    for name in WITH_VARIANTS {
        let path = corpus_dir().join(format!("{name}.variants.txt"));
        if !path.exists() {
            failures.push(format!("{name}: no variants corpus at {}", path.display()));
            continue;
        }
        match check_corpus(&set, name, &path) {
            Ok(got) => {
                assert!(got.len() >= 5, "{name}: only {} variant lines", got.len());
                for event in &got {
                    let partial = event.get("logfmt.unparsed").is_some();
                    assert_eq!(
                        event.get("parse.error").is_some(),
                        partial,
                        "{name}: only a partial logfmt line may carry parse.error: {event}"
                    );
                }
            }
            Err(f) => failures.extend(f),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn single_line_rules_reject_each_others_lines() {
    // An access line is not an error line, a klog line not a redis line, and so on: the corpora
    // of the other single-line rules must mostly miss (nginx and Apache access overlap by design).
    let set = RuleSet::builtin();
    let singles = [
        "nginx_error",
        "apache_error",
        "syslog_rfc5424",
        "klog",
        "postgresql",
        "redis",
    ];
    for rule in singles {
        for other in singles.iter().filter(|o| **o != rule) {
            for input in corpus_texts(other) {
                let mut out = Vec::new();
                let summary =
                    parse_lines(&set, rule, input.as_bytes(), &mut out, Some(READ_TIME)).unwrap();
                assert_eq!(
                    summary.missed, summary.events,
                    "{rule} matched lines of {other}"
                );
            }
        }
    }
}

/// The agent writes a rule's fields straight into the batch ([`ferry_parsers::Selection::apply_typed`]
/// and `write_fields`); everything else builds `record.fields`. Both must make the same document
/// for every line of every corpus, under every rule (hits, misses and conversion errors) and
/// under auto-detection, with one scratch reused throughout as the agent reuses it.
#[test]
fn typed_fields_make_the_same_document_as_the_field_map() {
    let set = RuleSet::builtin();
    let names: Vec<String> = set.rule_names().map(str::to_owned).collect();
    let mut lines = Vec::new();
    for name in &names {
        for text in corpus_texts(name) {
            lines.extend(text.lines().map(str::to_owned));
            lines.push(text); // the whole file: multiline rules see joined events
        }
    }
    lines.push(r#"{"level":"warn","msg":"json line","n":1}"#.to_owned());
    let mut selections: Vec<_> = names.iter().map(|n| set.select(Some(n), None)).collect();
    selections.push(set.select(None, None));
    let (mut scratch, mut typed_scratch) = (Scratch::new(), Scratch::new());
    let mut compared = 0;
    for selection in &selections {
        for line in &lines {
            same_document_both_ways(selection, line, &mut scratch, &mut typed_scratch);
            compared += 1;
        }
    }
    assert!(compared > 1000, "only {compared} documents compared");
}

/// Checks that `line` makes the same document through `selection`'s field map and through
/// its typed slots written straight into the record's JSON.
fn same_document_both_ways(
    selection: &ferry_parsers::Selection,
    line: &str,
    scratch: &mut Scratch,
    typed_scratch: &mut Scratch,
) {
    let mut by_map = record(line);
    let map_outcome = selection.apply(&mut by_map, scratch);
    let mut by_slots = record(line);
    let typed_outcome = selection.apply_typed(&mut by_slots, typed_scratch);
    assert_eq!(map_outcome, typed_outcome);
    let mut written = Vec::new();
    ferry_wire::write_log_record(
        &mut written,
        &by_slots,
        &mut Default::default(),
        |out, escapes| selection.write_fields(typed_scratch, &by_slots, escapes, out),
    );
    let written: Value = serde_json::from_slice(&written)
        .unwrap_or_else(|e| panic!("{}: invalid JSON for {line:?}: {e}", selection.rules()));
    assert_eq!(
        written,
        serde_json::to_value(&by_map).unwrap(),
        "{}: {line:?}",
        selection.rules()
    );
}

/// The members written for a record depend on which captures hold a value, and a scratch keeps
/// the layouts of the last few such sets: lines that switch between many sets (more than are
/// kept), between two rules whose captures are the same but whose fields differ, and under a
/// rule with more captures than presence bits, each get their own fields, as the map gives them.
#[test]
fn written_fields_follow_which_captures_hold_a_value_line_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let optional = "^(?:a=(?P<a>\\w+) )?(?:b=(?P<b>\\w+) )?(?:c=(?P<c>\\d+) )?(?:d=(?P<d>\\w+) )?(?:e=(?P<e>\\w+) )?end$";
    let many: String = (0..70).map(|i| format!("(?:(?P<c{i}>a{i}) )?")).collect();
    let many_captures: String = (0..70)
        .map(|i| format!("c{i} = \"m.f{}.v{i}\"\n", i % 5))
        .collect();
    std::fs::write(
        dir.path().join("layouts.toml"),
        format!(
            r#"
[[rule]]
name = "five"
pattern = '{optional}'
[rule.captures]
a = "x.a"
b = "x.b"
c = {{ field = "y.c", type = "int" }}
d = "x.z.d"
e = "e"

[[rule]]
name = "five_elsewhere"
pattern = '{optional}'
[rule.captures]
a = "p.a"
b = "p.q.b"
c = "c"
d = "p.a2"
e = "p.q.e"

[[rule]]
name = "seventy"
pattern = '^{many}$'
[rule.captures]
{many_captures}"#
        ),
    )
    .unwrap();
    let set = RuleSet::load(&[dir.path().to_owned()], false).unwrap();
    let five = [
        set.select(Some("five"), None),
        set.select(Some("five_elsewhere"), None),
    ];
    let seventy = set.select(Some("seventy"), None);
    let (mut scratch, mut typed_scratch) = (Scratch::new(), Scratch::new());
    let mut rng = fastrand::Rng::with_seed(7);
    let mut sets_seen = std::collections::HashSet::new();
    for _ in 0..2000 {
        let present = rng.u8(0..32);
        sets_seen.insert(present);
        let line: String = ["a=one ", "b=two ", "c=3 ", "d=four ", "e=five "]
            .iter()
            .enumerate()
            .filter(|&(i, _)| present & (1 << i) != 0)
            .map(|(_, part)| *part)
            .chain(["end"])
            .collect();
        let selection = &five[rng.usize(..2)];
        same_document_both_ways(selection, &line, &mut scratch, &mut typed_scratch);
        // The same first sixty, so that sets differing only past the 63rd capture meet.
        let line: String = (0..70)
            .filter(|&i| if i < 60 { i % 3 == 0 } else { rng.bool() })
            .map(|i| format!("a{i} "))
            .collect();
        same_document_both_ways(&seventy, &line, &mut scratch, &mut typed_scratch);
    }
    assert_eq!(
        sets_seen.len(),
        32,
        "every set of the five captures was written"
    );
}

/// The limit nginx.toml states: a request line that begins with a capital letter but is not
/// `METHOD url [HTTP/x]` is refused (the line kept whole, with `parse.error`), while one that
/// begins otherwise (a TLS handshake) is kept in `http.request.original`.
#[test]
fn nginx_access_keeps_a_handshake_and_refuses_capitalised_junk() {
    let set = RuleSet::builtin();
    let selection = set.select(Some("nginx_access"), None);
    let mut scratch = Scratch::new();
    let handshake =
        r#"192.0.2.10 - - [28/Nov/2026:08:00:00 +0000] "\x16\x03\x01\x00\xF1" 400 157 "-" "-""#;
    let mut r = record(handshake);
    selection.apply(&mut r, &mut scratch);
    assert_eq!(
        r.fields["http"]["request"]["original"],
        r"\x16\x03\x01\x00\xF1"
    );
    assert_eq!(r.fields["source"]["ip"], "192.0.2.10");
    for junk in [
        r#"203.0.113.9 - - [28/Nov/2026:08:00:03 +0000] "SSH-2.0-Go" 400 157 "-" "-""#,
        r#"203.0.113.9 - - [28/Nov/2026:08:00:02 +0000] "PROPFIND" 400 157 "-" "-""#,
        r#"198.51.100.7 - - [28/Nov/2026:08:00:01 +0000] "GET /a b HTTP/1.1" 400 150 "-" "-""#,
    ] {
        let mut r = record(junk);
        selection.apply(&mut r, &mut scratch);
        assert_eq!(r.message, junk, "the line is kept whole");
        assert_eq!(r.fields["parse"]["rule"], "nginx_access", "{junk}");
        assert!(r.fields.get("http").is_none(), "{junk}");
    }
}
