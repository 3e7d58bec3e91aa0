//! Helpers for the end-to-end tests: real `ferry` processes, config files in temp dirs, a tiny
//! HTTP client, and readers for the local store.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// A free port on 127.0.0.1 (bound, then released, so a restarted process can take it again).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` until it returns `Some` or `timeout` passes; panics with `what` on time-out.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `ferry` process that is killed when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(args: &[&str], log: PathBuf) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(FERRY)
            .args(args)
            .env("FERRY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("ferry binary starts");
        Proc { child, log }
    }

    /// SIGKILL: no chance to flush or checkpoint.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY-free: use the `kill` command rather than libc.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "process did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One test's world: a temp dir with an aggregator and an agent config.
pub struct World {
    pub dir: tempfile::TempDir,
    pub agg_port: u16,
    pub token: String,
    /// The agent's `include` globs (default: Docker, CRI and plain files under `logs/`).
    pub include: Vec<String>,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let include = ["containers/*/*-json.log", "pods/*/*/*.log", "plain/*.log"]
            .iter()
            .map(|g| format!("{}/{g}", logs.display()))
            .collect();
        World {
            dir,
            agg_port: free_port(),
            token: "s3cret-token".into(),
            include,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn agg_data(&self) -> PathBuf {
        self.path("aggregator")
    }

    pub fn agg_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.agg_port))
    }

    /// Writes the config file and returns its path. `agent_extra` is appended to `[agent]`.
    pub fn config(&self, agent_extra: &str, aggregator_extra: &str) -> PathBuf {
        let text = format!(
            r#"[aggregator]
listen = "127.0.0.1:{port}"
data_dir = "{agg}"
token = "{token}"
{aggregator_extra}

[agent]
host_name = "test-node"
data_dir = "{agent}"
aggregator_url = "http://127.0.0.1:{port}"
token = "{token}"
include = {include:?}
metrics_listen = "127.0.0.1:0"
poll_interval_ms = 50
glob_interval_ms = 200
rotate_wait_ms = 1000
batch_max_age_ms = 200
backoff_initial_ms = 50
backoff_max_ms = 500
# These tests carry files only: no Docker API followers or stats from other containers on the machine.
docker_enabled = false
stats_enabled = false
{agent_extra}
"#,
            port = self.agg_port,
            agg = self.agg_data().display(),
            agent = self.path("agent").display(),
            token = self.token,
            include = self.include,
        );
        let path = self.path("ferry.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn start_aggregator(&self, config: &Path) -> Proc {
        let p = Proc::spawn(
            &["aggregator", "--config", config.to_str().unwrap()],
            self.path("aggregator.log"),
        );
        let addr = self.agg_addr();
        wait_for("aggregator /health", Duration::from_secs(20), || {
            http(addr, "GET", "/health", &[], b"")
                .ok()
                .filter(|r| r.status == 200)
        });
        p
    }

    pub fn start_agent(&self, config: &Path) -> Proc {
        Proc::spawn(
            &["agent", "--config", config.to_str().unwrap()],
            self.path("agent.log"),
        )
    }

    /// Every record in the local store, in store order.
    pub fn stored(&self) -> Vec<Value> {
        read_store(&self.agg_data().join("store"))
    }
}

/// All records of the day files under `store`, in file order then line order.
pub fn read_store(store: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(store)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "ndjson"));
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read(&f).unwrap();
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            out.push(serde_json::from_slice(line).unwrap_or_else(|e| {
                panic!(
                    "{}: unreadable stored line ({e}): {}",
                    f.display(),
                    String::from_utf8_lossy(line)
                )
            }));
        }
    }
    out
}

pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// A minimal HTTP/1.1 request over a fresh connection.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    // The server may answer early (e.g. 413) and close; a failed body write is not an error here.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {head:?}")))?;
    Ok(Response {
        status,
        headers: head.to_string(),
        body: body.to_string(),
    })
}

/// Value of a metric line (`name{labels} value`) in a Prometheus text page; sums matching lines.
pub fn metric(page: &str, name_and_labels: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with([' ', '{'])
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The Elasticsearch test double, served in this process on its own runtime (the processes
/// under test reach it over 127.0.0.1 like a real cluster).
pub struct EsDouble {
    pub handle: ferry_es_double::DoubleHandle,
    // Dropped after the handle (which stops the servers).
    _runtime: tokio::runtime::Runtime,
}

impl EsDouble {
    pub fn start(options: ferry_es_double::Options) -> EsDouble {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("es-double")
            // Keep blocking threads, so their CPU time stays countable.
            .thread_keep_alive(Duration::from_secs(24 * 3600))
            .enable_all()
            .build()
            .unwrap();
        let handle = runtime
            .block_on(ferry_es_double::start(options))
            .expect("the double listens");
        EsDouble {
            handle,
            _runtime: runtime,
        }
    }

    /// CPU seconds (user + system) of the double's threads so far (the benchmark harness
    /// reports it).
    #[allow(dead_code)]
    pub fn cpu_seconds(&self) -> f64 {
        let ticks = clock_ticks();
        let mut total = 0.0;
        for task in std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
        {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() != "es-double" {
                continue;
            }
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, r)| r.split_whitespace().collect())
                .unwrap_or_default();
            for i in [11, 12] {
                total += fields
                    .get(i)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
            }
        }
        total / ticks
    }
}

/// Clock ticks per second (`getconf CLK_TCK`), asked once: forking a large process is not free.
#[allow(dead_code)]
pub fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// (user + system CPU seconds, RSS now, peak RSS) of a live process, from /proc (zeros for what
/// cannot be read: the process is gone).
#[allow(dead_code)]
pub fn process_usage(pid: u32) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (
        ticks / clock_ticks(),
        kib("VmRSS:") * 1024,
        kib("VmHWM:") * 1024,
    )
}

/// Runs the docker CLI; panics with its stderr when it fails.
#[allow(dead_code)]
pub fn docker_cli(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI runs");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
