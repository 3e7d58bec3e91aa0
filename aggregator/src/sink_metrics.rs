//! Per-sink metrics, labelled `sink="<name>"`: the depth of the queue each sink has left and the
//! age of its oldest record, whether it runs, and for Elasticsearch sinks the bulk requests by
//! outcome, the items by result, the bulk latency and the dead letters.
//!
//! One [`SinkMetrics`] per configured sink, bumped by that sink and rendered into the existing
//! `/metrics` page by [`render`] (each family once, with a line per sink). Label values are fixed
//! enums or the sink's validated name, so cardinality is bounded. This module only counts.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use ferry_wire::DurationHistogram;

use crate::queue::{ConsumerId, WeakQueue};

/// Upper bounds (seconds) of the bulk latency buckets.
const BULK_BUCKETS_SECONDS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// How a bulk request ended (`ferry_sink_bulk_requests_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BulkOutcome {
    /// 200 with a readable per-item answer (items may still have failed).
    Ok,
    /// 413: the request was split in halves.
    TooLarge,
    /// 429 for the whole request: retried after a backoff.
    Rejected,
    /// 5xx: retried after a backoff (on another node when there is one).
    Unavailable,
    /// 400 for the whole request: split in halves to isolate the document at fault.
    BadRequest,
    /// 401/403: credentials refused; retried after a backoff until fixed.
    Unauthorized,
    /// Any other status: retried after a backoff.
    OtherStatus,
    /// Connection refused or reset, or the request timed out: retried (on another node when
    /// there is one).
    Connection,
    /// 200 whose body could not be matched to the request: retried whole.
    BadResponse,
}

impl BulkOutcome {
    const ALL: [BulkOutcome; 9] = [
        BulkOutcome::Ok,
        BulkOutcome::TooLarge,
        BulkOutcome::Rejected,
        BulkOutcome::Unavailable,
        BulkOutcome::BadRequest,
        BulkOutcome::Unauthorized,
        BulkOutcome::OtherStatus,
        BulkOutcome::Connection,
        BulkOutcome::BadResponse,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BulkOutcome::Ok => "ok",
            BulkOutcome::TooLarge => "too_large",
            BulkOutcome::Rejected => "rejected",
            BulkOutcome::Unavailable => "unavailable",
            BulkOutcome::BadRequest => "bad_request",
            BulkOutcome::Unauthorized => "unauthorized",
            BulkOutcome::OtherStatus => "other_status",
            BulkOutcome::Connection => "connection",
            BulkOutcome::BadResponse => "bad_response",
        }
    }
}

/// What became of one bulk item (`ferry_sink_items_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ItemResult {
    Created,
    /// 409 on `create`: already indexed (a replay), counted as settled.
    Duplicate,
    /// 429/5xx: sent again alone, after a backoff.
    Retried,
    /// 400-class: written to the dead-letter store.
    DeadLettered,
}

impl ItemResult {
    const ALL: [ItemResult; 4] = [
        ItemResult::Created,
        ItemResult::Duplicate,
        ItemResult::Retried,
        ItemResult::DeadLettered,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ItemResult::Created => "created",
            ItemResult::Duplicate => "duplicate",
            ItemResult::Retried => "retried",
            ItemResult::DeadLettered => "dead_lettered",
        }
    }
}

/// Where a dead letter was written (`ferry_sink_dead_letters_total{destination}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadLetterDestination {
    /// The local NDJSON file (always).
    File,
    /// The configured dead-letter index.
    Index,
    /// The dead-letter index refused it (it stays in the file).
    IndexFailed,
}

impl DeadLetterDestination {
    const ALL: [DeadLetterDestination; 3] = [
        DeadLetterDestination::File,
        DeadLetterDestination::Index,
        DeadLetterDestination::IndexFailed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            DeadLetterDestination::File => "file",
            DeadLetterDestination::Index => "index",
            DeadLetterDestination::IndexFailed => "index_failed",
        }
    }
}

/// One sink's metrics.
#[derive(Debug)]
pub(crate) struct SinkMetrics {
    /// The sink's name (the `sink` label).
    pub(crate) name: String,
    /// Whether the sink bulk-indexes (only those render the bulk families).
    bulk: bool,
    requests: [AtomicU64; BulkOutcome::ALL.len()],
    items: [AtomicU64; ItemResult::ALL.len()],
    dead_letters: [AtomicU64; DeadLetterDestination::ALL.len()],
    bulk_duration: DurationHistogram<{ BULK_BUCKETS_SECONDS.len() }>,
    /// Cleared when the sink's thread ends.
    pub(crate) alive: std::sync::Arc<AtomicBool>,
    /// Why the sink stopped for good (shown by `/health`).
    failure: Mutex<Option<String>>,
    /// The sink's place in the queue, for depth and age (weak: the queue owns the metrics).
    queue: OnceLock<(WeakQueue, ConsumerId)>,
}

impl SinkMetrics {
    pub(crate) fn new(name: &str, bulk: bool) -> SinkMetrics {
        SinkMetrics {
            name: name.to_string(),
            bulk,
            requests: Default::default(),
            items: Default::default(),
            dead_letters: Default::default(),
            bulk_duration: DurationHistogram::default(),
            alive: std::sync::Arc::new(AtomicBool::new(true)),
            failure: Mutex::new(None),
            queue: OnceLock::new(),
        }
    }

    /// Ties the sink to its consumer of the queue (for depth and age).
    pub(crate) fn attach(&self, queue: WeakQueue, consumer: ConsumerId) {
        let _ = self.queue.set((queue, consumer));
    }

    pub(crate) fn bulk_request(&self, outcome: BulkOutcome, took: Duration) {
        let i = BulkOutcome::ALL
            .iter()
            .position(|&o| o == outcome)
            .unwrap_or(0);
        self.requests[i].fetch_add(1, Ordering::Relaxed);
        self.bulk_duration.observe(&BULK_BUCKETS_SECONDS, took);
    }

    pub(crate) fn items(&self, result: ItemResult, n: u64) {
        let i = ItemResult::ALL
            .iter()
            .position(|&r| r == result)
            .unwrap_or(0);
        self.items[i].fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn item_count(&self, result: ItemResult) -> u64 {
        let i = ItemResult::ALL
            .iter()
            .position(|&r| r == result)
            .unwrap_or(0);
        self.items[i].load(Ordering::Relaxed)
    }

    pub(crate) fn dead_letters(&self, destination: DeadLetterDestination, n: u64) {
        let i = DeadLetterDestination::ALL
            .iter()
            .position(|&d| d == destination)
            .unwrap_or(0);
        self.dead_letters[i].fetch_add(n, Ordering::Relaxed);
    }

    /// Marks the sink as stopped for good, with the reason `/health` shows.
    pub(crate) fn fail(&self, reason: String) {
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }

    /// Why the sink is not working, if it is not.
    pub(crate) fn problem(&self) -> Option<String> {
        if let Some(reason) = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Some(format!("sink {}: {reason}", self.name));
        }
        (!self.alive.load(Ordering::SeqCst))
            .then(|| format!("sink {}: its thread stopped", self.name))
    }

    /// (bytes, log records) the sink has not committed, and the age of the oldest.
    fn queue_state(&self) -> ((u64, u64), Option<Duration>) {
        match self.queue.get() {
            Some((queue, consumer)) => (queue.depth(*consumer), queue.oldest_age(*consumer)),
            None => ((0, 0), None),
        }
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders every sink's series (nothing when there are no sinks).
pub(crate) fn render(out: &mut String, sinks: &[std::sync::Arc<SinkMetrics>]) {
    if sinks.is_empty() {
        return;
    }
    let states: Vec<_> = sinks.iter().map(|s| s.queue_state()).collect();
    header(
        out,
        "ferry_sink_up",
        "Whether the sink is running (0: stopped; see /health).",
        "gauge",
    );
    for s in sinks {
        let up = u8::from(s.problem().is_none());
        let _ = writeln!(out, "ferry_sink_up{{sink=\"{}\"}} {up}", s.name);
    }
    header(
        out,
        "ferry_sink_queue_bytes",
        "Queue bytes the sink has not committed.",
        "gauge",
    );
    for (s, ((bytes, _), _)) in sinks.iter().zip(&states) {
        let _ = writeln!(out, "ferry_sink_queue_bytes{{sink=\"{}\"}} {bytes}", s.name);
    }
    header(
        out,
        "ferry_sink_queue_records",
        "Log records in the queue the sink has not committed.",
        "gauge",
    );
    for (s, ((_, records), _)) in sinks.iter().zip(&states) {
        let _ = writeln!(
            out,
            "ferry_sink_queue_records{{sink=\"{}\"}} {records}",
            s.name
        );
    }
    header(
        out,
        "ferry_sink_oldest_record_age_seconds",
        "Time since the oldest queue entry the sink has not committed was queued (0 when none).",
        "gauge",
    );
    for (s, (_, age)) in sinks.iter().zip(&states) {
        let age = age.map_or(0.0, |a| a.as_secs_f64());
        let _ = writeln!(
            out,
            "ferry_sink_oldest_record_age_seconds{{sink=\"{}\"}} {age:.3}",
            s.name
        );
    }
    let bulk: Vec<_> = sinks.iter().filter(|s| s.bulk).collect();
    if bulk.is_empty() {
        return;
    }
    header(
        out,
        "ferry_sink_bulk_requests_total",
        "Bulk requests sent, by outcome.",
        "counter",
    );
    for s in &bulk {
        for (o, n) in BulkOutcome::ALL.iter().zip(&s.requests) {
            let _ = writeln!(
                out,
                "ferry_sink_bulk_requests_total{{sink=\"{}\",outcome=\"{}\"}} {}",
                s.name,
                o.as_str(),
                n.load(Ordering::Relaxed)
            );
        }
    }
    header(
        out,
        "ferry_sink_items_total",
        "Bulk items, by result: created, duplicate (409 on create: already indexed), retried (429/5xx, sent again), dead_lettered (400-class).",
        "counter",
    );
    for s in &bulk {
        for (r, n) in ItemResult::ALL.iter().zip(&s.items) {
            let _ = writeln!(
                out,
                "ferry_sink_items_total{{sink=\"{}\",result=\"{}\"}} {}",
                s.name,
                r.as_str(),
                n.load(Ordering::Relaxed)
            );
        }
    }
    header(
        out,
        "ferry_sink_dead_letters_total",
        "Dead-lettered records written, by destination (file: the local NDJSON file; index: the dead-letter index; index_failed: refused by that index, kept in the file).",
        "counter",
    );
    for s in &bulk {
        for (d, n) in DeadLetterDestination::ALL.iter().zip(&s.dead_letters) {
            let _ = writeln!(
                out,
                "ferry_sink_dead_letters_total{{sink=\"{}\",destination=\"{}\"}} {}",
                s.name,
                d.as_str(),
                n.load(Ordering::Relaxed)
            );
        }
    }
    header(
        out,
        "ferry_sink_bulk_duration_seconds",
        "Time from sending a bulk request to having its answer.",
        "histogram",
    );
    for s in &bulk {
        let labels = format!("sink=\"{}\"", s.name);
        s.bulk_duration.render_samples(
            out,
            &BULK_BUCKETS_SECONDS,
            "ferry_sink_bulk_duration_seconds",
            &labels,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn renders_one_family_per_metric_with_a_line_per_sink() {
        let es = Arc::new(SinkMetrics::new("es-main", true));
        let local = Arc::new(SinkMetrics::new("local", false));
        es.bulk_request(BulkOutcome::Ok, Duration::from_millis(30));
        es.bulk_request(BulkOutcome::Rejected, Duration::from_millis(2));
        es.items(ItemResult::Created, 5);
        es.items(ItemResult::Duplicate, 2);
        es.dead_letters(DeadLetterDestination::File, 1);
        local.alive.store(false, Ordering::SeqCst);
        let mut out = String::new();
        render(&mut out, &[Arc::clone(&es), Arc::clone(&local)]);
        for line in [
            "ferry_sink_up{sink=\"es-main\"} 1\n",
            "ferry_sink_up{sink=\"local\"} 0\n",
            "ferry_sink_queue_records{sink=\"local\"} 0\n",
            "ferry_sink_bulk_requests_total{sink=\"es-main\",outcome=\"ok\"} 1\n",
            "ferry_sink_bulk_requests_total{sink=\"es-main\",outcome=\"rejected\"} 1\n",
            "ferry_sink_items_total{sink=\"es-main\",result=\"created\"} 5\n",
            "ferry_sink_items_total{sink=\"es-main\",result=\"duplicate\"} 2\n",
            "ferry_sink_dead_letters_total{sink=\"es-main\",destination=\"file\"} 1\n",
            "ferry_sink_bulk_duration_seconds_bucket{sink=\"es-main\",le=\"0.005\"} 1\n",
            "ferry_sink_bulk_duration_seconds_bucket{sink=\"es-main\",le=\"+Inf\"} 2\n",
            "ferry_sink_bulk_duration_seconds_count{sink=\"es-main\"} 2\n",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        assert!(
            !out.contains("sink=\"local\",outcome"),
            "local has no bulk series"
        );
        assert_eq!(out.matches("# TYPE ferry_sink_items_total").count(), 1);
        assert!(local.problem().unwrap().contains("local"));
        if let Some((ok, output)) = crate::containers::server_tests::promtool_check(&out) {
            assert!(ok, "promtool: {output}");
        }
    }
}
