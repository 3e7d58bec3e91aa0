//! The file edges under a seeded, replayable random schedule (issue 10, build item 5): a writer
//! appends, rotates by rename, copytruncates (keeping or deleting the copy) and deletes and
//! recreates its file on its own schedule, while the aggregator pushes back at random and the
//! agent (the real `ferry` binary) is SIGKILLed and restarted at random points. Nothing waits for
//! the agent to catch up. The aggregator here is a recorder that keeps every record it accepted,
//! before any deduplication.
//!
//! Seeds: `FERRY_EDGE_SEED` (one seed, or several separated by commas); by default a fixed list
//! runs (bounded: each seed's schedule takes a few seconds, its delivery at most 40 s). A seed
//! replays the same schedule of operations (not the same timing against the agent).
//! `FERRY_EDGE_KEEP_LOG=1` keeps each seed's agent log as `/tmp/edge-agent-<seed>.log`.
//!
//! What is asserted, per generation of the file (the contents between two rotations):
//! - rotated by rename, copytruncated with the copy kept, or still live at the end: every line
//!   arrives (lost = 0);
//! - copytruncated with the copy deleted, or deleted: only a prefix of it may arrive (the design
//!   cannot read what is gone); the loss the agent reports is never more than what is missing;
//! - every line that arrives arrives under one event id only (duplicated = 0: a replay after a
//!   SIGKILL repeats an id the store drops, it never makes a second document), and within one run
//!   of the agent each source's records arrive in strictly increasing offset order.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_wire::{decode_batch, Compression, LogRecord};

use crate::util::*;

/// The seeds run when `FERRY_EDGE_SEED` is not set.
const DEFAULT_SEEDS: [u64; 3] = [1, 7, 42];

/// One record the recorder accepted, and in which run of the agent its request started.
#[derive(Debug, Clone)]
struct Accepted {
    run: u64,
    fingerprint: String,
    offset: u64,
    id: String,
    message: String,
}

#[derive(Default)]
struct RecorderState {
    accepted: Mutex<Vec<Accepted>>,
    /// The agent run requests are attributed to (bumped by the test after each kill).
    run: AtomicU64,
    /// Answer 503 while set.
    held: AtomicBool,
}

/// An aggregator stand-in that records every accepted record (HTTP/1.1, keep-alive).
struct Recorder {
    port: u16,
    state: Arc<RecorderState>,
}

impl Recorder {
    fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(RecorderState::default());
        let st = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let st = st.clone();
                std::thread::spawn(move || serve(stream, &st));
            }
        });
        Recorder { port, state }
    }
}

fn serve(stream: TcpStream, st: &RecorderState) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut encoding = None;
        let mut line = String::new();
        let mut first = true;
        let run = st.run.load(SeqCst);
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let l = line.trim_end();
            if l.is_empty() && !first {
                break;
            }
            first = false;
            if let Some((k, v)) = l.split_once(':') {
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap(),
                    "content-encoding" => encoding = Some(v.trim().to_string()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = if st.held.load(SeqCst) {
            "503 Service Unavailable"
        } else {
            let compression = Compression::from_content_encoding(encoding.as_deref()).unwrap();
            let batch = decode_batch(&body, compression, 64 << 20).expect("a valid batch");
            let mut accepted = st.accepted.lock().unwrap();
            for l in &batch.logs {
                let r: LogRecord = serde_json::from_slice(&batch.record(l)).unwrap();
                accepted.push(Accepted {
                    run,
                    fingerprint: r.log.file.fingerprint,
                    offset: r.log.offset,
                    id: r.event.id,
                    message: r.message,
                });
            }
            "200 OK"
        };
        let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\nok");
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// How a generation of the file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Live,
    Renamed,
    CopyKept,
    CopyDeleted,
    Deleted,
}

impl End {
    /// Whether the design promises every line of such a generation.
    fn covered(self) -> bool {
        matches!(self, End::Live | End::Renamed | End::CopyKept)
    }
}

struct Generation {
    lines: Vec<String>,
    end: End,
}

fn rotated(log: &Path, n: u32) -> PathBuf {
    let mut name = log.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    name.into()
}

/// Renames `name.N` to `name.N+1`, highest first (logrotate's shift).
fn shift(log: &Path) {
    let mut n = 1;
    while rotated(log, n).exists() {
        n += 1;
    }
    for i in (1..n).rev() {
        std::fs::rename(rotated(log, i), rotated(log, i + 1)).unwrap();
    }
}

/// What one seed did and found.
#[derive(Debug, Default)]
struct Outcome {
    ops: HashMap<&'static str, usize>,
    lines: usize,
    delivered: usize,
    replays: usize,
    /// Lines missing from generations the design cannot save (copy deleted, file deleted).
    uncovered_missing: usize,
    uncovered_missing_bytes: u64,
    reported_losses: usize,
    reported_unread_bytes: u64,
}

fn run_seed(seed: u64) -> Outcome {
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(seed);
    let recorder = Recorder::start();
    let mut w = World::new();
    w.agg_port = recorder.port;
    let config = w.config("batch_max_records = 40\nshutdown_timeout_ms = 2000", "");
    let dir = w.path("logs/plain");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("app.log");
    let mut agent = w.start_agent(&config);
    let mut out = Outcome::default();
    let mut gens = vec![Generation {
        lines: Vec::new(),
        end: End::Live,
    }];
    let mut n = 0usize;
    let mut trace = Vec::new();
    for _ in 0..60 {
        let op = match rng.u8(0..20) {
            0..=9 => "append",
            10 | 11 => "rename",
            12 | 13 => "copytruncate",
            14 => "copytruncate, copy deleted",
            15 => "delete",
            16 | 17 => "backpressure",
            _ => "agent SIGKILL",
        };
        let live_lines = gens.last().unwrap().lines.len();
        match op {
            "append" => {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap();
                for _ in 0..rng.usize(1..120) {
                    let line = format!("s{seed} n{n} {}", "x".repeat(rng.usize(0..150)));
                    writeln!(f, "{line}").unwrap();
                    gens.last_mut().unwrap().lines.push(line);
                    n += 1;
                }
            }
            "rename" if log.exists() => {
                shift(&log);
                std::fs::rename(&log, rotated(&log, 1)).unwrap();
                gens.last_mut().unwrap().end = End::Renamed;
                gens.push(Generation {
                    lines: Vec::new(),
                    end: End::Live,
                });
            }
            "copytruncate" | "copytruncate, copy deleted" if live_lines > 0 => {
                shift(&log);
                std::fs::copy(&log, rotated(&log, 1)).unwrap();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&log)
                    .unwrap()
                    .set_len(0)
                    .unwrap();
                let end = if op == "copytruncate" {
                    End::CopyKept
                } else {
                    std::fs::remove_file(rotated(&log, 1)).unwrap();
                    End::CopyDeleted
                };
                gens.last_mut().unwrap().end = end;
                gens.push(Generation {
                    lines: Vec::new(),
                    end: End::Live,
                });
            }
            "delete" if log.exists() => {
                std::fs::remove_file(&log).unwrap();
                gens.last_mut().unwrap().end = End::Deleted;
                gens.push(Generation {
                    lines: Vec::new(),
                    end: End::Live,
                });
            }
            "backpressure" => {
                let held = !recorder.state.held.load(SeqCst);
                recorder.state.held.store(held, SeqCst);
            }
            "agent SIGKILL" => {
                agent.kill();
                recorder.state.run.fetch_add(1, SeqCst);
                agent = w.start_agent(&config);
            }
            _ => continue,
        }
        *out.ops.entry(op).or_default() += 1;
        trace.push(op);
        std::thread::sleep(Duration::from_millis(rng.u64(0..40)));
    }
    recorder.state.held.store(false, SeqCst);
    let covered: usize = gens
        .iter()
        .filter(|g| g.end.covered())
        .map(|g| g.lines.len())
        .sum();
    let covered_lines: HashSet<&str> = gens
        .iter()
        .filter(|g| g.end.covered())
        .flat_map(|g| g.lines.iter().map(String::as_str))
        .collect();
    let delivered_covered = || {
        let accepted = recorder.state.accepted.lock().unwrap();
        let got: HashSet<&str> = accepted.iter().map(|a| a.message.as_str()).collect();
        covered_lines.iter().filter(|l| got.contains(*l)).count()
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    while delivered_covered() < covered && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(agent.terminate().code(), Some(0), "seed {seed}: clean stop");
    let accepted = recorder.state.accepted.lock().unwrap().clone();
    if std::env::var("FERRY_EDGE_KEEP_LOG").is_ok() {
        let _ = std::fs::copy(w.path("agent.log"), format!("/tmp/edge-agent-{seed}.log"));
        eprintln!("seed {seed} ops: {trace:?}");
    }

    // Exactly once: one id per line; order per source within a run.
    let mut ids: HashMap<&str, &str> = HashMap::new();
    let mut copies: HashMap<&str, usize> = HashMap::new();
    let mut last: HashMap<(u64, &str), u64> = HashMap::new();
    for a in &accepted {
        if let Some(id) = ids.insert(&a.message, &a.id) {
            if id != a.id {
                let both: Vec<&Accepted> =
                    accepted.iter().filter(|b| b.message == a.message).collect();
                panic!(
                    "seed {seed}: {:?} arrived under two ids: {both:?}\nops: {trace:?}",
                    a.message
                );
            }
        }
        *copies.entry(&a.message).or_default() += 1;
        assert_eq!(a.id, ferry_wire::event_id(&a.fingerprint, a.offset));
        if let Some(prev) = last.insert((a.run, &a.fingerprint), a.offset) {
            assert!(
                prev < a.offset,
                "seed {seed}: order broken in run {}: {prev} then {a:?}",
                a.run
            );
        }
    }
    out.lines = n;
    out.delivered = ids.len();
    out.replays = accepted.len() - ids.len();
    for g in &gens {
        let got: Vec<bool> = g
            .lines
            .iter()
            .map(|l| ids.contains_key(l.as_str()))
            .collect();
        let missing: Vec<&String> = g
            .lines
            .iter()
            .zip(&got)
            .filter(|(_, got)| !**got)
            .map(|(l, _)| l)
            .collect();
        if g.end.covered() {
            assert!(
                missing.is_empty(),
                "seed {seed}: {} lines lost from a {:?} generation, first {:?}",
                missing.len(),
                g.end,
                missing.first()
            );
        } else {
            let prefix = got.iter().take_while(|g| **g).count();
            assert!(
                got[prefix..].iter().all(|g| !g),
                "seed {seed}: a {:?} generation lost lines in its middle",
                g.end
            );
            out.uncovered_missing += missing.len();
            out.uncovered_missing_bytes += missing.iter().map(|l| l.len() as u64 + 1).sum::<u64>();
        }
    }
    let log_text = std::fs::read_to_string(w.path("agent.log")).unwrap();
    for line in log_text.lines() {
        if line.contains("what was written after the last read is lost")
            || line.contains("what it held after the checkpoint is lost")
        {
            out.reported_losses += 1;
            if let Some(v) = line.split("unread_bytes=").nth(1) {
                let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
                out.reported_unread_bytes += digits.parse::<u64>().unwrap_or(0);
            }
        }
    }
    assert!(
        out.reported_unread_bytes <= out.uncovered_missing_bytes,
        "seed {seed}: reported more unread bytes than are missing: {out:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "seed {seed} took {:?}",
        started.elapsed()
    );
    out
}

#[test]
fn random_rotations_truncations_backpressure_and_sigkills_lose_and_duplicate_nothing() {
    let seeds: Vec<u64> = match std::env::var("FERRY_EDGE_SEED") {
        Ok(s) => s
            .split(',')
            .map(|s| s.trim().parse().expect("FERRY_EDGE_SEED: numbers"))
            .collect(),
        Err(_) => DEFAULT_SEEDS.to_vec(),
    };
    for seed in seeds {
        let started = Instant::now();
        let out = run_seed(seed);
        let mut ops: Vec<_> = out.ops.iter().collect();
        ops.sort();
        eprintln!(
            "edge seed {seed}: {:.1} s, ops {ops:?}; {} lines written, {} delivered, {} replays after SIGKILL, \
             lost 0 and duplicated 0 where covered; {} lines ({} bytes) missing where not covered, \
             {} losses reported ({} unread bytes known to the agent)",
            started.elapsed().as_secs_f64(),
            out.lines,
            out.delivered,
            out.replays,
            out.uncovered_missing,
            out.uncovered_missing_bytes,
            out.reported_losses,
            out.reported_unread_bytes,
        );
    }
}

use crate::util::docker_cli as docker;

/// Removes the test's container when dropped (also on panic).
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", &self.0])
            .output();
    }
}

/// Build item 6: a real container whose json-file log Docker rotates itself (`max-size=1m`,
/// `max-file=3`) while it writes fast and the agent is SIGKILLed and restarted several times.
/// Every line Docker still holds on disk at the end arrives, under one id; lines Docker deleted
/// with a rotated file before the agent read them are Docker's loss, counted and printed.
#[test]
fn docker_rotation_while_the_agent_is_sigkilled_delivers_every_line_kept_on_disk() {
    if std::env::var("FERRY_TEST_SKIP_DOCKER").is_ok_and(|v| v == "1") {
        eprintln!("FERRY_TEST_SKIP_DOCKER=1: skipping a test that needs the Docker engine");
        return;
    }
    let image = std::process::Command::new("docker")
        .args(["image", "inspect", "ferry-test:latest"])
        .output()
        .expect("the docker CLI runs");
    assert!(
        image.status.success(),
        "ferry-test:latest is missing: run `bash tests/image/build.sh` (or set FERRY_TEST_SKIP_DOCKER=1)"
    );
    let seed = std::env::var("FERRY_EDGE_SEED")
        .ok()
        .and_then(|s| s.split(',').next()?.trim().parse().ok())
        .unwrap_or(5u64);
    let mut rng = fastrand::Rng::with_seed(seed);
    let recorder = Recorder::start();
    let w = World::new();
    let label = format!("{:016x}", fastrand::u64(..));
    let config = w.path("ferry.toml");
    std::fs::write(
        &config,
        format!(
            r#"[agent]
host_name = "test-node"
data_dir = "{agent}"
aggregator_url = "http://127.0.0.1:{port}"
include = ["/var/lib/docker/containers/*/*-json.log"]
containers_include = ["label:ferry.test={label}"]
metrics_listen = "127.0.0.1:0"
poll_interval_ms = 50
glob_interval_ms = 200
rotate_wait_ms = 1000
batch_max_age_ms = 100
backoff_max_ms = 200
docker_reconnect_max_ms = 300
stats_enabled = false
"#,
            agent = w.path("agent").display(),
            port = recorder.port,
        ),
    )
    .unwrap();
    let mut agent = w.start_agent(&config);
    let lines = 60_000;
    let name = format!("ferry-test-rotation-{}", &label[..8]);
    let pad = "x".repeat(80);
    let script =
        format!("i=0; while [ $i -lt {lines} ]; do echo \"seq $i {pad}\"; i=$((i+1)); done");
    let lbl = format!("ferry.test={label}");
    let id = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &lbl,
        "--log-opt",
        "max-size=1m",
        "--log-opt",
        "max-file=3",
        "ferry-test:latest",
        "sh",
        "-c",
        &script,
    ]);
    let _container = Container(id.clone());
    // SIGKILL the agent at random moments while the container writes and Docker rotates.
    let mut kills = 0;
    while kills < 4 {
        std::thread::sleep(Duration::from_millis(rng.u64(200..900)));
        agent.kill();
        kills += 1;
        std::thread::sleep(Duration::from_millis(rng.u64(0..300)));
        agent = w.start_agent(&config);
    }
    docker(&["wait", &id]);
    let log_path = PathBuf::from(docker(&["inspect", "-f", "{{.LogPath}}", &id]));
    // What Docker kept: the live file and its rotated siblings, oldest first.
    let mut on_disk: Vec<String> = Vec::new();
    for n in (1..=2).rev() {
        on_disk.extend(docker_messages(&rotated(&log_path, n)));
    }
    on_disk.extend(docker_messages(&log_path));
    assert!(!on_disk.is_empty());
    let kept: HashSet<&str> = on_disk.iter().map(String::as_str).collect();
    let delivered_kept = || {
        let accepted = recorder.state.accepted.lock().unwrap();
        let got: HashSet<&str> = accepted.iter().map(|a| a.message.as_str()).collect();
        kept.iter().filter(|l| got.contains(*l)).count()
    };
    wait_for("every line kept on disk", Duration::from_secs(90), || {
        (delivered_kept() == kept.len()).then_some(())
    });
    assert_eq!(agent.terminate().code(), Some(0));
    let accepted = recorder.state.accepted.lock().unwrap().clone();
    let mut ids: HashMap<&str, &Accepted> = HashMap::new();
    for a in accepted.iter().filter(|a| a.message.starts_with("seq ")) {
        if let Some(first) = ids.insert(&a.message, a) {
            assert_eq!(
                first.id, a.id,
                "{:?} arrived under two ids: first {first:?}, then {a:?}",
                a.message
            );
        }
    }
    let written: Vec<String> = (0..lines).map(|i| format!("seq {i} {pad}")).collect();
    assert!(
        on_disk.iter().all(|l| written.contains(l)),
        "foreign lines on disk"
    );
    let dropped_by_docker = written
        .iter()
        .filter(|l| !kept.contains(l.as_str()) && !ids.contains_key(l.as_str()))
        .count();
    // Docker's files hold a suffix of the sequence: everything after its oldest kept line.
    let first_kept: usize = on_disk[0].split(' ').nth(1).unwrap().parse().unwrap();
    assert_eq!(on_disk.len(), lines - first_kept, "Docker keeps a suffix");
    eprintln!(
        "docker rotation: {lines} lines written, {} kept on disk by Docker (from seq {first_kept}), \
         {} delivered (every kept line once), {} replays after {kills} SIGKILLs, \
         {dropped_by_docker} deleted by Docker's rotation before the agent read them",
        on_disk.len(),
        ids.len(),
        accepted.len() - ids.len(),
    );
}

/// The `log` field of every line of a Docker json-file log, without its newline.
fn docker_messages(path: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["log"]
                .as_str()
                .unwrap()
                .trim_end_matches('\n')
                .to_string()
        })
        .collect()
}
