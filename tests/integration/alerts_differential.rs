//! ferry's rule evaluator against Prometheus's, deterministically: a scripted scenario (counters
//! rising and resetting, gauges crossing thresholds, series vanishing and coming back) is fed to
//! ferry's evaluator one exposition page per minute, and ferry's alerts at every minute become
//! the expectations of a `promtool test rules` file over the very same samples. promtool then
//! evaluates the same rule file in Prometheus's engine and passes only if every alert (name,
//! labels, annotations carrying the humanized value, firing) and every `ALERTS` series (pending
//! and firing) agrees at every checkpoint. Nothing races on a clock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry_aggregator::alerts_support::{Evaluator, ReportedAlert};
use serde_json::{json, Value};

const STEP_MS: i64 = 60_000;

/// One series: its exposition key and its value at each minute (`None`: missing, i.e. stale).
struct Series {
    key: String,
    values: Vec<Option<f64>>,
}

fn series(key: &str, steps: usize, f: impl Fn(usize) -> Option<f64>) -> Series {
    Series {
        key: key.to_string(),
        values: (0..steps).map(f).collect(),
    }
}

fn promtool_present() -> bool {
    match Command::new("promtool").arg("--version").output() {
        Ok(_) => true,
        Err(_) if std::env::var("FERRY_TEST_SKIP_PROMTOOL").is_ok_and(|v| v == "1") => {
            eprintln!("FERRY_TEST_SKIP_PROMTOOL=1: the comparison with Prometheus is skipped");
            false
        }
        Err(e) => panic!(
            "promtool does not run ({e}): install Debian's `prometheus`, or set FERRY_TEST_SKIP_PROMTOOL=1"
        ),
    }
}

fn labels_text(name: &str, labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", serde_json::to_string(v).unwrap()))
        .collect();
    format!("{name}{{{}}}", inner.join(", "))
}

/// Runs the scenario through ferry, writes ferry's answers as a promtool test, and runs it.
/// Returns ferry's alerts per minute (for the caller's own checks).
fn compare_with_prometheus(
    rule_file: &Path,
    scenario: &[Series],
    dir: &Path,
) -> Vec<Vec<ReportedAlert>> {
    let steps = scenario[0].values.len();
    let mut ferry = Evaluator::load(&[rule_file.to_path_buf()], Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("ferry refused {}: {e:?}", rule_file.display()));
    let text = std::fs::read_to_string(rule_file).unwrap();
    let alert_names: Vec<String> = text
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("- alert: ")
                .map(|n| n.trim().to_string())
        })
        .collect();
    let mut per_step = Vec::new();
    let mut alert_tests = Vec::new();
    let mut expr_tests = Vec::new();
    for step in 0..steps {
        let mut page = String::new();
        for s in scenario {
            if let Some(v) = s.values[step] {
                page.push_str(&format!("{} {v}\n", s.key));
            }
        }
        let t = step as i64 * STEP_MS;
        ferry.step(&page, t);
        assert_eq!(ferry.errors(), Vec::<String>::new(), "at minute {step}");
        let alerts = ferry.alerts();
        let eval_time = format!("{step}m");
        for name in &alert_names {
            let firing: Vec<Value> = alerts
                .iter()
                .filter(|a| a.state == "firing" && a.labels.get("alertname") == Some(name))
                .map(|a| {
                    let mut labels = a.labels.clone();
                    labels.remove("alertname");
                    json!({"exp_labels": labels, "exp_annotations": a.annotations})
                })
                .collect();
            alert_tests
                .push(json!({"eval_time": eval_time, "alertname": name, "exp_alerts": firing}));
        }
        let samples: Vec<Value> = alerts
            .iter()
            .map(|a| {
                let mut labels = a.labels.clone();
                labels.insert("alertstate".into(), a.state.into());
                json!({"labels": labels_text("ALERTS", &labels), "value": 1})
            })
            .collect();
        expr_tests.push(json!({"expr": "ALERTS", "eval_time": eval_time, "exp_samples": samples}));
        per_step.push(alerts);
    }
    let input: Vec<Value> = scenario
        .iter()
        .map(|s| {
            let values: Vec<String> = s
                .values
                .iter()
                .map(|v| v.map_or("stale".to_string(), |v| v.to_string()))
                .collect();
            json!({"series": s.key, "values": values.join(" ")})
        })
        .collect();
    let test = json!({
        "rule_files": [rule_file.canonicalize().unwrap()],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": input,
            "alert_rule_test": alert_tests,
            "promql_expr_test": expr_tests,
        }],
    });
    let test_file = dir.join("ferry_answers_test.yml");
    if !promtool_present() {
        return per_step;
    }
    let (ok, report) = promtool_test(&test_file, &test);
    assert!(
        ok,
        "Prometheus disagrees with ferry ({}):\n{}",
        test_file.display(),
        &report[..report.len().min(20_000)]
    );
    // The comparison bites: one firing alert's expected annotations changed, promtool fails.
    let mut wrong = test.clone();
    let tests = wrong["tests"][0]["alert_rule_test"].as_array_mut().unwrap();
    let firing = tests
        .iter_mut()
        .find(|t| !t["exp_alerts"].as_array().unwrap().is_empty())
        .expect("the scenario fires something");
    firing["exp_alerts"][0]["exp_annotations"]["control"] = json!("not what ferry said");
    let (ok, _) = promtool_test(&dir.join("control_test.yml"), &wrong);
    assert!(
        !ok,
        "promtool accepted a wrong expectation: the comparison checks nothing"
    );
    per_step
}

/// Writes a promtool test (JSON is YAML) and runs it: (passed, report).
fn promtool_test(file: &Path, test: &Value) -> (bool, String) {
    std::fs::write(file, serde_json::to_string_pretty(test).unwrap()).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(file)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Counters rising and resetting, gauges crossing thresholds, series vanishing and coming back.
fn operators_scenario(steps: usize) -> Vec<Series> {
    vec![
        series(
            "http_requests_total{job=\"api\",instance=\"a\",code=\"200\"}",
            steps,
            |i| {
                Some(if i < 12 {
                    60.0 * i as f64
                } else {
                    60.0 * (i - 12) as f64 + 5.0
                })
            },
        ),
        series(
            "http_requests_total{job=\"api\",instance=\"b\",code=\"500\"}",
            steps,
            |i| (!(20..24).contains(&i)).then_some(6.0 * i as f64),
        ),
        series(
            "http_requests_total{job=\"web\",instance=\"c\",code=\"200\"}",
            steps,
            |i| Some(100.0 + 30.0 * i as f64),
        ),
        series("up{job=\"api\",instance=\"a\"}", steps, |_| Some(1.0)),
        series("up{job=\"batch\",instance=\"z\"}", steps, |i| {
            (!(10..17).contains(&i)).then_some(1.0)
        }),
        series("queue_depth{q=\"x\"}", steps, |i| {
            Some(((i * i) % 17) as f64)
        }),
        series("temperature{room=\"r1\"}", steps, |i| {
            Some(18.0 + (i % 7) as f64 * 0.75)
        }),
        series("temperature{room=\"r2\"}", steps, |i| {
            Some(20.1 + ((i * 3) % 5) as f64 * 0.5)
        }),
        series(
            "mem_used_bytes{host=\"h1\",id=\"x\",name=\"web\"}",
            steps,
            |i| {
                Some(match i {
                    0..8 => 50.0 + 5.0 * i as f64,
                    8..18 => 95.0,
                    _ => 40.0,
                })
            },
        ),
        series(
            "mem_used_bytes{host=\"h1\",id=\"y\",name=\"db\"}",
            steps,
            |_| Some(20.0),
        ),
        series("mem_limit_bytes{host=\"h1\",zone=\"z1\"}", steps, |_| {
            Some(100.0)
        }),
        series(
            "latency_seconds_bucket{job=\"api\",le=\"0.1\"}",
            steps,
            |i| Some(10.0 * i as f64),
        ),
        series(
            "latency_seconds_bucket{job=\"api\",le=\"0.5\"}",
            steps,
            |i| Some(18.0 * i as f64),
        ),
        series("latency_seconds_bucket{job=\"api\",le=\"1\"}", steps, |i| {
            Some(19.0 * i as f64)
        }),
        series(
            "latency_seconds_bucket{job=\"api\",le=\"+Inf\"}",
            steps,
            |i| Some(20.0 * i as f64),
        ),
        series("last_seen_timestamp_seconds{job=\"api\"}", steps, |i| {
            Some(60.0 * i.min(14) as f64)
        }),
    ]
}

#[test]
fn every_supported_function_and_operator_agrees_with_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let per_step = compare_with_prometheus(
        &repo("tests/alerts/differential.yml"),
        &operators_scenario(31),
        dir.path(),
    );
    // The scenario exercises the states, not just the values: the memory alert goes pending,
    // fires, keeps firing after the drop, and resolves.
    let memory = |step: usize| {
        per_step[step]
            .iter()
            .find(|a| a.labels["alertname"] == "MemoryGroupLeft" && a.labels["id"] == "x")
            .map(|a| a.state)
    };
    assert_eq!(memory(7), None);
    assert_eq!(memory(8), Some("pending"));
    assert_eq!(memory(10), Some("firing"));
    assert_eq!(memory(19), Some("firing"), "keep_firing_for");
    assert_eq!(memory(20), None);
    let absent: Vec<&str> = (0..31)
        .filter_map(|s| {
            per_step[s]
                .iter()
                .find(|a| a.labels["alertname"] == "Absent")
                .map(|a| a.state)
        })
        .collect();
    assert!(
        absent.contains(&"pending") && absent.contains(&"firing"),
        "{absent:?}"
    );
}

#[test]
fn shipped_rules_agree_with_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let steps = 40;
    let c = |id: &str, name: &str| {
        format!("{{id=\"{id}\",name=\"{name}\",image=\"app:1\",host=\"node-1\"}}")
    };
    let scenario = vec![
        series(&format!("container_memory_working_set_bytes{}", c("a1", "web")), steps, |i| {
            Some(if (5..15).contains(&i) { 950.0e6 } else { 400.0e6 })
        }),
        series(&format!("container_spec_memory_limit_bytes{}", c("a1", "web")), steps, |_| Some(1e9)),
        series(&format!("container_cpu_cfs_periods_total{}", c("a1", "web")), steps, |i| Some(600.0 * i as f64)),
        series(&format!("container_cpu_cfs_throttled_periods_total{}", c("a1", "web")), steps, |i| {
            Some(if i < 20 { 300.0 * i as f64 } else { 6000.0 })
        }),
        series(&format!("container_oom_events_total{}", c("a1", "web")), steps, |i| {
            Some(if i < 16 { 0.0 } else { 1.0 })
        }),
        series(&format!("container_cpu_usage_seconds_total{}", c("b2", "crashy")), steps, |i| {
            Some((i % 4) as f64 * 2.5)
        }),
        series(
            "ferry_container_log_lines_total{host=\"node-1\",name=\"web\",namespace=\"\",pod=\"\",stream=\"stderr\",level=\"error\"}",
            steps,
            |i| Some(if i < 25 { 3.0 * i as f64 } else { 75.0 + 120.0 * (i - 25) as f64 }),
        ),
        series("ferry_agent_last_batch_timestamp_seconds{host=\"node-1\"}", steps, |i| {
            Some(60.0 * i.min(30) as f64)
        }),
        series("ferry_sink_up{sink=\"es\"}", steps, |i| Some(if (10..14).contains(&i) { 0.0 } else { 1.0 })),
        series("ferry_sink_items_total{sink=\"es\",result=\"dead_lettered\"}", steps, |i| {
            Some(if i < 8 { 0.0 } else { 4.0 })
        }),
        series("ferry_sink_dead_letters_total{sink=\"es\",destination=\"index_failed\"}", steps, |i| {
            Some(if i < 30 { 0.0 } else { 2.0 })
        }),
        series("ferry_sink_bulk_requests_total{sink=\"es\",outcome=\"rejected\"}", steps, |i| {
            Some(if i < 5 { 0.0 } else { 10.0 * (i - 5) as f64 })
        }),
        series("ferry_ingest_errors_total{error_type=\"queue_full\"}", steps, |i| {
            Some(if i < 22 { 0.0 } else { 7.0 })
        }),
        series("ferry_sink_oldest_record_age_seconds{sink=\"es\"}", steps, |i| {
            Some(if i < 10 { 1.0 } else { 60.0 * (i - 9) as f64 })
        }),
    ];
    for file in ["alerts/containers.yml", "alerts/ferry.yml"] {
        let per_step = compare_with_prometheus(&repo(file), &scenario, dir.path());
        let fired: std::collections::BTreeSet<String> = per_step
            .iter()
            .flatten()
            .filter(|a| a.state == "firing")
            .map(|a| a.labels["alertname"].clone())
            .collect();
        let expected: &[&str] = if file.ends_with("containers.yml") {
            &[
                "ContainerMemoryNearLimit",
                "ContainerCpuThrottled",
                "ContainerOomKilled",
                "ContainerRestartLoop",
                "ContainerErrorLogSpike",
                "NodeStoppedSending",
            ]
        } else {
            &[
                "FerrySinkDown",
                "FerrySinkRejecting",
                "FerrySinkDeadLettering",
                "FerryDeadLettersNotIndexed",
                "FerryQueueFull",
                "FerrySinkLagging",
            ]
        };
        for name in expected {
            assert!(
                fired.contains(*name),
                "{name} never fired in {file}: {fired:?}"
            );
        }
    }
}

#[test]
fn a_query_outside_the_subset_is_refused_though_prometheus_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("refused.yml");
    std::fs::write(
        &file,
        "groups:\n  - name: g\n    rules:\n      - alert: DiskFillsIn4h\n        expr: predict_linear(node_filesystem_free_bytes[1h], 4 * 3600) < 0\n",
    )
    .unwrap();
    if promtool_present() {
        let out = Command::new("promtool")
            .args(["check", "rules"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "promtool refused it too");
    }
    let err = Evaluator::load(std::slice::from_ref(&file), Duration::from_secs(60))
        .err()
        .unwrap();
    assert_eq!(
        err,
        [format!(
            "{}: group \"g\", rule \"DiskFillsIn4h\": expr \"predict_linear(node_filesystem_free_bytes[1h], 4 * 3600) < 0\": the function `predict_linear` is not supported by ferry's evaluator",
            file.display()
        )]
    );
}

#[test]
fn shipped_rule_files_pass_promtool_check_and_their_unit_tests() {
    let files: Vec<PathBuf> = ["alerts/containers.yml", "alerts/ferry.yml"]
        .iter()
        .map(|f| repo(f))
        .collect();
    // ferry loads the whole directory (every rule has a runbook line).
    let ferry = Evaluator::load(&[repo("alerts")], Duration::from_secs(15));
    assert!(ferry.is_ok(), "{:?}", ferry.err());
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let alerts = text.matches("- alert: ").count();
        assert_eq!(text.matches("runbook: ").count(), alerts, "{}", f.display());
    }
    if !promtool_present() {
        return;
    }
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(repo("alerts/tests/containers_test.yml"))
        .arg(repo("alerts/tests/ferry_test.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
