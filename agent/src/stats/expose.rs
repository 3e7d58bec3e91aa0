//! The stats side of the agent's `/metrics`: the collector's own figures
//! (`ferry_agent_stats_*`) and the latest sample of every container under cAdvisor's names with
//! the labels `id`, `name`, `image`, `host` (plus `namespace`, `pod`, `container` when known), so
//! a node-local Prometheus scrape works without the aggregator.
//!
//! Only the last pass is kept: a container that is gone disappears from the page at the next pass.
//! Types follow the names (`_total` is a counter, anything else a gauge); label values are escaped
//! as the text format requires. The aggregator renders the same series the same way
//! (`ferry_aggregator::containers`); keep the two in step.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use ferry_wire::StatsSample;

use super::m;

/// Upper bounds of the pass-duration histogram, in seconds.
const BUCKETS_SECONDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The collector's figures and the latest pass.
#[derive(Debug, Default)]
pub(crate) struct StatsMetrics {
    latest: Mutex<Vec<StatsSample>>,
    samples: AtomicU64,
    passes_dropped: AtomicU64,
    buckets: [AtomicU64; BUCKETS_SECONDS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl StatsMetrics {
    /// Records one pass: its duration, and its samples as the latest.
    pub fn observe_pass(&self, took: Duration, samples: &[StatsSample]) {
        let secs = took.as_secs_f64();
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS_SECONDS) {
            if secs <= bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(took.as_micros() as u64, Relaxed);
        self.samples.fetch_add(samples.len() as u64, Relaxed);
        if let Ok(mut latest) = self.latest.lock() {
            latest.clear();
            latest.extend_from_slice(samples);
        }
    }

    /// A pass that could not be handed to the forwarder within one interval.
    pub fn dropped_pass(&self) {
        self.passes_dropped.fetch_add(1, Relaxed);
    }

    /// Appends the `ferry_agent_stats_*` families and the container series.
    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP ferry_agent_stats_samples_total Container stats samples collected.\n# TYPE ferry_agent_stats_samples_total counter\n");
        let _ = writeln!(
            out,
            "ferry_agent_stats_samples_total {}",
            self.samples.load(Relaxed)
        );
        out.push_str("# HELP ferry_agent_stats_passes_dropped_total Stats passes dropped because the forwarder was busy for a whole interval.\n# TYPE ferry_agent_stats_passes_dropped_total counter\n");
        let _ = writeln!(
            out,
            "ferry_agent_stats_passes_dropped_total {}",
            self.passes_dropped.load(Relaxed)
        );
        out.push_str("# HELP ferry_agent_stats_duration_seconds Time to read the stats of every container once.\n# TYPE ferry_agent_stats_duration_seconds histogram\n");
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS_SECONDS) {
            let _ = writeln!(
                out,
                "ferry_agent_stats_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Relaxed)
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(
            out,
            "ferry_agent_stats_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "ferry_agent_stats_duration_seconds_sum {}",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "ferry_agent_stats_duration_seconds_count {count}");
        if let Ok(latest) = self.latest.lock() {
            render_samples(out, latest.iter());
        }
    }
}

/// HELP texts (cAdvisor's wording) of the metrics the collector emits.
fn help(name: &str) -> &'static str {
    match name {
        m::CPU_USAGE => "Cumulative cpu time consumed in seconds.",
        m::CPU_USER => "Cumulative user cpu time consumed in seconds.",
        m::CPU_SYSTEM => "Cumulative system cpu time consumed in seconds.",
        m::CFS_PERIODS => "Number of elapsed enforcement period intervals.",
        m::CFS_THROTTLED_PERIODS => "Number of throttled period intervals.",
        m::CFS_THROTTLED_SECONDS => "Total time duration the container has been throttled.",
        m::SPEC_CPU_SHARES => "CPU share of the container.",
        m::SPEC_CPU_QUOTA => "CPU quota of the container.",
        m::SPEC_CPU_PERIOD => "CPU period of the container.",
        m::MEMORY_USAGE => "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        m::MEMORY_WORKING_SET => "Current working set in bytes.",
        m::MEMORY_RSS => "Size of RSS in bytes.",
        m::MEMORY_CACHE => "Number of bytes of page cache memory.",
        m::MEMORY_SWAP => "Container swap usage in bytes.",
        m::MEMORY_MAPPED_FILE => "Size of memory mapped files in bytes.",
        m::MEMORY_MAX_USAGE => "Maximum memory usage recorded in bytes.",
        m::SPEC_MEMORY_LIMIT => "Memory limit for the container (0 when unlimited).",
        m::OOM_EVENTS => "Count of out of memory events observed for the container.",
        m::FS_READS_BYTES => "Cumulative count of bytes read.",
        m::FS_WRITES_BYTES => "Cumulative count of bytes written.",
        m::FS_READS => "Cumulative count of reads completed.",
        m::FS_WRITES => "Cumulative count of writes completed.",
        m::PROCESSES => "Number of processes running inside the container.",
        m::THREADS => "Number of threads running inside the container.",
        m::THREADS_MAX => "Maximum number of threads allowed inside the container, infinity if value is zero.",
        m::NET_RX_BYTES => "Cumulative count of bytes received.",
        m::NET_RX_PACKETS => "Cumulative count of packets received.",
        m::NET_RX_ERRORS => "Cumulative count of errors encountered while receiving.",
        m::NET_RX_DROPPED => "Cumulative count of packets dropped while receiving.",
        m::NET_TX_BYTES => "Cumulative count of bytes transmitted.",
        m::NET_TX_PACKETS => "Cumulative count of packets transmitted.",
        m::NET_TX_ERRORS => "Cumulative count of errors encountered while transmitting.",
        m::NET_TX_DROPPED => "Cumulative count of packets dropped while transmitting.",
        _ => "Container metric.",
    }
}

/// Writes one family per metric name (sorted), one series per sample that has it.
pub(crate) fn render_samples<'a>(
    out: &mut String,
    samples: impl Iterator<Item = &'a StatsSample> + Clone,
) {
    let names: BTreeSet<&str> = samples
        .clone()
        .flat_map(|s| s.metrics.keys().map(String::as_str))
        .filter(|n| n.starts_with("container_") && valid_metric_name(n))
        .collect();
    for name in names {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(out, "# HELP {name} {}", help(name));
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for sample in samples.clone() {
            let Some(value) = sample.metrics.get(name) else {
                continue;
            };
            out.push_str(name);
            write_labels(out, sample);
            out.push(' ');
            write_value(out, *value);
            out.push('\n');
        }
    }
}

fn write_labels(out: &mut String, s: &StatsSample) {
    let c = &s.container;
    let k = &s.kubernetes;
    let mut labels = vec![
        ("id", c.id.as_deref().unwrap_or("")),
        ("name", c.name.as_deref().unwrap_or("")),
        ("image", c.image.name.as_deref().unwrap_or("")),
        ("host", s.host.name.as_str()),
    ];
    for (label, value) in [
        ("namespace", &k.namespace),
        ("pod", &k.pod.name),
        ("container", &k.container.name),
    ] {
        if let Some(v) = value {
            labels.push((label, v));
        }
    }
    out.push('{');
    for (i, (label, value)) in labels.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(label);
        out.push_str("=\"");
        escape_label_value(out, value);
        out.push('"');
    }
    out.push('}');
}

/// Text-format escaping of a label value: backslash, double quote and line feed.
pub(crate) fn escape_label_value(out: &mut String, value: &str) {
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str, name: Option<&str>, metrics: &[(&str, f64)]) -> StatsSample {
        let mut s = StatsSample::default();
        s.host.name = "node-1".into();
        s.container.id = Some(id.into());
        s.container.name = name.map(str::to_string);
        s.metrics = metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        s
    }

    #[test]
    fn one_family_per_name_with_escaped_labels() {
        let samples = [
            sample(
                "a",
                Some("we\"ird\\na\nme"),
                &[(m::CPU_USAGE, 1.5), (m::MEMORY_USAGE, 10.0)],
            ),
            sample("b", None, &[(m::CPU_USAGE, 2.0), ("bad name", 1.0)]),
        ];
        let mut out = String::new();
        render_samples(&mut out, samples.iter());
        assert_eq!(
            out.matches("# TYPE container_cpu_usage_seconds_total counter\n")
                .count(),
            1
        );
        assert!(out.contains("# TYPE container_memory_usage_bytes gauge\n"));
        assert!(out.contains(
            "container_cpu_usage_seconds_total{id=\"a\",name=\"we\\\"ird\\\\na\\nme\",image=\"\",host=\"node-1\"} 1.5\n"
        ), "{out}");
        assert!(out.contains(
            "container_cpu_usage_seconds_total{id=\"b\",name=\"\",image=\"\",host=\"node-1\"} 2\n"
        ));
        assert!(!out.contains("bad name"));
    }

    #[test]
    fn kubernetes_labels_appear_when_known() {
        let mut s = sample("a", Some("n"), &[(m::THREADS, 3.0)]);
        s.kubernetes.namespace = Some("ns".into());
        s.kubernetes.pod.name = Some("p".into());
        let mut out = String::new();
        render_samples(&mut out, [s].iter());
        assert!(out.contains(
            "container_threads{id=\"a\",name=\"n\",image=\"\",host=\"node-1\",namespace=\"ns\",pod=\"p\"} 3\n"
        ), "{out}");
    }
}
