//! Every built-in rule against `rules/corpus/<rule>.txt`; the expected events are
//! `rules/corpus/<rule>.jsonl` (one flattened JSON object per event, as `ferry parse` prints
//! them). Set `FERRY_BLESS=1` to rewrite the expectations after reviewing a change.

use ferry_parsers::{parse_lines, RuleSet};
use serde_json::Value;

use crate::util::{corpus_dir, READ_TIME};

const MULTILINE: &[&str] = &["go_panic", "java_exception", "python_traceback"];

#[test]
fn every_builtin_rule_passes_its_corpus() {
    let set = RuleSet::builtin();
    let bless = std::env::var_os("FERRY_BLESS").is_some();
    let mut failures = Vec::new();
    let names: Vec<String> = set.rule_names().map(str::to_owned).collect();
    for name in &names {
        let input_path = corpus_dir().join(format!("{name}.txt"));
        let expected_path = corpus_dir().join(format!("{name}.jsonl"));
        let input = std::fs::read_to_string(&input_path)
            .unwrap_or_else(|e| panic!("{name}: no corpus at {}: {e}", input_path.display()));
        let mut out = Vec::new();
        let summary = parse_lines(&set, name, input.as_bytes(), &mut out, Some(READ_TIME)).unwrap();
        assert!(
            summary.lines >= 20,
            "{name}: only {} corpus lines",
            summary.lines
        );
        let got = String::from_utf8(out).unwrap();
        if summary.missed != 0 {
            let missed: Vec<&str> = got
                .lines()
                .filter(|l| l.contains("\"parse.error\""))
                .collect();
            failures.push(format!(
                "{name}: lines the rule does not read:\n{}",
                missed.join("\n")
            ));
            continue;
        }
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|e| {
            panic!(
                "{name}: no expectations at {}: {e}",
                expected_path.display()
            )
        });
        let got: Vec<Value> = got
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let want: Vec<Value> = expected
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if got.len() != want.len() {
            failures.push(format!(
                "{name}: {} events, expected {}",
                got.len(),
                want.len()
            ));
            continue;
        }
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            if g != w {
                failures.push(format!("{name} event {}:\n  got  {g}\n  want {w}", i + 1));
            }
        }
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
            let input = std::fs::read_to_string(corpus_dir().join(format!("{other}.txt"))).unwrap();
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
