//! Test helpers: an aggregator double with scripted answers, config builders, bounded waits.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_wire::{decode_batch, Compression, LogRecord};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::AgentConfig;

/// One request the double saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub status: u16,
    pub auth: Option<String>,
    pub records: Vec<LogRecord>,
}

#[derive(Default)]
pub struct State {
    pub requests: Mutex<Vec<Seen>>,
    /// Answers used before the default 200: (status, Retry-After seconds).
    pub script: Mutex<VecDeque<(u16, Option<u64>)>>,
    /// Answer 413 to batches with more records than this.
    pub max_records: Mutex<Option<usize>>,
    /// Accepted records, replays dropped by a per-fingerprint high-water mark (like the aggregator).
    pub stored: Mutex<Vec<LogRecord>>,
    /// Accepted records, every copy (to count replays).
    pub accepted_raw: Mutex<Vec<LogRecord>>,
    hwm: Mutex<HashMap<String, u64>>,
}

/// An aggregator double on 127.0.0.1:0.
pub struct TestAggregator {
    pub addr: SocketAddr,
    pub state: Arc<State>,
}

impl TestAggregator {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let st = st.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(req, &st).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TestAggregator { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stored(&self) -> Vec<LogRecord> {
        self.state.stored.lock().unwrap().clone()
    }

    pub fn stored_messages(&self) -> Vec<String> {
        self.stored().into_iter().map(|r| r.message).collect()
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn script(&self, answers: &[(u16, Option<u64>)]) {
        self.state
            .script
            .lock()
            .unwrap()
            .extend(answers.iter().copied());
    }
}

async fn handle(req: Request<Incoming>, st: &State) -> Response<Full<Bytes>> {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let encoding = req
        .headers()
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let compression = Compression::from_content_encoding(encoding.as_deref()).unwrap();
    let batch = decode_batch(&body, compression, 64 << 20).expect("agent sent a valid batch");
    let records: Vec<LogRecord> = batch
        .logs
        .iter()
        .map(|l| serde_json::from_slice(batch.log_line(l)).unwrap())
        .collect();
    let scripted = st.script.lock().unwrap().pop_front();
    let too_many = st
        .max_records
        .lock()
        .unwrap()
        .is_some_and(|m| records.len() > m);
    let (status, retry_after) = match scripted {
        Some(s) => s,
        None if too_many => (413, None),
        None => (200, None),
    };
    if status == 200 {
        let mut hwm = st.hwm.lock().unwrap();
        let mut stored = st.stored.lock().unwrap();
        for r in &records {
            let mark = hwm.get(&r.log.file.fingerprint).copied();
            if mark.is_none_or(|m| r.log.offset > m) {
                hwm.insert(r.log.file.fingerprint.clone(), r.log.offset);
                stored.push(r.clone());
            }
        }
        st.accepted_raw
            .lock()
            .unwrap()
            .extend(records.iter().cloned());
    }
    st.requests.lock().unwrap().push(Seen {
        at: Instant::now(),
        status,
        auth,
        records,
    });
    let mut resp = Response::new(Full::new(Bytes::from(format!("answer {status}"))));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    if let Some(s) = retry_after {
        resp.headers_mut()
            .insert("retry-after", s.to_string().parse().unwrap());
    }
    resp
}

/// A config with short intervals for tests, tailing `<dir>/logs/*.log`.
pub fn config(dir: &Path, url: &str) -> AgentConfig {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    AgentConfig {
        host_name: "test-node".into(),
        data_dir: dir.join("data"),
        aggregator_url: url.to_string(),
        include: vec![format!("{}/logs/*.log", dir.display())],
        poll_interval_ms: 20,
        glob_interval_ms: 50,
        rotate_wait_ms: 200,
        batch_max_age_ms: 30,
        backoff_initial_ms: 10,
        backoff_max_ms: 200,
        shutdown_timeout_ms: 2000,
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        // Tests that want the Docker engine or stats turn these on (see docker.rs, stats/).
        docker_enabled: false,
        stats_enabled: false,
        ..AgentConfig::default()
    }
}

/// Waits (bounded) until `cond` holds; panics with `what` after 15 s.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (bounded) until the async `cond` holds.
#[allow(dead_code)]
pub async fn wait_until_async<F: Future<Output = bool>>(what: &str, mut cond: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The checkpoint file's sources (fingerprint → offset).
pub fn checkpoint_offsets(dir: &Path) -> HashMap<String, u64> {
    let text = match std::fs::read(dir.join("data/checkpoints.json")) {
        Ok(t) => t,
        Err(_) => return HashMap::new(),
    };
    let doc: serde_json::Value = serde_json::from_slice(&text).unwrap();
    doc["sources"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v["offset"].as_u64().unwrap()))
        .collect()
}

/// The fingerprints of the checkpoint's finished (rotated, read to the end, still on disk) sources.
pub fn checkpoint_finished(dir: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read(dir.join("data/checkpoints.json")) else {
        return Vec::new();
    };
    let doc: serde_json::Value = serde_json::from_slice(&text).unwrap();
    doc["sources"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v["finished"] == serde_json::Value::Bool(true))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Appends `lines` (each + `\n`) to `path`.
pub fn append(path: &Path, lines: &[String]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

pub fn lines(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix} line {i}")).collect()
}
