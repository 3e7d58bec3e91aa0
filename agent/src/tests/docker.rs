//! Docker discovery against the real engine on this machine, with containers of the locally built
//! `ferry-test:latest` image (`tests/image/build.sh`). Each test labels its containers
//! `ferry.test=<random>`, collects only those (`containers_include`), and removes them at the end
//! even when it fails ([`Cleanup`]).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_wire::{Flag, LogRecord};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use super::util::*;
use crate::AgentConfig;

const IMAGE: &str = "ferry-test:latest";
const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Runs the docker CLI; panics with its stderr when it fails.
fn docker(args: &[&str]) -> String {
    let out = tokio::task::block_in_place(|| Command::new("docker").args(args).output())
        .expect("the docker CLI runs");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes every container of one test when dropped (also on panic).
struct Cleanup {
    label: String,
}

impl Cleanup {
    /// `None` with `FERRY_TEST_SKIP_DOCKER=1`; otherwise a missing engine or image fails loudly.
    fn new_or_skip() -> Option<Self> {
        if std::env::var("FERRY_TEST_SKIP_DOCKER").is_ok_and(|v| v == "1") {
            eprintln!("FERRY_TEST_SKIP_DOCKER=1: skipping a test that needs the Docker engine");
            return None;
        }
        Some(Self::new())
    }

    fn new() -> Self {
        let image = Command::new("docker")
            .args(["image", "inspect", IMAGE])
            .output()
            .expect("the docker CLI runs");
        assert!(
            image.status.success(),
            "{IMAGE} is missing: run `bash tests/image/build.sh` first"
        );
        Cleanup {
            label: format!("{:016x}", fastrand::u64(..)),
        }
    }

    /// A unique container name for this test.
    fn name(&self, what: &str) -> String {
        format!("ferry-test-{what}-{}", &self.label[..8])
    }

    /// `docker run -d` of a labelled container running `script` in busybox sh; returns its id.
    fn run(&self, name: &str, extra: &[&str], script: &str) -> String {
        let label = format!("ferry.test={}", self.label);
        let mut args = vec!["run", "-d", "--name", name, "--label", &label];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "sh", "-c", script]);
        docker(&args)
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label=ferry.test={}", self.label);
        let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        else {
            return;
        };
        let ids = String::from_utf8_lossy(&out.stdout);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}

/// A config that collects the Docker containers labelled `ferry.test=<label>`.
fn docker_config(dir: &Path, url: &str, label: &str) -> AgentConfig {
    AgentConfig {
        include: vec!["/var/lib/docker/containers/*/*-json.log".into()],
        docker_enabled: true,
        docker_reconnect_max_ms: 300,
        containers_include: vec![format!("label:ferry.test={label}")],
        container_labels_allowlist: vec!["ferry.test".into(), "app".into()],
        stats_enabled: false,
        ..config(dir, url)
    }
}

/// Waits (bounded, 60 s: containers start slowly on a busy 2-core machine) until `cond` holds.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn of(records: &[LogRecord], name: &str) -> Vec<LogRecord> {
    records
        .iter()
        .filter(|r| r.container.name.as_deref() == Some(name))
        .cloned()
        .collect()
}

/// A script printing run-numbered sequences on stdout and stderr, a 20000-byte line and a burst.
/// The run number survives restarts (it is kept in the container's file system).
fn sequences_script(lines: usize, burst: usize) -> String {
    format!(
        "n=$(( $(cat /count 2>/dev/null || echo 0) + 1 )); echo $n > /count; \
         i=0; while [ $i -lt {lines} ]; do echo \"r$n out $i\"; echo \"r$n err $i\" >&2; i=$((i+1)); done; \
         head -c 20000 /dev/zero | tr '\\0' a; echo; \
         i=0; while [ $i -lt {burst} ]; do echo \"r$n burst $i\"; i=$((i+1)); done; \
         echo \"r$n done\""
    )
}

/// What [`sequences_script`] prints in `runs`, as (stream, message).
fn sequences_expected(
    runs: std::ops::RangeInclusive<usize>,
    lines: usize,
    burst: usize,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for n in runs {
        for i in 0..lines {
            out.push(("stdout", format!("r{n} out {i}")));
            out.push(("stderr", format!("r{n} err {i}")));
        }
        out.push(("stdout", "a".repeat(20000)));
        for i in 0..burst {
            out.push(("stdout", format!("r{n} burst {i}")));
        }
        out.push(("stdout", format!("r{n} done")));
    }
    out.sort();
    out
}

/// Checks that `records` are exactly `expected` (each once), with one container's metadata.
fn assert_exactly(
    records: &[LogRecord],
    expected: &[(&'static str, String)],
    name: &str,
    app: &str,
    label: &str,
) {
    let mut got: Vec<(&'static str, String)> = records
        .iter()
        .map(|r| (r.stream.expect("a stream").as_str(), r.message.clone()))
        .collect();
    got.sort();
    assert_eq!(got.len(), expected.len(), "{name}: record count");
    assert!(got == expected, "{name}: messages differ");
    let ids: HashSet<&str> = records.iter().map(|r| r.event.id.as_str()).collect();
    assert_eq!(ids.len(), records.len(), "{name}: duplicate event ids");
    for r in records {
        assert_eq!(r.container.name.as_deref(), Some(name));
        assert_eq!(r.container.image.name.as_deref(), Some(IMAGE));
        assert_eq!(
            r.container.labels,
            BTreeMap::from([
                ("app".to_string(), app.to_string()),
                ("ferry.test".to_string(), label.to_string())
            ])
        );
        assert_eq!(r.container.id.as_ref().map(|i| i.len()), Some(64));
        if r.message.len() == 20000 {
            assert!(r.log.flags.contains(&Flag::Joined), "{:?}", r.log.flags);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_file_containers_arrive_once_with_metadata_through_restart_and_removal() {
    let Some(c) = Cleanup::new_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let agg = TestAggregator::start().await;
    let mut cfg = docker_config(dir.path(), &agg.url(), &c.label);
    cfg.containers_exclude = vec!["name:ferry-test-x-skip-*".into()];
    let agent = crate::start(cfg).await.unwrap();

    let (web, gone, quiet, skip) = (
        c.name("web"),
        c.name("gone"),
        c.name("quiet"),
        c.name("x-skip"),
    );
    // Opted out by label, and excluded by name: none of their lines may arrive.
    c.run(
        &quiet,
        &["--label", "app=quiet", "--label", "ferry.enable=false"],
        "echo quiet",
    );
    c.run(&skip, &["--label", "app=skip"], "echo skip");
    c.run(&web, &["--label", "app=web"], &sequences_script(100, 3000));
    docker(&["wait", &web]);
    wait_for("first run of web", || {
        of(&agg.stored(), &web)
            .iter()
            .any(|r| r.message == "r1 done")
    })
    .await;
    // Restart: the same json-file gets a second run.
    docker(&["start", &web]);
    docker(&["wait", &web]);

    // A container removed before it was fully read: the open handle drains the deleted file.
    // The aggregator answers 503 for a while so the tailer falls behind.
    c.run(
        &gone,
        &["--label", "app=gone"],
        &sequences_script(50, 20_000),
    );
    wait_for("first line of gone", || {
        !of(&agg.stored(), &gone).is_empty()
    })
    .await;
    agg.script(&[(503, None); 15]);
    docker(&["wait", &gone]);
    let stored_at_rm = of(&agg.stored(), &gone).len();
    docker(&["rm", "-f", &gone]);
    eprintln!("gone: {stored_at_rm} records stored when it was removed");

    let web_expected = sequences_expected(1..=2, 100, 3000);
    let gone_expected = sequences_expected(1..=1, 50, 20_000);
    wait_for("every line of web and gone", || {
        let s = agg.stored();
        of(&s, &web).len() >= web_expected.len() && of(&s, &gone).len() >= gone_expected.len()
    })
    .await;
    let stored = agg.stored();
    assert_exactly(&of(&stored, &web), &web_expected, &web, "web", &c.label);
    assert_exactly(&of(&stored, &gone), &gone_expected, &gone, "gone", &c.label);
    assert!(
        of(&stored, &quiet).is_empty(),
        "ferry.enable=false was tailed"
    );
    assert!(
        of(&stored, &skip).is_empty(),
        "containers_exclude was ignored"
    );
    assert!(stored.iter().all(|r| r
        .container
        .labels
        .get("ferry.test")
        .is_some_and(|l| *l == c.label)));
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_started_while_the_agent_is_down_is_read_from_its_first_line() {
    let Some(c) = Cleanup::new_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let agg = TestAggregator::start().await;
    let before = c.name("before");
    let during = c.name("during");
    let agent = crate::start(docker_config(dir.path(), &agg.url(), &c.label))
        .await
        .unwrap();
    c.run(
        &before,
        &["--label", "app=before"],
        &sequences_script(20, 100),
    );
    wait_for("before's lines", || {
        of(&agg.stored(), &before)
            .iter()
            .any(|r| r.message == "r1 done")
    })
    .await;
    agent.shutdown().await;

    c.run(
        &during,
        &["--label", "app=during"],
        &sequences_script(20, 100),
    );
    docker(&["wait", &during]);
    let agent = crate::start(docker_config(dir.path(), &agg.url(), &c.label))
        .await
        .unwrap();
    let expected = sequences_expected(1..=1, 20, 100);
    wait_for("during's lines", || {
        of(&agg.stored(), &during).len() >= expected.len()
    })
    .await;
    let stored = agg.stored();
    assert_exactly(
        &of(&stored, &during),
        &expected,
        &during,
        "during",
        &c.label,
    );
    assert_exactly(
        &of(&stored, &before),
        &expected,
        &before,
        "before",
        &c.label,
    );
    agent.shutdown().await;
}

/// Checks logs-API records: fingerprint per container, strictly increasing offsets.
fn assert_api_source(records: &[LogRecord], id: &str) {
    let fp = format!("logs-api:{id}");
    assert!(records.iter().all(|r| r.log.file.fingerprint == fp));
    assert!(records
        .windows(2)
        .all(|w| w[0].log.offset < w[1].log.offset));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_driver_container_is_followed_through_the_logs_api_and_resumes_after_restart() {
    let Some(c) = Cleanup::new_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let agg = TestAggregator::start().await;
    let name = c.name("local");
    let agent = crate::start(docker_config(dir.path(), &agg.url(), &c.label))
        .await
        .unwrap();
    let id = c.run(
        &name,
        &["--label", "app=local", "--log-driver", "local"],
        &sequences_script(100, 1000),
    );
    let first = sequences_expected(1..=1, 100, 1000);
    wait_for("first run through the logs API", || {
        of(&agg.deduplicated(), &name).len() >= first.len()
    })
    .await;
    assert_exactly(
        &of(&agg.deduplicated(), &name),
        &first,
        &name,
        "local",
        &c.label,
    );
    // The checkpoint holds the last acknowledged timestamp of the source.
    wait_for("logs-API checkpoint", || {
        checkpoint_offsets(dir.path()).contains_key(&format!("logs-api:{id}"))
    })
    .await;
    agent.shutdown().await;

    // A second run while the agent is down; after the restart only the new lines are new.
    docker(&["start", &name]);
    docker(&["wait", &name]);
    let agent = crate::start(docker_config(dir.path(), &agg.url(), &c.label))
        .await
        .unwrap();
    let both = sequences_expected(1..=2, 100, 1000);
    wait_for("second run after the restart", || {
        of(&agg.deduplicated(), &name).len() >= both.len()
    })
    .await;
    let stored = of(&agg.deduplicated(), &name);
    assert_exactly(&stored, &both, &name, "local", &c.label);
    assert_api_source(&stored, &id);
    let raw = of(&agg.state.accepted_raw.lock().unwrap(), &name);
    eprintln!(
        "local: {} records sent, {} stored (replays dropped by offset)",
        raw.len(),
        stored.len()
    );
    agent.shutdown().await;

    // Removing the container forgets its checkpoint entry.
    let agent = crate::start(docker_config(dir.path(), &agg.url(), &c.label))
        .await
        .unwrap();
    docker(&["rm", "-f", &name]);
    wait_for("logs-API checkpoint dropped", || {
        !checkpoint_offsets(dir.path()).contains_key(&format!("logs-api:{id}"))
    })
    .await;
    agent.shutdown().await;
}

/// A unix-socket proxy to the Docker engine that the test can cut and restore.
struct SocketProxy {
    path: PathBuf,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl SocketProxy {
    fn start(path: &Path) -> Self {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let c = conns.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = UnixStream::connect(DOCKER_SOCKET).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(conn);
            }
        });
        SocketProxy {
            path: path.to_path_buf(),
            accept: Some(accept),
            conns,
        }
    }

    /// Closes the listener and every open connection (the event stream among them).
    async fn cut(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        let conns: Vec<_> = self.conns.lock().unwrap().drain(..).collect();
        for conn in conns {
            conn.abort();
            let _ = conn.await;
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_started_while_the_event_stream_is_cut_is_discovered_when_it_returns() {
    let Some(c) = Cleanup::new_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let mut proxy = SocketProxy::start(&socket);
    let agg = TestAggregator::start().await;
    let mut cfg = docker_config(dir.path(), &agg.url(), &c.label);
    cfg.docker_socket = socket.clone();
    let agent = crate::start(cfg).await.unwrap();

    // Logs-API containers are only seen through the API, so their lines prove discovery.
    let (first, second) = (c.name("first"), c.name("second"));
    c.run(
        &first,
        &["--label", "app=first", "--log-driver", "local"],
        "echo first-line",
    );
    wait_for("first container's line", || {
        !of(&agg.stored(), &first).is_empty()
    })
    .await;

    proxy.cut().await;
    c.run(
        &second,
        &["--label", "app=second", "--log-driver", "local"],
        "echo second-line",
    );
    docker(&["wait", &second]);
    assert!(of(&agg.stored(), &second).is_empty());
    let proxy = SocketProxy::start(&socket);
    wait_for(
        "second container discovered after the stream came back",
        || !of(&agg.stored(), &second).is_empty(),
    )
    .await;
    let stored = agg.stored();
    let second_records = of(&stored, &second);
    assert_eq!(second_records.len(), 1);
    assert_eq!(second_records[0].message, "second-line");
    assert_eq!(
        second_records[0]
            .container
            .labels
            .get("app")
            .map(String::as_str),
        Some("second")
    );
    assert_eq!(
        of(&stored, &first).len(),
        1,
        "no duplicate after the reconnect"
    );
    agent.shutdown().await;
    drop(proxy);
}
