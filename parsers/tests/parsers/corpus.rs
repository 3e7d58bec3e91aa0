//! Every built-in rule against `rules/corpus/<rule>.txt`; the expected events are
//! `rules/corpus/<rule>.jsonl` (one flattened JSON object per event, as `ferry parse` prints
//! them). Set `FERRY_BLESS=1` to rewrite the expectations after reviewing a change.

use ferry_parsers::{parse_lines, RuleSet, Scratch};
use serde_json::Value;

use crate::util::{corpus_dir, record, READ_TIME};

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
        let text = std::fs::read_to_string(corpus_dir().join(format!("{name}.txt"))).unwrap();
        lines.extend(text.lines().map(str::to_owned));
        lines.push(text); // the whole file: multiline rules see joined events
    }
    lines.push(r#"{"level":"warn","msg":"json line","n":1}"#.to_owned());
    let mut selections: Vec<_> = names.iter().map(|n| set.select(Some(n), None)).collect();
    selections.push(set.select(None, None));
    let (mut scratch, mut typed_scratch) = (Scratch::new(), Scratch::new());
    let mut compared = 0;
    for selection in &selections {
        for line in &lines {
            let mut by_map = record(line);
            let map_outcome = selection.apply(&mut by_map, &mut scratch);
            let mut by_slots = record(line);
            let typed_outcome = selection.apply_typed(&mut by_slots, &mut typed_scratch);
            assert_eq!(map_outcome, typed_outcome);
            let mut written = Vec::new();
            ferry_wire::write_log_record(
                &mut written,
                &by_slots,
                &mut Default::default(),
                |out, escapes| selection.write_fields(&typed_scratch, &by_slots, escapes, out),
            );
            let written: Value = serde_json::from_slice(&written).unwrap_or_else(|e| {
                panic!("{}: invalid JSON for {line:?}: {e}", selection.rules())
            });
            assert_eq!(
                written,
                serde_json::to_value(&by_map).unwrap(),
                "{}: {line:?}",
                selection.rules()
            );
            compared += 1;
        }
    }
    assert!(compared > 1000, "only {compared} documents compared");
}
