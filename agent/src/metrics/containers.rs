//! `ferry_agent_containers{state}`: the containers the Docker registry knows, by how their logs
//! are collected. The registry (`crate::docker`) stores the counts after every change; this
//! module only holds and renders them, so the metrics never depend on discovery.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The `ferry_agent_containers{state}` gauge: known containers by how their logs are collected.
#[derive(Debug, Default)]
pub(crate) struct ContainerGauges {
    /// json-file containers, read by the tailer.
    pub file: AtomicU64,
    /// Other drivers, followed through the logs API.
    pub logs_api: AtomicU64,
    /// Log driver `none`.
    pub no_logs: AtomicU64,
    /// Opted out (`ferry.enable=false`) or filtered by `containers_include`/`containers_exclude`.
    pub excluded: AtomicU64,
}

impl ContainerGauges {
    /// Appends the gauge in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP ferry_agent_containers Containers known through the Docker API, by how their logs are collected.\n# TYPE ferry_agent_containers gauge\n");
        for (state, v) in [
            ("file", &self.file),
            ("logs_api", &self.logs_api),
            ("no_logs", &self.no_logs),
            ("excluded", &self.excluded),
        ] {
            let _ = writeln!(
                out,
                "ferry_agent_containers{{state=\"{state}\"}} {}",
                v.load(Relaxed)
            );
        }
    }
}
