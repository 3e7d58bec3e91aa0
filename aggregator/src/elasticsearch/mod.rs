//! The Elasticsearch sink: drains the durable queue into a cluster with `_bulk`, settling every
//! record item by item, as `shared/ELASTICSEARCH.md` says: indexed or duplicate (409 on
//! `create`), retried alone (429/5xx), or dead-lettered with the reason (400-class). A queue
//! entry is committed, and the sink's position moves past it, only once every record in it is
//! settled; nothing is dropped silently.
//!
//! One straight stream, split by role as Vector's sink is: a reader thread takes durable queue
//! entries and turns them into documents ([`document`]); the sink thread (its own
//! single-threaded runtime) batches them into bulk bodies ([`request_builder`]), sends them to
//! the nodes ([`service`]), reads the answers ([`settlement`]), backs off ([`retry`]), writes dead
//! letters ([`dead_letter`]) and commits its position. [`bootstrap`] runs first. Memory is bounded
//! by a window of queue entries in flight; while the cluster is down or slow the window stays
//! full, the queue fills behind it, and ingest answers 503.
//!
//! The sink's own files live under `<data_dir>/sinks/<name>/`: `position.json` (where to resume
//! in the queue; written atomically) and `dead-letter/`. A replay after a crash sends records
//! again with the same `_id`; Elasticsearch answers 409 and they count as duplicates.

mod bootstrap;
mod config;
mod dead_letter;
mod document;
mod request_builder;
mod retry;
mod service;
mod settlement;
#[cfg(test)]
mod tests;

use std::collections::{HashSet, VecDeque};
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

pub use config::{ElasticsearchConfig, RequestCompression};
pub use service::ClientError;

use crate::metrics::{Metrics, SinkError};
use crate::queue::{ConsumerId, Position, Queue, QueueError, QueueReader, Wait};
use crate::sink_metrics::{BulkOutcome, DeadLetterDestination, ItemResult, SinkMetrics};
use bootstrap::BootstrapError;
use dead_letter::{DeadLetter, DeadLetterFiles};
use document::{Document, Original, Router};
use retry::{Backoff, Failures};
use service::{Answer, Nodes};
use settlement::{item_verdict, read_items, request_verdict, ItemVerdict, RequestVerdict};

/// How often, at most, the sink's position is written (and the queue trimmed behind it).
const COMMIT_INTERVAL: Duration = Duration::from_millis(250);
/// Longest the sink sleeps without looking at the queue's shutdown deadline.
const TICK: Duration = Duration::from_millis(250);
/// Pause before reading the queue again after a read error.
const READ_RETRY: Duration = Duration::from_secs(1);
/// The smallest window of queue bytes in flight.
const MIN_WINDOW_BYTES: u64 = 8 << 20;
/// Longest the start-up check of the cluster may take before the aggregator starts anyway.
const STARTUP_CHECK: Duration = Duration::from_secs(10);
const POSITION_FILE: &str = "position.json";
const POSITION_VERSION: u32 = 1;

/// Why an Elasticsearch sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum EsStartError {
    #[error("sink {sink}: {source}")]
    Client {
        sink: String,
        #[source]
        source: ClientError,
    },
    #[error("sink {sink}: {path}: {source}")]
    Io {
        sink: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("sink {sink}: {path}: unreadable position file: {reason}")]
    Position {
        sink: String,
        path: PathBuf,
        reason: String,
    },
    #[error("sink {sink}: the cluster cannot be used: {reason}")]
    Refused { sink: String, reason: String },
}

/// `position.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PositionFile {
    version: u32,
    queue_position: Position,
}

/// Where a sink keeps its files.
pub(crate) fn sink_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("sinks").join(name)
}

fn read_position(dir: &Path, sink: &str) -> Result<Position, EsStartError> {
    let path = dir.join(POSITION_FILE);
    match fs::read(&path) {
        Ok(bytes) => {
            let file: PositionFile =
                serde_json::from_slice(&bytes).map_err(|e| EsStartError::Position {
                    sink: sink.into(),
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            if file.version != POSITION_VERSION {
                return Err(EsStartError::Position {
                    sink: sink.into(),
                    path,
                    reason: format!(
                        "version {} is not supported (this build reads {POSITION_VERSION})",
                        file.version
                    ),
                });
            }
            Ok(file.queue_position)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Position::default()),
        Err(source) => Err(EsStartError::Io {
            sink: sink.into(),
            path,
            source,
        }),
    }
}

/// Replaces `position.json` atomically (temp file, fsync, rename, fsync the directory).
fn write_position(dir: &Path, position: Position) -> io::Result<()> {
    let tmp = dir.join("position.json.tmp");
    let bytes = serde_json::to_vec(&PositionFile {
        version: POSITION_VERSION,
        queue_position: position,
    })
    .expect("a position serialises");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(POSITION_FILE))?;
    fs::File::open(dir)?.sync_all()
}

/// An Elasticsearch sink, opened and not yet running.
#[derive(Debug)]
pub(crate) struct EsSink {
    config: Arc<ElasticsearchConfig>,
    dir: PathBuf,
    position: Position,
    /// Whether the start-up check already bootstrapped the cluster.
    bootstrapped: bool,
    dead: DeadLetterFiles,
    /// Dead letters of entries past the committed position (see [`DeadLetterFiles::uncommitted_ids`]).
    dead_seen: HashSet<Box<str>>,
}

/// Checks the cluster once at start (when `bootstrap` is on): a fatal answer (wrong product or
/// version, refused credentials or privileges) refuses the start; no answer lets the aggregator
/// start and the sink keep trying. Returns whether bootstrapping is done.
pub(crate) async fn startup_check(config: &ElasticsearchConfig) -> Result<bool, EsStartError> {
    if !config.bootstrap {
        return Ok(true);
    }
    let mut nodes = Nodes::new(config).map_err(|source| EsStartError::Client {
        sink: config.name.clone(),
        source,
    })?;
    // Each node once (failover), within the start-up time limit.
    let limit = STARTUP_CHECK.min(Duration::from_millis(config.request_timeout_ms));
    let deadline = tokio::time::Instant::now() + limit;
    let mut rng = fastrand::Rng::new();
    let mut last = String::from("no node answered in time");
    for _ in 0..config.urls.len() {
        let node = nodes.pick();
        match tokio::time::timeout_at(deadline, bootstrap::run(nodes.client(node), config)).await {
            Ok(Ok(cluster)) => {
                info!(sink = %config.name, url = %nodes.url(node), version = %cluster.version, "Elasticsearch ready");
                return Ok(true);
            }
            Ok(Err(BootstrapError::Fatal(reason))) => {
                return Err(EsStartError::Refused {
                    sink: config.name.clone(),
                    reason,
                })
            }
            Ok(Err(BootstrapError::Transient(reason))) => {
                nodes.failed(node, &mut rng);
                last = format!("{}: {reason}", nodes.url(node));
            }
            Err(_) => break,
        }
    }
    warn!(sink = %config.name, error = %last, "Elasticsearch not reachable at start; the sink keeps trying while the queue holds the records");
    Ok(false)
}

impl EsSink {
    /// Opens the sink's folder and reads its position. Blocking (files).
    pub(crate) fn open(
        config: &ElasticsearchConfig,
        data_dir: &Path,
        bootstrapped: bool,
    ) -> Result<EsSink, EsStartError> {
        let dir = sink_dir(data_dir, &config.name);
        let io = |path: &Path| {
            let sink = config.name.clone();
            let path = path.to_path_buf();
            move |source| EsStartError::Io { sink, path, source }
        };
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let position = read_position(&dir, &config.name)?;
        let dead_dir = dir.join("dead-letter");
        let dead = DeadLetterFiles::open(&dead_dir, &config.name).map_err(io(&dead_dir))?;
        let dead_seen = dead.uncommitted_ids(position).map_err(io(&dead_dir))?;
        if !dead_seen.is_empty() {
            info!(sink = %config.name, records = dead_seen.len(), "Dead letters of uncommitted entries found; a replay will not write them again");
        }
        Ok(EsSink {
            config: Arc::new(config.clone()),
            dir,
            position,
            bootstrapped,
            dead,
            dead_seen,
        })
    }

    /// The sink's name.
    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    /// Where the sink resumes in the queue.
    pub(crate) fn position(&self) -> Position {
        self.position
    }

    /// Starts the reader thread and the sink thread; returns the sink thread (it ends once the
    /// reader has, and everything read is settled, or at the queue's drain deadline).
    pub(crate) fn spawn(
        self,
        queue: Queue,
        reader: QueueReader,
        metrics: Arc<Metrics>,
        sink_metrics: Arc<SinkMetrics>,
    ) -> io::Result<JoinHandle<()>> {
        let (tx, rx) = mpsc::channel(2);
        let name = self.config.name.clone();
        let thread_name = format!("ferry-es-{name}");
        let consumer = reader.consumer();
        let read_thread = {
            let queue = queue.clone();
            let metrics = Arc::clone(&metrics);
            let router = Router::new(&self.config);
            std::thread::Builder::new()
                .name(format!("ferry-es-read-{name}"))
                .spawn(move || read_entries(reader, queue, router, tx, metrics))?
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                struct ClearOnExit(Arc<SinkMetrics>);
                impl Drop for ClearOnExit {
                    fn drop(&mut self) {
                        self.0.alive.store(false, Ordering::SeqCst);
                    }
                }
                let _alive = ClearOnExit(Arc::clone(&sink_metrics));
                let driver = Driver::new(self, queue, consumer, rx, metrics, sink_metrics);
                runtime.block_on(driver.run());
                // The reader ends once the queue closes or it finds the sink gone.
                if read_thread.join().is_err() {
                    error!(sink = %name, "Elasticsearch sink reader panicked");
                }
            })
    }
}

/// One queue entry, read and turned into documents.
#[derive(Debug)]
struct Read {
    /// The reader's position after the entry.
    end: Position,
    /// Queue bytes passed (the entry, or a damaged stretch skipped).
    bytes: u64,
    /// Log records the queue counted for the entry.
    records: u64,
    docs: Vec<Document>,
}

/// The reader thread: entries to documents, handed over in order; ends when the queue closes
/// (and is drained) or the sink thread is gone.
fn read_entries(
    mut reader: QueueReader,
    queue: Queue,
    mut router: Router,
    tx: mpsc::Sender<Read>,
    metrics: Arc<Metrics>,
) {
    loop {
        let read = match reader.next(Wait::Block) {
            Ok(Some(entry)) => {
                let docs = match router.documents(entry.data, Utc::now()) {
                    Ok(docs) => docs,
                    Err(e) => {
                        // Ingest validated it; only damage that kept its checksum gets here.
                        metrics.sink_error(SinkError::Decode);
                        warn!(error = %e, "Queue entry does not decode; skipping it");
                        Vec::new()
                    }
                };
                Read {
                    end: reader.position(),
                    bytes: entry.bytes,
                    records: entry.records,
                    docs,
                }
            }
            Ok(None) => return,
            Err(e @ QueueError::Corrupt { .. }) => {
                metrics.sink_error(SinkError::Corrupt);
                match reader.skip_damaged() {
                    Ok(skipped) => {
                        error!(error = %e, skipped_bytes = skipped, "Queue entry damaged; passed over to the next intact entry");
                        Read {
                            end: reader.position(),
                            bytes: skipped,
                            records: 0,
                            docs: Vec::new(),
                        }
                    }
                    Err(e) => {
                        error!(error = %e, "Queue unreadable; Elasticsearch sink reader stopping");
                        return;
                    }
                }
            }
            Err(e) => {
                metrics.sink_error(SinkError::Io);
                error!(error = %e, "Queue read failed; retrying");
                if queue.pause(READ_RETRY) {
                    return;
                }
                continue;
            }
        };
        if tx.blocking_send(read).is_err() {
            return;
        }
    }
}

/// A queue entry whose records are not all settled.
#[derive(Debug)]
struct Pending {
    end: Position,
    bytes: u64,
    records: u64,
    unsettled: usize,
}

/// What a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A record from the queue.
    Record,
    /// The copy of a dead letter for the dead-letter index.
    DeadLetterCopy,
}

/// A document on its way, with the queue entry it belongs to.
#[derive(Debug)]
struct Item {
    doc: Document,
    /// Sequence number of its entry (see [`Driver::base`]).
    entry: u64,
    /// Item-level rejections so far.
    attempts: u32,
    kind: Kind,
}

/// A bulk request that came back.
struct Flight {
    node: usize,
    items: Vec<Item>,
    answer: Answer,
    took: Duration,
}

/// Settled entries waiting to be committed.
#[derive(Debug, Default)]
struct ToCommit {
    position: Option<Position>,
    bytes: u64,
    records: u64,
}

/// The sink thread's state.
struct Driver {
    config: Arc<ElasticsearchConfig>,
    dir: PathBuf,
    bootstrapped: bool,
    nodes: Nodes,
    rng: fastrand::Rng,
    backoff: Backoff,
    queue: Queue,
    consumer: ConsumerId,
    rx: mpsc::Receiver<Read>,
    reader_done: bool,
    metrics: Arc<Metrics>,
    sink_metrics: Arc<SinkMetrics>,
    dead: DeadLetterFiles,
    dead_seen: HashSet<Box<str>>,
    /// Entries read and not yet committed, oldest first; the first has sequence number `base`.
    window: VecDeque<Pending>,
    base: u64,
    window_bytes: u64,
    window_limit: u64,
    /// Documents to send, in queue order.
    fresh: VecDeque<Item>,
    /// When the oldest of `fresh` arrived (the flush timer).
    fresh_since: Option<Instant>,
    /// Items rejected (429/5xx), with the moment they may go again.
    retry: Vec<(Instant, Item)>,
    /// Requests to send again as they are (split after a 413/400, or a whole-request failure).
    again: VecDeque<Vec<Item>>,
    /// No request before this (the cluster pushed back).
    paused_until: Option<Instant>,
    failures: Failures,
    in_flight: tokio::task::JoinSet<Flight>,
    to_commit: ToCommit,
    last_commit: Instant,
}

impl Driver {
    fn new(
        sink: EsSink,
        queue: Queue,
        consumer: ConsumerId,
        rx: mpsc::Receiver<Read>,
        metrics: Arc<Metrics>,
        sink_metrics: Arc<SinkMetrics>,
    ) -> Driver {
        let config = sink.config;
        let nodes = Nodes::new(&config).expect("checked by startup_check and open");
        let window_limit = (config.bulk_max_bytes as u64)
            .saturating_mul(config.concurrent_requests as u64 + 1)
            .max(MIN_WINDOW_BYTES);
        Driver {
            backoff: Backoff {
                initial: Duration::from_millis(config.backoff_initial_ms),
                max: Duration::from_millis(config.backoff_max_ms),
            },
            config,
            dir: sink.dir,
            bootstrapped: sink.bootstrapped,
            nodes,
            rng: fastrand::Rng::new(),
            queue,
            consumer,
            rx,
            reader_done: false,
            metrics,
            sink_metrics,
            dead: sink.dead,
            dead_seen: sink.dead_seen,
            window: VecDeque::new(),
            base: 0,
            window_bytes: 0,
            window_limit,
            fresh: VecDeque::new(),
            fresh_since: None,
            retry: Vec::new(),
            again: VecDeque::new(),
            paused_until: None,
            failures: Failures::NONE,
            in_flight: tokio::task::JoinSet::new(),
            to_commit: ToCommit::default(),
            last_commit: Instant::now(),
        }
    }

    /// Whether the queue's drain deadline has passed.
    fn past_deadline(&self) -> bool {
        self.queue.closed().is_some_and(|d| Instant::now() >= d)
    }

    async fn run(mut self) {
        let name = self.config.name.clone();
        info!(sink = %name, urls = ?self.config.urls, "Elasticsearch sink started");
        if !self.bootstrapped && !self.bootstrap().await {
            return;
        }
        loop {
            self.take_reads();
            self.dispatch();
            self.commit(false);
            if self.reader_done && self.window.is_empty() && self.in_flight.is_empty() {
                break;
            }
            if self.past_deadline() {
                warn!(sink = %name, unsettled_entries = self.window.len(), "Elasticsearch sink stopped at the drain deadline; the rest is sent again at the next start");
                break;
            }
            let wake = self.next_wake();
            let room = !self.reader_done && self.window_bytes < self.window_limit;
            tokio::select! {
                read = self.rx.recv(), if room => match read {
                    Some(read) => self.accept(read),
                    None => self.reader_done = true,
                },
                Some(done) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    match done {
                        Ok(flight) => self.settle_flight(flight),
                        Err(e) => error!(sink = %name, error = %e, "Bulk request task failed"),
                    }
                }
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
        self.commit(true);
        info!(sink = %name, "Elasticsearch sink stopped");
    }

    /// Bootstraps until it works; `false` when the sink must stop (fatal answer, or shutdown).
    async fn bootstrap(&mut self) -> bool {
        let name = self.config.name.clone();
        let mut failures = Failures::NONE;
        loop {
            let node = self.nodes.pick();
            match bootstrap::run(self.nodes.client(node), &self.config).await {
                Ok(cluster) => {
                    info!(sink = %name, version = %cluster.version, "Elasticsearch ready");
                    return true;
                }
                Err(BootstrapError::Fatal(reason)) => {
                    error!(sink = %name, error = %reason, "Elasticsearch sink stopped: the cluster cannot be used");
                    self.sink_metrics.fail(reason);
                    return false;
                }
                Err(BootstrapError::Transient(reason)) => {
                    self.nodes.failed(node, &mut self.rng);
                    if self.nodes.all_down_until().is_none() {
                        warn!(sink = %name, url = %self.nodes.url(node), error = %reason, "Elasticsearch bootstrap failed; trying the next node");
                        continue;
                    }
                    let wait = failures.fail(&self.backoff, &mut self.rng);
                    warn!(sink = %name, error = %reason, retry_in_ms = wait.as_millis() as u64, "Elasticsearch bootstrap failed; retrying");
                    let until = Instant::now() + wait;
                    while Instant::now() < until {
                        if self.past_deadline() {
                            return false;
                        }
                        tokio::time::sleep(TICK.min(until - Instant::now())).await;
                    }
                }
            }
        }
    }

    /// Takes entries the reader has ready, while the window has room.
    fn take_reads(&mut self) {
        while !self.reader_done && self.window_bytes < self.window_limit {
            match self.rx.try_recv() {
                Ok(read) => self.accept(read),
                Err(mpsc::error::TryRecvError::Empty) => return,
                Err(mpsc::error::TryRecvError::Disconnected) => self.reader_done = true,
            }
        }
    }

    fn accept(&mut self, read: Read) {
        let seq = self.base + self.window.len() as u64;
        self.window.push_back(Pending {
            end: read.end,
            bytes: read.bytes,
            records: read.records,
            unsettled: read.docs.len(),
        });
        self.window_bytes += read.bytes;
        if !read.docs.is_empty() && self.fresh.is_empty() {
            self.fresh_since = Some(Instant::now());
        }
        self.fresh.extend(read.docs.into_iter().map(|doc| Item {
            doc,
            entry: seq,
            attempts: 0,
            kind: Kind::Record,
        }));
        self.advance();
    }

    /// When the loop must look again at the latest. Timers that could not lead to a request
    /// (requests paused, every node down, no room in flight) are left out, so the loop never
    /// spins on a deadline it cannot act on.
    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = now + TICK;
        if self.to_commit.position.is_some() {
            wake = wake.min(self.last_commit + COMMIT_INTERVAL);
        }
        let blocked = match (self.paused_until, self.nodes.all_down_until()) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if let Some(until) = blocked {
            wake = wake.min(until);
        } else if self.in_flight.len() < self.config.concurrent_requests {
            if let Some(since) = self.fresh_since {
                wake = wake.min(since + Duration::from_millis(self.config.flush_interval_ms));
            }
            if let Some(due) = self.retry.iter().map(|(due, _)| *due).min() {
                wake = wake.min(due);
            }
        }
        wake.max(now)
    }

    /// Sends requests while there is room in flight and something to send.
    fn dispatch(&mut self) {
        let now = Instant::now();
        if self.paused_until.is_some_and(|t| t > now) {
            return;
        }
        self.paused_until = None;
        if self.nodes.all_down_until().is_some() {
            return;
        }
        while self.in_flight.len() < self.config.concurrent_requests {
            let Some(items) = self.next_request(now) else {
                return;
            };
            self.send(items);
        }
    }

    /// The next request's documents: one to send again as it was, or rejected items whose
    /// backoff is over, then fresh documents (a partial request only once the flush interval
    /// passed or nothing more is coming).
    fn next_request(&mut self, now: Instant) -> Option<Vec<Item>> {
        if let Some(items) = self.again.pop_front() {
            return Some(items);
        }
        let max_bytes = self.config.bulk_max_bytes;
        let max_records = self.config.bulk_max_records;
        let mut items = Vec::new();
        let mut bytes = 0;
        let fits = |items: &Vec<Item>, bytes: usize, doc: &Document| {
            items.is_empty()
                || (items.len() < max_records
                    && bytes + request_builder::body_bytes(doc) <= max_bytes)
        };
        let mut i = 0;
        while i < self.retry.len() {
            if self.retry[i].0 <= now && fits(&items, bytes, &self.retry[i].1.doc) {
                let (_, item) = self.retry.swap_remove(i);
                bytes += request_builder::body_bytes(&item.doc);
                items.push(item);
            } else {
                i += 1;
            }
        }
        let fresh_bytes: usize = if items.is_empty() {
            // Whether enough fresh documents wait to fill a request.
            let mut b = 0;
            for (n, item) in self.fresh.iter().enumerate() {
                if n >= max_records || b >= max_bytes {
                    break;
                }
                b += request_builder::body_bytes(&item.doc);
            }
            b
        } else {
            0
        };
        let full = self.fresh.len() >= max_records || fresh_bytes >= max_bytes;
        let flush_due = self.fresh_since.is_some_and(|since| {
            now >= since + Duration::from_millis(self.config.flush_interval_ms)
        });
        let draining = self.reader_done || self.window_bytes >= self.window_limit;
        if !items.is_empty() || full || flush_due || draining {
            while let Some(item) = self.fresh.front() {
                if !fits(&items, bytes, &item.doc) {
                    break;
                }
                let item = self.fresh.pop_front().expect("front exists");
                bytes += request_builder::body_bytes(&item.doc);
                items.push(item);
            }
            self.fresh_since = if self.fresh.is_empty() {
                None
            } else {
                Some(now)
            };
        }
        (!items.is_empty()).then_some(items)
    }

    fn send(&mut self, items: Vec<Item>) {
        let node = self.nodes.pick();
        let client = self.nodes.client(node).clone();
        let compression = self.config.request_compression;
        let mut body = Vec::with_capacity(
            items
                .iter()
                .map(|i| request_builder::body_bytes(&i.doc))
                .sum(),
        );
        request_builder::bulk_body(items.iter().map(|i| &i.doc), &mut body);
        let body = match compression {
            RequestCompression::None => Bytes::from(body),
            RequestCompression::Gzip => Bytes::from(request_builder::gzip(&body)),
        };
        self.in_flight.spawn(async move {
            let started = Instant::now();
            let answer = service::bulk(&client, body, compression).await;
            Flight {
                node,
                items,
                answer,
                took: started.elapsed(),
            }
        });
    }

    /// Acts on a bulk request's answer.
    fn settle_flight(&mut self, flight: Flight) {
        let Flight {
            node,
            items,
            answer,
            took,
        } = flight;
        let (status, body) = match &answer {
            Answer::Status(status, body) => (Some(*status), body.clone()),
            Answer::Failed(_) => (None, Bytes::new()),
        };
        let (verdict, outcome) = request_verdict(status);
        match verdict {
            RequestVerdict::Items => {
                let answers = read_items(&body, items.iter().map(|i| &*i.doc.id)).map(|answers| {
                    answers
                        .iter()
                        .map(|a| (a.status, a.error.map(|e| e.get().to_string())))
                        .collect::<Vec<_>>()
                });
                match answers {
                    Ok(answers) => {
                        self.sink_metrics.bulk_request(BulkOutcome::Ok, took);
                        self.nodes.succeeded(node);
                        self.failures = Failures::NONE;
                        self.settle_items(items, answers);
                    }
                    Err(reason) => {
                        self.sink_metrics
                            .bulk_request(BulkOutcome::BadResponse, took);
                        self.request_failed(node, false, items, &reason);
                    }
                }
            }
            RequestVerdict::Split => {
                self.sink_metrics.bulk_request(outcome, took);
                let reason = match status {
                    Some(413) => {
                        "413: the request is larger than the cluster's http.max_content_length"
                            .to_string()
                    }
                    _ => settlement::error_text(&String::from_utf8_lossy(&body)),
                };
                if items.len() > 1 {
                    warn!(sink = %self.config.name, documents = items.len(), error = %reason, "Bulk request refused whole; sending it again in halves");
                    let mut first = items;
                    let second = first.split_off(first.len() / 2);
                    self.again.push_front(second);
                    self.again.push_front(first);
                } else {
                    let error = serde_json::to_string(&reason).expect("a string serialises");
                    let status = status.unwrap_or(400);
                    self.settle_items(items, vec![(status, Some(error))]);
                }
            }
            RequestVerdict::Retry { node_down } => {
                self.sink_metrics.bulk_request(outcome, took);
                let reason = match &answer {
                    Answer::Failed(reason) => reason.clone(),
                    Answer::Status(status, body) => format!(
                        "{status}: {}",
                        settlement::error_text(&String::from_utf8_lossy(body))
                    ),
                };
                self.request_failed(node, node_down, items, &reason);
            }
        }
    }

    /// A whole request failed: send it again, on another node at once when the node is down
    /// and another is up, else after a backoff.
    fn request_failed(&mut self, node: usize, node_down: bool, items: Vec<Item>, reason: &str) {
        let url = self.nodes.url(node).to_string();
        if node_down {
            self.nodes.failed(node, &mut self.rng);
        }
        let other_node_up = node_down && self.nodes.all_down_until().is_none();
        if other_node_up {
            warn!(sink = %self.config.name, url = %url, error = %reason, "Bulk request failed; sending it to another node");
        } else {
            let wait = self.failures.fail(&self.backoff, &mut self.rng);
            let until = Instant::now() + wait;
            self.paused_until = Some(self.paused_until.map_or(until, |t| t.max(until)));
            warn!(sink = %self.config.name, url = %url, error = %reason, retry_in_ms = wait.as_millis() as u64, documents = items.len(), "Bulk request failed; retrying after a backoff");
        }
        self.again.push_front(items);
    }

    /// Settles each item by its status (`error` is the item's error object, as JSON).
    fn settle_items(&mut self, items: Vec<Item>, answers: Vec<(u16, Option<String>)>) {
        let now = Instant::now();
        let mut letters: Vec<(Item, DeadLetter)> = Vec::new();
        for (item, (status, error)) in items.into_iter().zip(answers) {
            match item_verdict(status) {
                ItemVerdict::Indexed | ItemVerdict::Duplicate
                    if item.kind == Kind::DeadLetterCopy =>
                {
                    self.sink_metrics
                        .dead_letters(DeadLetterDestination::Index, 1);
                    self.settled(item.entry);
                }
                ItemVerdict::Indexed => {
                    self.sink_metrics.items(ItemResult::Created, 1);
                    self.settled(item.entry);
                }
                ItemVerdict::Duplicate => {
                    self.sink_metrics.items(ItemResult::Duplicate, 1);
                    self.settled(item.entry);
                }
                ItemVerdict::Retry => {
                    self.sink_metrics.items(ItemResult::Retried, 1);
                    let mut item = item;
                    item.attempts += 1;
                    let due = now + self.backoff.delay(item.attempts, &mut self.rng);
                    self.retry.push((due, item));
                }
                ItemVerdict::DeadLetter if item.kind == Kind::DeadLetterCopy => {
                    self.sink_metrics
                        .dead_letters(DeadLetterDestination::IndexFailed, 1);
                    warn!(sink = %self.config.name, id = %item.doc.id, status, error = error.as_deref().unwrap_or(""), "The dead-letter index refused a dead letter; it stays in the local file");
                    self.settled(item.entry);
                }
                ItemVerdict::DeadLetter => {
                    let letter = DeadLetter {
                        id: item.doc.id.clone(),
                        index: Arc::clone(&item.doc.index),
                        status,
                        error: error.unwrap_or_else(|| "null".into()),
                        original: item.doc.original(),
                        position: self.window[(item.entry - self.base) as usize].end,
                    };
                    letters.push((item, letter));
                }
            }
        }
        if letters.is_empty() {
            return;
        }
        // Refused again on a replay: the line is already in the file.
        let records: Vec<DeadLetter> = letters
            .iter()
            .filter(|(_, l)| !self.dead_seen.contains(&l.id))
            .map(|(_, l)| l.clone())
            .collect();
        let replayed = (letters.len() - records.len()) as u64;
        let written = if records.is_empty() {
            Ok(None)
        } else {
            self.dead.write(&records).map(Some)
        };
        match written {
            Ok(path) => {
                let n = records.len() as u64;
                self.sink_metrics.items(ItemResult::DeadLettered, n);
                self.sink_metrics
                    .dead_letters(DeadLetterDestination::File, n);
                self.sink_metrics.items(ItemResult::Duplicate, replayed);
                if let Some(path) = path {
                    warn!(sink = %self.config.name, records = n, path = %path.display(), first_error = %settlement::error_text(&records[0].error), "Records refused by Elasticsearch written to the dead-letter file");
                }
                let dl_index: Option<Arc<str>> =
                    self.config.dead_letter_index.as_deref().map(Arc::from);
                let at = Utc::now();
                for (item, letter) in letters {
                    match &dl_index {
                        Some(index) => {
                            let copy = Document {
                                id: item.doc.id.clone(),
                                index: Arc::clone(index),
                                source: Bytes::from(letter.index_document(&self.config.name, at)),
                                original: Original::Bytes(Bytes::new()),
                            };
                            self.fresh.push_front(Item {
                                doc: copy,
                                entry: item.entry,
                                attempts: 0,
                                kind: Kind::DeadLetterCopy,
                            });
                            self.fresh_since.get_or_insert(now);
                        }
                        None => self.settled(item.entry),
                    }
                }
            }
            Err(e) => {
                // Not settled: the records go again, and come back here.
                if crate::queue::no_room(&e) {
                    self.queue.out_of_room();
                }
                self.metrics.sink_error(SinkError::Io);
                error!(sink = %self.config.name, error = %e, records = records.len(), "Dead-letter write failed; sending the records again");
                for (mut item, _) in letters {
                    item.attempts += 1;
                    let due = now + self.backoff.delay(item.attempts, &mut self.rng);
                    self.retry.push((due, item));
                }
            }
        }
    }

    /// One record of entry `seq` is settled.
    fn settled(&mut self, seq: u64) {
        let i = (seq - self.base) as usize;
        self.window[i].unsettled -= 1;
        self.advance();
    }

    /// Moves fully settled entries from the front of the window to the commit.
    fn advance(&mut self) {
        while self.window.front().is_some_and(|p| p.unsettled == 0) {
            let p = self.window.pop_front().expect("front exists");
            self.base += 1;
            self.window_bytes -= p.bytes;
            self.to_commit.position = Some(p.end);
            self.to_commit.bytes += p.bytes;
            self.to_commit.records += p.records;
        }
    }

    /// Writes the position and trims the queue, at most every [`COMMIT_INTERVAL`] (or now).
    fn commit(&mut self, now: bool) {
        let Some(position) = self.to_commit.position else {
            return;
        };
        if !now && self.last_commit.elapsed() < COMMIT_INTERVAL {
            return;
        }
        self.last_commit = Instant::now();
        if let Err(e) = write_position(&self.dir, position) {
            if crate::queue::no_room(&e) {
                // The reserve the queue keeps lets the next try through.
                self.queue.out_of_room();
            }
            self.metrics.sink_error(SinkError::Io);
            error!(sink = %self.config.name, error = %e, "Sink position write failed; the queue keeps the entries");
            return;
        }
        let done = std::mem::take(&mut self.to_commit);
        self.queue
            .commit(self.consumer, position, done.bytes, done.records);
    }
}
