//! Container resource stats, the cAdvisor part: every `stats_interval_ms`, for each target
//! `(container id, init pid)`, read the container's cgroup (v1 or v2, found through
//! `/proc/<pid>/cgroup`) and network namespace counters, build one [`StatsSample`] per container
//! under cAdvisor's metric names and units, send the pass as its own batch through the
//! forwarder's channel, and keep it as the latest sample for the agent's own `/metrics`.
//!
//! Targets come from a provider closure ([`StatsTargets`]; discovery supplies it, see
//! [`crate::AgentHandle::set_stats_targets`]). A file that is missing, or a container that
//! vanished mid-read, is not an error: that metric (or sample) is skipped with a debug log.
//! Samples are ephemeral: a pass that cannot be handed to the forwarder within one interval (the
//! aggregator is slow and logs fill the channel) is dropped and counted, never queued up.
//! The agent needs the host's PID and cgroup namespaces (`hostPID: true`, `cgroupns: host`, the
//! host's `/sys/fs/cgroup` at `stats_cgroup_root`) for the PIDs and paths to mean anything.
//! This module reads `/proc` and `/sys/fs/cgroup` only; it never writes and never talks to Docker.

mod cgroup;
mod net;
#[cfg(test)]
mod tests;
mod v1;
mod v2;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use ferry_wire::{BatchBuilder, Compression, Container, Host, StatsSample};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::config::AgentConfig;
use crate::docker::Registry;
use crate::metrics::Metrics;
use crate::sealed::Sealed;

use cgroup::{CgroupDirs, Mounts, Reader};

/// Lists the containers to sample: `(container id, PID of a process inside it)`.
pub type StatsTargets = Box<dyn Fn() -> Vec<(String, u32)> + Send>;

/// A provider with no targets, until discovery supplies one.
pub(crate) fn no_targets() -> StatsTargets {
    Box::new(Vec::new)
}

/// cAdvisor's metric names. A name ending in `_total` is a counter, anything else a gauge.
pub(crate) mod m {
    pub const CPU_USAGE: &str = "container_cpu_usage_seconds_total";
    pub const CPU_USER: &str = "container_cpu_user_seconds_total";
    pub const CPU_SYSTEM: &str = "container_cpu_system_seconds_total";
    pub const CFS_PERIODS: &str = "container_cpu_cfs_periods_total";
    pub const CFS_THROTTLED_PERIODS: &str = "container_cpu_cfs_throttled_periods_total";
    pub const CFS_THROTTLED_SECONDS: &str = "container_cpu_cfs_throttled_seconds_total";
    pub const SPEC_CPU_SHARES: &str = "container_spec_cpu_shares";
    pub const SPEC_CPU_QUOTA: &str = "container_spec_cpu_quota";
    pub const SPEC_CPU_PERIOD: &str = "container_spec_cpu_period";
    pub const MEMORY_USAGE: &str = "container_memory_usage_bytes";
    pub const MEMORY_WORKING_SET: &str = "container_memory_working_set_bytes";
    pub const MEMORY_RSS: &str = "container_memory_rss";
    pub const MEMORY_CACHE: &str = "container_memory_cache";
    pub const MEMORY_SWAP: &str = "container_memory_swap";
    pub const MEMORY_MAPPED_FILE: &str = "container_memory_mapped_file";
    pub const MEMORY_MAX_USAGE: &str = "container_memory_max_usage_bytes";
    pub const SPEC_MEMORY_LIMIT: &str = "container_spec_memory_limit_bytes";
    pub const OOM_EVENTS: &str = "container_oom_events_total";
    pub const FS_READS_BYTES: &str = "container_fs_reads_bytes_total";
    pub const FS_WRITES_BYTES: &str = "container_fs_writes_bytes_total";
    pub const FS_READS: &str = "container_fs_reads_total";
    pub const FS_WRITES: &str = "container_fs_writes_total";
    pub const PROCESSES: &str = "container_processes";
    pub const THREADS: &str = "container_threads";
    pub const THREADS_MAX: &str = "container_threads_max";
    pub const NET_RX_BYTES: &str = "container_network_receive_bytes_total";
    pub const NET_RX_PACKETS: &str = "container_network_receive_packets_total";
    pub const NET_RX_ERRORS: &str = "container_network_receive_errors_total";
    pub const NET_RX_DROPPED: &str = "container_network_receive_packets_dropped_total";
    pub const NET_TX_BYTES: &str = "container_network_transmit_bytes_total";
    pub const NET_TX_PACKETS: &str = "container_network_transmit_packets_total";
    pub const NET_TX_ERRORS: &str = "container_network_transmit_errors_total";
    pub const NET_TX_DROPPED: &str = "container_network_transmit_packets_dropped_total";
}

/// Memory usage, the `memory.stat` keys named in `keys`, and cAdvisor's working set
/// (usage minus inactive file pages, `inactive_key` in `memory.stat`), for either cgroup version.
fn memory(
    out: &mut BTreeMap<String, f64>,
    usage: Option<u64>,
    stat: Option<&str>,
    inactive_key: &str,
    keys: &[(&str, &str)],
) {
    if let Some(usage) = usage {
        put(out, m::MEMORY_USAGE, usage as f64);
    }
    let Some(text) = stat else { return };
    for (key, name) in keys {
        if let Some(v) = cgroup::keyed(text, key) {
            put(out, name, v as f64);
        }
    }
    if let Some(usage) = usage {
        let inactive_file = cgroup::keyed(text, inactive_key).unwrap_or(0);
        put(
            out,
            m::MEMORY_WORKING_SET,
            usage.saturating_sub(inactive_file) as f64,
        );
    }
}

fn put(out: &mut BTreeMap<String, f64>, name: &str, value: f64) {
    out.insert(name.to_string(), value);
}

/// cAdvisor reports an unlimited memory limit (absent, `max`, or the kernel's page-counter
/// maximum, anything above 2^62) as 0.
fn memory_limit(bytes: Option<u64>) -> f64 {
    match bytes {
        Some(b) if b <= 1 << 62 => b as f64,
        _ => 0.0,
    }
}

/// What the collector needs from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub interval: Duration,
    pub cgroup_root: PathBuf,
    pub proc_root: PathBuf,
    pub host: String,
    pub compression: Compression,
    /// Container metadata for the samples (name, image, labels, `kubernetes.*`), when Docker
    /// discovery runs.
    pub registry: Option<Arc<Registry>>,
}

impl Settings {
    pub fn from_config(config: &AgentConfig) -> Self {
        Settings {
            interval: Duration::from_millis(config.stats_interval_ms),
            cgroup_root: config.stats_cgroup_root.clone(),
            proc_root: config.stats_proc_root.clone(),
            host: config.host_name.clone(),
            compression: config.wire_compression(),
            registry: None,
        }
    }
}

/// Reads one pass of samples. Holds only the cgroup mount table and a reused read buffer.
pub(crate) struct Collector {
    host: String,
    proc_root: PathBuf,
    mounts: Mounts,
    reader: Reader,
    /// Network namespaces whose counters are not a container's own (the agent's and PID 1's).
    shared_netns: Vec<String>,
    registry: Option<Arc<Registry>>,
}

impl Collector {
    pub fn new(cgroup_root: &Path, proc_root: &Path, host: &str) -> Self {
        let shared_netns = ["self", "1"]
            .iter()
            .filter_map(|p| net::netns(proc_root, p))
            .collect();
        Collector {
            host: host.to_string(),
            proc_root: proc_root.to_path_buf(),
            mounts: Mounts::scan(cgroup_root),
            reader: Reader::default(),
            shared_netns,
            registry: None,
        }
    }

    /// Samples get their metadata from `registry`.
    pub fn with_registry(mut self, registry: Option<Arc<Registry>>) -> Self {
        self.registry = registry;
        self
    }

    /// One sample per target that still exists.
    pub fn pass(&mut self, targets: &[(String, u32)]) -> Vec<StatsSample> {
        let timestamp = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        targets
            .iter()
            .filter_map(|(id, pid)| self.sample(id, *pid, &timestamp))
            .collect()
    }

    /// Reads one container; `None` when it is gone (or its PID now belongs to someone else).
    pub fn sample(&mut self, id: &str, pid: u32, timestamp: &str) -> Option<StatsSample> {
        let pid = pid.to_string();
        let proc_dir = self.proc_root.join(&pid);
        let Some(dirs) = self
            .reader
            .read(&proc_dir, "cgroup")
            .and_then(|text| self.mounts.dirs(text))
        else {
            debug!(
                container = id,
                pid, "Container gone or cgroup unknown; no sample"
            );
            return None;
        };
        if !dirs.belongs_to(id) {
            debug!(
                container = id,
                pid,
                ?dirs,
                "PID is no longer in the container's cgroup; no sample"
            );
            return None;
        }
        let mut metrics = BTreeMap::new();
        match &dirs {
            CgroupDirs::V1(dirs) => v1::read(dirs, &mut self.reader, &mut metrics),
            CgroupDirs::V2(dir) => v2::read(dir, &mut self.reader, &mut metrics),
        }
        let own_netns =
            net::netns(&self.proc_root, &pid).is_some_and(|ns| !self.shared_netns.contains(&ns));
        if own_netns {
            if let Some(text) = self.reader.read(&proc_dir, "net/dev") {
                net::parse_dev(text, &mut metrics);
            }
        }
        if metrics.is_empty() {
            debug!(container = id, pid, "No stats readable; no sample");
            return None;
        }
        let mut sample = StatsSample {
            timestamp: timestamp.to_string(),
            host: Host {
                name: self.host.clone(),
            },
            container: Container {
                id: Some(id.to_string()),
                ..Container::default()
            },
            metrics,
            ..StatsSample::default()
        };
        self.enrich_sample(&mut sample);
        Some(sample)
    }

    /// Container metadata (`container.name`, `container.image.name`, allowlisted labels,
    /// `kubernetes.*`) from the discovery registry; without Docker discovery only the id is known.
    fn enrich_sample(&self, sample: &mut StatsSample) {
        if let (Some(registry), Some(id)) = (&self.registry, sample.container.id.clone()) {
            registry.enrich(&id, &mut sample.container, &mut sample.kubernetes);
        }
    }
}

/// Runs passes every `interval` until `shutdown` turns true, sending each pass as one batch.
pub(crate) async fn run(
    settings: Settings,
    targets: Arc<Mutex<StatsTargets>>,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<Sealed>,
    mut shutdown: watch::Receiver<bool>,
) {
    let stop = async move {
        // The guard `wait_for` returns is not Send: drop it before any further await.
        let _ = shutdown.wait_for(|&stop| stop).await.map(drop);
    };
    tokio::pin!(stop);
    let mut collector = Some(
        Collector::new(&settings.cgroup_root, &settings.proc_root, &settings.host)
            .with_registry(settings.registry.clone()),
    );
    let mut builder = BatchBuilder::new(settings.host.clone());
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stop => break,
        }
        let Some(mut c) = collector.take() else { break };
        let targets = Arc::clone(&targets);
        let pass = tokio::task::spawn_blocking(move || {
            let list = match targets.lock() {
                Ok(provider) => provider(),
                Err(_) => Vec::new(),
            };
            let started = Instant::now();
            let samples = c.pass(&list);
            (c, list.len(), samples, started.elapsed())
        })
        .await;
        let (c, containers, samples, took) = match pass {
            Ok(done) => done,
            Err(error) => {
                warn!(%error, "Stats pass failed; stats collection stops");
                break;
            }
        };
        collector = Some(c);
        metrics.stats.observe_pass(took, &samples);
        debug!(
            containers,
            samples = samples.len(),
            took_us = took.as_micros() as u64,
            "Stats pass"
        );
        if took > settings.interval {
            warn!(
                took_ms = took.as_millis() as u64,
                interval_ms = settings.interval.as_millis() as u64,
                "Stats pass took longer than stats_interval_ms"
            );
        }
        if samples.is_empty() {
            continue;
        }
        for sample in &samples {
            builder.push_stats(sample);
        }
        let sealed = Sealed {
            batch: Some(builder.finish(settings.compression)),
            updates: Vec::new(),
            register: Vec::new(),
        };
        tokio::select! {
            sent = tokio::time::timeout(settings.interval, tx.send(sealed)) => match sent {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break, // the forwarder is gone
                Err(_) => {
                    metrics.stats.dropped_pass();
                    debug!(samples = samples.len(), "Forwarder busy for a whole interval; stats pass dropped");
                }
            },
            () = &mut stop => break,
        }
    }
    debug!("Stats collector stopped");
}
