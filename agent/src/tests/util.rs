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
    /// The batch format version.
    pub version: u32,
    /// The request's `Content-Encoding`.
    pub encoding: Compression,
    pub records: Vec<LogRecord>,
}

#[derive(Default)]
pub struct State {
    pub requests: Mutex<Vec<Seen>>,
    /// Answers used before the default 200: (status, Retry-After seconds).
    pub script: Mutex<VecDeque<(u16, Option<u64>)>>,
    /// Answer 413 to batches with more records than this.
    pub max_records: Mutex<Option<usize>>,
    /// Answer like an aggregator that predates batch format version 2.
    pub reads_only_version_1: std::sync::atomic::AtomicBool,
    /// Answer like an aggregator that predates lz4 compression.
    pub reads_no_lz4: std::sync::atomic::AtomicBool,
    /// While set, every batch is answered 503 (no `Retry-After`): backpressure.
    pub held: std::sync::atomic::AtomicBool,
    /// Accepted records, every copy, in the order they were accepted: tests assert exactly-once
    /// and order on these, before any deduplication.
    pub accepted_raw: Mutex<Vec<LogRecord>>,
}

/// Backpressure from a [`TestAggregator`] until dropped.
pub struct Held(Arc<State>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0
            .held
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
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

    /// Every accepted record, every copy (no deduplication: a replay shows up twice).
    pub fn stored(&self) -> Vec<LogRecord> {
        self.state.accepted_raw.lock().unwrap().clone()
    }

    /// Accepted records with replays dropped by a per-fingerprint high-water mark, as the
    /// aggregator's store does: only for sources that replay by design (the logs API after a
    /// restart).
    pub fn deduplicated(&self) -> Vec<LogRecord> {
        let mut hwm: HashMap<String, u64> = HashMap::new();
        self.stored()
            .into_iter()
            .filter(|r| {
                let mark = hwm.get(&r.log.file.fingerprint).copied();
                let new = mark.is_none_or(|m| r.log.offset > m);
                if new {
                    hwm.insert(r.log.file.fingerprint.clone(), r.log.offset);
                }
                new
            })
            .collect()
    }

    pub fn stored_messages(&self) -> Vec<String> {
        self.stored().into_iter().map(|r| r.message).collect()
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Answers 503 to every batch until the returned guard is dropped.
    pub fn hold(&self) -> Held {
        self.state
            .held
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Held(self.state.clone())
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
    if compression == Compression::Lz4 && st.reads_no_lz4.load(std::sync::atomic::Ordering::Relaxed)
    {
        // Word for word what such an aggregator answers.
        let text =
            r#"{"error":"unsupported Content-Encoding \"lz4\" (expected zstd, gzip or identity)"}"#;
        st.requests.lock().unwrap().push(Seen {
            at: Instant::now(),
            status: 415,
            auth,
            version: 0,
            encoding: compression,
            records: Vec::new(),
        });
        let mut resp = Response::new(Full::new(Bytes::from(text)));
        *resp.status_mut() = hyper::StatusCode::UNSUPPORTED_MEDIA_TYPE;
        return resp;
    }
    let batch = decode_batch(&body, compression, 64 << 20).expect("agent sent a valid batch");
    let records: Vec<LogRecord> = batch
        .logs
        .iter()
        .map(|l| serde_json::from_slice(&batch.record(l)).unwrap())
        .collect();
    let version = batch.header.ferry;
    if version != 1
        && st
            .reads_only_version_1
            .load(std::sync::atomic::Ordering::Relaxed)
    {
        // Word for word what such an aggregator answers.
        let text = format!(
            r#"{{"error":"line 1: batch format version {version} is not supported (this build reads version 1)"}}"#
        );
        st.requests.lock().unwrap().push(Seen {
            at: Instant::now(),
            status: 400,
            auth,
            version,
            encoding: compression,
            records,
        });
        let mut resp = Response::new(Full::new(Bytes::from(text)));
        *resp.status_mut() = hyper::StatusCode::BAD_REQUEST;
        return resp;
    }
    let scripted = st.script.lock().unwrap().pop_front();
    let too_many = st
        .max_records
        .lock()
        .unwrap()
        .is_some_and(|m| records.len() > m);
    let held = st.held.load(std::sync::atomic::Ordering::SeqCst);
    let (status, retry_after) = match scripted {
        _ if held => (503, None),
        Some(s) => s,
        None if too_many => (413, None),
        None => (200, None),
    };
    if status == 200 {
        st.accepted_raw
            .lock()
            .unwrap()
            .extend(records.iter().cloned());
    }
    st.requests.lock().unwrap().push(Seen {
        at: Instant::now(),
        status,
        auth,
        version,
        encoding: compression,
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
