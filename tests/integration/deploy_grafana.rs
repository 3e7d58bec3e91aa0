//! The Grafana dashboards (`dashboards/grafana/*.json`): the fields Grafana needs, and every
//! panel's PromQL run against a real Prometheus (Debian's) scraping a running aggregator and
//! agent that collect real containers (busy, CPU-throttled, near a memory limit, OOM-killed,
//! writing, pinging, logging at several levels) and write to the local store and the
//! Elasticsearch test double. Each query must parse and return data, except those over series
//! that other work has not landed yet ([`PENDING_SERIES`]): those must parse and return nothing.
//! Needs Docker and `prometheus`; without them it fails unless `FERRY_TEST_SKIP_DOCKER=1` or
//! `FERRY_TEST_SKIP_PROMETHEUS=1`.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ferry_es_double::{Behaviour, Options};
use serde_json::Value;

use crate::deploy_docker::*;
use crate::util::*;

/// Series the dashboards chart that do not exist yet, and the work that brings them: their
/// queries must parse, and must return nothing (a query that returns data fails the test, so
/// this list is kept honest when the work lands).
const PENDING_SERIES: &[(&str, &str)] = &[];

/// What the test puts for Grafana's variables: every host, container, agent and sink ("All"),
/// and intervals that fit a 1 s scrape interval.
const VARIABLES: &[(&str, &str)] = &[
    ("$__rate_interval", "20s"),
    ("$__range", "2m"),
    ("${datasource}", "prometheus"),
    ("$host", ".*"),
    ("$container", ".*"),
    ("$instance", ".*"),
    ("$sink", ".*"),
];

fn dashboards() -> Vec<(PathBuf, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("dashboards/grafana"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards under dashboards/grafana");
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", f.display()));
            (f, json)
        })
        .collect()
}

/// Every (panel title, expression) of a dashboard, rows' nested panels included.
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut panels: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = panels.pop() {
        panels.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("").to_string();
            out.push((title, target["expr"].as_str().unwrap_or("").to_string()));
        }
    }
    out.sort();
    out
}

fn substitute(expr: &str) -> String {
    let mut out = expr.to_string();
    for (name, value) in VARIABLES {
        out = out.replace(name, value);
    }
    out
}

fn pending(expr: &str) -> Option<&'static str> {
    PENDING_SERIES
        .iter()
        .find(|(series, _)| expr.contains(series))
        .map(|(series, _)| *series)
}

#[test]
fn grafana_dashboards_have_what_grafana_needs() {
    let mut uids = HashSet::new();
    for (file, d) in dashboards() {
        let at = file.display();
        let uid = d["uid"].as_str().unwrap_or_else(|| panic!("{at}: no uid"));
        assert!(
            !uid.is_empty() && uid.len() <= 40,
            "{at}: uid {uid:?} (1 to 40 characters)"
        );
        assert!(
            uids.insert(uid.to_string()),
            "{at}: uid {uid:?} is used twice"
        );
        assert!(
            d["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{at}: title"
        );
        assert!(
            d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
            "{at}: schemaVersion"
        );
        let variables = d["templating"]["list"].as_array().unwrap();
        let datasource = variables
            .iter()
            .find(|v| v["type"] == "datasource")
            .unwrap_or_else(|| panic!("{at}: no data source variable"));
        assert_eq!(datasource["query"], "prometheus", "{at}");
        let defined: HashSet<String> = variables
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect();
        let mut ids = HashSet::new();
        let mut panels: Vec<&Value> = d["panels"].as_array().unwrap().iter().collect();
        while let Some(panel) = panels.pop() {
            panels.extend(panel["panels"].as_array().into_iter().flatten());
            let title = panel["title"].as_str().unwrap_or_default();
            assert!(
                ids.insert(panel["id"].as_u64().unwrap()),
                "{at}: panel id of {title:?} reused"
            );
            for key in ["h", "w", "x", "y"] {
                assert!(
                    panel["gridPos"][key].is_u64(),
                    "{at}: {title:?} gridPos.{key}"
                );
            }
            if panel["type"] == "row" {
                continue;
            }
            let targets = panel["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("{at}: {title:?} has no targets"));
            assert!(!targets.is_empty(), "{at}: {title:?} has no targets");
            for source in std::iter::once(&panel["datasource"])
                .chain(targets.iter().map(|t| &t["datasource"]))
            {
                assert_eq!(source["type"], "prometheus", "{at}: {title:?}");
                assert_eq!(
                    source["uid"], "${datasource}",
                    "{at}: {title:?} uses the datasource variable"
                );
            }
            for target in targets {
                let expr = target["expr"].as_str().unwrap_or_default();
                assert!(!expr.is_empty(), "{at}: {title:?} has an empty expression");
                for word in expr.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$')) {
                    if let Some(name) = word.strip_prefix('$').filter(|n| !n.starts_with("__")) {
                        assert!(
                            defined.contains(name),
                            "{at}: {title:?} uses ${name}, which is not a variable"
                        );
                    }
                }
            }
        }
    }
    // The provisioning files point at a Prometheus data source and the dashboards' folder.
    let datasource = std::fs::read_to_string(
        repo().join("dashboards/grafana/provisioning/datasources/ferry-prometheus.yaml"),
    )
    .unwrap();
    assert!(datasource.contains("type: prometheus"), "{datasource}");
    let provider = std::fs::read_to_string(
        repo().join("dashboards/grafana/provisioning/dashboards/ferry.yaml"),
    )
    .unwrap();
    assert!(
        provider.contains("type: file")
            && provider.contains("path: /var/lib/grafana/dashboards/ferry"),
        "{provider}"
    );
}

/// A Prometheus server started by the test, killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[(&str, SocketAddr)]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("prometheus does not start ({e}): install Debian's `prometheus` (as .ci/run does), or set FERRY_TEST_SKIP_PROMETHEUS=1"));
        let p = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        wait_for("Prometheus ready", Duration::from_secs(60), || {
            http(p.addr, "GET", "/-/ready", &[], b"")
                .ok()
                .filter(|r| r.status == 200)
        });
        p
    }

    /// `GET path?query`: the JSON answer (Prometheus answers 400 with a JSON error for a query
    /// that does not parse).
    fn get(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect();
        let r = http(
            self.addr,
            "GET",
            &format!("{path}?{}", query.join("&")),
            &[],
            b"",
        )
        .expect("Prometheus answers");
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{path}: {e}: {}", r.body))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Containers of one test, removed with their anonymous volumes when dropped (also on panic).
struct Containers {
    label: String,
}

impl Containers {
    fn run(&self, name: &str, options: &[&str], script: &str) {
        let label = format!("ferry.test={}", self.label);
        let name = format!("ferry-grafana-{name}-{}", &self.label[..8]);
        let mut args = vec!["run", "-d", "--name", &name, "--label", &label];
        args.extend_from_slice(options);
        args.extend_from_slice(&["ferry-test:latest", "sh", "-c", script]);
        docker(&args);
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        let filter = format!("label=ferry.test={}", self.label);
        let ids = docker_in(repo(), &[], &["ps", "-aq", "--filter", &filter]).unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids);
            let _ = docker_in(repo(), &[], &args);
        }
    }
}

#[test]
fn grafana_panels_query_a_real_prometheus_scraping_ferry_fed_by_real_containers() {
    if !docker_available("the Grafana panels test") {
        return;
    }
    if std::env::var("FERRY_TEST_SKIP_PROMETHEUS").is_ok_and(|v| v == "1") {
        eprintln!("FERRY_TEST_SKIP_PROMETHEUS=1: the Grafana panels test is skipped");
        return;
    }
    docker(&["image", "inspect", "ferry-test:latest"]);
    // Some refusals (mapping errors: dead letters) and item retries, so every sink panel has data.
    let double = EsDouble::start(Options {
        behaviour: Behaviour {
            item_429_rate: 0.02,
            mapping_error_rate: 0.02,
            ..Default::default()
        },
        ..Default::default()
    });
    let w = World::new();
    let agent_metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let containers = Containers {
        label: format!("{:016x}", fastrand::u64(..)),
    };
    // The shipped rules, and two that are pending and firing from the first round, so the
    // alert-state panels have something to show.
    let rules = w.path("grafana-test-rules.yml");
    std::fs::write(
        &rules,
        "groups:\n- name: grafana-test\n  rules:\n  - alert: GrafanaTestFiring\n    expr: vector(1)\n    labels: {severity: warning}\n  - alert: GrafanaTestPending\n    expr: vector(1)\n    for: 1h\n    labels: {severity: info}\n",
    )
    .unwrap();
    let config = w.path("ferry.toml");
    std::fs::write(
        &config,
        format!(
            r#"[aggregator]
listen = "{agg}"
data_dir = "{data}"
token = "{token}"
sinks = [{{ type = "local" }}, {{ type = "elasticsearch", urls = ["{es}"], flush_interval_ms = 100, backoff_initial_ms = 50, backoff_max_ms = 500 }}]

[aggregator.alerts]
rule_paths = ["{shipped}", "{rules}"]
evaluation_interval_seconds = 1

[agent]
host_name = "grafana-node"
data_dir = "{agent}"
aggregator_url = "http://{agg}"
token = "{token}"
include = ["/var/lib/docker/containers/*/*-json.log"]
metrics_listen = "{agent_metrics}"
containers_include = ["label:ferry.test={label}"]
stats_interval_ms = 1000
batch_max_age_ms = 200
"#,
            agg = w.agg_addr(),
            data = w.agg_data().display(),
            token = w.token,
            es = double.handle.url(),
            shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/alerts"),
            rules = rules.display(),
            agent = w.path("agent").display(),
            label = containers.label,
        ),
    )
    .unwrap();
    let _aggregator = w.start_aggregator(&config);
    let _agent = w.start_agent(&config);

    // Real containers, each giving some panels something to show.
    containers.run(
        "logger",
        &[],
        r#"i=0; while :; do i=$((i+1)); echo "{\"level\":\"info\",\"msg\":\"request $i served\"}"; if [ $((i % 5)) -eq 0 ]; then echo "{\"level\":\"error\",\"msg\":\"upstream $i timed out\"}" >&2; fi; if [ $((i % 7)) -eq 0 ]; then echo "{\"level\":\"warn\",\"msg\":\"slow request $i\"}"; fi; usleep 20000; done"#,
    );
    containers.run("throttled", &["--cpus", "0.1"], "while :; do :; done");
    // About a third of its limit held in memory (tmpfs pages count against the container).
    containers.run(
        "memory",
        &["--memory", "64m"],
        "head -c 20000000 /dev/zero > /dev/shm/held; sleep 3600",
    );
    // A child that outgrows the limit is OOM-killed; the container's shell lives on and retries.
    containers.run(
        "oom",
        &["--memory", "32m", "--memory-swap", "32m"],
        "while :; do head -c 200000000 /dev/zero | tail > /dev/null; sleep 2; done",
    );
    // Direct IO on a volume (the image's own file system may be FUSE, which no block device sees).
    containers.run(
        "io",
        &["-v", "/data"],
        "while :; do dd if=/dev/zero of=/data/f bs=1M count=8 oflag=direct 2>/dev/null; dd if=/data/f of=/dev/null bs=1M iflag=direct 2>/dev/null; sleep 1; done",
    );
    containers.run(
        "network",
        &[],
        "gw=$(ip route | awk '/default/ {print $3}'); ping -q -i 0.2 -s 1000 $gw",
    );

    let prometheus = Prometheus::start(&[
        ("ferry-aggregator", w.agg_addr()),
        ("ferry-agent", agent_metrics),
    ]);

    let mut queries: Vec<(String, String, String)> = Vec::new();
    for (file, d) in dashboards() {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        for (title, expr) in expressions(&d) {
            queries.push((name.clone(), title, expr));
        }
    }
    // Every query parses, now and later (Prometheus answers 400 "bad_data" otherwise).
    for (file, title, expr) in &queries {
        let answer = prometheus.get("/api/v1/query", &[("query", &substitute(expr))]);
        assert_eq!(
            answer["status"], "success",
            "{file} {title:?}: {expr}\n{answer}"
        );
    }
    // Wait (bounded) until every query that is not pending returns data; report what each shows.
    let mut shown: BTreeMap<(String, String, String), String> = BTreeMap::new();
    let missing = wait_for_all(&prometheus, &queries, &mut shown);
    for ((file, title, expr), what) in &shown {
        eprintln!("{file} | {title} | {what} | {expr}");
    }
    assert!(
        missing.is_empty(),
        "panels without data after 4 minutes:\n{}",
        missing.join("\n")
    );

    // Some panels show what the containers did, for the right container and only once (the
    // same container's series come from both the aggregator and the agent here).
    let name = |what: &str| format!("ferry-grafana-{what}-{}", &containers.label[..8]);
    let limits = panel_values(&prometheus, "Working set vs limit", 1);
    assert_eq!(
        limits.get(&name("oom")),
        Some(&(32.0 * 1048576.0)),
        "{limits:?}"
    );
    assert_eq!(
        limits.get(&name("memory")),
        Some(&(64.0 * 1048576.0)),
        "{limits:?}"
    );
    wait_for(
        "the memory-holding container's share of its limit",
        Duration::from_secs(60),
        || {
            let v = panel_values(&prometheus, "Working set / limit", 0);
            v.get(&name("memory"))
                .filter(|v| **v > 0.1 && **v < 1.0)
                .copied()
        },
    );
    wait_for(
        "throttling of the CPU-limited container",
        Duration::from_secs(60),
        || {
            let v = panel_values(&prometheus, "CPU throttled periods", 0);
            v.get(&name("throttled")).filter(|v| **v > 0.5).copied()
        },
    );
    wait_for(
        "an OOM kill in the memory-hungry container",
        Duration::from_secs(120),
        || {
            let v = panel_values(&prometheus, "OOM kills", 0);
            v.get(&name("oom")).filter(|v| **v >= 1.0).copied()
        },
    );
    wait_for(
        "the pinging container's traffic",
        Duration::from_secs(60),
        || {
            let v = panel_values(&prometheus, "Network", 0);
            v.get(&name("network")).filter(|v| **v > 0.0).copied()
        },
    );

    // The template variables' label_values() queries find values too.
    for (file, d) in dashboards() {
        for v in d["templating"]["list"].as_array().unwrap() {
            let Some(query) = v["definition"].as_str() else {
                continue;
            };
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .unwrap();
            let (selector, label) = inner.rsplit_once(',').unwrap();
            let answer = prometheus.get(
                &format!("/api/v1/label/{}/values", label.trim()),
                &[("match[]", &substitute(selector))],
            );
            assert_eq!(
                answer["status"],
                "success",
                "{}: {query}: {answer}",
                file.display()
            );
            let values = answer["data"].as_array().unwrap();
            match pending(selector) {
                Some(series) => assert!(
                    values.is_empty(),
                    "{series} exists now: take it off PENDING_SERIES"
                ),
                None => assert!(
                    !values.is_empty(),
                    "{}: variable {}: {query} finds no values",
                    file.display(),
                    v["name"]
                ),
            }
        }
    }
}

/// The values of target `target` of the panel titled `title`, by the series' `name` label.
fn panel_values(prometheus: &Prometheus, title: &str, target: usize) -> BTreeMap<String, f64> {
    let (_, d) = dashboards()
        .into_iter()
        .find(|(_, d)| expressions(d).iter().any(|(t, _)| t == title))
        .unwrap_or_else(|| panic!("no panel {title:?}"));
    let panel = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"] == title)
        .unwrap();
    let expr = panel["targets"][target]["expr"].as_str().unwrap();
    let answer = prometheus.get("/api/v1/query", &[("query", &substitute(expr))]);
    answer["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let value = r["value"][1].as_str()?.parse().ok()?;
            Some((r["metric"]["name"].as_str()?.to_string(), value))
        })
        .collect()
}

/// Polls every query until each non-pending one returns data (at most 4 minutes); fills `shown`
/// with what each returned; returns the ones still without data.
fn wait_for_all(
    prometheus: &Prometheus,
    queries: &[(String, String, String)],
    shown: &mut BTreeMap<(String, String, String), String>,
) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let mut missing = Vec::new();
        for key in queries {
            let (file, title, expr) = key;
            let answer = prometheus.get("/api/v1/query", &[("query", &substitute(expr))]);
            let result = answer["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if let Some(series) = pending(expr) {
                assert!(result.is_empty(), "{series} exists now ({file} {title:?} returns data): take it off PENDING_SERIES");
                shown.insert(key.clone(), format!("pending ({series})"));
                continue;
            }
            let values: Vec<String> = result
                .iter()
                .map(|r| {
                    let labels = r["metric"].as_object().map(|m| {
                        m.iter()
                            .filter(|(k, _)| *k != "job")
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                            .collect::<Vec<_>>()
                            .join(",")
                    });
                    format!(
                        "{}: {}",
                        labels.unwrap_or_default(),
                        r["value"][1].as_str().unwrap_or("")
                    )
                })
                .collect();
            if values.is_empty() {
                missing.push(format!("{file} {title:?}: {expr}"));
            }
            shown.insert(
                key.clone(),
                format!("{} series [{}]", values.len(), values.join("; ")),
            );
        }
        if missing.is_empty() || std::time::Instant::now() > deadline {
            return missing;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}
