//! `check_rule_files` (for `ferry check`) names the file, the rule and the error of every
//! problem; user rules load beside the built-in ones.

use std::path::PathBuf;

use ferry_parsers::{check_rule_files, RuleErrorKind, RuleSet, Scratch};

use crate::util::record;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_broken_rule_file_names_file_rule_and_error() {
    let dir = tempfile::tempdir().unwrap();
    let broken = write(
        &dir,
        "broken.toml",
        r#"
[[rule]]
name = "good"
pattern = '^(?P<n>\d+)$'
captures = { n = { field = "count", type = "int" } }

[[rule]]
name = "bad_regex"
pattern = '^(?P<open>\d+'

[[rule]]
name = "bad_capture"
pattern = '^(?P<a>\w+)$'
[rule.captures]
b = "x.y"
a = { field = "@timestamp", type = "timestamp", formats = ["%Q"] }

[[rule]]
name = "typo"
patern = "x"
"#,
    );
    let syntax = write(&dir, "syntax.toml", "[[rule]\nname = 1\n");
    let errors = check_rule_files(&[dir.path().to_owned()]);
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let find = |rule: &str| {
        errors
            .iter()
            .find(|e| e.rule.as_deref() == Some(rule))
            .unwrap_or_else(|| panic!("no error for {rule}: {text:#?}"))
    };
    let e = find("bad_regex");
    assert_eq!(e.file, broken);
    assert!(matches!(e.kind, RuleErrorKind::Regex(_)));
    let shown = e.to_string();
    assert!(
        shown.contains("broken.toml")
            && shown.contains("bad_regex")
            && shown.contains("unclosed group"),
        "{shown}"
    );
    let bad_capture: Vec<_> = errors
        .iter()
        .filter(|e| e.rule.as_deref() == Some("bad_capture"))
        .collect();
    assert_eq!(
        bad_capture.len(),
        2,
        "both capture problems are reported: {text:#?}"
    );
    assert!(bad_capture
        .iter()
        .any(|e| e.to_string().contains("capture `b`: not a named group")));
    assert!(bad_capture.iter().any(|e| e.to_string().contains("%Q")));
    assert!(
        find("typo").to_string().contains("unknown field `patern`"),
        "{text:#?}"
    );
    let file_level = errors
        .iter()
        .find(|e| e.file == syntax)
        .expect("syntax error reported");
    assert!(file_level.rule.is_none());
    assert!(matches!(file_level.kind, RuleErrorKind::Toml(_)));
    assert!(errors.iter().all(|e| e.rule.as_deref() != Some("good")));
}

#[test]
fn duplicate_names_and_forbidden_fields_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rule = "[[rule]]\nname = \"dup\"\npattern = '^(?P<x>.*)$'\ncaptures = { x = \"x\" }\n";
    write(&dir, "a.toml", rule);
    write(&dir, "b.toml", rule);
    write(
        &dir,
        "c.toml",
        &rule
            .replace("\"dup\"", "\"c\"")
            .replace("\"x\" }", "\"event.id\" }"),
    );
    let errors = check_rule_files(&[dir.path().to_owned()]);
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert!(
        text.iter()
            .any(|e| e.contains("b.toml") && e.contains("already used in") && e.contains("a.toml")),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|e| e.contains("`event.id` belongs to the record")),
        "{text:#?}"
    );
    let missing = check_rule_files(&[dir.path().join("nope")]);
    assert!(matches!(missing[0].kind, RuleErrorKind::Io(_)));
}

#[test]
fn a_multiline_rule_cannot_be_auto() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir,
        "m.toml",
        "[[rule]]\nname = \"m\"\nauto = true\npattern = '(?s).*'\n[rule.multiline]\ncontinuation = '^\\s'\n",
    );
    let errors = check_rule_files(&[dir.path().to_owned()]);
    assert!(
        errors[0].to_string().contains("cannot be `auto`"),
        "{errors:?}"
    );
}

#[test]
fn user_rules_load_first_and_override_builtin_names() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir,
        "app.toml",
        r#"
[[rule]]
name = "redis"
description = "replaces the built-in rule of that name"
pattern = '^REDIS (?P<m>.*)$'
captures = { m = "message" }

[[rule]]
name = "billing"
image = ["registry.example.com/team/billing*"]
pattern = '^(?P<lvl>[A-Z]+) \[(?P<ts>[^\]]+)\] (?P<m>.*)$'
[rule.captures]
lvl = "log.level"
ts = { field = "@timestamp", type = "timestamp", formats = ["epoch_millis", "rfc3339"] }
m = "message"
"#,
    );
    let set = RuleSet::load(&[dir.path().to_owned()], true).unwrap();
    assert_eq!(set.rule_names().next(), Some("redis"));
    assert_eq!(set.rule_names().filter(|n| *n == "redis").count(), 1);
    let mut r = record("REDIS hello");
    set.select(Some("redis"), None)
        .apply(&mut r, &mut Scratch::new());
    assert_eq!(r.message, "hello");
    let selection = set.select(None, Some("registry.example.com/team/billing-api:2.1"));
    assert_eq!(selection.rules(), "billing");
    let mut r = record("WARNING [1795852800123] card declined");
    selection.apply(&mut r, &mut Scratch::new());
    assert_eq!(
        (r.message.as_str(), r.log.level.as_deref()),
        ("card declined", Some("warning")),
        "log.level keeps the source's name"
    );
    assert_eq!(r.fields["log.level_normalized"], "warn");
    assert_eq!(r.timestamp, "2026-11-28T08:00:00.123Z");
    let mut r = record("WARNING [next tuesday] card declined");
    selection.apply(&mut r, &mut Scratch::new());
    assert_eq!(
        r.timestamp,
        crate::util::READ_TIME,
        "an unparseable time keeps the read time"
    );
    assert!(r.fields["parse"]["error"]
        .as_str()
        .unwrap()
        .starts_with("timestamp"));
    assert_eq!(r.fields["parse"]["rule"], "billing");
}

/// Auto-detection tries the rule that read the previous line first, but the answer stays the
/// set's: the first auto rule, in order, that matches.
#[test]
fn auto_detection_keeps_rule_order_whatever_read_the_last_line() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir,
        "overlap.toml",
        r#"
[[rule]]
name = "strict"
auto = true
pattern = '^x(?P<n>\d+)$'
[rule.captures]
n = { field = "strict.n", type = "int" }

[[rule]]
name = "loose"
auto = true
pattern = '^x?(?P<n>\d+)$'
[rule.captures]
n = { field = "loose.n", type = "int" }
"#,
    );
    let set = RuleSet::load(&[dir.path().to_owned()], false).unwrap();
    let selection = set.select(None, None);
    let mut scratch = Scratch::new();
    for (line, rule) in [
        ("5", "loose"),
        ("x6", "strict"),
        ("7", "loose"),
        ("8", "loose"),
    ] {
        let mut r = record(line);
        selection.apply(&mut r, &mut scratch);
        assert!(r.fields.contains_key(rule), "{line}: {:?}", r.fields);
        assert_eq!(r.fields.len(), 1, "{line}: {:?}", r.fields);
    }
}

#[test]
fn a_normalised_level_table_is_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let rule = |name: &str, captures: &str| {
        format!("[[rule]]\nname = \"{name}\"\npattern = '^(?P<l>\\w+) (?P<m>.*)$'\n[rule.captures]\n{captures}\n")
    };
    write(
        &dir,
        "a.toml",
        &rule(
            "bad_level",
            "l = { field = \"log.level\", normalised = { audit = \"loud\" } }",
        ),
    );
    write(
        &dir,
        "b.toml",
        &rule(
            "not_a_level",
            "l = { field = \"app.kind\", normalised = { audit = \"info\" } }",
        ),
    );
    write(
        &dir,
        "c.toml",
        &rule("own_field", "l = \"log.level_normalized\""),
    );
    let text: Vec<String> = check_rule_files(&[dir.path().to_owned()])
        .iter()
        .map(ToString::to_string)
        .collect();
    for (file, rule, says) in [
        (
            "a.toml",
            "bad_level",
            "`audit` = `loud` is not one of trace, debug, info, warn, error, fatal",
        ),
        (
            "b.toml",
            "not_a_level",
            "`normalised` only applies to `field = \"log.level\"`",
        ),
        (
            "c.toml",
            "own_field",
            "`log.level_normalized` belongs to the record",
        ),
    ] {
        assert!(
            text.iter()
                .any(|e| e.contains(file) && e.contains(rule) && e.contains(says)),
            "{says}: {text:#?}"
        );
    }

    write(
        &dir,
        "a.toml",
        &rule("audited", "l = { field = \"log.level\", map = { A = \"audit\" }, normalised = { audit = \"info\" } }\nm = \"message\""),
    );
    std::fs::remove_file(dir.path().join("b.toml")).unwrap();
    std::fs::remove_file(dir.path().join("c.toml")).unwrap();
    let set = RuleSet::load(&[dir.path().to_owned()], false).unwrap();
    let mut r = record("A user logged in");
    set.select(Some("audited"), None)
        .apply(&mut r, &mut Scratch::new());
    assert_eq!(
        r.log.level.as_deref(),
        Some("audit"),
        "the mapped name is kept"
    );
    assert_eq!(r.fields["log.level_normalized"], "info");
    let mut r = record("Verbose chatter");
    set.select(Some("audited"), None)
        .apply(&mut r, &mut Scratch::new());
    assert_eq!(r.log.level.as_deref(), Some("verbose"));
    assert!(
        r.fields.get("log.level_normalized").is_none(),
        "a name nobody knows has no normalised level"
    );
}
