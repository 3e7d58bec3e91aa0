//! Docker discovery and container metadata: a [`Registry`] of every container the engine reports
//! (name, image, labels, Compose/Swarm/Kubernetes labels, log driver, `LogPath`, init PID), kept
//! current from the Docker API (bollard, unix socket) by listing and following the event stream,
//! and readers for containers whose log driver writes no json-file (the logs API).
//!
//! How the rest of the agent uses it: the tailer still finds json-file logs through its `include`
//! globs (so a missing or unreachable engine changes nothing but metadata) and asks the registry
//! for each file's container (by `LogPath`, else by the `<id>/<id>-json.log` layout): the
//! registry's metadata wins, the container's `config.v2.json` is the fallback, and opted-out or
//! filtered containers ([`crate::container::Filter`]) are not tailed. The stats engine asks
//! [`Registry::stats_targets`] for the init PIDs of running containers. This module never reads
//! log files and never talks to the aggregator: logs-API records go to the forwarder through the
//! same channel as the tailer's batches.

mod discovery;
mod logs_api;
mod registry;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::debug;

pub(crate) use logs_api::FINGERPRINT_PREFIX;
pub(crate) use registry::Registry;

use crate::checkpoint::Sources;
use crate::config::AgentConfig;
use crate::container::Filter;
use crate::metrics::Metrics;
use crate::rules::Rules;
use crate::sealed::Sealed;

/// How long [`start`] waits for the first listing before the tailer starts without it.
const FIRST_SYNC_WAIT: Duration = Duration::from_secs(5);

/// The registry for a configuration (empty until discovery fills it).
pub(crate) fn registry(config: &AgentConfig, metrics: &Metrics) -> Arc<Registry> {
    Arc::new(Registry::new(
        config.container_labels_allowlist.clone(),
        Filter::new(&config.containers_include, &config.containers_exclude),
        metrics.containers.clone(),
    ))
}

/// The running discovery task and logs-API batcher.
pub(crate) struct DockerHandle {
    discovery: JoinHandle<()>,
    batcher: JoinHandle<()>,
}

impl DockerHandle {
    /// Waits for both tasks (after shutdown was signalled).
    pub async fn join(self) {
        let _ = self.discovery.await;
        let _ = self.batcher.await;
    }

    pub fn abort(&self) {
        self.discovery.abort();
        self.batcher.abort();
    }
}

/// Starts discovery (and the logs-API batcher, which sends to `tx`) and waits up to
/// [`FIRST_SYNC_WAIT`] for the first listing, so the tailer's first scan already knows the
/// containers. An unreachable engine is logged, never fatal: discovery keeps retrying.
pub(crate) async fn start(
    config: &AgentConfig,
    registry: Arc<Registry>,
    rules: Arc<Rules>,
    checkpoint: &Sources,
    tx: mpsc::Sender<Sealed>,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) -> DockerHandle {
    let (api_tx, api_rx) = mpsc::channel(1024);
    let batcher = tokio::spawn(logs_api::run_batcher(
        logs_api::BatchSettings {
            host_name: config.host_name.clone(),
            max_bytes: config.batch_max_bytes,
            max_records: config.batch_max_records,
            max_age: Duration::from_millis(config.batch_max_age_ms),
            compression: config.wire_compression(),
        },
        api_rx,
        tx,
    ));
    let restored: BTreeMap<String, u64> = checkpoint
        .iter()
        .filter_map(|(fp, e)| Some((fp.strip_prefix(FINGERPRINT_PREFIX)?.to_string(), e.offset)))
        .collect();
    let discovery = discovery::Discovery {
        s: discovery::Settings {
            socket: config.docker_socket.clone(),
            reconnect_max: Duration::from_millis(config.docker_reconnect_max_ms),
            host_name: config.host_name.clone(),
            max_line_bytes: config.max_line_bytes,
        },
        registry,
        rules,
        metrics,
        api_tx,
        shutdown,
        restored,
        followers: HashMap::new(),
        announced: HashSet::new(),
    };
    let (first_tx, first_rx) = oneshot::channel();
    let discovery = tokio::spawn(discovery.run(first_tx));
    match tokio::time::timeout(FIRST_SYNC_WAIT, first_rx).await {
        Ok(Ok(connected)) => debug!(connected, "First Docker listing done"),
        _ => debug!("Docker listing still pending; the tailer starts without it"),
    }
    DockerHandle { discovery, batcher }
}
