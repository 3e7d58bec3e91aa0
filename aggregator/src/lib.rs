//! ferry's aggregator: receives batches from agents over HTTP, makes them durable in an on-disk
//! queue before acknowledging them, and drains the queue in order into a sink (the local
//! per-day NDJSON store, or a discarding sink for benchmarks) exactly once per record.
//!
//! The flow is `ingest (auth, limits, decode) → durable queue (fsync, then 200) → sink thread →
//! commit → queue trim`; `/metrics` and `/health` report on it, and [`search`] reads the local
//! store. The crate owns its files under `data_dir` and nothing else: it parses no log lines
//! (the agent did) and knows nothing of the CLI.
#![forbid(unsafe_code)]

mod config;
mod containers;
mod local;
mod metrics;
mod queue;
mod search;
mod server;
mod sink;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

pub use config::{AggregatorConfig, ConfigError, SinkConfig};
pub use local::StoreError;
pub use queue::QueueError;
pub use search::{parse_time_bound, search, SearchError, SearchQuery, TimeBoundError};

use metrics::Metrics;
use queue::{Position, Queue};
use sink::Sink;

/// How long [`AggregatorHandle::shutdown`] lets the sink drain the queue.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// Why the aggregator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the queue: {0}")]
    Queue(#[from] QueueError),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot start the sink thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// A snapshot of the aggregator's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AggregatorStatus {
    /// Log records accepted into the queue.
    pub records_received: u64,
    /// Decompressed batch bytes accepted into the queue.
    pub bytes_received: u64,
    /// Log records queued and not yet committed by the sink.
    pub queue_records: u64,
    /// Bytes queued and not yet committed by the sink.
    pub queue_bytes: u64,
    /// Log records the sink stored (or, for the discard sink, counted).
    pub records_stored: u64,
    /// Log records the sink recognised as replays and skipped.
    pub duplicates_suppressed: u64,
    /// Refused requests and sink failures.
    pub errors: u64,
}

/// A running aggregator. Dropping it stops accepting and stops the sink without waiting;
/// [`AggregatorHandle::shutdown`] stops it in order.
#[derive(Debug)]
pub struct AggregatorHandle {
    local_addr: SocketAddr,
    metrics: Arc<Metrics>,
    queue: Queue,
    stop: watch::Sender<bool>,
    server: Option<tokio::task::JoinHandle<()>>,
    sink: Option<JoinHandle<()>>,
    sink_alive: Arc<AtomicBool>,
}

/// Starts the aggregator: binds the listener, opens (and recovers) the store and the queue,
/// starts the sink thread and serves HTTP. Call inside a multi-thread tokio runtime.
pub async fn start(config: AggregatorConfig) -> Result<AggregatorHandle, StartError> {
    config.validate()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let metrics = Arc::new(Metrics::with_stats_grace(Duration::from_secs(
        config.stats_grace_seconds,
    )));
    let opened = {
        let config = config.clone();
        let metrics = Arc::clone(&metrics);
        tokio::task::spawn_blocking(move || open_storage(&config, metrics))
            .await
            .map_err(|e| StartError::Thread(std::io::Error::other(e.to_string())))??
    };
    let (sink, queue, start) = opened;
    let alive = Arc::new(AtomicBool::new(true));
    let sink_thread = {
        let queue = queue.clone();
        let reader = queue.reader(start);
        let metrics = Arc::clone(&metrics);
        let alive = Arc::clone(&alive);
        std::thread::Builder::new()
            .name("ferry-sink".into())
            .spawn(move || sink::run(sink, queue, reader, metrics, alive))
            .map_err(StartError::Thread)?
    };
    let ingest = Arc::new(server::Ingest {
        token: config.token.clone(),
        max_body_bytes: config.max_body_bytes,
        max_decompressed_bytes: config.max_decompressed_bytes,
        retry_after_seconds: config.retry_after_seconds,
        queue: queue.clone(),
        metrics: Arc::clone(&metrics),
        sink_alive: Arc::clone(&alive),
    });
    let (stop, stopped) = watch::channel(false);
    let server = tokio::spawn(server::serve(listener, ingest, stopped));
    info!(
        addr = %local_addr,
        data_dir = %config.data_dir.display(),
        auth = config.token.is_some(),
        "Aggregator listening"
    );
    Ok(AggregatorHandle {
        local_addr,
        metrics,
        queue,
        stop,
        server: Some(server),
        sink: Some(sink_thread),
        sink_alive: alive,
    })
}

/// Opens the sink's store and the queue positioned where the sink last committed.
fn open_storage(
    config: &AggregatorConfig,
    metrics: Arc<Metrics>,
) -> Result<(Sink, Queue, Position), StartError> {
    let sink = match config.sink {
        SinkConfig::Local {
            retention_days,
            max_sources,
        } => Sink::Local(local::LocalStore::open(
            &store_dir(&config.data_dir),
            retention_days,
            max_sources,
            chrono::Utc::now(),
        )?),
        SinkConfig::Discard => Sink::Discard,
    };
    let committed = match &sink {
        Sink::Local(store) => store.queue_position(),
        Sink::Discard => Position::default(),
    };
    let (queue, start) = Queue::open(
        &config.data_dir.join("queue"),
        config.queue_segment_bytes,
        config.queue_max_bytes,
        committed,
        metrics,
    )?;
    Ok((sink, queue, start))
}

/// The local store without the server, for `benches/store_commit.rs` only: not an interface.
#[doc(hidden)]
pub mod bench_support {
    pub use crate::local::bench::Store;
}

/// Where the local sink keeps its day files (`<data_dir>/store`), for `ferry search`.
pub fn store_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("store")
}

impl AggregatorHandle {
    /// The address the server listens on (the real port when the configuration asked for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The counters, read from atomics (cheap).
    pub fn status(&self) -> AggregatorStatus {
        let m = &self.metrics;
        AggregatorStatus {
            records_received: m.ingest_records.load(Ordering::Relaxed),
            bytes_received: m.ingest_bytes.load(Ordering::Relaxed),
            queue_records: m.queue_records.load(Ordering::Relaxed),
            queue_bytes: m.queue_bytes.load(Ordering::Relaxed),
            records_stored: m.sink_records.load(Ordering::Relaxed),
            duplicates_suppressed: m.sink_duplicates.load(Ordering::Relaxed),
            errors: m.errors(),
        }
    }

    /// The `/metrics` page, as served.
    pub fn render_metrics(&self) -> String {
        self.metrics.render()
    }

    /// Stops accepting, lets requests in flight finish, lets the sink drain the queue (up to a
    /// few seconds) and commit, then returns. What is left stays queued for the next start.
    /// Returns the final status (records stored, anything left queued for the next start).
    pub async fn shutdown(self) -> AggregatorStatus {
        self.shutdown_within(SHUTDOWN_DRAIN).await
    }

    /// [`Self::shutdown`] with the sink's drain time given.
    pub(crate) async fn shutdown_within(mut self, drain: Duration) -> AggregatorStatus {
        if !self.sink_alive.load(Ordering::SeqCst) {
            warn!("Sink thread had stopped before shutdown");
        }
        let _ = self.stop.send(true);
        if let Some(server) = self.server.take() {
            if let Err(e) = server.await {
                warn!(error = %e, "Server task failed");
            }
        }
        self.queue.close(Instant::now() + drain);
        if let Some(sink) = self.sink.take() {
            let joined = tokio::task::spawn_blocking(move || sink.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                warn!("Sink thread panicked");
            }
        }
        let status = self.status();
        info!(
            queue_records = status.queue_records,
            records_stored = status.records_stored,
            "Aggregator stopped"
        );
        status
    }
}

impl Drop for AggregatorHandle {
    fn drop(&mut self) {
        if self.server.is_some() || self.sink.is_some() {
            let _ = self.stop.send(true);
            self.queue.close(Instant::now());
        }
    }
}
