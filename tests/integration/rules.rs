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
    // Nested as the store holds them.
    assert_eq!(events[0]["order"]["id"], 42);
    assert_eq!(events[0]["message"], "paid by card");
    assert!(events[1]["parse"]["error"].is_string(), "{}", events[1]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a miss is reported in the exit code"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 not matched"));
}

#[test]
fn the_agent_refuses_to_start_with_a_broken_rule() {
    let w = World::new();
    let rules = w.path("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("shop.toml"), BROKEN).unwrap();
    let config = w.config(
        &format!("rules_dirs = [{:?}]\n", rules.display().to_string()),
        "",
    );
    let out = Command::new(FERRY)
        .args(["agent", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("shop.toml") && text.contains("shop_orders"),
        "{text}"
    );
    assert!(text.contains("unclosed character class"), "{text}");
}

#[test]
fn sighup_reloads_rules_and_keeps_the_old_ones_when_the_new_do_not_compile() {
    let w = World::new();
    let rules = w.path("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("shop.toml"), GOOD).unwrap();
    let config = w.config(
        &format!(
            "rules_dirs = [{:?}]\nparser = \"shop_orders\"\n",
            rules.display().to_string()
        ),
        "",
    );
    let plain = w.path("logs/plain");
    std::fs::create_dir_all(&plain).unwrap();
    let log = plain.join("orders.log");
    let append = |line: &str| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        writeln!(f, "{line}").unwrap();
    };
    let _aggregator = w.start_aggregator(&config);
    let mut agent = w.start_agent(&config);
    let stored_with = |n: usize| {
        wait_for(
            &format!("{n} records"),
            std::time::Duration::from_secs(30),
            || {
                let r = w.stored();
                (r.len() >= n).then_some(r)
            },
        )
    };
    append("order 1 paid");
    assert_eq!(stored_with(1)[0]["order"]["id"], 1);

    std::fs::write(rules.join("shop.toml"), BROKEN).unwrap();
    let hup = |agent: &Proc| {
        Command::new("kill")
            .args(["-HUP", &agent.child.id().to_string()])
            .status()
            .unwrap();
    };
    hup(&agent);
    wait_for(
        "the reload refusal in the log",
        std::time::Duration::from_secs(10),
        || {
            agent
                .log_text()
                .contains("keeping the previous rules")
                .then_some(())
        },
    );
    let log_text = agent.log_text();
    assert!(log_text.contains("unclosed character class"), "{log_text}");
    append("order 2 shipped");
    let r = stored_with(2);
    assert_eq!(r[1]["order"]["id"], 2, "old rules still apply: {}", r[1]);
    assert!(agent.alive());

    std::fs::write(
        rules.join("shop.toml"),
        GOOD.replace("order.id", "order.number"),
    )
    .unwrap();
    hup(&agent);
    wait_for(
        "the reload in the log",
        std::time::Duration::from_secs(10),
        || {
            agent
                .log_text()
                .contains("Parser rules reloaded")
                .then_some(())
        },
    );
    append("order 3 delivered");
    let r = stored_with(3);
    assert_eq!(r[2]["order"]["number"], 3, "new rules apply: {}", r[2]);
}
