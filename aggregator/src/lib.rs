//! ferry's aggregator: receives batches from agents over HTTP, makes them durable in an on-disk
//! queue before acknowledging them, and drains the queue in order into one or more sinks (the
//! local per-day NDJSON store, Elasticsearch, or a discarding sink for benchmarks), each record
//! once per sink.
//!
//! The flow is `ingest (auth, limits, decode) → durable queue (fsync, then 200) → one reader per
//! sink → sink → commit (per sink) → queue trim (once every sink passed)`; `/metrics` and
//! `/health` report on it, and [`search`] reads the local store. The crate owns its files under
//! `data_dir` and nothing else: it parses no log lines (the agent did) and knows nothing of the
//! CLI.
#![forbid(unsafe_code)]

mod alerts;
mod config;
mod containers;
mod elasticsearch;
#[doc(hidden)]
pub mod fuzz_support;
mod local;
mod metrics;
mod queue;
mod search;
mod server;
mod sink;
mod sink_metrics;
#[cfg(test)]
mod tests;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

pub use alerts::{
    check_rules, AlertsConfig, AlertsError, ReceiverConfig, ReceiverKind, RouteConfig, RuleError,
};
pub use config::{AggregatorConfig, ConfigError, SinkConfig};
pub use elasticsearch::{ElasticsearchConfig, EsStartError, RequestCompression};
pub use local::StoreError;
pub use queue::QueueError;
pub use search::{parse_time_bound, search, SearchError, SearchQuery, TimeBoundError};
pub use tls::{TlsConfig, TlsError};

use elasticsearch::EsSink;
use metrics::Metrics;
use queue::{Position, Queue};
use sink::Sink;
use sink_metrics::{ItemResult, SinkMetrics};

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
    #[error("cannot start an Elasticsearch sink: {0}")]
    Elasticsearch(#[from] EsStartError),
    #[error("cannot start the alert engine: {0}")]
    Alerts(#[from] AlertsError),
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] TlsError),
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
    /// Log records Elasticsearch sinks indexed (created), over every such sink.
    pub records_indexed: u64,
    /// Log records Elasticsearch sinks dead-lettered, over every such sink.
    pub records_dead_lettered: u64,
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
    alerts: Option<Arc<alerts::Engine>>,
    sinks: Vec<JoinHandle<()>>,
    ingest: Arc<server::Ingest>,
    config: AggregatorConfig,
}

/// Starts the aggregator: binds the listener, checks Elasticsearch clusters, opens (and
/// recovers) the store and the queue, starts one thread per sink and serves HTTP. Call inside a
/// multi-thread tokio runtime.
pub async fn start(config: AggregatorConfig) -> Result<AggregatorHandle, StartError> {
    config.validate()?;
    let tokens = config.read_tokens().map_err(|problems| {
        StartError::Config(problems.into_iter().next().unwrap_or_else(|| ConfigError {
            field: "token".into(),
            value: String::new(),
            reason: "unreadable".into(),
        }))
    })?;
    let tls = match &config.tls {
        Some(tls) => Some(Arc::new(tls::Tls::open(tls)?)),
        None => None,
    };
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
    if let Some(tls) = &tls {
        metrics.set_tls(Arc::clone(tls));
    }
    let sink_configs = config.sink_list();
    let mut bootstrapped = Vec::new();
    for sink in &sink_configs {
        if let SinkConfig::Elasticsearch(es) = sink {
            bootstrapped.push(elasticsearch::startup_check(es).await?);
        }
    }
    let opened = {
        let config = config.clone();
        let metrics = Arc::clone(&metrics);
        tokio::task::spawn_blocking(move || {
            open_storage(&config, &sink_configs, bootstrapped, metrics)
        })
        .await
        .map_err(|e| StartError::Thread(std::io::Error::other(e.to_string())))??
    };
    let (opened, queue) = opened;
    let mut sink_metrics = Vec::new();
    let mut threads = Vec::new();
    for (sink, start) in opened {
        let reader = queue.reader(start);
        let sm = Arc::new(SinkMetrics::new(
            sink.name(),
            matches!(sink, Opened::Elasticsearch(..)),
        ));
        sm.attach(queue.downgrade(), reader.consumer());
        sink_metrics.push(Arc::clone(&sm));
        let spawned = match sink {
            Opened::Store(sink) => {
                let queue = queue.clone();
                let metrics = Arc::clone(&metrics);
                let alive = Arc::clone(&sm.alive);
                std::thread::Builder::new()
                    .name("ferry-sink".into())
                    .spawn(move || sink::run(sink, queue, reader, metrics, alive))
            }
            Opened::Elasticsearch(es) => es.spawn(queue.clone(), reader, Arc::clone(&metrics), sm),
        };
        match spawned {
            Ok(thread) => threads.push(thread),
            Err(e) => {
                queue.close(Instant::now());
                return Err(StartError::Thread(e));
            }
        }
    }
    metrics.set_sinks(sink_metrics);
    let engine = match &config.alerts {
        Some(alerts) => {
            let opened =
                alerts::Engine::open(alerts, &config.data_dir, local_addr, Arc::clone(&metrics));
            match opened {
                Ok(engine) => Some(Arc::new(engine)),
                Err(e) => {
                    queue.close(Instant::now());
                    return Err(e.into());
                }
            }
        }
        None => None,
    };
    let auth = tokens.len();
    let ingest = Arc::new(server::Ingest {
        tokens: std::sync::RwLock::new(Arc::new(server::Tokens::new(&tokens))),
        tls: tls.clone(),
        max_body_bytes: config.max_body_bytes,
        max_decompressed_bytes: config.max_decompressed_bytes,
        retry_after_seconds: config.retry_after_seconds,
        queue: queue.clone(),
        metrics: Arc::clone(&metrics),
        alerts: engine.clone(),
    });
    let (stop, stopped) = watch::channel(false);
    if let Some(engine) = &engine {
        tokio::spawn(Arc::clone(engine).run(stopped.clone()));
    }
    if let Some(tls) = &tls {
        tokio::spawn(Arc::clone(tls).watch(stopped.clone()));
    }
    tokio::spawn(reload_on_hangup(
        Arc::clone(&ingest),
        config.clone(),
        stopped.clone(),
    ));
    let server = tokio::spawn(server::serve(listener, Arc::clone(&ingest), stopped));
    info!(
        addr = %local_addr,
        data_dir = %config.data_dir.display(),
        tokens = auth,
        tls = tls.is_some(),
        mtls = config.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some()),
        sinks = threads.len(),
        "Aggregator listening"
    );
    Ok(AggregatorHandle {
        local_addr,
        metrics,
        queue,
        stop,
        server: Some(server),
        alerts: engine,
        sinks: threads,
        ingest,
        config,
    })
}

/// On SIGHUP, reads the tokens and the TLS files again (the alert engine reloads its rules on
/// its own), until shutdown.
async fn reload_on_hangup(
    ingest: Arc<server::Ingest>,
    config: AggregatorConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        warn!("Cannot listen for SIGHUP; tokens and certificates are reloaded only when their files change");
        return;
    };
    let stop = async move {
        // The guard `wait_for` returns is not Send: drop it before any further await.
        let _ = shutdown.wait_for(|&stop| stop).await.map(drop);
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                let (ingest, config) = (Arc::clone(&ingest), config.clone());
                let _ = tokio::task::spawn_blocking(move || reload_credentials(&ingest, &config)).await;
            }
            () = &mut stop => return,
        }
    }
}

/// Reads the token sources and the TLS files again; what does not read keeps what is in use
/// (and a token set that would become empty is refused: that would switch authentication off).
/// Returns every problem.
fn reload_credentials(ingest: &server::Ingest, config: &AggregatorConfig) -> Vec<String> {
    let mut problems = Vec::new();
    match config.read_tokens() {
        Ok(tokens) if tokens.is_empty() && !ingest.tokens_in_use().is_empty() => {
            warn!("The token sources hold no token now; keeping the tokens in use (remove the token settings and restart to switch authentication off)");
            problems.push("the token sources hold no token".to_string());
        }
        Ok(tokens) => {
            *ingest.tokens.write().unwrap_or_else(|e| e.into_inner()) =
                Arc::new(server::Tokens::new(&tokens));
            info!(tokens = tokens.len(), "Tokens reloaded");
        }
        Err(errors) => {
            for e in errors {
                warn!(error = %e, "Token reload failed; keeping the tokens in use");
                problems.push(e.to_string());
            }
        }
    }
    if let Some(tls) = &ingest.tls {
        if let Err(e) = tls.reload() {
            problems.push(e.to_string());
        }
    }
    problems
}

/// A sink opened and ready to run.
enum Opened {
    Store(Sink),
    Elasticsearch(EsSink),
}

impl Opened {
    fn name(&self) -> &str {
        match self {
            Opened::Store(Sink::Local(_)) => "local",
            Opened::Store(Sink::Discard) => "discard",
            Opened::Elasticsearch(es) => es.name(),
        }
    }
}

/// Opens every sink (store, positions) and the queue, kept from the slowest sink's position.
/// Returns each sink with the position its reader starts from.
fn open_storage(
    config: &AggregatorConfig,
    sinks: &[SinkConfig],
    bootstrapped: Vec<bool>,
    metrics: Arc<Metrics>,
) -> Result<(Vec<(Opened, Position)>, Queue), StartError> {
    let mut bootstrapped = bootstrapped.into_iter();
    let mut opened = Vec::new();
    for sink in sinks {
        let (sink, position) = match sink {
            SinkConfig::Local {
                retention_days,
                max_sources,
            } => {
                let store = local::LocalStore::open(
                    &store_dir(&config.data_dir),
                    *retention_days,
                    *max_sources,
                    chrono::Utc::now(),
                )?;
                let position = store.queue_position();
                (Opened::Store(Sink::Local(store)), position)
            }
            // Not persisted: after a restart it counts from the slowest other sink.
            SinkConfig::Discard => (Opened::Store(Sink::Discard), Position::default()),
            SinkConfig::Elasticsearch(es) => {
                let done = bootstrapped.next().unwrap_or(false);
                let sink = EsSink::open(es, &config.data_dir, done)?;
                let position = sink.position();
                (Opened::Elasticsearch(sink), position)
            }
        };
        opened.push((sink, position));
    }
    let slowest = opened.iter().map(|(_, p)| *p).min().unwrap_or_default();
    let (queue, start) = Queue::open(
        &config.data_dir.join("queue"),
        config.queue_segment_bytes,
        config.queue_max_bytes,
        slowest,
        metrics,
    )?;
    let opened = opened
        .into_iter()
        .map(|(sink, position)| (sink, position.max(start)))
        .collect();
    Ok((opened, queue))
}

/// The local store without the server, for `benches/store_commit.rs` only: not an interface.
#[doc(hidden)]
pub mod bench_support {
    pub use crate::local::bench::Store;
}

/// The rule evaluator without the server, for the differential tests against Prometheus and
/// the evaluation benchmark only: not an interface.
#[doc(hidden)]
pub mod alerts_support {
    pub use crate::alerts::support::{Evaluator, ReportedAlert};
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
        let es = |result| m.sinks().iter().map(|s| s.item_count(result)).sum::<u64>();
        AggregatorStatus {
            records_received: m.ingest_records.load(Ordering::Relaxed),
            bytes_received: m.ingest_bytes.load(Ordering::Relaxed),
            queue_records: m.queue_records.load(Ordering::Relaxed),
            queue_bytes: m.queue_bytes.load(Ordering::Relaxed),
            records_stored: m.sink_records.load(Ordering::Relaxed),
            duplicates_suppressed: m.sink_duplicates.load(Ordering::Relaxed),
            records_indexed: es(ItemResult::Created),
            records_dead_lettered: es(ItemResult::DeadLettered),
            errors: m.errors(),
        }
    }

    /// Reloads the alert rule files (what SIGHUP does); on any problem the loaded rules stay
    /// and the problems are returned. Without alerts configured, nothing happens.
    pub fn reload_alerts(&self) -> Result<(), AlertsError> {
        match &self.alerts {
            Some(engine) => engine.reload(),
            None => Ok(()),
        }
    }

    /// Reads the tokens and the TLS certificate files again (what SIGHUP does besides reloading
    /// the alert rules); on any problem what is in use stays, and the problems are returned.
    pub fn reload_credentials(&self) -> Result<(), Vec<String>> {
        let problems = reload_credentials(&self.ingest, &self.config);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The `/metrics` page, as served.
    pub fn render_metrics(&self) -> String {
        self.metrics.render()
    }

    /// Stops accepting, lets requests in flight finish, lets the sinks drain the queue (up to a
    /// few seconds) and commit, then returns. What is left stays queued for the next start.
    /// Returns the final status (records stored, anything left queued for the next start).
    pub async fn shutdown(self) -> AggregatorStatus {
        self.shutdown_within(SHUTDOWN_DRAIN).await
    }

    /// [`Self::shutdown`] with the sink's drain time given.
    pub(crate) async fn shutdown_within(mut self, drain: Duration) -> AggregatorStatus {
        if let Some(problem) = self.metrics.sink_problem() {
            warn!(problem = %problem, "A sink had stopped before shutdown");
        }
        let _ = self.stop.send(true);
        if let Some(server) = self.server.take() {
            if let Err(e) = server.await {
                warn!(error = %e, "Server task failed");
            }
        }
        self.queue.close(Instant::now() + drain);
        for sink in std::mem::take(&mut self.sinks) {
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
        if self.server.is_some() || !self.sinks.is_empty() {
            let _ = self.stop.send(true);
            self.queue.close(Instant::now());
        }
    }
}
