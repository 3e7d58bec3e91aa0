//! The Elasticsearch test double: an in-repo HTTP server that answers like Elasticsearch where
//! ferry's sink talks to it, following `shared/ELASTICSEARCH.md` to the letter. For ferry's tests
//! and benchmarks only; it is not a search engine and stores nothing on disk.
//!
//! It serves `GET /` (with `X-Elastic-Product: Elasticsearch` on every response), index templates,
//! ILM policies and data streams, and `_bulk` with the request rules (final newline, content types
//! with 406, 413 with an empty body, gzip bodies, whole-request 400 shapes, `filter_path`), the
//! data-stream rules (create only, `@timestamp` required, backing index names) and dynamic-mapping
//! conflicts between a leaf and an object at the same path (unless a `flattened` field of the
//! matching template covers it). Outcomes can be scripted: seeded rates of item-level 429s and
//! mapping 400s, explicit per-item and whole-request statuses, a slow mode, and outages (refused
//! connections or 503s), switched through a small control API on a second port. It records what
//! it indexed (every id and how many times it was created) so tests count exactly-once.
//!
//! Use it in-process with [`start`] or as the `ferry-es-double` binary (see `main.rs`).
#![forbid(unsafe_code)]

mod bulk;
mod control;
mod server;
mod store;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use store::{DocRecord, Stats};

/// How the double starts; everything in [`Behaviour`] can also be changed while it runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Address of the Elasticsearch API (port 0: any free port).
    pub listen: SocketAddr,
    /// Address of the control API (port 0: any free port).
    pub control_listen: SocketAddr,
    /// Seed of the item-level outcome draws (the same seed and requests give the same answers).
    pub seed: u64,
    /// `version.number` of `GET /`.
    pub version: String,
    /// `elasticsearch` (default) or `opensearch` (then `GET /` says `"distribution":"opensearch"`
    /// and no `X-Elastic-Product` header is sent, as OpenSearch does).
    pub distribution: String,
    /// Keep every created document's source (for content checks; costs memory).
    pub keep_sources: bool,
    /// Check dynamic mappings for leaf/object conflicts (costs a full parse of every document).
    pub mapping_check: bool,
    /// `http.max_content_length`: larger bodies (uncompressed) get 413.
    pub max_content_length: usize,
    /// Initial behaviour.
    pub behaviour: Behaviour,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            control_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: 1,
            version: "9.1.0".into(),
            distribution: "elasticsearch".into(),
            keep_sources: false,
            mapping_check: true,
            max_content_length: 100 << 20,
            behaviour: Behaviour::default(),
        }
    }
}

/// What the double does to requests; changed on command (`POST /behaviour` on the control port).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// Share of bulk items answered 429 `es_rejected_execution_exception` (drawn per attempt).
    pub item_429_rate: f64,
    /// Share of documents answered 400 `mapper_parsing_exception` (decided per `_id`, so a retry
    /// of the same document fails the same way, as a real mapping error does).
    pub mapping_error_rate: f64,
    /// Delay before every Elasticsearch API answer (slow mode).
    pub latency_ms: u64,
    /// An outage, or none.
    pub outage: Outage,
}

/// An outage of the Elasticsearch API (the control API stays up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outage {
    #[default]
    None,
    /// The listener is closed and open connections are cut: clients see connection errors.
    Refuse,
    /// Every request is answered 503 `unavailable_shards_exception`-style, as a cluster that lost
    /// its master does.
    Unavailable,
}

/// Statuses to apply to the next items or requests, in order (`POST /script`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Script {
    /// Per-item statuses for the next bulk items: 201 (process normally), 409, 429, 503, 400.
    pub items: Vec<u16>,
    /// Whole-request statuses for the next bulk requests: 429, 413, 503 (or 200: normal).
    pub requests: Vec<u16>,
}

/// The running double. Dropping it stops both servers.
#[derive(Debug)]
pub struct DoubleHandle {
    addr: SocketAddr,
    control_addr: SocketAddr,
    pub(crate) shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

/// State shared by the servers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) options: Options,
    pub(crate) behaviour: watch::Sender<Behaviour>,
    pub(crate) script: Mutex<Script>,
    pub(crate) store: Mutex<store::Store>,
    pub(crate) rng: Mutex<fastrand::Rng>,
    /// Bulk requests by the status they were answered with (200, 400, 406, 413, 429, 503, other).
    pub(crate) requests: [AtomicU64; 7],
    pub(crate) bulk_bytes: AtomicU64,
}

impl Shared {
    pub(crate) fn store(&self) -> MutexGuard<'_, store::Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn count_request(&self, status: u16) {
        let i = match status {
            200 => 0,
            400 => 1,
            406 => 2,
            413 => 3,
            429 => 4,
            503 => 5,
            _ => 6,
        };
        self.requests[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Starts the double on the current tokio runtime.
pub async fn start(options: Options) -> std::io::Result<DoubleHandle> {
    let (stop, stopped) = watch::channel(false);
    let (behaviour, _) = watch::channel(options.behaviour.clone());
    let shared = Arc::new(Shared {
        rng: Mutex::new(fastrand::Rng::with_seed(options.seed)),
        store: Mutex::new(store::Store::new(options.keep_sources)),
        script: Mutex::new(Script::default()),
        behaviour,
        requests: Default::default(),
        bulk_bytes: AtomicU64::new(0),
        options,
    });
    let es_listener = server::bind(shared.options.listen)?;
    let addr = es_listener.local_addr()?;
    let control_listener = server::bind(shared.options.control_listen)?;
    let control_addr = control_listener.local_addr()?;
    tokio::spawn(server::serve_es(
        es_listener,
        addr,
        Arc::clone(&shared),
        stopped.clone(),
    ));
    tokio::spawn(control::serve(
        control_listener,
        Arc::clone(&shared),
        stopped,
    ));
    Ok(DoubleHandle {
        addr,
        control_addr,
        shared,
        stop,
    })
}

impl DoubleHandle {
    /// The Elasticsearch API's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The control API's address.
    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    /// Changes what the double does to the next requests.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.shared.behaviour.send_replace(behaviour);
    }

    /// The current behaviour.
    pub fn behaviour(&self) -> Behaviour {
        self.shared.behaviour.borrow().clone()
    }

    /// Appends statuses for the next items and requests.
    pub fn script(&self, script: Script) {
        let mut s = self.shared.script.lock().unwrap_or_else(|p| p.into_inner());
        s.items.extend(script.items);
        s.requests.extend(script.requests);
    }

    /// Counters and what was created.
    pub fn stats(&self) -> Stats {
        control::stats(&self.shared)
    }

    /// Every created document (index, id, creates, and the source when kept).
    pub fn docs(&self) -> Vec<DocRecord> {
        self.shared.store().docs()
    }

    /// Stops both servers (also done on drop).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for DoubleHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long the double sleeps before answering, read from the behaviour.
pub(crate) fn latency(shared: &Shared) -> Duration {
    Duration::from_millis(shared.behaviour.borrow().latency_ms)
}
