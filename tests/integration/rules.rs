//! Operating the rule engine from the command line: `ferry check` on rule files, `ferry parse`,
//! the agent refusing broken rules, and SIGHUP reloads.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::util::*;

const BROKEN: &str = "[[rule]]\nname = \"shop_orders\"\npattern = '^(?P<id>[0-9+ (?P<rest>.*)$'\n[rule.captures]\nid = { field = \"order.id\", type = \"int\" }\nrest = \"message\"\n";
const GOOD: &str = "[[rule]]\nname = \"shop_orders\"\npattern = '^order (?P<id>[0-9]+) (?P<rest>.*)$'\n[rule.captures]\nid = { field = \"order.id\", type = \"int\" }\nrest = \"message\"\n";

#[test]
fn check_names_the_file_the_rule_and_the_regex_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.toml");
    std::fs::write(&path, BROKEN).unwrap();
    let out = Command::new(FERRY)
        .args(["check", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("shop.toml") && text.contains("shop_orders"),
        "{text}"
    );
    assert!(text.contains("unclosed character class"), "{text}");

    std::fs::write(&path, GOOD).unwrap();
    let out = Command::new(FERRY)
        .args(["check", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn parse_runs_a_rule_over_sample_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shop.toml"), GOOD).unwrap();
    let mut child = Command::new(FERRY)
        .args([
            "parse",
            "--rule",
            "shop_orders",
            "--rules",
            dir.path().to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"order 42 paid by card\nnot an order\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["order.id"], 42);
    assert_eq!(events[0]["message"], "paid by card");
    assert!(events[1]["parse.error"].is_string(), "{}", events[1]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a miss is reported in the exit code"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 not matched"));
}
