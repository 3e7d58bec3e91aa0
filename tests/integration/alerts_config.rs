//! Operating the alert rules: `ferry check` names every problem (rule file, group, rule,
//! construct; configuration field) and the aggregator refuses them at start; SIGHUP reloads the
//! rules and keeps the loaded set when the new one has a problem.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::util::{http, wait_for, World, FERRY};

fn rule_names(world: &World) -> Option<Vec<String>> {
    let page = http(world.agg_addr(), "GET", "/api/v1/rules", &[], b"").ok()?;
    let rules: Value = serde_json::from_str(&page.body).ok()?;
    Some(
        rules["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .filter_map(|r| r["name"].as_str().map(str::to_string))
            .collect(),
    )
}

#[test]
fn check_names_every_rule_and_receiver_problem_and_the_aggregator_refuses_them() {
    let w = World::new();
    let rules = w.path("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("bad.yml"),
        "groups:\n  - name: g\n    rules:\n      - alert: Predicts\n        expr: predict_linear(x[5m], 60) > 0\n      - alert: Broken\n        expr: 'rate(x[5m]'\n",
    )
    .unwrap();
    let path = w.path("bad.toml");
    std::fs::write(
        &path,
        format!(
            "[aggregator]\n[aggregator.alerts]\nrule_paths = [\"{}\"]\n[[aggregator.alerts.receivers]]\nname = \"chat\"\ntype = \"slack\"\nurl = \"https://hooks.example/T0/SECRET\"\n[[aggregator.alerts.routes]]\nreceiver = \"nobody\"\n",
            rules.display()
        ),
    )
    .unwrap();
    let check = Command::new(FERRY)
        .args(["check", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout).to_string();
    assert_eq!(check.status.code(), Some(1), "{text}");
    for want in [
        "aggregator.alerts.receivers[0].url = (hidden): a webhook URL is a secret: give it with url_file or url_env",
        "aggregator.alerts.routes[0].receiver = \"nobody\": no receiver has this name",
        "bad.yml: group \"g\", rule \"Predicts\": expr \"predict_linear(x[5m], 60) > 0\": the function `predict_linear` is not supported by ferry's evaluator",
        "bad.yml: group \"g\", rule \"Broken\": expr \"rate(x[5m]\"",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains("SECRET"), "{text}");
    let run = Command::new(FERRY)
        .args(["aggregator", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        run.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

#[test]
fn sighup_reloads_the_rules_and_keeps_them_when_the_new_file_is_bad() {
    let w = World::new();
    let rules = w.path("rules");
    std::fs::create_dir_all(&rules).unwrap();
    let file = rules.join("r.yml");
    std::fs::write(&file, "groups:\n  - name: g\n    rules:\n      - alert: First\n        expr: ferry_sink_up == 1\n").unwrap();
    let config = w.config("", "");
    let text = std::fs::read_to_string(&config).unwrap();
    let alerts = format!(
        "[aggregator.alerts]\nrule_paths = [\"{}\"]\nevaluation_interval_seconds = 1\n",
        rules.display()
    );
    std::fs::write(
        &config,
        text.replace("\n[agent]", &format!("\n{alerts}\n[agent]")),
    )
    .unwrap();
    let agg = w.start_aggregator(&config);
    assert_eq!(rule_names(&w).unwrap(), ["First"]);
    let hup = || {
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(agg.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    };
    std::fs::write(&file, "groups:\n  - name: g\n    rules:\n      - alert: Second\n        expr: ferry_sink_up == 1\n").unwrap();
    hup();
    wait_for("the reloaded rules", Duration::from_secs(10), || {
        (rule_names(&w)? == ["Second"]).then_some(())
    });
    std::fs::write(&file, "groups:\n  - name: g\n    rules:\n      - alert: Third\n        expr: predict_linear(x[1m], 1)\n").unwrap();
    hup();
    wait_for("the refusal in the log", Duration::from_secs(10), || {
        agg.log_text()
            .contains("Alert rules not reloaded; the previous rules stay")
            .then_some(())
    });
    assert_eq!(rule_names(&w).unwrap(), ["Second"]);
    let log = agg.log_text();
    assert!(
        log.contains("predict_linear"),
        "the log names the problem:\n{log}"
    );
}
