//! ferry's per-node agent: finds container log files, tails them, decodes their lines into
//! [`ferry_wire::LogRecord`]s, batches them and forwards the batches to the aggregator, moving the
//! on-disk checkpoint only after the aggregator acknowledged a batch.
//!
//! Reading and decoding run on one plain thread (the tailer); sending runs as one async task (the
//! forwarder) on the caller's tokio runtime; a small HTTP server serves `/metrics` and `/health`.
//! Delivery is at-least-once with deterministic ids: every record's `event.id` is a hash of its
//! source fingerprint and byte offset, and records of one fingerprint leave in strictly increasing
//! offset order, one batch in flight at a time, so the aggregator can drop replays by id or by a
//! per-source high-water mark. Docker API discovery and container metadata live in `docker`,
//! cgroup stats in `stats` (each interval's samples travel as their own batch through the same
//! forwarder). Messages are parsed by the `ferry-parsers` rules (`rules`: loaded at start, a
//! broken rule stops the start, reloadable), chosen per container by its `ferry.parser` label,
//! the `parser` setting or its image; multiline rules join lines in the tailer (`multiline`).
#![forbid(unsafe_code)]

mod checkpoint;
mod config;
mod container;
mod decode;
mod docker;
mod enrich;
mod fingerprint;
mod forward;
#[doc(hidden)]
pub mod fuzz_support;
mod metrics;
mod multiline;
mod rotated;
mod rules;
mod sealed;
mod stats;
mod tailer;
mod tls;
mod watcher;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use checkpoint::CheckpointError;
pub use config::{
    AgentConfig, AgentTlsConfig, CompressionConfig, ConfigError, ConfigProblem, FormatConfig,
    OutputConfig, ReadFrom,
};
pub use ferry_parsers::RuleError;
pub use rules::RulesError;
pub use stats::StatsTargets;
pub use tls::TlsError;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A rule file in `rules_dirs` (or the `parser` setting) is broken; every problem is listed.
    #[error(transparent)]
    Rules(#[from] RulesError),
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsListen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot start the tailer thread: {0}")]
    Thread(std::io::Error),
    /// The start-up work on the blocking pool (rules, data directory, checkpoint) panicked, or
    /// the runtime shut down before it ran.
    #[error("the agent's start-up work (rules, data directory, checkpoint) did not finish: {0}")]
    Blocking(tokio::task::JoinError),
}

/// A snapshot of what the agent has done since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStatus {
    /// Files currently open.
    pub files_tailed: u64,
    pub lines_read: u64,
    pub bytes_read: u64,
    /// Records the aggregator acknowledged.
    pub records_acked: u64,
    pub batches_acked: u64,
    /// Errors of any kind (failed sends, reads, checkpoint writes).
    pub errors: u64,
    pub last_error: Option<String>,
}

/// A running agent.
pub struct AgentHandle {
    metrics: Arc<metrics::Metrics>,
    metrics_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: SyncSender<()>,
    shutdown: watch::Sender<bool>,
    tailer: Option<std::thread::JoinHandle<()>>,
    forwarder: JoinHandle<()>,
    server: JoinHandle<()>,
    /// The stats collector's target provider (replaceable while running).
    stats_targets: Arc<std::sync::Mutex<StatsTargets>>,
    /// Docker discovery and logs-API followers (`docker_enabled`).
    docker: Option<docker::DockerHandle>,
    /// The parser rules, reloadable.
    rules: Arc<rules::Rules>,
}

/// Starts the agent: loads the checkpoint, binds the metrics server, starts the tailer thread and
/// the forwarder task. Call inside a multi-thread tokio runtime.
pub async fn start(config: AgentConfig) -> Result<AgentHandle, StartError> {
    config.validate()?;
    let tls = tls::client_config(&config.tls.clone().unwrap_or_default())?;
    // Compiling the rules' regexes, reading the checkpoint and writing it (with fsync) block:
    // they run on the blocking pool, not on the async worker that awaits `start`.
    let (dirs, parser, data_dir) = (
        config.rules_dirs.clone(),
        config.parser.clone(),
        config.data_dir.clone(),
    );
    let (rules, loaded) = tokio::task::spawn_blocking(move || {
        let rules = rules::Rules::load(dirs, parser)?;
        std::fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let loaded = checkpoint::Checkpointer::load(&data_dir)?;
        if !loaded.existed {
            // From now on a restart is not the first start, whatever happens before the first ack.
            loaded.checkpointer.write()?;
        }
        Ok::<_, StartError>((rules, loaded))
    })
    .await
    .map_err(StartError::Blocking)??;
    let rules = Arc::new(rules);
    let listener = metrics::bind(config.metrics_listen)
        .await
        .map_err(|source| StartError::MetricsListen {
            addr: config.metrics_listen,
            source,
        })?;
    let metrics_addr = listener
        .local_addr()
        .map_err(|source| StartError::MetricsListen {
            addr: config.metrics_listen,
            source,
        })?;
    let metrics = Arc::new(metrics::Metrics::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (tx, rx) = mpsc::channel(1);
    let stats_targets = Arc::new(std::sync::Mutex::new(stats::no_targets()));
    let registry = docker::registry(&config, &metrics);
    if config.docker_enabled {
        if let Ok(mut targets) = stats_targets.lock() {
            let registry = registry.clone();
            *targets = Box::new(move || registry.stats_targets());
        }
    }
    if config.stats_enabled {
        let mut settings = stats::Settings::from_config(&config);
        settings.registry = config.docker_enabled.then(|| registry.clone());
        tokio::spawn(stats::run(
            settings,
            stats_targets.clone(),
            metrics.clone(),
            tx.clone(),
            shutdown_rx.clone(),
        ));
    }

    let docker = if config.docker_enabled {
        let sources = loaded.checkpointer.sources();
        let (tx, stop) = (tx.clone(), shutdown_rx.clone());
        Some(
            docker::start(
                &config,
                registry.clone(),
                rules.clone(),
                sources,
                tx,
                stop,
                metrics.clone(),
            )
            .await,
        )
    } else {
        None
    };
    let tailer = tailer::Tailer::new(
        tailer::Settings::from_config(&config),
        loaded.checkpointer.sources(),
        !loaded.existed,
        loaded.legacy,
        metrics.clone(),
        tx,
        stop.clone(),
        registry.clone(),
        rules.clone(),
    );
    let waker = tailer.waker();
    registry.set_waker(waker.clone());
    let tailer = std::thread::Builder::new()
        .name("ferry-tailer".into())
        .spawn(move || tailer.run())
        .map_err(StartError::Thread)?;
    let forwarder = forward::Forwarder::new(
        &config,
        tls,
        loaded.checkpointer,
        metrics.clone(),
        shutdown_rx.clone(),
    );
    let forwarder = tokio::spawn(forwarder.run(rx));
    let server = tokio::spawn(metrics::serve(listener, metrics.clone(), shutdown_rx));
    info!(aggregator = %config.urls().join(", "), metrics = %metrics_addr, data_dir = %config.data_dir.display(), "Agent started");
    if config.output == OutputConfig::Discard {
        warn!("output = \"discard\": records are read, parsed and encoded, then dropped; nothing is delivered and checkpoints advance as if it were");
    }
    Ok(AgentHandle {
        metrics,
        metrics_addr,
        stop,
        waker,
        shutdown,
        tailer: Some(tailer),
        forwarder,
        server,
        stats_targets,
        docker,
        rules,
    })
}

impl AgentHandle {
    /// What the agent has done so far (a few atomic loads).
    pub fn status(&self) -> AgentStatus {
        let m = &self.metrics;
        AgentStatus {
            files_tailed: m.files_tailed.load(Relaxed),
            lines_read: m.lines_read.load(Relaxed),
            bytes_read: m.bytes_read.load(Relaxed),
            records_acked: m.records_sent.load(Relaxed),
            batches_acked: m.batches_sent.load(Relaxed),
            errors: m.errors.load(Relaxed),
            last_error: m.last_error(),
        }
    }

    /// Where `/metrics` and `/health` are served (the bound address when port 0 was asked for).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Reads the rule files of `rules_dirs` again (the SIGHUP handler). On success the tailer and
    /// the logs-API followers switch to the new rules at their next turn (pending multiline events
    /// are passed on first) and the number of rules is returned; on failure the previous rules
    /// stay in use and every problem is logged at error level and returned. Reading the files and
    /// compiling the regexes run on the blocking pool, not on the caller's async worker.
    pub async fn reload_rules(&self) -> Result<usize, Vec<RuleError>> {
        let rules = self.rules.clone();
        let count = match tokio::task::spawn_blocking(move || rules.reload()).await {
            Ok(result) => result?,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                // Only when the runtime is shutting down: nothing was reloaded.
                Err(e) => {
                    return Err(vec![RuleError {
                        file: PathBuf::from("<rules reload>"),
                        rule: None,
                        kind: ferry_parsers::RuleErrorKind::Config(format!(
                            "the reload did not run: {e}"
                        )),
                    }])
                }
            },
        };
        let _ = self.waker.try_send(());
        Ok(count)
    }

    /// Sets where the stats collector gets its `(container id, pid)` targets from (discovery's
    /// registry); takes effect at the next pass. Until then no container is sampled.
    pub fn set_stats_targets(&self, targets: StatsTargets) {
        if let Ok(mut current) = self.stats_targets.lock() {
            *current = targets;
        }
    }

    /// Stops reading, tries for at most `shutdown_timeout_ms` to deliver what was read, writes the
    /// checkpoint and returns. Records not acknowledged by then are read again after a restart.
    pub async fn shutdown(mut self) {
        self.stop.store(true, Relaxed);
        let _ = self.waker.try_send(());
        let _ = self.shutdown.send(true);
        if let Err(e) = (&mut self.forwarder).await {
            warn!(error = %e, "Forwarder task failed");
        }
        if let Some(tailer) = self.tailer.take() {
            let joined = tokio::task::spawn_blocking(move || tailer.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                warn!("Tailer thread panicked");
            }
        }
        if let Some(docker) = self.docker.take() {
            docker.join().await;
        }
        let _ = (&mut self.server).await;
        info!("Agent stopped");
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        // Dropped without shutdown(): stop the thread and tasks without waiting.
        self.stop.store(true, Relaxed);
        let _ = self.waker.try_send(());
        let _ = self.shutdown.send(true);
        self.server.abort();
        if let Some(docker) = &self.docker {
            docker.abort();
        }
    }
}
