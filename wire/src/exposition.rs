//! Prometheus text exposition of container stats: the series an agent serves for its own node
//! and the aggregator serves for every host, rendered the same way on both sides from
//! [`StatsSample`]s (cAdvisor's names, HELP texts and units; labels `id`, `name`, `image`, `host`,
//! and `namespace`, `pod`, `container` for Kubernetes), and the duration histogram both sides
//! use for their own timings.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::record::StatsSample;

/// Writes one family per metric name (sorted), one series per sample that has it.
pub fn render_container_metrics<'a>(
    out: &mut String,
    samples: impl Iterator<Item = &'a StatsSample> + Clone,
) {
    // Inserted one by one: the few names repeat in every sample, so each is a short search
    // (collecting would sort every sample's names first); validated once each.
    let mut names: BTreeSet<&str> = BTreeSet::new();
    for sample in samples.clone() {
        for name in sample.metrics.keys() {
            names.insert(name);
        }
    }
    names.retain(|n| n.starts_with("container_") && valid_metric_name(n));
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
    let labels = [
        ("id", c.id.as_deref().or(Some(""))),
        ("name", c.name.as_deref().or(Some(""))),
        ("image", c.image.name.as_deref().or(Some(""))),
        ("host", Some(s.host.name.as_str())),
        ("namespace", k.namespace.as_deref()),
        ("pod", k.pod.name.as_deref()),
        ("container", k.container.name.as_deref()),
    ];
    out.push('{');
    let present = labels.iter().filter_map(|(l, v)| Some((*l, (*v)?)));
    for (i, (label, value)) in present.enumerate() {
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

/// A histogram of durations over `N` fixed upper bounds (seconds). The owner keeps the bounds and
/// passes them to [`DurationHistogram::observe`] and [`DurationHistogram::render`], so a metrics
/// struct holding histograms can still derive `Default`. Observing is three relaxed atomic adds.
#[derive(Debug)]
pub struct DurationHistogram<const N: usize> {
    /// Observations per bucket (not cumulative: each falls in the first bucket that holds it).
    buckets: [AtomicU64; N],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl<const N: usize> Default for DurationHistogram<N> {
    fn default() -> Self {
        DurationHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> DurationHistogram<N> {
    /// Counts one duration; `bounds` ascending.
    pub fn observe(&self, bounds: &[f64; N], elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = bounds.iter().position(|&le| seconds <= le) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Writes the family `name`: HELP, TYPE, the cumulative buckets, `+Inf`, sum and count.
    pub fn render(&self, out: &mut String, bounds: &[f64; N], name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        self.render_samples(out, bounds, name, "");
    }

    /// Writes only the sample lines of `name` with the extra `labels` (e.g. `sink="es"`, already
    /// escaped; empty for none), for a family with one histogram per label set.
    pub fn render_samples(&self, out: &mut String, bounds: &[f64; N], name: &str, labels: &str) {
        let (open, sep, close) = if labels.is_empty() {
            ("", "", "")
        } else {
            ("{", ",", "}")
        };
        let mut cumulative = 0;
        for (le, bucket) in bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        // Read the count last so that `+Inf` is never below a finite bucket.
        let count = self.count.load(Relaxed).max(cumulative);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{open}{labels}{close} {sum}");
        let _ = writeln!(out, "{name}_count{open}{labels}{close} {count}");
    }
}

/// Text-format escaping of a label value: backslash, double quote and line feed.
pub fn escape_label_value(out: &mut String, value: &str) {
    let clean = if value.len() < 32 {
        !value.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n'))
    } else {
        memchr::memchr3(b'\\', b'"', b'\n', value.as_bytes()).is_none()
    };
    if clean {
        out.push_str(value);
        return;
    }
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
    } else if v.fract() == 0.0 && v.abs() < 1e15 && !(v == 0.0 && v.is_sign_negative()) {
        // Whole numbers (counters, limits) print the digits `{v}` prints, faster.
        out.push_str(itoa::Buffer::new().format(v as i64));
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

/// cAdvisor's HELP texts for the metrics ferry's agent sends.
fn help(name: &str) -> &'static str {
    match name {
        "container_cpu_usage_seconds_total" => "Cumulative cpu time consumed in seconds.",
        "container_cpu_user_seconds_total" => "Cumulative user cpu time consumed in seconds.",
        "container_cpu_system_seconds_total" => "Cumulative system cpu time consumed in seconds.",
        "container_cpu_cfs_periods_total" => "Number of elapsed enforcement period intervals.",
        "container_cpu_cfs_throttled_periods_total" => "Number of throttled period intervals.",
        "container_cpu_cfs_throttled_seconds_total" => {
            "Total time duration the container has been throttled."
        }
        "container_spec_cpu_shares" => "CPU share of the container.",
        "container_spec_cpu_quota" => "CPU quota of the container.",
        "container_spec_cpu_period" => "CPU period of the container.",
        "container_memory_usage_bytes" => {
            "Current memory usage in bytes, including all memory regardless of when it was accessed."
        }
        "container_memory_working_set_bytes" => "Current working set in bytes.",
        "container_memory_rss" => "Size of RSS in bytes.",
        "container_memory_cache" => "Number of bytes of page cache memory.",
        "container_memory_swap" => "Container swap usage in bytes.",
        "container_memory_mapped_file" => "Size of memory mapped files in bytes.",
        "container_memory_max_usage_bytes" => "Maximum memory usage recorded in bytes.",
        "container_spec_memory_limit_bytes" => "Memory limit for the container (0 when unlimited).",
        "container_oom_events_total" => "Count of out of memory events observed for the container.",
        "container_fs_reads_bytes_total" => "Cumulative count of bytes read.",
        "container_fs_writes_bytes_total" => "Cumulative count of bytes written.",
        "container_fs_reads_total" => "Cumulative count of reads completed.",
        "container_fs_writes_total" => "Cumulative count of writes completed.",
        "container_processes" => "Number of processes running inside the container.",
        "container_threads" => "Number of threads running inside the container.",
        "container_threads_max" => {
            "Maximum number of threads allowed inside the container, infinity if value is zero."
        }
        "container_network_receive_bytes_total" => "Cumulative count of bytes received.",
        "container_network_receive_packets_total" => "Cumulative count of packets received.",
        "container_network_receive_errors_total" => {
            "Cumulative count of errors encountered while receiving."
        }
        "container_network_receive_packets_dropped_total" => {
            "Cumulative count of packets dropped while receiving."
        }
        "container_network_transmit_bytes_total" => "Cumulative count of bytes transmitted.",
        "container_network_transmit_packets_total" => "Cumulative count of packets transmitted.",
        "container_network_transmit_errors_total" => {
            "Cumulative count of errors encountered while transmitting."
        }
        "container_network_transmit_packets_dropped_total" => {
            "Cumulative count of packets dropped while transmitting."
        }
        _ => "Container metric reported by ferry agents.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_as_display_does_and_labels_escape() {
        for v in [
            0.0,
            -0.0,
            1.0,
            -7.0,
            42.0,
            0.5,
            1e14,
            999_999_999_999_999.0,
            1e15,
            1e21,
            -3.25,
            536_870_912.0,
            1.0e-7,
            123_456.789,
        ] {
            let mut out = String::new();
            write_value(&mut out, v);
            assert_eq!(out, format!("{v}"), "{v:?}");
        }
        let mut out = String::new();
        write_value(&mut out, f64::NEG_INFINITY);
        write_value(&mut out, f64::NAN);
        assert_eq!(out, "-InfNaN");
        let mut out = String::new();
        escape_label_value(&mut out, "plain");
        escape_label_value(&mut out, "a\\b\"c\nd");
        assert_eq!(out, "plaina\\\\b\\\"c\\nd");
        let long = "a fairly long label value, then a quote\" and a line\n";
        let mut out = String::new();
        escape_label_value(&mut out, long);
        assert_eq!(out, long.replace('"', "\\\"").replace('\n', "\\n"));
    }
}
