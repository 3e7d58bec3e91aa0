//! The agent's own metrics: lock-free counters, Prometheus text exposition, and the small HTTP
//! server for `GET /metrics` and `GET /health`.
//!
//! Every error the pipeline counts also goes through [`Metrics::error`], which remembers the last
//! error for [`crate::AgentStatus`]. Metric names follow the project rule: counters end in
//! `_total`, bytes in `_bytes`, durations are `_seconds` histograms, errors carry `error_type`.
//!
//! Every metric the agent exposes is held here, including the ones other parts keep current (the
//! stats collector's figures in [`StatsMetrics`], the Docker registry's [`ContainerGauges`]), so
//! this module depends on no other part of the agent.

mod containers;
mod stats;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry_wire::DurationHistogram;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

pub(crate) use containers::ContainerGauges;
pub(crate) use stats::StatsMetrics;

/// Why a send to the aggregator failed (`error_type` of `ferry_agent_send_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendError {
    Connect,
    Transport,
    Timeout,
    Unavailable,
    RateLimited,
    Unauthorized,
    ServerError,
    Rejected,
    TooLarge,
    UnexpectedStatus,
    /// The TLS handshake or session failed (wrong CA, expired certificate, host-name mismatch,
    /// refused client certificate).
    Tls,
}

impl SendError {
    const ALL: [SendError; 11] = [
        SendError::Connect,
        SendError::Transport,
        SendError::Timeout,
        SendError::Unavailable,
        SendError::RateLimited,
        SendError::Unauthorized,
        SendError::ServerError,
        SendError::Rejected,
        SendError::TooLarge,
        SendError::UnexpectedStatus,
        SendError::Tls,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SendError::Connect => "connect",
            SendError::Transport => "transport",
            SendError::Timeout => "timeout",
            SendError::Unavailable => "unavailable",
            SendError::RateLimited => "rate_limited",
            SendError::Unauthorized => "unauthorized",
            SendError::ServerError => "server_error",
            SendError::Rejected => "rejected",
            SendError::TooLarge => "too_large",
            SendError::UnexpectedStatus => "unexpected_status",
            SendError::Tls => "tls",
        }
    }
}

/// What a decoder complained about (`error_type` of `ferry_agent_decode_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    MalformedJson,
    MalformedCri,
    InvalidUtf8,
}

impl DecodeError {
    const ALL: [DecodeError; 3] = [
        DecodeError::MalformedJson,
        DecodeError::MalformedCri,
        DecodeError::InvalidUtf8,
    ];

    fn as_str(self) -> &'static str {
        match self {
            DecodeError::MalformedJson => "malformed_json",
            DecodeError::MalformedCri => "malformed_cri",
            DecodeError::InvalidUtf8 => "invalid_utf8",
        }
    }
}

/// Why the rest of a source could not be read (`reason` of `ferry_agent_sources_lost_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LostReason {
    /// Truncated (or truncated and written again) with no uncompressed copy beside it.
    Truncated,
    /// Its file and every rotated sibling holding it are gone.
    Gone,
    /// Only compressed rotated siblings remain, which are never read.
    Compressed,
}

impl LostReason {
    const ALL: [LostReason; 3] = [
        LostReason::Truncated,
        LostReason::Gone,
        LostReason::Compressed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LostReason::Truncated => "truncated",
            LostReason::Gone => "gone",
            LostReason::Compressed => "compressed",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// Upper bounds of the send-duration histogram, in seconds.
const BUCKETS_SECONDS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// All counters of one agent.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub files_tailed: AtomicU64,
    pub lines_read: AtomicU64,
    pub bytes_read: AtomicU64,
    pub lines_truncated: AtomicU64,
    pub records_sent: AtomicU64,
    pub batches_sent: AtomicU64,
    /// Switches to the next aggregator URL after a failure.
    pub failovers: AtomicU64,
    /// `output = "discard"`: what was built and dropped.
    pub records_discarded: AtomicU64,
    pub batches_discarded: AtomicU64,
    pub dead_letter_batches: AtomicU64,
    /// Errors of any kind (send, read, checkpoint, dead letter), for the status.
    pub errors: AtomicU64,
    send_errors: [AtomicU64; 10],
    decode_errors: [AtomicU64; 3],
    sources_lost: [AtomicU64; 3],
    lost_bytes: [AtomicU64; 3],
    send_duration: DurationHistogram<{ BUCKETS_SECONDS.len() }>,
    last_error: Mutex<Option<String>>,
    /// Container stats: the collector's own figures and the latest sample per container.
    pub stats: StatsMetrics,
    /// `ferry_agent_containers{state}`, kept by the Docker registry.
    pub containers: Arc<ContainerGauges>,
}

impl Metrics {
    /// Counts an error and remembers it as the last one.
    pub fn error(&self, message: String) {
        self.errors.fetch_add(1, Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(message);
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }

    pub fn send_error(&self, kind: SendError, message: String) {
        self.send_errors[SendError::ALL.iter().position(|k| *k == kind).unwrap_or(0)]
            .fetch_add(1, Relaxed);
        self.error(message);
    }

    pub fn decode_error(&self, kind: DecodeError) {
        self.decode_errors[DecodeError::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(0)]
        .fetch_add(1, Relaxed);
    }

    /// Counts a source whose rest could not be read, and the bytes known to be unread.
    pub fn source_lost(&self, reason: LostReason, unread_bytes: u64) {
        self.sources_lost[reason.index()].fetch_add(1, Relaxed);
        self.lost_bytes[reason.index()].fetch_add(unread_bytes, Relaxed);
    }

    /// (sources lost, unread bytes) for `reason`.
    #[cfg(test)]
    pub fn lost(&self, reason: LostReason) -> (u64, u64) {
        (
            self.sources_lost[reason.index()].load(Relaxed),
            self.lost_bytes[reason.index()].load(Relaxed),
        )
    }

    pub fn observe_send(&self, took: Duration) {
        self.send_duration.observe(&BUCKETS_SECONDS, took);
    }

    #[cfg(test)]
    pub fn send_errors_of(&self, kind: SendError) -> u64 {
        self.send_errors[SendError::ALL.iter().position(|k| *k == kind).unwrap_or(0)].load(Relaxed)
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut simple = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        };
        simple(
            "ferry_agent_files_tailed",
            "gauge",
            "Files currently open for tailing.",
            self.files_tailed.load(Relaxed),
        );
        simple(
            "ferry_agent_lines_read_total",
            "counter",
            "Lines read from log files.",
            self.lines_read.load(Relaxed),
        );
        simple(
            "ferry_agent_bytes_read_total",
            "counter",
            "Bytes of lines read from log files.",
            self.bytes_read.load(Relaxed),
        );
        simple(
            "ferry_agent_records_sent_total",
            "counter",
            "Records acknowledged by the aggregator.",
            self.records_sent.load(Relaxed),
        );
        simple(
            "ferry_agent_batches_sent_total",
            "counter",
            "Batches acknowledged by the aggregator.",
            self.batches_sent.load(Relaxed),
        );
        simple(
            "ferry_agent_aggregator_failovers_total",
            "counter",
            "Switches to the next of several aggregator URLs after a failed send.",
            self.failovers.load(Relaxed),
        );
        simple(
            "ferry_agent_records_discarded_total",
            "counter",
            "Records built and dropped because output = \"discard\".",
            self.records_discarded.load(Relaxed),
        );
        simple(
            "ferry_agent_batches_discarded_total",
            "counter",
            "Batches built and dropped because output = \"discard\".",
            self.batches_discarded.load(Relaxed),
        );
        simple(
            "ferry_agent_lines_truncated_total",
            "counter",
            "Lines cut to max_line_bytes.",
            self.lines_truncated.load(Relaxed),
        );
        simple(
            "ferry_agent_dead_letter_batches_total",
            "counter",
            "Batches the aggregator refused, written to the dead-letter directory.",
            self.dead_letter_batches.load(Relaxed),
        );

        out.push_str("# HELP ferry_agent_send_errors_total Failed sends to the aggregator.\n# TYPE ferry_agent_send_errors_total counter\n");
        for (kind, n) in SendError::ALL.iter().zip(&self.send_errors) {
            let _ = writeln!(
                out,
                "ferry_agent_send_errors_total{{error_type=\"{}\"}} {}",
                kind.as_str(),
                n.load(Relaxed)
            );
        }
        out.push_str("# HELP ferry_agent_decode_errors_total Lines a decoder could not fully decode (kept and flagged).\n# TYPE ferry_agent_decode_errors_total counter\n");
        for (kind, n) in DecodeError::ALL.iter().zip(&self.decode_errors) {
            let _ = writeln!(
                out,
                "ferry_agent_decode_errors_total{{error_type=\"{}\"}} {}",
                kind.as_str(),
                n.load(Relaxed)
            );
        }
        out.push_str("# HELP ferry_agent_sources_lost_total Sources whose rest could not be read (truncated without a copy, gone, or only compressed copies left).\n# TYPE ferry_agent_sources_lost_total counter\n");
        for (kind, n) in LostReason::ALL.iter().zip(&self.sources_lost) {
            let _ = writeln!(
                out,
                "ferry_agent_sources_lost_total{{reason=\"{}\"}} {}",
                kind.as_str(),
                n.load(Relaxed)
            );
        }
        out.push_str("# HELP ferry_agent_lost_bytes_total Bytes known to be unread in lost sources (a lower bound: what was written after the agent last looked is not known).\n# TYPE ferry_agent_lost_bytes_total counter\n");
        for (kind, n) in LostReason::ALL.iter().zip(&self.lost_bytes) {
            let _ = writeln!(
                out,
                "ferry_agent_lost_bytes_total{{reason=\"{}\"}} {}",
                kind.as_str(),
                n.load(Relaxed)
            );
        }
        self.send_duration.render(
            &mut out,
            &BUCKETS_SECONDS,
            "ferry_agent_send_duration_seconds",
            "Time to send one batch and get the answer.",
        );
        self.stats.render(&mut out);
        self.containers.render(&mut out);
        out
    }
}

/// Serves `/metrics` and `/health` on `listener` until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    warn!(%error, "Metrics server accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&req, &metrics)) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, %error, "Metrics connection ended with an error");
            }
        });
    }
}

fn respond(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        (&Method::GET, "/health") => (
            StatusCode::OK,
            "application/json",
            "{\"status\":\"ok\"}".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// Binds the metrics listener (so a bad address fails at start).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_labels_and_histogram() {
        let m = Metrics::default();
        m.lines_read.fetch_add(3, Relaxed);
        m.send_error(SendError::Unavailable, "503".into());
        m.decode_error(DecodeError::MalformedCri);
        m.observe_send(Duration::from_millis(30));
        let text = m.render();
        assert!(text.contains("ferry_agent_lines_read_total 3\n"));
        assert!(text.contains("ferry_agent_send_errors_total{error_type=\"unavailable\"} 1\n"));
        assert!(text.contains("ferry_agent_decode_errors_total{error_type=\"malformed_cri\"} 1\n"));
        assert!(text.contains("ferry_agent_send_duration_seconds_bucket{le=\"0.025\"} 0\n"));
        assert!(text.contains("ferry_agent_send_duration_seconds_bucket{le=\"0.05\"} 1\n"));
        assert!(text.contains("ferry_agent_send_duration_seconds_count 1\n"));
        assert_eq!(m.last_error().as_deref(), Some("503"));
    }
}
