//! Alerts delivered by a real `ferry aggregator`: an in-test Slack-style receiver gets the
//! grouped firing message after `group_wait`, the repeat after `repeat_interval` and the
//! resolved message; a failing receiver is retried; a restart neither re-pages nor loses a
//! resolve; a real Alertmanager (Debian's `prometheus-alertmanager`) shows the alert. The
//! receiver's URL is a secret and never appears in the aggregator's log.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_wire::{BatchBuilder, Compression, LogRecord};
use serde_json::Value;

use crate::util::{free_port, http, wait_for, World};

/// How the hook answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    /// 500 Internal Server Error.
    Fail,
    /// Closes the connection without an answer.
    Drop,
}

/// An in-test webhook receiver: records every POST body with its arrival time.
pub(crate) struct Hook {
    pub(crate) addr: SocketAddr,
    received: Arc<Mutex<Vec<(Instant, String, Value)>>>,
    mode: Arc<Mutex<Mode>>,
    attempts: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Hook {
    pub(crate) fn start() -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(Mutex::new(Mode::Ok));
        let attempts = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, m, a, s) = (
            Arc::clone(&received),
            Arc::clone(&mode),
            Arc::clone(&attempts),
            Arc::clone(&stop),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let Some((path, body)) = read_request(&mut stream) else {
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let mode = *m.lock().unwrap();
                match mode {
                    Mode::Drop => continue,
                    Mode::Fail => {
                        let _ = stream.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    }
                    Mode::Ok => {
                        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        r.lock().unwrap().push((Instant::now(), path, value));
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        );
                    }
                }
            }
        });
        Hook {
            addr,
            received,
            mode,
            attempts,
            stop,
        }
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub(crate) fn messages(&self) -> Vec<(Instant, Value)> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _, v)| (*t, v.clone()))
            .collect()
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while raw.len() < head_end + length {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    Some((path, raw[head_end..].to_vec()))
}

/// Posts one log record from `host`, as an agent would.
fn post_log(world: &World, host: &str) {
    let mut builder = BatchBuilder::new(host);
    let mut r = LogRecord {
        message: "hello".into(),
        timestamp: "2024-05-01T12:00:00.000Z".into(),
        ..Default::default()
    };
    r.log.file.path = "/var/log/x.log".into();
    r.log.file.fingerprint = "fp-1".into();
    r.log.offset = 1;
    r.host.name = host.into();
    builder.push_log(&r);
    let batch = builder.finish(Compression::None);
    let auth = format!("Bearer {}", world.token);
    let reply = http(
        world.agg_addr(),
        "POST",
        "/v1/batches",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/x-ndjson"),
        ],
        &batch.body,
    )
    .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
}

const SECRET_PATH: &str = "/services/T0000/B0000/S3CRETW3BH00K";

/// The aggregator table for alerts with rules in `rules`, a Slack receiver at `hook` (URL
/// from a file) and the given timings.
fn alerts_table(world: &World, rules: &str, hook: &Hook, timings: &str) -> String {
    let rules_dir = world.path("rules");
    std::fs::create_dir_all(&rules_dir).unwrap();
    std::fs::write(rules_dir.join("test.yml"), rules).unwrap();
    let url_file = world.path("slack-url");
    std::fs::write(&url_file, format!("http://{}{SECRET_PATH}\n", hook.addr)).unwrap();
    format!(
        r#"sinks = [{{ type = "local" }}, {{ type = "discard" }}]

[aggregator.alerts]
rule_paths = ["{rules}"]
evaluation_interval_seconds = 1

[[aggregator.alerts.receivers]]
name = "oncall"
type = "slack"
url_file = "{url_file}"

[[aggregator.alerts.routes]]
receiver = "oncall"
group_by = ["alertname"]
{timings}
"#,
        rules = rules_dir.display(),
        url_file = url_file.display(),
    )
}

fn attachment(message: &Value) -> &Value {
    &message["attachments"][0]
}

#[test]
fn slack_receiver_gets_grouped_firing_repeat_and_resolved_messages() {
    let world = World::new();
    let hook = Hook::start();
    // The first delivery meets a dropped connection: retried, and the URL stays out of the log.
    hook.set_mode(Mode::Drop);
    let rules = r#"groups:
  - name: t
    rules:
      - alert: SinkIdle
        expr: ferry_sink_up == 1 unless on() ferry_store_sources > 0
        labels: { severity: critical }
        annotations:
          summary: "Sink {{ $labels.sink }} has stored nothing yet"
          runbook: "Send it something."
"#;
    let table = alerts_table(
        &world,
        rules,
        &hook,
        "group_wait_seconds = 1\ngroup_interval_seconds = 2\nrepeat_interval_seconds = 5",
    );
    // The [aggregator.alerts] table must come after the plain keys of [aggregator].
    let (sinks, alerts) = table.split_once("\n\n").unwrap();
    let config = world.config("", sinks);
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace("\n[agent]", &format!("\n{alerts}\n[agent]"));
    std::fs::write(&config, text).unwrap();
    let agg = world.start_aggregator(&config);
    wait_for("a delivery attempt", Duration::from_secs(20), || {
        (hook.attempts.load(Ordering::SeqCst) >= 1).then_some(())
    });
    hook.set_mode(Mode::Ok);
    let first = wait_for("the firing message", Duration::from_secs(20), || {
        hook.messages().first().cloned()
    });
    let a = attachment(&first.1);
    assert_eq!(a["title"], "[FIRING:2] SinkIdle", "{first:?}");
    assert_eq!(a["color"], "danger");
    let body = a["text"].as_str().unwrap();
    assert!(
        body.contains("Sink discard has stored nothing yet"),
        "{body}"
    );
    assert!(body.contains("Sink local has stored nothing yet"), "{body}");
    assert!(body.contains("runbook: Send it something."), "{body}");
    assert!(a["title_link"]
        .as_str()
        .unwrap()
        .ends_with("/api/v1/alerts"));
    // Unchanged and still firing: repeated after repeat_interval (5 s), not before.
    let second = wait_for("the repeat", Duration::from_secs(20), || {
        hook.messages().get(1).cloned()
    });
    let gap = second.0 - first.0;
    assert!(gap >= Duration::from_millis(4900), "repeated after {gap:?}");
    assert!(gap <= Duration::from_secs(12), "repeated after {gap:?}");
    assert_eq!(attachment(&second.1)["title"], "[FIRING:2] SinkIdle");
    // Stored something: both resolve, in one resolved message.
    let resolving = Instant::now();
    post_log(&world, "node-1");
    let resolved = wait_for("the resolved message", Duration::from_secs(20), || {
        hook.messages()
            .into_iter()
            .find(|(t, m)| *t > resolving && attachment(m)["title"] == "[RESOLVED] SinkIdle")
    });
    assert_eq!(attachment(&resolved.1)["color"], "good");
    assert!(
        resolved.0 - resolving <= Duration::from_secs(8),
        "{:?}",
        resolved.0 - resolving
    );
    // The Prometheus-shaped APIs.
    let alerts = http(world.agg_addr(), "GET", "/api/v1/alerts", &[], b"").unwrap();
    let alerts: Value = serde_json::from_str(&alerts.body).unwrap();
    assert_eq!(alerts["status"], "success");
    assert_eq!(alerts["data"]["alerts"].as_array().unwrap().len(), 0);
    let rules: Value = serde_json::from_str(
        &http(world.agg_addr(), "GET", "/api/v1/rules", &[], b"")
            .unwrap()
            .body,
    )
    .unwrap();
    let rule = &rules["data"]["groups"][0]["rules"][0];
    assert_eq!(rule["name"], "SinkIdle");
    assert_eq!(rule["type"], "alerting");
    assert_eq!(rule["health"], "ok");
    let log = agg.log_text();
    assert!(log.contains("Notification failed; will retry"), "{log}");
    assert!(
        !log.contains("S3CRETW3BH00K"),
        "the webhook URL leaked into the log:\n{log}"
    );
}

#[test]
fn a_restart_neither_repages_nor_loses_a_resolve() {
    let world = World::new();
    let hook = Hook::start();
    let rules = r#"groups:
  - name: t
    rules:
      - alert: StoreEmpty
        expr: ferry_store_sources == 0
        labels: { severity: warning }
        annotations: { summary: "Nothing stored", runbook: "Send logs." }
"#;
    let table = alerts_table(
        &world,
        rules,
        &hook,
        "group_wait_seconds = 1\ngroup_interval_seconds = 1\nrepeat_interval_seconds = 3600",
    );
    let (sinks, alerts) = table.split_once("\n\n").unwrap();
    let config = world.config("", sinks);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("\n[agent]", &format!("\n{alerts}\n[agent]")),
    )
    .unwrap();
    let mut agg = world.start_aggregator(&config);
    wait_for("the firing message", Duration::from_secs(20), || {
        hook.messages().first().cloned()
    });
    // Killed once the aggregator has recorded the delivery (it counts a delivery after
    // saving it). Killed between the receiver's answer and that save, it would send the
    // message once more after the restart: a webhook has no idempotency key (see the README).
    wait_for("the delivery recorded", Duration::from_secs(20), || {
        let page = http(world.agg_addr(), "GET", "/metrics", &[], b"").ok()?;
        page.body
            .lines()
            .any(|l| l == "ferry_alerts_notifications_total 1")
            .then_some(())
    });
    agg.kill();
    // Restarted while the alert still fires: it stays firing, and no second page comes.
    let mut agg = world.start_aggregator(&config);
    let restarted = Instant::now();
    wait_for(
        "several rounds after the restart",
        Duration::from_secs(20),
        || {
            let page = http(world.agg_addr(), "GET", "/api/v1/rules", &[], b"").ok()?;
            let rules: Value = serde_json::from_str(&page.body).ok()?;
            let state = rules["data"]["groups"][0]["rules"][0]["alerts"][0]["state"].clone();
            (restarted.elapsed() > Duration::from_secs(5) && state == "firing").then_some(())
        },
    );
    assert_eq!(
        hook.messages().len(),
        1,
        "re-paged after a restart: {:?}",
        hook.messages()
    );
    // The resolve happens while the receiver is down, then the aggregator dies before it
    // could deliver it: the next aggregator delivers it.
    hook.set_mode(Mode::Fail);
    let before = hook.attempts.load(Ordering::SeqCst);
    post_log(&world, "node-1");
    wait_for("a failed resolve delivery", Duration::from_secs(20), || {
        (hook.attempts.load(Ordering::SeqCst) > before).then_some(())
    });
    agg.kill();
    hook.set_mode(Mode::Ok);
    let _agg = world.start_aggregator(&config);
    let resolved = wait_for(
        "the resolved message after the restart",
        Duration::from_secs(30),
        || {
            hook.messages()
                .into_iter()
                .find(|(_, m)| attachment(m)["title"] == "[RESOLVED] StoreEmpty")
        },
    );
    assert_eq!(attachment(&resolved.1)["color"], "good");
    let firing = hook
        .messages()
        .iter()
        .filter(|(_, m)| {
            attachment(m)["title"]
                .as_str()
                .unwrap()
                .starts_with("[FIRING")
        })
        .count();
    assert_eq!(firing, 1, "{:?}", hook.messages());
}

/// Debian's Alertmanager on a free port, killed on drop.
struct Alertmanager {
    child: std::process::Child,
    port: u16,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_alertmanager(dir: &Path) -> Option<Alertmanager> {
    let port = free_port();
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: none\n  group_wait: 1s\nreceivers:\n  - name: none\n",
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("alertmanager.log")).unwrap();
    let spawned = Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("am-data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn();
    let child = match spawned {
        Ok(c) => c,
        Err(_) if std::env::var("FERRY_TEST_SKIP_ALERTMANAGER").is_ok_and(|v| v == "1") => {
            eprintln!("FERRY_TEST_SKIP_ALERTMANAGER=1: the Alertmanager test is skipped");
            return None;
        }
        Err(e) => panic!(
            "prometheus-alertmanager does not run ({e}): install Debian's `prometheus-alertmanager`, or set FERRY_TEST_SKIP_ALERTMANAGER=1"
        ),
    };
    let am = Alertmanager { child, port };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for("alertmanager ready", Duration::from_secs(30), || {
        http(addr, "GET", "/-/ready", &[], b"")
            .ok()
            .filter(|r| r.status == 200)
    });
    Some(am)
}

#[test]
fn a_real_alertmanager_shows_the_alert() {
    let world = World::new();
    let Some(am) = start_alertmanager(world.dir.path()) else {
        return;
    };
    let rules_dir = world.path("rules");
    std::fs::create_dir_all(&rules_dir).unwrap();
    std::fs::write(
        rules_dir.join("t.yml"),
        "groups:\n  - name: t\n    rules:\n      - alert: StoreEmpty\n        expr: ferry_store_sources == 0\n        labels: { severity: warning }\n        annotations: { summary: \"Nothing stored in {{ $labels.instance }}\" }\n",
    )
    .unwrap();
    let config = world.config("", "");
    let text = std::fs::read_to_string(&config).unwrap();
    let alerts = format!(
        "[aggregator.alerts]\nrule_paths = [\"{}\"]\nevaluation_interval_seconds = 1\n\n[[aggregator.alerts.receivers]]\nname = \"am\"\ntype = \"alertmanager\"\nurl = \"http://127.0.0.1:{}\"\n",
        rules_dir.display(),
        am.port
    );
    std::fs::write(
        &config,
        text.replace("\n[agent]", &format!("\n{alerts}\n[agent]")),
    )
    .unwrap();
    let _agg = world.start_aggregator(&config);
    let am_addr = SocketAddr::from(([127, 0, 0, 1], am.port));
    let shown = wait_for("the alert in Alertmanager", Duration::from_secs(30), || {
        let r = http(am_addr, "GET", "/api/v2/alerts", &[], b"").ok()?;
        let alerts: Value = serde_json::from_str(&r.body).ok()?;
        alerts
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == "StoreEmpty")
            .cloned()
    });
    assert_eq!(shown["labels"]["severity"], "warning");
    assert_eq!(shown["status"]["state"], "active");
    assert!(shown["annotations"]["summary"]
        .as_str()
        .unwrap()
        .starts_with("Nothing stored"));
    assert!(shown["generatorURL"]
        .as_str()
        .unwrap()
        .contains("/api/v1/alerts"));
}
