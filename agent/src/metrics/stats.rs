//! The stats side of the agent's `/metrics`: the collector's own figures
//! (`ferry_agent_stats_*`) and the latest sample of every container under cAdvisor's names with
//! the labels `id`, `name`, `image`, `host` (plus `namespace`, `pod`, `container` when known), so
//! a node-local Prometheus scrape works without the aggregator.
//!
//! Only the last pass is kept: a container that is gone disappears from the page at the next pass.
//! Types follow the names (`_total` is a counter, anything else a gauge); label values are escaped
//! as the text format requires. The aggregator renders the same series the same way
//! (`ferry_aggregator::containers`); keep the two in step.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use ferry_wire::{DurationHistogram, StatsSample};

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
    duration: DurationHistogram<{ BUCKETS_SECONDS.len() }>,
}

impl StatsMetrics {
    /// Records one pass: its duration, and its samples as the latest.
    pub fn observe_pass(&self, took: Duration, samples: &[StatsSample]) {
        self.duration.observe(&BUCKETS_SECONDS, took);
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
        self.duration.render(
            out,
            &BUCKETS_SECONDS,
            "ferry_agent_stats_duration_seconds",
            "Time to read the stats of every container once.",
        );
        if let Ok(latest) = self.latest.lock() {
            ferry_wire::render_container_metrics(out, latest.iter());
        }
    }
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
                &[
                    ("container_cpu_usage_seconds_total", 1.5),
                    ("container_memory_usage_bytes", 10.0),
                ],
            ),
            sample(
                "b",
                None,
                &[
                    ("container_cpu_usage_seconds_total", 2.0),
                    ("bad name", 1.0),
                ],
            ),
        ];
        let mut out = String::new();
        ferry_wire::render_container_metrics(&mut out, samples.iter());
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
        let mut s = sample("a", Some("n"), &[("container_threads", 3.0)]);
        s.kubernetes.namespace = Some("ns".into());
        s.kubernetes.pod.name = Some("p".into());
        let mut out = String::new();
        ferry_wire::render_container_metrics(&mut out, [s].iter());
        assert!(out.contains(
            "container_threads{id=\"a\",name=\"n\",image=\"\",host=\"node-1\",namespace=\"ns\",pod=\"p\"} 3\n"
        ), "{out}");
    }
}
