//! The processes under test and what they stand on: the aggregator's data directory on a small
//! tmpfs, the agent and the aggregator (optionally under libfaketime, whose offset file steps
//! their wall clock), their metrics, and the guards that undo all of it on any exit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::util::{free_port, http, metric, Proc};

/// Set by SIGINT/SIGTERM; [`pause`] turns it into a panic so every guard's `Drop` runs.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Watches for Ctrl-C and SIGTERM on a thread of its own.
pub fn watch_signals() {
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a signal runtime");
        rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("soak: interrupted; cleaning up");
        STOP.store(true, Ordering::SeqCst);
    });
}

/// Sleeps `d` in short steps; panics (unwinding through the guards) once interrupted.
pub fn pause(d: Duration) {
    let end = Instant::now() + d;
    loop {
        assert!(!STOP.load(Ordering::SeqCst), "interrupted");
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// A tmpfs mounted for the run, unmounted when dropped (after the processes that use it).
pub struct Tmpfs {
    pub path: PathBuf,
}

/// The source name every soak tmpfs is mounted with (followed by `-<harness pid>`), so a run
/// that was SIGKILLed itself can be cleaned up by the next one.
const TMPFS_SOURCE: &str = "ferry-soak-queue";

impl Tmpfs {
    pub fn mount(path: &Path, bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes}"))
            .arg(format!("{TMPFS_SOURCE}-{}", std::process::id()))
            .arg(path)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "mount -t tmpfs failed (the soak needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    /// Unmounts tmpfs left behind by an earlier run that could not clean up (whose harness
    /// process is gone).
    pub fn unmount_leftovers() {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        for line in mounts.lines() {
            let mut f = line.split_whitespace();
            let Some(pid) = f
                .next()
                .and_then(|s| s.strip_prefix(TMPFS_SOURCE)?.strip_prefix('-'))
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                if let Some(target) = f.next() {
                    eprintln!("soak: unmounting a leftover tmpfs at {target}");
                    let _ = Command::new("umount").arg(target).status();
                }
            }
        }
    }

    /// Bytes used (the sum of the file sizes under it).
    pub fn used(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            let mut total = 0;
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                match e.metadata() {
                    Ok(m) if m.is_dir() => total += walk(&e.path()),
                    Ok(m) => total += m.len(),
                    Err(_) => {}
                }
            }
            total
        }
        walk(&self.path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        for _ in 0..20 {
            let ok = Command::new("umount")
                .arg(&self.path)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        eprintln!(
            "soak: {} is still busy; detaching it (umount -l)",
            self.path.display()
        );
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// How a process is started again after every SIGKILL.
pub struct Recipe {
    pub role: &'static str,
    pub config: PathBuf,
    pub log: PathBuf,
    /// libfaketime's offset file, when the process runs under it.
    pub faketime: Option<PathBuf>,
}

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

impl Recipe {
    pub fn spawn(&self) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(crate::util::FERRY);
        cmd.args([self.role, "--config"])
            .arg(&self.config)
            .env("FERRY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        if let Some(file) = &self.faketime {
            // Only the wall clock moves (an NTP step); monotonic time stays true. The offset
            // file is re-read at most once a second.
            cmd.env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME_TIMESTAMP_FILE", file)
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child = cmd.spawn().expect("ferry starts");
        Proc {
            child,
            log: self.log.clone(),
        }
    }
}

/// Checks that libfaketime is installed (Debian's `faketime` package).
pub fn faketime_available() -> bool {
    Path::new(LIBFAKETIME).exists()
}

/// Writes libfaketime's offset (seconds from the true time) atomically.
pub fn set_clock_offset(file: &Path, seconds: i64) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("{seconds:+}\n")).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

/// A counter of a process that restarts: sums what each incarnation counted.
#[derive(Default)]
pub struct Carried {
    total: f64,
    last: f64,
}

impl Carried {
    pub fn observe(&mut self, value: f64) {
        if value < self.last {
            // A new incarnation started from zero.
            self.total += value;
        } else {
            self.total += value - self.last;
        }
        self.last = value;
    }

    pub fn value(&self) -> f64 {
        self.total
    }
}

/// GETs a process's `/metrics` page (empty when it does not answer).
pub fn metrics_page(addr: SocketAddr) -> String {
    http(addr, "GET", "/metrics", &[], b"")
        .map(|r| r.body)
        .unwrap_or_default()
}

/// Waits until the aggregator answers `/health`; `false` after `timeout`.
pub fn wait_healthy(addr: SocketAddr, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if http(addr, "GET", "/health", &[], b"").is_ok_and(|r| r.status == 200) {
            return true;
        }
        pause(Duration::from_millis(50));
    }
    false
}

/// The agent + aggregator pair and where they keep things.
pub struct Stack {
    pub agent: Proc,
    pub aggregator: Proc,
    pub agent_recipe: Recipe,
    pub aggregator_recipe: Recipe,
    pub agg_addr: SocketAddr,
    /// 503s the aggregator answered, summed over its incarnations (sampled, so a lower bound).
    pub ingest_503: Carried,
    pub ingest_500: Carried,
    pub agent_kills: u32,
    pub aggregator_kills: u32,
    /// Longest time a killed aggregator took to answer `/health` again.
    pub slowest_aggregator_restart: Duration,
}

/// Everything needed to write the config file.
pub struct Settings<'a> {
    pub dir: &'a Path,
    pub agg_data: &'a Path,
    pub es_url: &'a str,
    pub label: &'a str,
    /// `true`: the soak's short intervals; `false`: the agent's defaults (load figures).
    pub soak: bool,
    pub faketime: Option<PathBuf>,
}

impl Stack {
    pub fn start(s: Settings) -> Stack {
        let agg_port = free_port();
        let agent_port = free_port();
        let agent_tuning = if s.soak {
            "poll_interval_ms = 100\nglob_interval_ms = 500\nbatch_max_age_ms = 200\nbackoff_initial_ms = 50\nbackoff_max_ms = 2000\ndocker_reconnect_max_ms = 1000\n"
        } else {
            ""
        };
        let queue = if s.soak {
            "queue_segment_bytes = 262144\n"
        } else {
            ""
        };
        let text = format!(
            r#"[aggregator]
listen = "127.0.0.1:{agg_port}"
data_dir = "{agg_data}"
token = "soak-token"
{queue}sink = {{ type = "elasticsearch", urls = ["{es}"], flush_interval_ms = 100, backoff_initial_ms = 100, backoff_max_ms = 2000 }}

[agent]
host_name = "soak-node"
data_dir = "{agent_data}"
aggregator_url = "http://127.0.0.1:{agg_port}"
token = "soak-token"
include = ["/var/lib/docker/containers/*/*-json.log"]
containers_include = ["label:ferry.soak={label}"]
metrics_listen = "127.0.0.1:{agent_port}"
stats_enabled = false
{agent_tuning}"#,
            agg_data = s.agg_data.display(),
            es = s.es_url,
            agent_data = s.dir.join("agent").display(),
            label = s.label,
        );
        let config = s.dir.join("ferry.toml");
        std::fs::write(&config, text).unwrap();
        let aggregator_recipe = Recipe {
            role: "aggregator",
            config: config.clone(),
            log: s.dir.join("aggregator.log"),
            faketime: s.faketime.clone(),
        };
        let agent_recipe = Recipe {
            role: "agent",
            config,
            log: s.dir.join("agent.log"),
            faketime: s.faketime,
        };
        let agg_addr = SocketAddr::from(([127, 0, 0, 1], agg_port));
        let aggregator = aggregator_recipe.spawn();
        assert!(
            wait_healthy(agg_addr, Duration::from_secs(30)),
            "the aggregator did not start: {}",
            tail(&aggregator_recipe.log)
        );
        let agent = agent_recipe.spawn();
        Stack {
            agent,
            aggregator,
            agent_recipe,
            aggregator_recipe,
            agg_addr,
            ingest_503: Carried::default(),
            ingest_500: Carried::default(),
            agent_kills: 0,
            aggregator_kills: 0,
            slowest_aggregator_restart: Duration::ZERO,
        }
    }

    /// Samples the aggregator's page: returns it and carries its counters.
    pub fn poll(&mut self) -> String {
        let page = metrics_page(self.agg_addr);
        if !page.is_empty() {
            self.ingest_503
                .observe(metric(&page, "ferry_ingest_requests_total{code=\"503\"}"));
            self.ingest_500
                .observe(metric(&page, "ferry_ingest_requests_total{code=\"500\"}"));
        }
        page
    }

    pub fn kill_agent(&mut self) {
        self.agent.kill();
        self.agent = self.agent_recipe.spawn();
        self.agent_kills += 1;
    }

    /// SIGKILL and restart at once; `Err` when the new one does not answer within 60 s.
    pub fn kill_aggregator(&mut self) -> Result<Duration, String> {
        self.poll();
        self.aggregator.kill();
        let started = Instant::now();
        self.aggregator = self.aggregator_recipe.spawn();
        self.aggregator_kills += 1;
        if !wait_healthy(self.agg_addr, Duration::from_secs(60)) {
            return Err(format!(
                "the aggregator did not come back after SIGKILL #{}: {}",
                self.aggregator_kills,
                tail(&self.aggregator_recipe.log)
            ));
        }
        let took = started.elapsed();
        self.slowest_aggregator_restart = self.slowest_aggregator_restart.max(took);
        Ok(took)
    }

    /// Lines of a log (both processes append over their restarts) containing all of `words`.
    pub fn count_log(log: &Path, words: &[&str]) -> usize {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(strip_ansi)
            .filter(|l| words.iter().all(|w| l.contains(w)))
            .count()
    }
}

/// A log line without its terminal colour codes (`ESC [ … m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The last lines of a log, for an error message.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

pub use crate::util::process_usage as usage;
