//! Parsing: rules chosen by the `ferry.parser` label, the `parser` setting and auto-detection;
//! broken rules stop the start; reloading rules (SIGHUP) swaps them or keeps the old ones.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_wire::LogRecord;

use super::util::*;

const ACCESS: &str =
    r#"203.0.113.7 - - [28/Nov/2026:08:00:00 +0000] "GET /shop HTTP/1.1" 404 153 "-" "curl/8.5.0""#;

/// A Docker container directory under `<dir>/containers/<id>/` with its `config.v2.json`;
/// returns the json-file log path (not yet written).
pub fn docker_container(dir: &Path, id: &str, image: &str, labels: &str) -> PathBuf {
    let cdir = dir.join("containers").join(id);
    std::fs::create_dir_all(&cdir).unwrap();
    std::fs::write(
        cdir.join("config.v2.json"),
        format!(r#"{{"Name":"/{id}","Config":{{"Image":"{image}","Labels":{{{labels}}}}}}}"#),
    )
    .unwrap();
    cdir.join(format!("{id}-json.log"))
}

/// Appends Docker json-file lines (stdout) to `path`.
pub fn append_docker(path: &Path, messages: &[&str]) {
    let lines: Vec<String> = messages
        .iter()
        .map(|m| {
            serde_json::json!({"log": format!("{m}\n"), "stream": "stdout", "time": "2026-11-28T08:00:00Z"})
                .to_string()
        })
        .collect();
    append(path, &lines);
}

fn find<'a>(records: &'a [LogRecord], message: &str) -> &'a LogRecord {
    records
        .iter()
        .find(|r| r.message == message)
        .unwrap_or_else(|| panic!("no record {message:?} in {records:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parser_label_or_auto_detection_chooses_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    // Label on a container whose image no rule knows; the label is not allowlisted.
    let labelled = docker_container(
        dir.path(),
        "aaa",
        "registry.local/shop/frontend:3",
        r#""ferry.parser":"nginx_access""#,
    );
    append_docker(&labelled, &[ACCESS, "not an access line"]);
    // A container without label or known image: auto-detection still finds the access line.
    let unlabelled = docker_container(dir.path(), "bbb", "registry.local/shop/proxy:1", "");
    append_docker(&unlabelled, &[ACCESS, "plain words"]);

    let agg = TestAggregator::start().await;
    let mut cfg = config(dir.path(), &agg.url());
    cfg.include = vec![
        format!("{}/logs/*.log", dir.path().display()),
        format!("{}/containers/*/*-json.log", dir.path().display()),
    ];
    let agent = crate::start(cfg).await.unwrap();
    wait_until("4 records", || agg.stored().len() == 4).await;
    let stored = agg.stored();
    let of = |id: &str| -> Vec<LogRecord> {
        stored
            .iter()
            .filter(|r| r.container.id.as_deref() == Some(id))
            .cloned()
            .collect()
    };

    let labelled = of("aaa");
    let hit = find(&labelled, ACCESS);
    assert_eq!(hit.fields["source"]["ip"], "203.0.113.7");
    assert_eq!(hit.fields["http"]["response"]["status_code"], 404);
    assert_eq!(hit.fields["http"]["request"]["method"], "GET");
    assert!(!hit.fields.contains_key("parse"), "{hit:?}");
    assert_eq!(hit.timestamp, "2026-11-28T08:00:00Z");
    assert!(hit.container.labels.is_empty(), "labels stay opt-in");
    let miss = find(&labelled, "not an access line");
    assert_eq!(miss.fields["parse"]["rule"], "nginx_access");
    assert!(miss.fields["parse"]["error"]
        .as_str()
        .unwrap()
        .contains("does not match"));

    let auto = of("bbb");
    let hit = find(&auto, ACCESS);
    assert_eq!(hit.fields["source"]["ip"], "203.0.113.7");
    assert!(!hit.fields.contains_key("parse"));
    let raw = find(&auto, "plain words");
    assert!(raw.fields.is_empty(), "auto-detection sets no error");

    for r in &stored {
        assert_eq!(
            r.event.id,
            ferry_wire::event_id(&r.log.file.fingerprint, r.log.offset)
        );
    }
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parser_setting_applies_to_files_without_a_label() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    append(
        &dir.path().join("logs/app.log"),
        &[
            r#"level=warn msg="disk almost full" disk=sda1"#.to_string(),
            "no pairs here".to_string(),
        ],
    );
    let labelled = docker_container(
        dir.path(),
        "ccc",
        "busybox",
        r#""ferry.parser":"nginx_access""#,
    );
    append_docker(&labelled, &[ACCESS]);
    let agg = TestAggregator::start().await;
    let mut cfg = config(dir.path(), &agg.url());
    cfg.include = vec![
        format!("{}/logs/*.log", dir.path().display()),
        format!("{}/containers/*/*-json.log", dir.path().display()),
    ];
    cfg.parser = Some("logfmt".into());
    let agent = crate::start(cfg).await.unwrap();
    wait_until("3 records", || agg.stored().len() == 3).await;
    let stored = agg.stored();
    let kv = find(&stored, "disk almost full");
    assert_eq!(kv.log.level.as_deref(), Some("warn"));
    assert_eq!(kv.fields["disk"], "sda1");
    let miss = find(&stored, "no pairs here");
    assert_eq!(miss.fields["parse"]["rule"], "logfmt", "{miss:?}");
    let hit = find(&stored, ACCESS);
    assert_eq!(hit.fields["source"]["ip"], "203.0.113.7", "the label wins");
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_rule_file_stops_the_start_naming_file_rule_and_error() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("ok.toml"),
        "[[rule]]\nname = \"fine\"\npattern = '^x$'\n",
    )
    .unwrap();
    std::fs::write(
        rules.join("team.toml"),
        "[[rule]]\nname = \"orders\"\npattern = '^(?P<id>[0-9+$'\n\n\
         [[rule]]\nname = \"payments\"\npattern = '^(?P<amount>\\d+)$'\n\
         [rule.captures]\nmissing = \"x\"\n",
    )
    .unwrap();
    let agg = TestAggregator::start().await;
    let mut cfg = config(dir.path(), &agg.url());
    cfg.rules_dirs = vec![rules.clone()];
    let err = match crate::start(cfg).await {
        Ok(_) => panic!("the agent started with a broken rule"),
        Err(e) => e,
    };
    let crate::StartError::Rules(rules_error) = &err else {
        panic!("not a rules error: {err}");
    };
    assert_eq!(rules_error.errors.len(), 2, "{err}");
    let text = err.to_string();
    let file = rules.join("team.toml").display().to_string();
    assert!(text.contains(&file), "{text}");
    assert!(text.contains("rule `orders`"), "{text}");
    assert!(text.contains("pattern does not compile"), "{text}");
    assert!(text.contains("rule `payments`"), "{text}");
    assert!(text.contains("missing"), "{text}");
    assert!(
        !dir.path().join("data").exists(),
        "refused before touching anything"
    );
}

fn custom_rule(prefix: &str, field: &str) -> String {
    format!(
        "[[rule]]\nname = \"custom\"\npattern = '^{prefix} (?P<w>\\w+)$'\n\
         [rule.captures]\nw = \"{field}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_valid_rules_and_keeps_the_old_ones_on_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("custom.toml"), custom_rule("A", "v1.word")).unwrap();
    let log = dir.path().join("logs/app.log");
    let agg = TestAggregator::start().await;
    let mut cfg = config(dir.path(), &agg.url());
    cfg.rules_dirs = vec![rules.clone()];
    cfg.parser = Some("custom".into());
    let agent = crate::start(cfg).await.unwrap();
    append(&log, &["A one".to_string()]);
    wait_until("first record", || agg.stored().len() == 1).await;
    assert_eq!(agg.stored()[0].fields["v1"]["word"], "one");

    std::fs::write(rules.join("custom.toml"), custom_rule("B", "v2.word")).unwrap();
    let builtin = ferry_parsers::RuleSet::builtin().rule_names().count();
    assert_eq!(agent.reload_rules().await.unwrap(), builtin + 1);
    // The tailer switches at its next loop turn (every 20 ms here).
    tokio::time::sleep(Duration::from_millis(200)).await;
    append(&log, &["B two".to_string()]);
    wait_until("second record", || agg.stored().len() == 2).await;
    assert_eq!(agg.stored()[1].fields["v2"]["word"], "two");

    std::fs::write(
        rules.join("custom.toml"),
        "[[rule]]\nname = \"custom\"\npattern = '(('\n",
    )
    .unwrap();
    let errors = agent.reload_rules().await.unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].file, rules.join("custom.toml"));
    assert_eq!(errors[0].rule.as_deref(), Some("custom"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    append(&log, &["B three".to_string()]);
    wait_until("third record", || agg.stored().len() == 3).await;
    let third = &agg.stored()[2];
    assert_eq!(
        third.fields["v2"]["word"], "three",
        "previous rules kept: {third:?}"
    );
    agent.shutdown().await;
}
