//! The HTTP side: `POST /v1/batches` (ingest), `GET /metrics` (Prometheus text 0.0.4) and
//! `GET /health`, served with hyper over HTTP/1.1.
//!
//! Ingest checks the bearer token, the encoding and the body size before reading, reads with a
//! limit, decodes and validates the batch and appends it to the durable queue on a blocking
//! thread, and answers 200 `{"accepted": N}` (N = log records + stats samples in the batch) only
//! after the queue entry is fsynced. Every refusal is a JSON
//! `{"error": "…"}` naming the problem (never the token) and is counted by reason. The server
//! owns no data: it hands batches to the queue, their stats samples to the container
//! metrics (after the queue took the batch), and reads the metrics.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_wire::{decode_batch, BatchError, Compression, DecodedBatch};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::metrics::{IngestError, Metrics};
use crate::queue::{Queue, QueueError};
use crate::tls::Peer;

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for requests in flight.
const CONNECTION_DRAIN: Duration = Duration::from_secs(5);

/// The bearer tokens accepted, as SHA-256 digests: every presented token is hashed and compared
/// with each digest in constant time, so neither the comparison nor the tokens' lengths show in
/// the time taken. Empty: no authentication.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    digests: Vec<[u8; 32]>,
}

impl Tokens {
    pub(crate) fn new(tokens: &[String]) -> Tokens {
        Tokens {
            digests: tokens.iter().map(|t| sha256(t.as_bytes())).collect(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` is one of the tokens (every digest is compared, match or not).
    fn accepts(&self, presented: &[u8]) -> bool {
        let digest = sha256(presented);
        self.digests
            .iter()
            .fold(false, |found, d| found | constant_time_eq(&digest, d))
    }
}

impl Ingest {
    /// The tokens accepted now.
    pub(crate) fn tokens_in_use(&self) -> Arc<Tokens> {
        Arc::clone(&self.tokens.read().unwrap_or_else(|e| e.into_inner()))
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// What request handlers share.
#[derive(Debug)]
pub(crate) struct Ingest {
    /// Replaced whole on reload (SIGHUP).
    pub(crate) tokens: std::sync::RwLock<Arc<Tokens>>,
    /// TLS on the listener, when configured.
    pub(crate) tls: Option<Arc<crate::tls::Tls>>,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_decompressed_bytes: usize,
    pub(crate) retry_after_seconds: u64,
    pub(crate) queue: Queue,
    pub(crate) metrics: Arc<Metrics>,
    /// The alert engine, when alerts are configured (`/api/v1/alerts`, `/api/v1/rules`).
    pub(crate) alerts: Option<Arc<crate::alerts::Engine>>,
}

type Body = Full<Bytes>;

/// Accepts connections until `shutdown` turns true, then lets requests in flight finish
/// (up to [`CONNECTION_DRAIN`]).
pub(crate) async fn serve(
    listener: TcpListener,
    ingest: Arc<Ingest>,
    shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let mut stop_rx = shutdown.clone();
    let stop = async move {
        let _ = stop_rx.wait_for(|&stop| stop).await.map(drop);
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let ingest = Arc::clone(&ingest);
                    let shutdown = shutdown.clone();
                    connections.spawn(connection(stream, peer, ingest, shutdown));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "Accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(CONNECTION_DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            connections = connections.len(),
            "Connections still open at shutdown; closing them"
        );
        connections.abort_all();
    }
}

/// One connection: the TLS handshake when TLS is on (within [`HEADER_READ_TIMEOUT`]), then
/// HTTP/1.1 until the client leaves or shutdown.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    ingest: Arc<Ingest>,
    shutdown: watch::Receiver<bool>,
) {
    let Some(tls) = ingest.tls.clone() else {
        return serve_http(stream, peer, Peer::default(), ingest, shutdown).await;
    };
    let accepted = tokio::time::timeout(HEADER_READ_TIMEOUT, tls.acceptor().accept(stream)).await;
    match accepted {
        Ok(Ok(stream)) => {
            let client = tls.peer(stream.get_ref().1);
            serve_http(stream, peer, client, ingest, shutdown).await
        }
        Ok(Err(e)) => {
            tls.metrics.handshake_failed();
            debug!(peer = %peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            tls.metrics.handshake_failed();
            debug!(peer = %peer, "TLS handshake timed out");
        }
    }
}

async fn serve_http<S>(
    stream: S,
    peer: SocketAddr,
    client: Peer,
    ingest: Arc<Ingest>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let client = Arc::new(client);
    let service = service_fn(move |req| {
        let ingest = Arc::clone(&ingest);
        let client = Arc::clone(&client);
        async move { Ok::<_, Infallible>(route(&ingest, &client, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let stopping = async move {
        // The guard `wait_for` returns is not Send: drop it before any further await.
        let _ = shutdown.wait_for(|&stop| stop).await.map(drop);
    };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopping => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        debug!(peer = %peer, error = %e, "Connection ended with an error");
    }
}

async fn route(ingest: &Ingest, client: &Peer, req: Request<Incoming>) -> Response<Body> {
    if let Some(reason) = &client.refused {
        ingest.metrics.request(StatusCode::FORBIDDEN.as_u16());
        return error(StatusCode::FORBIDDEN, reason);
    }
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/v1/batches") => {
            let started = Instant::now();
            let response = match accept_batch(ingest, req).await {
                Ok(accepted) => {
                    if let (Some(tls), Some(identity)) = (&ingest.tls, &client.identity) {
                        tls.metrics.client_batch(identity);
                    }
                    ingest.metrics.observe_ingest(started.elapsed());
                    json(StatusCode::OK, serde_json::json!({ "accepted": accepted }))
                }
                Err(reject) => reject.respond(ingest),
            };
            ingest.metrics.request(response.status().as_u16());
            response
        }
        (&Method::GET, "/metrics") => {
            let mut response = Response::new(Full::new(Bytes::from(ingest.metrics.render())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (&Method::GET, "/api/v1/alerts" | "/api/v1/rules") => match &ingest.alerts {
            Some(engine) if req.uri().path() == "/api/v1/alerts" => {
                json(StatusCode::OK, engine.alerts_json())
            }
            Some(engine) => json(StatusCode::OK, engine.rules_json()),
            None => error(
                StatusCode::NOT_FOUND,
                "alerts are not configured ([aggregator.alerts])",
            ),
        },
        (&Method::GET, "/health") => {
            if let Some(reason) = ingest.metrics.sink_problem() {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "unavailable", "error": reason}),
                )
            } else if let Some(reason) = ingest.queue.failure() {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "unavailable", "error": reason}),
                )
            } else {
                json(StatusCode::OK, serde_json::json!({"status": "ok"}))
            }
        }
        (_, "/v1/batches" | "/metrics" | "/health") => {
            let allow = if req.uri().path() == "/v1/batches" {
                "POST"
            } else {
                "GET"
            };
            let mut response = error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("method {} is not allowed here (use {allow})", req.method()),
            );
            response
                .headers_mut()
                .insert("allow", HeaderValue::from_static(allow));
            response
        }
        (_, path) => error(StatusCode::NOT_FOUND, &format!("no such endpoint: {path}")),
    }
}

/// Why a batch request was refused.
#[derive(Debug)]
pub(crate) enum Reject {
    Unauthorized(&'static str),
    TooLarge(String),
    BadBatch(String),
    BadEncoding(String),
    QueueFull,
    /// The queue's disk is full: pressure like a full queue, not a server fault.
    DiskFull(String),
    Io(String),
}

impl Reject {
    /// What the refusal's answer says.
    pub(crate) fn message(&self) -> &str {
        match self {
            Reject::Unauthorized(m) => m,
            Reject::TooLarge(m)
            | Reject::BadBatch(m)
            | Reject::BadEncoding(m)
            | Reject::DiskFull(m)
            | Reject::Io(m) => m,
            Reject::QueueFull => "queue is full; retry later",
        }
    }

    fn respond(self, ingest: &Ingest) -> Response<Body> {
        let (status, kind, message) = match self {
            Reject::Unauthorized(m) => (
                StatusCode::UNAUTHORIZED,
                IngestError::Unauthorized,
                m.to_string(),
            ),
            Reject::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, IngestError::TooLarge, m),
            Reject::BadBatch(m) => (StatusCode::BAD_REQUEST, IngestError::BadBatch, m),
            Reject::BadEncoding(m) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                IngestError::BadEncoding,
                m,
            ),
            Reject::QueueFull => (
                StatusCode::SERVICE_UNAVAILABLE,
                IngestError::QueueFull,
                "queue is full; retry later".to_string(),
            ),
            Reject::DiskFull(m) => (StatusCode::SERVICE_UNAVAILABLE, IngestError::DiskFull, m),
            Reject::Io(m) => (StatusCode::INTERNAL_SERVER_ERROR, IngestError::Io, m),
        };
        ingest.metrics.ingest_error(kind);
        if status == StatusCode::INTERNAL_SERVER_ERROR || kind == IngestError::DiskFull {
            warn!(status = status.as_u16(), error = %message, "Batch not queued");
        } else {
            debug!(status = status.as_u16(), error = %message, "Batch refused");
        }
        let mut response = error(status, &message);
        match kind {
            IngestError::QueueFull | IngestError::DiskFull => {
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from(ingest.retry_after_seconds));
            }
            IngestError::Unauthorized => {
                response
                    .headers_mut()
                    .insert("www-authenticate", HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

/// Checks, reads, decodes and durably queues one batch; returns the records it held.
async fn accept_batch(ingest: &Ingest, req: Request<Incoming>) -> Result<usize, Reject> {
    let limit = ingest.max_body_bytes;
    let compression = check_headers(&ingest.tokens_in_use(), limit, req.headers())?;
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Reject::TooLarge(format!(
                "body exceeds the limit of {limit} bytes"
            )))
        }
        Err(e) => return Err(Reject::BadBatch(format!("reading the body failed: {e}"))),
    };
    let max_decompressed = ingest.max_decompressed_bytes;
    let queue = ingest.queue.clone();
    let metrics = Arc::clone(&ingest.metrics);
    let queued = tokio::task::spawn_blocking(move || {
        let batch = decode_body(&body, compression, max_decompressed)?;
        queue.append(&batch.data).map_err(|e| match e {
            QueueError::Full { .. } => Reject::QueueFull,
            QueueError::NoRoom(reason) => {
                Reject::DiskFull(format!("the queue's disk is full; retry later: {reason}"))
            }
            other => Reject::Io(format!("queueing the batch failed: {other}")),
        })?;
        metrics.log_lines.observe(&batch);
        let (logs, bytes) = (batch.logs.len(), batch.data.len());
        Ok((logs, batch.into_stats(), bytes))
    })
    .await
    .map_err(|e| Reject::Io(format!("queueing the batch failed: {e}")))?;
    let (logs, samples, bytes) = queued?;
    let stats = samples.len();
    let m = &ingest.metrics;
    m.containers.observe(&samples);
    m.ingest_records.fetch_add(logs as u64, Ordering::Relaxed);
    m.ingest_stats_samples
        .fetch_add(stats as u64, Ordering::Relaxed);
    m.ingest_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    debug!(logs, stats, bytes, "Batch queued");
    Ok(logs + stats)
}

/// The checks made before a batch's body is read: the bearer token (when any is configured),
/// the `Content-Encoding` and a `Content-Length` within `max_body_bytes`. Returns how the body
/// is compressed.
pub(crate) fn check_headers(
    tokens: &Tokens,
    max_body_bytes: usize,
    headers: &HeaderMap,
) -> Result<Compression, Reject> {
    if !tokens.is_empty() {
        check_token(tokens, headers.get(hyper::header::AUTHORIZATION))?;
    }
    let encoding = match headers.get(hyper::header::CONTENT_ENCODING) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Reject::BadEncoding("Content-Encoding is not readable text".into()))?,
        ),
    };
    let compression = Compression::from_content_encoding(encoding)
        .map_err(|e| Reject::BadEncoding(e.to_string()))?;
    if let Some(length) = headers.get(CONTENT_LENGTH) {
        let length = length
            .to_str()
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| Reject::BadBatch("Content-Length is not a number".into()))?;
        if length > max_body_bytes as u64 {
            return Err(Reject::TooLarge(format!(
                "body of {length} bytes exceeds the limit of {max_body_bytes} bytes"
            )));
        }
    }
    Ok(compression)
}

/// Decompresses and validates a batch body, each refusal sorted by its answer.
pub(crate) fn decode_body(
    body: &[u8],
    compression: Compression,
    max_decompressed: usize,
) -> Result<DecodedBatch, Reject> {
    decode_batch(body, compression, max_decompressed).map_err(|e| match e {
        BatchError::TooLarge { .. } => Reject::TooLarge(e.to_string()),
        BatchError::Encoding(_) => Reject::BadEncoding(e.to_string()),
        other => Reject::BadBatch(other.to_string()),
    })
}

fn check_token(tokens: &Tokens, header: Option<&HeaderValue>) -> Result<(), Reject> {
    let header = header.ok_or(Reject::Unauthorized(
        "missing Authorization header (expected: Bearer <token>)",
    ))?;
    let value = header
        .to_str()
        .map_err(|_| Reject::Unauthorized("Authorization header is not readable text"))?;
    let (scheme, presented) = value.trim().split_once(' ').ok_or(Reject::Unauthorized(
        "Authorization header is not a Bearer token",
    ))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Reject::Unauthorized(
            "Authorization header is not a Bearer token",
        ));
    }
    if !tokens.accepts(presented.trim().as_bytes()) {
        return Err(Reject::Unauthorized("invalid bearer token"));
    }
    Ok(())
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, serde_json::json!({ "error": message }))
}
