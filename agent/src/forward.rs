//! The forwarder: sends sealed batches to the aggregator, one at a time and in order, and moves
//! the checkpoint only after the aggregator acknowledged them.
//!
//! Retries never lose data: 5xx, connection errors and timeouts back off exponentially with full
//! jitter, forever; 503/429 wait for `Retry-After` (capped by `backoff_max_ms`); 401/403 are logged
//! as a token problem and retried. Only a batch the aggregator refuses as bad (400) leaves without
//! being stored there: it goes to `<data_dir>/dead-letter/` with the reason. A 413 splits the
//! batch in two (re-encoded from its own records) until single records, which are dead-lettered.
//! One batch in flight keeps each fingerprint's records in offset order at the aggregator, which
//! relies on that for its per-source high-water mark.
//!
//! Batches are built in the current format version (2); an aggregator that predates it refuses
//! such a batch with a 400 naming the version, and the forwarder then sends the same records as
//! version 1 (re-encoded here) for [`V1_FALLBACK`] before trying version 2 again, so an agent
//! upgraded before its aggregator keeps delivering. Likewise an aggregator that predates lz4
//! compression refuses an lz4 batch with a 415 naming it, and the forwarder then re-compresses
//! batches as zstd for [`ZSTD_FALLBACK`]. Dead letters are written as version 1, whose lines are
//! whole records.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_wire::{BatchBuilder, Compression, EncodedBatch, LogRecord};
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::checkpoint::{write_file, Checkpointer};
use crate::config::{AgentConfig, OutputConfig};
use crate::metrics::{Metrics, SendError};
use crate::sealed::Sealed;

/// At most one checkpoint write per this interval (the file never runs ahead of acked data).
const CHECKPOINT_WRITE_INTERVAL: Duration = Duration::from_millis(200);
/// Longest reason text kept from an error response.
const MAX_REASON_BYTES: usize = 4096;
/// How long batches go as version 1 after an aggregator refused version 2.
const V1_FALLBACK: Duration = Duration::from_secs(300);
/// How long lz4 batches go as zstd after an aggregator refused lz4.
const ZSTD_FALLBACK: Duration = Duration::from_secs(300);
/// What an lz4 batch is re-compressed as for an aggregator that predates lz4.
const FALLBACK_COMPRESSION: Compression = Compression::Zstd { level: 1 };

/// What became of one batch.
enum Outcome {
    Acked,
    /// 413 Payload Too Large.
    TooLarge,
    /// 400: the aggregator will never take it.
    Rejected(String),
    /// 400 for the batch's format version: the aggregator predates it.
    OldVersion,
    /// 415 for the batch's `Content-Encoding` (lz4): the aggregator predates it.
    OldEncoding,
    /// Shutdown deadline passed before an answer.
    Abandoned,
}

/// One answer from the aggregator.
struct Answer {
    status: StatusCode,
    retry_after: Option<Duration>,
    body: String,
}

/// The HTTP side: one request, one answer, to the aggregator in use; [`Sender::fail_over`] moves
/// to the next one.
struct Sender {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// `{aggregator}/v1/batches` for each aggregator, in failover order.
    urls: Vec<Uri>,
    /// Index in `urls` of the aggregator in use.
    current: usize,
    auth: Option<HeaderValue>,
    request_timeout: Duration,
}

/// The shutdown deadline: unset until shutdown is asked for, then `shutdown_timeout_ms` later.
struct Deadline {
    shutdown: watch::Receiver<bool>,
    shutdown_timeout: Duration,
    at: Option<Instant>,
}

impl Deadline {
    /// Resolves once the shutdown deadline has passed (never before shutdown was asked for).
    async fn passed(&mut self) {
        loop {
            if let Some(at) = self.at {
                return tokio::time::sleep_until(at).await;
            }
            if *self.shutdown.borrow_and_update() {
                self.at = Some(Instant::now() + self.shutdown_timeout);
                continue;
            }
            if self.shutdown.changed().await.is_err() {
                // The handle is gone without asking for shutdown: keep going until the tailer stops.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Sender {
    fn url(&self) -> &Uri {
        &self.urls[self.current]
    }

    /// Moves to the next aggregator (after the last, the first); `false` with only one.
    fn fail_over(&mut self) -> bool {
        if self.urls.len() < 2 {
            return false;
        }
        self.current = (self.current + 1) % self.urls.len();
        true
    }

    async fn send_once(
        &self,
        body: Bytes,
        compression: Compression,
    ) -> Result<Answer, (SendError, String)> {
        let mut req = Request::post(self.url().clone())
            .header(CONTENT_TYPE, "application/x-ndjson")
            .header(CONTENT_ENCODING, compression.content_encoding())
            .body(Full::new(body))
            .map_err(|e| (SendError::Transport, format!("cannot build request: {e}")))?;
        if let Some(auth) = &self.auth {
            req.headers_mut().insert(AUTHORIZATION, auth.clone());
        }
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                if let Some(tls) = crate::tls::explain(&e) {
                    return (SendError::Tls, format!("{tls} [{}]", error_chain(&e)));
                }
                let kind = if e.is_connect() {
                    SendError::Connect
                } else {
                    SendError::Transport
                };
                (kind, error_chain(&e))
            })?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| (SendError::Transport, format!("reading the response: {e}")))?
                .to_bytes();
            let cut = crate::decode::utf8_cut(&body, MAX_REASON_BYTES);
            Ok(Answer {
                status,
                retry_after,
                body: String::from_utf8_lossy(&body[..cut]).trim().to_string(),
            })
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err((
                SendError::Timeout,
                format!("no answer within {} ms", self.request_timeout.as_millis()),
            )),
        }
    }
}

/// What woke the forwarder's main loop.
enum Wake {
    Item(Sealed),
    Closed,
    WriteCheckpoint,
    Deadline,
}

pub(crate) struct Forwarder {
    sender: Sender,
    deadline: Deadline,
    host: String,
    backoff_initial: Duration,
    backoff_max: Duration,
    checkpointer: Checkpointer,
    dirty: bool,
    last_write: Instant,
    dead_letter_dir: PathBuf,
    dead_letter_seq: u64,
    /// `output = "discard"`: batches are dropped, not sent.
    discard: bool,
    /// Until when batches go as version 1 (an aggregator refused version 2).
    v1_until: Option<Instant>,
    /// Until when lz4 batches go as zstd (an aggregator refused lz4).
    zstd_until: Option<Instant>,
    metrics: Arc<Metrics>,
}

impl Forwarder {
    /// `tls` is the client configuration for `https://` aggregators (see [`crate::tls`]); plain
    /// `http://` URLs work without it.
    pub fn new(
        config: &AgentConfig,
        tls: Arc<rustls::ClientConfig>,
        checkpointer: Checkpointer,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(config.request_timeout_ms)));
        connector.set_nodelay(true);
        // HttpConnector refuses https:// URIs unless told to hand them on to the TLS layer.
        connector.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Forwarder {
            sender: Sender {
                client,
                // validate() checked the URLs.
                urls: config
                    .batches_urls()
                    .iter()
                    .map(|u| u.parse().unwrap_or_default())
                    .collect(),
                current: 0,
                auth: config
                    .token
                    .as_ref()
                    .and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
                    .map(|mut v| {
                        v.set_sensitive(true);
                        v
                    }),
                request_timeout: Duration::from_millis(config.request_timeout_ms),
            },
            deadline: Deadline {
                shutdown,
                shutdown_timeout: Duration::from_millis(config.shutdown_timeout_ms),
                at: None,
            },
            host: config.host_name.clone(),
            backoff_initial: Duration::from_millis(config.backoff_initial_ms),
            backoff_max: Duration::from_millis(config.backoff_max_ms),
            checkpointer,
            dirty: false,
            last_write: Instant::now(),
            dead_letter_dir: config.data_dir.join("dead-letter"),
            dead_letter_seq: 0,
            discard: config.output == OutputConfig::Discard,
            v1_until: None,
            zstd_until: None,
            metrics,
        }
    }

    /// Delivers sealed batches until the tailer hangs up (or the shutdown deadline passes), then
    /// writes the checkpoint one last time.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Sealed>) {
        loop {
            let write_at = self.last_write + CHECKPOINT_WRITE_INTERVAL;
            let wake = tokio::select! {
                item = rx.recv() => item.map_or(Wake::Closed, Wake::Item),
                _ = tokio::time::sleep_until(write_at), if self.dirty => Wake::WriteCheckpoint,
                _ = self.deadline.passed() => Wake::Deadline,
            };
            let item = match wake {
                Wake::Item(item) => item,
                Wake::WriteCheckpoint => {
                    self.write_checkpoint().await;
                    continue;
                }
                Wake::Closed | Wake::Deadline => break,
            };
            if !item.register.is_empty() {
                // New sources are durable before any of their records leave.
                self.checkpointer.register(item.register);
                self.write_checkpoint().await;
            }
            if let Some(batch) = item.batch {
                if !self.deliver(batch).await {
                    warn!("Shutdown deadline passed before the batch was acknowledged; it is read again after restart");
                    break;
                }
            }
            self.checkpointer.apply(item.updates);
            self.dirty = true;
            if self.last_write.elapsed() >= CHECKPOINT_WRITE_INTERVAL {
                self.write_checkpoint().await;
            }
        }
        if self.dirty {
            self.write_checkpoint().await;
        }
        debug!("Forwarder stopped");
    }

    async fn write_checkpoint(&mut self) {
        let bytes = self.checkpointer.encode();
        let (path, tmp, dir) = self.checkpointer.paths();
        let result =
            tokio::task::spawn_blocking(move || write_file(&path, &tmp, &dir, &bytes)).await;
        self.last_write = Instant::now();
        match result {
            Ok(Ok(())) => self.dirty = false,
            Ok(Err(e)) => {
                warn!(error = %e, "Checkpoint write failed");
                self.metrics.error(e.to_string());
            }
            Err(e) => warn!(error = %e, "Checkpoint writer task failed"),
        }
    }

    /// Delivers one sealed batch (splitting on 413). `false` if the shutdown deadline passed first.
    async fn deliver(&mut self, batch: EncodedBatch) -> bool {
        if self.discard {
            self.metrics.batches_discarded.fetch_add(1, Relaxed);
            self.metrics
                .records_discarded
                .fetch_add(batch.logs as u64, Relaxed);
            return true;
        }
        let mut queue = VecDeque::from([batch]);
        while let Some(mut batch) = queue.pop_front() {
            if batch.version != 1 && self.v1_until.is_some_and(|t| Instant::now() < t) {
                batch = as_version_1(batch).await;
            }
            if batch.compression == Compression::Lz4
                && self.zstd_until.is_some_and(|t| Instant::now() < t)
            {
                batch = recompressed(batch, FALLBACK_COMPRESSION).await;
            }
            match self.send_until_answered(&mut batch).await {
                Outcome::Acked => {
                    self.metrics
                        .records_sent
                        .fetch_add(batch.logs as u64, Relaxed);
                    self.metrics.batches_sent.fetch_add(1, Relaxed);
                }
                Outcome::TooLarge => match split_blocking(batch, &self.host).await {
                    (batch, Ok(Some((a, b)))) => {
                        info!(
                            records = batch.logs,
                            "Aggregator refused the batch as too large; splitting it"
                        );
                        queue.push_front(b);
                        queue.push_front(a);
                    }
                    (batch, Ok(None)) => {
                        let reason = "413 Payload Too Large for a single record";
                        if !self.dead_letter(&batch, reason).await {
                            return false;
                        }
                    }
                    (batch, Err(e)) => {
                        let reason = format!(
                            "413 Payload Too Large, and the batch of {} records cannot be split: {e}",
                            batch.logs + batch.stats
                        );
                        error!(%reason, "Cannot split a batch the aggregator refused as too large");
                        if !self.dead_letter(&batch, &reason).await {
                            return false;
                        }
                    }
                },
                Outcome::Rejected(reason) => {
                    if !self.dead_letter(&batch, &reason).await {
                        return false;
                    }
                }
                Outcome::OldVersion => {
                    warn!(
                        version = batch.version,
                        fallback_seconds = V1_FALLBACK.as_secs(),
                        "The aggregator predates this batch format version; sending version 1 for a while (upgrade the aggregator)"
                    );
                    self.v1_until = Some(Instant::now() + V1_FALLBACK);
                    queue.push_front(batch);
                }
                Outcome::OldEncoding => {
                    warn!(
                        fallback_seconds = ZSTD_FALLBACK.as_secs(),
                        "The aggregator predates lz4 compression; sending zstd for a while (upgrade the aggregator)"
                    );
                    self.zstd_until = Some(Instant::now() + ZSTD_FALLBACK);
                    queue.push_front(batch);
                }
                Outcome::Abandoned => return false,
            }
        }
        true
    }

    /// Sends until the aggregator gives a final answer, backing off between attempts. The body
    /// travels as `Bytes` that every attempt shares, and comes back to `batch` afterwards (for a
    /// split, a dead letter or another encoding): no copy of it either way.
    async fn send_until_answered(&mut self, batch: &mut EncodedBatch) -> Outcome {
        let body = Bytes::from(std::mem::take(&mut batch.body));
        let outcome = self.attempt_until_answered(batch, &body).await;
        batch.body = Vec::from(body);
        outcome
    }

    async fn attempt_until_answered(&mut self, batch: &EncodedBatch, body: &Bytes) -> Outcome {
        let mut attempt: u32 = 0;
        loop {
            let started = std::time::Instant::now();
            let result = tokio::select! {
                r = self.sender.send_once(body.clone(), batch.compression) => r,
                _ = self.deadline.passed() => return Outcome::Abandoned,
            };
            self.metrics.observe_send(started.elapsed());
            let wait = match result {
                Ok(answer) if answer.status.is_success() => return Outcome::Acked,
                Ok(answer) => match answer.status {
                    StatusCode::BAD_REQUEST
                        if batch.version != 1 && ferry_wire::refused_for_version(&answer.body) =>
                    {
                        return Outcome::OldVersion;
                    }
                    StatusCode::UNSUPPORTED_MEDIA_TYPE
                        if batch.compression == Compression::Lz4
                            && ferry_wire::refused_encoding(&answer.body, batch.compression) =>
                    {
                        return Outcome::OldEncoding;
                    }
                    StatusCode::BAD_REQUEST => {
                        let reason = format!("400 Bad Request: {}", answer.body);
                        self.metrics.send_error(SendError::Rejected, reason.clone());
                        error!(records = batch.logs, reason = %answer.body, "Aggregator refused the batch; writing it to the dead-letter directory");
                        return Outcome::Rejected(reason);
                    }
                    StatusCode::PAYLOAD_TOO_LARGE => {
                        self.metrics
                            .send_error(SendError::TooLarge, "413 Payload Too Large".into());
                        return Outcome::TooLarge;
                    }
                    StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                        let kind = if answer.status == StatusCode::TOO_MANY_REQUESTS {
                            SendError::RateLimited
                        } else {
                            SendError::Unavailable
                        };
                        let wait = match answer.retry_after {
                            Some(d) => d.min(self.backoff_max),
                            None => self.backoff(attempt),
                        };
                        warn!(status = answer.status.as_u16(), retry_in_ms = wait.as_millis() as u64, reason = %answer.body,
                            "Aggregator asked to slow down; retrying");
                        self.metrics
                            .send_error(kind, format!("{}: {}", answer.status, answer.body));
                        wait
                    }
                    StatusCode::UNAUTHORIZED => {
                        error!(status = answer.status.as_u16(), has_token = self.sender.auth.is_some(), url = %self.sender.url(),
                            "Aggregator refused the agent's credentials: the `token` is wrong or missing; retrying");
                        self.metrics.send_error(
                            SendError::Unauthorized,
                            format!("{}: wrong or missing token", answer.status),
                        );
                        self.backoff(attempt)
                    }
                    StatusCode::FORBIDDEN => {
                        error!(status = answer.status.as_u16(), reason = %answer.body, url = %self.sender.url(),
                            "Aggregator refused the agent (its client certificate or token); retrying");
                        self.metrics.send_error(
                            SendError::Unauthorized,
                            format!(
                                "{}: client certificate or token refused: {}",
                                answer.status, answer.body
                            ),
                        );
                        self.backoff(attempt)
                    }
                    status => {
                        let kind = if status.is_server_error() {
                            SendError::ServerError
                        } else {
                            SendError::UnexpectedStatus
                        };
                        warn!(status = status.as_u16(), reason = %answer.body, url = %self.sender.url(), "Aggregator failed the batch; retrying");
                        self.metrics
                            .send_error(kind, format!("{status}: {}", answer.body));
                        if status.is_server_error() {
                            self.fail_over(attempt)
                        } else {
                            self.backoff(attempt)
                        }
                    }
                },
                Err((kind, reason)) => {
                    if kind == SendError::Tls {
                        error!(error_type = kind.as_str(), %reason, url = %self.sender.url(), "TLS with the aggregator failed; retrying");
                    } else {
                        warn!(error_type = kind.as_str(), %reason, url = %self.sender.url(), "Sending the batch failed; retrying");
                    }
                    self.metrics.send_error(kind, reason);
                    self.fail_over(attempt)
                }
            };
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.deadline.passed() => return Outcome::Abandoned,
            }
        }
    }

    /// Moves to the next aggregator after a failure, and returns the wait before the next
    /// attempt: the backoff grows once per round over every aggregator, not once per attempt.
    fn fail_over(&mut self, attempt: u32) -> Duration {
        let from = self.sender.url().clone();
        if !self.sender.fail_over() {
            return self.backoff(attempt);
        }
        self.metrics.failovers.fetch_add(1, Relaxed);
        info!(from = %from, to = %self.sender.url(), "Switching to the next aggregator");
        self.backoff(attempt / self.sender.urls.len() as u32)
    }

    /// Capped exponential backoff with full jitter.
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .backoff_initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.backoff_max);
        let millis = fastrand::u64(0..=cap.as_millis() as u64);
        Duration::from_millis(millis.max(1))
    }

    /// Writes a refused batch and its reason to the dead-letter directory (fsynced); then it counts
    /// as handled. A failed write is retried with backoff and the checkpoint stays put meanwhile,
    /// so a full or read-only disk never turns a refused batch into a lost one. `false` if the
    /// shutdown deadline passed first (the batch is read again after the restart).
    async fn dead_letter(&mut self, batch: &EncodedBatch, reason: &str) -> bool {
        self.dead_letter_seq += 1;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        let base = self
            .dead_letter_dir
            .join(format!("{stamp}-{:06}", self.dead_letter_seq));
        let text = format!("records: {}\nreason: {reason}\n", batch.logs);
        let mut attempt: u32 = 0;
        loop {
            let (base, body, text) = (base.clone(), batch.body.clone(), text.clone());
            let (compression, version) = (batch.compression, batch.version);
            let result = tokio::task::spawn_blocking(move || {
                write_dead_letter(&base, &body, compression, version, &text)
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
            match result {
                Ok(path) => {
                    self.metrics.dead_letter_batches.fetch_add(1, Relaxed);
                    warn!(path = %path.display(), records = batch.logs, reason, "Batch dead-lettered");
                    return true;
                }
                Err(e) => {
                    error!(dir = %self.dead_letter_dir.display(), error = %e,
                        "Cannot write a dead-letter batch; retrying, the checkpoint stays put");
                    self.metrics.error(format!("dead letter: {e}"));
                    attempt = attempt.saturating_add(1);
                    let wait = self.backoff(attempt);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.deadline.passed() => return false,
                    }
                }
            }
        }
    }
}

/// Writes `<base>.ndjson.gz` (always gzip on disk, whatever travelled, and a version 1 batch,
/// whose lines are whole records: any operator can `zcat` it) and `<base>.reason.txt`, each
/// fsynced. The names are appended to `base` (never through `Path::with_extension`, which would
/// cut `base` at its last dot, the stamp's milliseconds), and never replace an existing dead
/// letter: a taken name gets `-1`, `-2`, … (an agent restarted within the same millisecond starts
/// its sequence again).
fn write_dead_letter(
    base: &std::path::Path,
    body: &[u8],
    compression: Compression,
    version: u32,
    reason: &str,
) -> std::io::Result<PathBuf> {
    if let Some(dir) = base.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let data = match compression {
        _ if version != 1 => {
            let decoded = ferry_wire::decode_batch(body, compression, usize::MAX)
                .map_err(std::io::Error::other)?;
            decoded.encode_v1(Compression::Gzip { level: 1 }).body
        }
        Compression::Gzip { .. } => body.to_vec(),
        Compression::None | Compression::Zstd { .. } | Compression::Lz4 => {
            let raw = ferry_wire::decompress(body, compression, usize::MAX)
                .map_err(std::io::Error::other)?;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&raw)?;
            enc.finish()?
        }
    };
    let named = |n: u32, ext: &str| {
        let mut name = base.as_os_str().to_os_string();
        if n > 0 {
            name.push(format!("-{n}"));
        }
        name.push(ext);
        PathBuf::from(name)
    };
    let mut n = 0;
    let (data_path, mut file) = loop {
        let path = named(n, ".ndjson.gz");
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => break (path, file),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(e),
        }
    };
    file.write_all(&data)?;
    file.sync_all()?;
    // The reason appears whole or not at all: written under a temporary name, then renamed.
    let reason_path = named(n, ".reason.txt");
    let partial = named(n, ".reason.txt.partial");
    let mut file = std::fs::File::create(&partial)?;
    file.write_all(reason.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&partial, &reason_path)?;
    Ok(data_path)
}

/// Two halves of a batch, `None` when it cannot be halved, `Err` (what failed) when it cannot be
/// read back.
type Split = Result<Option<(EncodedBatch, EncodedBatch)>, String>;

/// Splits a batch into two halves re-encoded from its own records; `None` for one record, `Err`
/// (what failed) when the batch cannot be read back.
fn split(batch: &EncodedBatch, host: &str) -> Split {
    if batch.logs + batch.stats < 2 {
        return Ok(None);
    }
    let decoded = ferry_wire::decode_batch(&batch.body, batch.compression, batch.raw_bytes + 1024)
        .map_err(|e| format!("decoding it: {e}"))?;
    let half = decoded.logs.len().div_ceil(2).max(1);
    let mut a = BatchBuilder::with_version(host, batch.version);
    let mut b = BatchBuilder::with_version(host, batch.version);
    for (i, log) in decoded.logs.iter().enumerate() {
        let record: LogRecord = serde_json::from_slice(&decoded.record(log))
            .map_err(|e| format!("reading record {i}: {e}"))?;
        if i < half {
            a.push_log(&record);
        } else {
            b.push_log(&record);
        }
    }
    for sample in &decoded.stats {
        b.push_stats(sample);
    }
    if a.is_empty() || b.is_empty() {
        return Ok(None);
    }
    Ok(Some((
        a.finish(batch.compression),
        b.finish(batch.compression),
    )))
}

/// [`split`] on a blocking thread: decompressing and re-compressing (zstd, gzip) a batch too
/// large for the aggregator is CPU work that must not hold up an async worker. The batch comes
/// back with its halves.
async fn split_blocking(batch: EncodedBatch, host: &str) -> (EncodedBatch, Split) {
    let host = host.to_string();
    tokio::task::spawn_blocking(move || {
        let halves = split(&batch, &host);
        (batch, halves)
    })
    .await
    .expect("splitting a batch does not panic")
}

/// The same records as a version 1 batch (re-encoded on a blocking thread); the batch as it was
/// if it does not decode (it cannot: this agent built it).
async fn as_version_1(batch: EncodedBatch) -> EncodedBatch {
    tokio::task::spawn_blocking(move || {
        match ferry_wire::decode_batch(&batch.body, batch.compression, batch.raw_bytes + 1024) {
            Ok(decoded) => decoded.encode_v1(batch.compression),
            Err(e) => {
                warn!(error = %e, "A batch built here does not decode; sending it as it is");
                batch
            }
        }
    })
    .await
    .expect("re-encoding a batch does not panic")
}

/// `batch` compressed as `compression` instead, on a blocking thread.
async fn recompressed(batch: EncodedBatch, compression: Compression) -> EncodedBatch {
    tokio::task::spawn_blocking(move || match batch.recompressed(compression) {
        Ok(again) => again,
        Err(e) => {
            warn!(error = %e, "A batch built here does not decompress; sending it as it is");
            batch
        }
    })
    .await
    .expect("re-compressing a batch does not panic")
}

/// An error and its causes, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 10, finding 4): dead letters written within one millisecond, and by a
    /// restarted agent whose sequence starts again, never replace each other.
    #[test]
    fn dead_letters_of_one_millisecond_keep_distinct_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = BatchBuilder::new("h");
        b.push_log(&LogRecord {
            message: "x".into(),
            ..Default::default()
        });
        let batch = b.finish(Compression::None);
        let mut paths = Vec::new();
        for seq in [1, 2, 1, 1] {
            let base = dir.path().join(format!("20261129T081500.123Z-{seq:06}"));
            let reason = format!("reason {}", paths.len());
            paths.push(
                write_dead_letter(
                    &base,
                    &batch.body,
                    batch.compression,
                    batch.version,
                    &reason,
                )
                .unwrap(),
            );
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "20261129T081500.123Z-000001-1.ndjson.gz",
                "20261129T081500.123Z-000001-1.reason.txt",
                "20261129T081500.123Z-000001-2.ndjson.gz",
                "20261129T081500.123Z-000001-2.reason.txt",
                "20261129T081500.123Z-000001.ndjson.gz",
                "20261129T081500.123Z-000001.reason.txt",
                "20261129T081500.123Z-000002.ndjson.gz",
                "20261129T081500.123Z-000002.reason.txt",
            ]
        );
        let reasons: Vec<String> = paths
            .iter()
            .map(|p| {
                let text = p.to_string_lossy().replace(".ndjson.gz", ".reason.txt");
                std::fs::read_to_string(text).unwrap()
            })
            .collect();
        assert_eq!(reasons, ["reason 0", "reason 1", "reason 2", "reason 3"]);
    }

    /// Regression (issue 10, finding 4): a batch that cannot be read back is not "a single
    /// record"; the split says why it failed.
    #[test]
    fn a_split_that_cannot_decode_says_so() {
        let batch = EncodedBatch {
            body: b"not a batch at all".to_vec(),
            compression: Compression::None,
            logs: 5,
            stats: 0,
            raw_bytes: 18,
            version: 2,
        };
        let err = split(&batch, "h").unwrap_err();
        assert!(err.starts_with("decoding it: "), "{err}");
    }
}
