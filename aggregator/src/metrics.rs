//! The aggregator's own metrics: plain atomics bumped on the hot path and rendered on demand in
//! the Prometheus text exposition format (version 0.0.4) for `GET /metrics`.
//!
//! Counters end in `_total`, durations are `_seconds` histograms, sizes are `_bytes`, and error
//! counters carry an `error_type` label whose values are fixed enums, so cardinality is bounded.
//! [`Metrics::sample`] gives the alert history the series of the page without rendering the
//! ones that grow with the nodes (containers, log lines). This module only counts and
//! renders; it never decides anything.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_wire::DurationHistogram;

/// Upper bounds (seconds) of the duration histogram buckets.
const BUCKETS_SECONDS: [f64; 8] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// The HTTP status codes `ferry_ingest_requests_total` distinguishes (anything else is `other`).
const CODES: [u16; 10] = [200, 400, 401, 403, 404, 405, 413, 415, 500, 503];

/// Why an ingest request was refused (`ferry_ingest_errors_total{error_type}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IngestError {
    Unauthorized,
    TooLarge,
    BadBatch,
    BadEncoding,
    QueueFull,
    /// The queue's file system has no room left (ENOSPC, EDQUOT): answered 503 like a full queue.
    DiskFull,
    Io,
}

impl IngestError {
    const ALL: [IngestError; 7] = [
        IngestError::Unauthorized,
        IngestError::TooLarge,
        IngestError::BadBatch,
        IngestError::BadEncoding,
        IngestError::QueueFull,
        IngestError::DiskFull,
        IngestError::Io,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            IngestError::Unauthorized => "unauthorized",
            IngestError::TooLarge => "too_large",
            IngestError::BadBatch => "bad_batch",
            IngestError::BadEncoding => "bad_encoding",
            IngestError::QueueFull => "queue_full",
            IngestError::DiskFull => "disk_full",
            IngestError::Io => "io",
        }
    }
}

/// Why the sink could not apply a queue entry (`ferry_sink_errors_total{error_type}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SinkError {
    /// Writing the store failed; the entry is retried.
    Io,
    /// A queue entry failed its checksum; the damaged bytes were moved aside and passed over.
    Corrupt,
    /// A queue entry did not decode as a batch; it was skipped.
    Decode,
}

impl SinkError {
    const ALL: [SinkError; 3] = [SinkError::Io, SinkError::Corrupt, SinkError::Decode];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SinkError::Io => "io",
            SinkError::Corrupt => "corrupt",
            SinkError::Decode => "decode",
        }
    }
}

/// Every metric the aggregator exports.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    requests: [AtomicU64; CODES.len()],
    requests_other: AtomicU64,
    pub(crate) ingest_records: AtomicU64,
    pub(crate) ingest_stats_samples: AtomicU64,
    pub(crate) ingest_bytes: AtomicU64,
    ingest_errors: [AtomicU64; IngestError::ALL.len()],
    ingest_duration: DurationHistogram<{ BUCKETS_SECONDS.len() }>,
    pub(crate) queue_bytes: AtomicU64,
    pub(crate) queue_records: AtomicU64,
    /// Queue bytes found damaged and passed over (kept under `queue/damaged/`).
    pub(crate) queue_damaged_bytes: AtomicU64,
    pub(crate) sink_records: AtomicU64,
    pub(crate) sink_duplicates: AtomicU64,
    /// Sources whose high-water marks the local store keeps.
    pub(crate) store_sources: AtomicU64,
    pub(crate) store_sources_retired: AtomicU64,
    pub(crate) store_sources_evicted: AtomicU64,
    sink_duration: DurationHistogram<{ BUCKETS_SECONDS.len() }>,
    sink_errors: [AtomicU64; SinkError::ALL.len()],
    /// Latest container stats from the agents (cAdvisor series).
    pub(crate) containers: crate::containers::Containers,
    /// Log lines per container, stream and level, and each agent's last batch time.
    pub(crate) log_lines: crate::alerts::LogLines,
    /// The alert engine's counters (set when alerts are configured).
    alerts: std::sync::OnceLock<std::sync::Arc<crate::alerts::AlertMetrics>>,
    /// The TLS counters (set when TLS is configured).
    tls: std::sync::OnceLock<std::sync::Arc<crate::tls::Tls>>,
    /// Each sink's own metrics (set once the sinks start).
    sinks: std::sync::OnceLock<Vec<std::sync::Arc<crate::sink_metrics::SinkMetrics>>>,
}

impl Metrics {
    /// Times one accepted batch request (`ferry_ingest_duration_seconds`).
    pub(crate) fn observe_ingest(&self, took: Duration) {
        self.ingest_duration.observe(&BUCKETS_SECONDS, took);
    }

    /// Times one queue entry applied by the sink (`ferry_sink_duration_seconds`).
    pub(crate) fn observe_sink(&self, took: Duration) {
        self.sink_duration.observe(&BUCKETS_SECONDS, took);
    }

    /// Metrics whose container series expire `grace` after their last sample.
    pub(crate) fn with_stats_grace(grace: Duration) -> Self {
        Metrics {
            containers: crate::containers::Containers::new(grace),
            ..Metrics::default()
        }
    }

    pub(crate) fn request(&self, code: u16) {
        match CODES.iter().position(|&c| c == code) {
            Some(i) => self.requests[i].fetch_add(1, Ordering::Relaxed),
            None => self.requests_other.fetch_add(1, Ordering::Relaxed),
        };
    }

    pub(crate) fn ingest_error(&self, kind: IngestError) {
        let i = IngestError::ALL
            .iter()
            .position(|&k| k == kind)
            .unwrap_or(0);
        self.ingest_errors[i].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sink_error(&self, kind: SinkError) {
        let i = SinkError::ALL.iter().position(|&k| k == kind).unwrap_or(0);
        self.sink_errors[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Registers the sinks' metrics (once, at start).
    pub(crate) fn set_sinks(&self, sinks: Vec<std::sync::Arc<crate::sink_metrics::SinkMetrics>>) {
        let _ = self.sinks.set(sinks);
    }

    /// Registers the alert engine's counters (once, at start).
    pub(crate) fn set_alerts(&self, alerts: std::sync::Arc<crate::alerts::AlertMetrics>) {
        let _ = self.alerts.set(alerts);
    }

    /// Registers the TLS side's counters (once, at start).
    pub(crate) fn set_tls(&self, tls: std::sync::Arc<crate::tls::Tls>) {
        let _ = self.tls.set(tls);
    }

    /// The sinks' metrics.
    pub(crate) fn sinks(&self) -> &[std::sync::Arc<crate::sink_metrics::SinkMetrics>] {
        self.sinks.get().map_or(&[], Vec::as_slice)
    }

    /// Why a sink is not working, if one is not.
    pub(crate) fn sink_problem(&self) -> Option<String> {
        self.sinks().iter().find_map(|s| s.problem())
    }

    /// All ingest and sink errors so far.
    pub(crate) fn errors(&self) -> u64 {
        self.ingest_errors
            .iter()
            .chain(&self.sink_errors)
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Renders every metric in the Prometheus text format, version 0.0.4.
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.render_into(&mut out, true);
        out
    }

    /// Gives the round in progress of `history` every series [`Metrics::render`] shows, with
    /// the same labels and values: the container and log-line series (the families that grow
    /// with the nodes) straight from where they are kept, the fixed families (the pipeline's
    /// counters and histograms, the sinks', the alert engine's, TLS: a few hundred lines at
    /// most) through their text, rendered into `scratch`. Returns the lines it could not read.
    pub(crate) fn sample(
        &self,
        history: &mut crate::alerts::History,
        scratch: &mut String,
    ) -> Vec<crate::alerts::BadLine> {
        scratch.clear();
        self.render_into(scratch, false);
        let bad = history.sample_text(scratch);
        self.log_lines.sample(history);
        self.containers.sample(history);
        bad
    }

    /// Renders the families, those that grow with the nodes only when `growing`.
    fn render_into(&self, out: &mut String, growing: bool) {
        header(
            out,
            "ferry_ingest_requests_total",
            "Batch requests answered, by HTTP status code.",
            "counter",
        );
        for (code, n) in CODES.iter().zip(&self.requests) {
            let _ = writeln!(
                out,
                "ferry_ingest_requests_total{{code=\"{code}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "ferry_ingest_requests_total{{code=\"other\"}} {}",
            self.requests_other.load(Ordering::Relaxed)
        );
        counter(
            out,
            "ferry_ingest_records_total",
            "Log records accepted into the queue.",
            &self.ingest_records,
        );
        counter(
            out,
            "ferry_ingest_stats_samples_total",
            "Container stats samples accepted into the queue.",
            &self.ingest_stats_samples,
        );
        counter(
            out,
            "ferry_ingest_bytes_total",
            "Decompressed batch bytes accepted into the queue.",
            &self.ingest_bytes,
        );
        header(
            out,
            "ferry_ingest_errors_total",
            "Batch requests refused, by reason.",
            "counter",
        );
        for (kind, n) in IngestError::ALL.iter().zip(&self.ingest_errors) {
            let _ = writeln!(
                out,
                "ferry_ingest_errors_total{{error_type=\"{}\"}} {}",
                kind.as_str(),
                n.load(Ordering::Relaxed)
            );
        }
        self.ingest_duration.render(
            out,
            &BUCKETS_SECONDS,
            "ferry_ingest_duration_seconds",
            "Time to read, decode and durably queue one batch request.",
        );
        gauge(
            out,
            "ferry_queue_bytes",
            "Bytes in the durable queue not yet committed by the sink.",
            &self.queue_bytes,
        );
        gauge(
            out,
            "ferry_queue_records",
            "Log records in the durable queue not yet committed by the sink.",
            &self.queue_records,
        );
        counter(
            out,
            "ferry_queue_damaged_bytes_total",
            "Queue bytes found damaged (checksum or framing) and passed over; copies are kept under queue/damaged/.",
            &self.queue_damaged_bytes,
        );
        counter(
            out,
            "ferry_sink_records_total",
            "Log records written by the sink.",
            &self.sink_records,
        );
        counter(
            out,
            "ferry_sink_duplicates_total",
            "Log records the sink recognised as already stored and skipped.",
            &self.sink_duplicates,
        );
        gauge(
            out,
            "ferry_store_sources",
            "Sources (log file fingerprints) whose high-water marks the local store keeps for de-duplication.",
            &self.store_sources,
        );
        counter(
            out,
            "ferry_store_sources_retired_total",
            "Sources the local store forgot because their agent retired them.",
            &self.store_sources_retired,
        );
        counter(
            out,
            "ferry_store_sources_evicted_total",
            "Sources the local store forgot because it knew more than sink.max_sources; a replay of one would be stored again.",
            &self.store_sources_evicted,
        );
        self.sink_duration.render(
            out,
            &BUCKETS_SECONDS,
            "ferry_sink_duration_seconds",
            "Time to apply and commit one queue entry in the sink.",
        );
        header(
            out,
            "ferry_sink_errors_total",
            "Sink failures, by reason.",
            "counter",
        );
        for (kind, n) in SinkError::ALL.iter().zip(&self.sink_errors) {
            let _ = writeln!(
                out,
                "ferry_sink_errors_total{{error_type=\"{}\"}} {}",
                kind.as_str(),
                n.load(Ordering::Relaxed)
            );
        }
        crate::sink_metrics::render(out, self.sinks());
        if growing {
            self.log_lines.render(out);
        }
        if let Some(alerts) = self.alerts.get() {
            alerts.render(out);
        }
        if let Some(tls) = self.tls.get() {
            tls.metrics.render(out);
        }
        if growing {
            self.containers.render(out);
        }
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: &AtomicU64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
}

fn gauge(out: &mut String, name: &str, help: &str, value: &AtomicU64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_labels_and_histograms() {
        let m = Metrics::default();
        m.request(200);
        m.request(200);
        m.request(418);
        m.ingest_error(IngestError::QueueFull);
        m.sink_error(SinkError::Io);
        m.ingest_records.fetch_add(7, Ordering::Relaxed);
        m.observe_sink(Duration::from_millis(3));
        m.observe_sink(Duration::from_secs(60));
        let text = m.render();
        assert!(
            text.contains("ferry_ingest_requests_total{code=\"200\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("ferry_ingest_requests_total{code=\"other\"} 1\n"));
        assert!(text.contains("ferry_ingest_errors_total{error_type=\"queue_full\"} 1\n"));
        assert!(text.contains("ferry_sink_errors_total{error_type=\"io\"} 1\n"));
        assert!(text.contains("ferry_ingest_records_total 7\n"));
        assert!(text.contains("ferry_sink_duration_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("ferry_sink_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("ferry_sink_duration_seconds_bucket{le=\"5\"} 1\n"));
        assert!(text.contains("ferry_sink_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("ferry_sink_duration_seconds_count 2\n"));
        assert!(text.contains("# TYPE ferry_sink_duration_seconds histogram\n"));
        assert_eq!(m.errors(), 2);
        // Every sample line belongs to a family announced by a TYPE line just before it.
        let mut family = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap().to_string();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(&family), "{line} outside {family}");
            }
        }
    }

    /// A series as a history holds it: its key, its samples (stale markers left out, values
    /// as bits) and what an instant selector sees now.
    type Held = (String, Vec<(i64, u64)>, Option<u64>);

    /// Every series a history holds after the rounds so far.
    fn held(h: &crate::alerts::History, t: i64) -> Vec<Held> {
        let mut out: Vec<_> = h
            .series(None)
            .map(|s| {
                (
                    crate::alerts::key_of(&s.labels),
                    s.range(0, t)
                        .iter()
                        .map(|&(t, v)| (t, v.to_bits()))
                        .collect(),
                    s.at(t, 300_000).map(f64::to_bits),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Sampling the registry directly gives the history exactly what sampling its page gives:
    /// the same series (names, labels), the same values to the bit, stale markers for series
    /// that went away, histogram buckets, sums and counts.
    #[test]
    fn sampling_the_registry_is_sampling_its_page() {
        use crate::alerts::History;
        use crate::containers::tests::sample;
        use ferry_wire::{BatchBuilder, Compression, LogRecord, Stream};

        let m = Metrics::default();
        m.set_sinks(vec![std::sync::Arc::new(
            crate::sink_metrics::SinkMetrics::new("es", true),
        )]);
        let mut by_page = History::keeping(3_600_000);
        let mut direct = History::keeping(3_600_000);
        let mut scratch = String::new();
        let mut web = sample(
            "node-1",
            "abc",
            &[
                ("container_memory_working_set_bytes", 1.5e8),
                ("container_cpu_usage_seconds_total", 12.345_678_9),
                ("container_spec_memory_limit_bytes", 0.0),
                ("container_threads", f64::NAN),
                ("container_processes", -0.0),
                ("container_fs_reads_total", 1e21),
                ("container_network_receive_bytes_total", f64::INFINITY),
                ("not_a_container_metric", 1.0),
                ("container bad", 2.0),
            ],
        );
        web.container.name = Some("web \"1\"\\x\ny".into());
        web.kubernetes.namespace = Some("prod".into());
        web.kubernetes.pod.name = Some("web-7d9f".into());
        let db = sample("node-2", "def", &[("container_threads", 7.0)]);
        for round in 0..6i64 {
            let t = round * 15_000;
            match round {
                1 => {
                    // A metric joins a container; its other series keep their places.
                    web.metrics.insert("container_oom_events_total".into(), 1.0);
                    m.containers.observe(&[web.clone()]);
                }
                3 => {
                    // Renamed: the old series go stale, new ones appear.
                    web.container.name = Some("web-2".into());
                    m.containers.observe(&[web.clone()]);
                }
                _ => {
                    web.metrics.insert(
                        "container_cpu_usage_seconds_total".into(),
                        12.345_678_9 + round as f64 / 3.0,
                    );
                    m.containers.observe(&[web.clone(), db.clone()]);
                }
            }
            let mut b = BatchBuilder::new(format!("node-{}", round % 2));
            let mut r = LogRecord {
                message: "m".into(),
                timestamp: "2024-05-01T12:00:00.000Z".into(),
                stream: Some(Stream::Stderr),
                ..Default::default()
            };
            r.log.level = Some(if round % 2 == 0 { "error" } else { "info" }.into());
            r.log.file.path = "/x".into();
            r.log.file.fingerprint = "f".into();
            r.log.offset = round as u64;
            r.container.name = Some("/web".into());
            b.push_log(&r);
            let encoded = b.finish(Compression::None);
            let batch =
                ferry_wire::decode_batch(&encoded.body, Compression::None, 1 << 20).unwrap();
            m.log_lines.observe(&batch);
            m.log_lines
                .agent_seen("node-9", 1_700_000_000.123_6 + round as f64 / 7.0);
            m.request(200);
            m.observe_ingest(Duration::from_micros(1_234 * round as u64 + 7));
            m.sinks()[0].bulk_request(
                crate::sink_metrics::BulkOutcome::Ok,
                Duration::from_millis(30),
            );

            assert!(by_page.sample_exposition(&m.render(), t).is_empty());
            direct.begin_round(t);
            assert!(m.sample(&mut direct, &mut scratch).is_empty());
            direct.end_round();
            let (a, b) = (held(&by_page, t), held(&direct, t));
            assert_eq!(a, b, "round {round}");
            for want in [
                "container_threads{host=\"node-2\",id=\"def\"}",
                "container_threads{host=\"node-1\",id=\"abc\",name=\"web-2\",namespace=\"prod\",pod=\"web-7d9f\"}",
                "ferry_ingest_duration_seconds_bucket{le=\"+Inf\"}",
                "ferry_ingest_duration_seconds_sum",
                "ferry_sink_bulk_duration_seconds_count{sink=\"es\"}",
                "ferry_agent_last_batch_timestamp_seconds{host=\"node-9\"}",
                "ferry_container_log_lines_overflow_total",
            ] {
                if want.contains("web-2") && round < 3 {
                    continue;
                }
                assert!(b.iter().any(|(k, _, _)| *k == want), "{want} missing: {b:?}");
            }
            let renamed = b
                .iter()
                .filter(|(k, _, now)| k.contains("web \\\"1") && now.is_some())
                .count();
            assert_eq!(
                renamed,
                if round >= 3 {
                    0
                } else {
                    7 + (round >= 1) as usize
                }
            );
        }
        assert_eq!(by_page.len(), direct.len());
    }

    /// Runs `promtool check metrics` over the rendering when promtool is installed.
    #[test]
    fn promtool_accepts_the_exposition() {
        let m = Metrics::default();
        m.request(200);
        m.observe_ingest(Duration::from_millis(20));
        // promtool exits 0 on success; lint warnings (exit 3) are not parse errors but we keep none.
        if let Some((ok, output)) = crate::containers::server_tests::promtool_check(&m.render()) {
            assert!(ok, "promtool: {output}");
        }
    }
}
