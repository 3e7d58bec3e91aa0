//! The durable queue between ingest and sink: append-only segment files under
//! `<data_dir>/queue/`, named `<20-digit sequence>.seg`.
//!
//! Each entry is one validated, decompressed NDJSON batch behind a checksummed header (the
//! framing, and how the next intact entry is found after damage, is in [`frame`]).
//! [`Queue::append`] returns only once the entry is fsynced (appenders that arrive while an fsync
//! runs share the next one: group commit), and the sink's [`QueueReader`] never sees an entry
//! before it is durable, so a position the sink commits always survives a crash. Segments wholly
//! below every consumer's committed position are deleted by [`Queue::commit`]. This module knows
//! nothing of HTTP or of the store.
//!
//! Several sinks may read the one queue: each [`Queue::reader`] is a consumer with its own
//! position and its own count of what it has not committed. A segment is deleted only once every
//! consumer has passed it, and the queue's bound applies to what the slowest consumer has left.
//!
//! **Damage.** Only a torn tail is ever cut: on open, the newest segment is scanned, and when an
//! entry does not check out and no intact entry follows it, the rest is what a SIGKILL or power
//! loss left behind an append that was never acknowledged, and it is cut. When an intact entry
//! does follow, the bad bytes are damage: they stay where they are, and when the reader gets
//! there ([`QueueError::Corrupt`]) [`QueueReader::skip_damaged`] copies them to
//! `queue/damaged/<segment>.seg.damaged-<offset>` for inspection, counts them
//! (`ferry_queue_damaged_bytes_total`) and reads on at the next intact entry, in that segment or
//! the next. Damage to the very last entry of the newest segment looks exactly like a torn
//! append, and is cut like one.
//!
//! **A full disk.** The queue keeps a reserve file (`queue/reserve`, one segment's size up to
//! 1 MiB). When an append fails for want of room (ENOSPC, EDQUOT) the half-written entry is cut,
//! appends are refused with [`QueueError::NoRoom`] (ingest answers 503) without touching the disk
//! again, and the reserve is deleted, so the sinks can still write their positions and dead
//! letters, commit, and let whole segments be trimmed. After a trim the reserve is written again
//! and appends are taken again. Without it a full disk stalled the pipeline for good: the sink
//! could not write the position that would let the queue free room.

use std::cmp::Ordering as CmpOrdering;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

#[cfg(test)]
mod damage_tests;
mod frame;

use frame::{Format, Scan};

/// Bytes a queue entry takes beside its payload (the header of the format this build writes).
pub(crate) const ENTRY_OVERHEAD_BYTES: u64 = 16;
/// Precision of [`Queue::oldest_age`].
const AGE_RESOLUTION: Duration = Duration::from_millis(100);
const SEGMENT_SUFFIX: &str = ".seg";
/// Folder (below the queue's) where damaged bytes are kept.
const DAMAGED_DIR: &str = "damaged";
/// The file holding the room given back to the sinks when the disk fills (see the module docs).
const RESERVE_FILE: &str = "reserve";
/// Largest reserve (smaller with smaller segments, at least 64 KiB).
const RESERVE_MAX_BYTES: u64 = 1 << 20;

/// A place in the queue: a segment sequence number and a byte offset within it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Position {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (self.segment, self.offset).cmp(&(other.segment, other.offset))
    }
}

/// Why the queue refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue is full: {queued_bytes} bytes queued, {entry_bytes} more would pass the limit of {max_bytes}")]
    Full {
        queued_bytes: u64,
        entry_bytes: u64,
        max_bytes: u64,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: corrupt queue entry at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("queue is unusable after an earlier write failure: {0}")]
    Failed(String),
    /// The queue's file system is full: appends are refused until a trim frees room.
    #[error("no room left on the queue's disk: {0}")]
    NoRoom(String),
    #[error("entry of {0} bytes is larger than a queue entry can be")]
    EntryTooLarge(usize),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> QueueError + '_ {
    move |source| QueueError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The shared queue. Cheap to clone: every clone is the same queue.
#[derive(Debug, Clone)]
pub(crate) struct Queue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    segment_bytes: u64,
    max_bytes: u64,
    metrics: Arc<Metrics>,
    writer: Mutex<Writer>,
    /// Set when a write or fsync failed: the queue refuses appends from then on. Apart from the
    /// writer's lock, so `/health` never waits behind an append or a segment's fsync.
    failed: Mutex<Option<String>>,
    /// Set when the disk is full: appends are refused until a trim lets the reserve be taken.
    out_of_room: AtomicBool,
    /// Held while an fsync runs; the appenders behind it find their entry already synced.
    sync_lock: Mutex<()>,
    shared: Mutex<Shared>,
    /// Signalled when `durable` moves or the queue closes.
    cond: Condvar,
}

#[derive(Debug)]
struct Writer {
    segment: u64,
    file: Arc<File>,
    /// End of the last entry written (not necessarily synced).
    end: u64,
}

#[derive(Debug)]
struct Shared {
    /// Everything before this position is fsynced.
    durable: Position,
    /// What the slowest consumer has not committed (what the bound applies to).
    queued_bytes: u64,
    queued_records: u64,
    /// Set by [`Queue::close`]: readers return `None` once caught up or past the deadline.
    closed: Option<Instant>,
    /// Where readers start at the earliest (the position [`Queue::open`] returned).
    opened: Position,
    consumers: Vec<Consumer>,
    /// End position and append time of queued entries, oldest first (entries queued before the
    /// queue opened count as appended when it opened); pruned as the slowest consumer commits.
    appended: std::collections::VecDeque<(Position, Instant)>,
}

/// One reader's committed position and what it has left (bytes, log records).
#[derive(Debug, Clone, Copy)]
struct Consumer {
    position: Position,
    bytes: u64,
    records: u64,
}

/// A queue handle that does not keep the queue alive (for metrics, which the queue owns).
#[derive(Debug, Clone)]
pub(crate) struct WeakQueue(std::sync::Weak<Inner>);

impl WeakQueue {
    /// [`Queue::depth`], or nothing once the queue is gone.
    pub(crate) fn depth(&self, consumer: ConsumerId) -> (u64, u64) {
        self.0
            .upgrade()
            .map_or((0, 0), |inner| Queue { inner }.depth(consumer))
    }

    /// [`Queue::oldest_age`], or nothing once the queue is gone.
    pub(crate) fn oldest_age(&self, consumer: ConsumerId) -> Option<Duration> {
        Queue {
            inner: self.0.upgrade()?,
        }
        .oldest_age(consumer)
    }
}

/// Which reader commits (see [`QueueReader::consumer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConsumerId(usize);

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}{SEGMENT_SUFFIX}"))
}

/// Sequence numbers of the segment files in `dir`, ascending.
fn list_segments(dir: &Path) -> Result<Vec<u64>, QueueError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = name.strip_suffix(SEGMENT_SUFFIX) {
            if seq.len() == 20 {
                if let Ok(seq) = seq.parse::<u64>() {
                    out.push(seq);
                }
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), QueueError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Log records in a batch payload, read from its header line (0 if the header is unreadable).
fn payload_records(head: &[u8]) -> u64 {
    let line = match memchr_newline(head) {
        Some(end) => &head[..end],
        None => head,
    };
    serde_json::from_slice::<ferry_wire::BatchHeader>(line)
        .map(|h| h.logs as u64)
        .unwrap_or(0)
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

impl Queue {
    /// Opens (or creates) the queue in `dir`, repairs a torn tail, and positions consumers at
    /// `start` (the sink's last committed position; clamped to what exists).
    ///
    /// Returns the queue and the position the reader must start from.
    pub(crate) fn open(
        dir: &Path,
        segment_bytes: u64,
        max_bytes: u64,
        start: Position,
        metrics: Arc<Metrics>,
    ) -> Result<(Queue, Position), QueueError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut segments = list_segments(dir)?;
        if segments.is_empty() {
            let first = start.segment.max(1);
            File::create(segment_path(dir, first)).map_err(io_err(dir))?;
            sync_dir(dir)?;
            segments.push(first);
        }
        let mut last = *segments.last().expect("at least one segment");
        let last_path = segment_path(dir, last);
        let mut last_file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&last_path)
            .map_err(io_err(&last_path))?;
        let (mut end, format) = recover_last(&last_file, &last_path, last)?;

        // Clamp the start to what exists.
        let first = segments[0];
        let mut start = start;
        if start.segment < first {
            if start != Position::default() {
                debug!(from = ?start, segment = first, "Queue position before the oldest segment");
            }
            start = Position {
                segment: first,
                offset: 0,
            };
        } else if start.segment > last || (start.segment == last && start.offset > end) {
            warn!(position = ?start, segment = last, end, "Committed queue position is past the end of the queue; resuming at the end");
            start = Position {
                segment: last,
                offset: end,
            };
        } else if !segments.contains(&start.segment) {
            let next = segments
                .iter()
                .copied()
                .find(|&s| s > start.segment)
                .unwrap_or(last);
            warn!(position = ?start, segment = next, "Committed queue segment is missing; resuming at the next one");
            start = Position {
                segment: next,
                offset: 0,
            };
        }
        // Drop segments the consumer is already past.
        for &seg in segments.iter().filter(|&&s| s < start.segment) {
            let path = segment_path(dir, seg);
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        if format == Format::V1 && end > 0 {
            // This build writes version 2 entries only: the old segment is sealed as it is.
            last_file.sync_all().map_err(io_err(&last_path))?;
            last += 1;
            let path = segment_path(dir, last);
            last_file = new_segment(&path)?;
            sync_dir(dir)?;
            segments.push(last);
            end = 0;
            info!(
                segment = last,
                "Queue segment of an earlier format sealed; new entries go to a new segment"
            );
        }

        let (queued_bytes, queued_records) = count_from(dir, &segments, start, last, end)?;
        metrics.queue_bytes.store(queued_bytes, Ordering::Relaxed);
        metrics
            .queue_records
            .store(queued_records, Ordering::Relaxed);
        info!(
            dir = %dir.display(),
            segments = segments.iter().filter(|&&s| s >= start.segment).count(),
            queued_bytes,
            queued_records,
            "Queue opened"
        );
        let durable = Position {
            segment: last,
            offset: end,
        };
        let out_of_room = match take_reserve(dir, segment_bytes) {
            Ok(()) => false,
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "Queue disk is full at start: refusing batches (503) until the sinks free room");
                true
            }
        };
        let queue = Queue {
            inner: Arc::new(Inner {
                out_of_room: AtomicBool::new(out_of_room),
                dir: dir.to_path_buf(),
                segment_bytes,
                max_bytes,
                metrics,
                writer: Mutex::new(Writer {
                    segment: last,
                    file: Arc::new(last_file),
                    end,
                }),
                failed: Mutex::new(None),
                sync_lock: Mutex::new(()),
                shared: Mutex::new(Shared {
                    durable,
                    queued_bytes,
                    queued_records,
                    closed: None,
                    opened: start,
                    consumers: Vec::new(),
                    appended: if queued_bytes > 0 {
                        [(durable, Instant::now())].into()
                    } else {
                        Default::default()
                    },
                }),
                cond: Condvar::new(),
            }),
        };
        Ok((queue, start))
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        self.inner
            .shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.inner
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends one batch payload and returns once it is durable (fsynced).
    ///
    /// Refuses with [`QueueError::Full`] (appending nothing) when the queue would pass its limit.
    pub(crate) fn append(&self, payload: &[u8]) -> Result<(), QueueError> {
        let len =
            u32::try_from(payload.len()).map_err(|_| QueueError::EntryTooLarge(payload.len()))?;
        if len == 0 {
            return Err(QueueError::EntryTooLarge(0));
        }
        let entry_bytes = ENTRY_OVERHEAD_BYTES + u64::from(len);
        let records = payload_records(&payload[..payload.len().min(4096)]);
        let my_end = {
            let mut w = self.writer();
            if let Some(reason) = self.failure() {
                return Err(QueueError::Failed(reason));
            }
            if self.inner.out_of_room.load(Ordering::SeqCst) {
                return Err(QueueError::NoRoom(format!(
                    "{}: waiting for the sinks to free room",
                    self.inner.dir.display()
                )));
            }
            {
                let shared = self.shared();
                if shared.queued_bytes + entry_bytes > self.inner.max_bytes {
                    return Err(QueueError::Full {
                        queued_bytes: shared.queued_bytes,
                        entry_bytes,
                        max_bytes: self.inner.max_bytes,
                    });
                }
            }
            if w.end > 0 && w.end + entry_bytes > self.inner.segment_bytes {
                self.roll(&mut w)?;
            }
            let header = frame::header(w.segment, w.end, payload);
            let path = segment_path(&self.inner.dir, w.segment);
            let written = (&*w.file)
                .write_all(&header)
                .and_then(|()| (&*w.file).write_all(payload));
            if let Err(source) = written {
                // Cut what was half-written so the segment stays a clean sequence of entries.
                if let Err(e) = w.file.set_len(w.end) {
                    let reason = format!("{}: cannot cut a failed write: {e}", path.display());
                    self.fail(reason);
                } else if no_room(&source) {
                    self.out_of_room();
                    return Err(QueueError::NoRoom(format!("{}: {source}", path.display())));
                }
                return Err(QueueError::Io { path, source });
            }
            w.end += entry_bytes;
            let end = Position {
                segment: w.segment,
                offset: w.end,
            };
            let mut shared = self.shared();
            shared.queued_bytes += entry_bytes;
            shared.queued_records += records;
            for c in shared.consumers.iter_mut() {
                c.bytes += entry_bytes;
                c.records += records;
            }
            // Entries appended within the same tenth of a second share one mark, so the marks
            // stay few whatever the entries' size.
            let now = Instant::now();
            match shared.appended.back_mut() {
                Some((last_end, at)) if now.duration_since(*at) < AGE_RESOLUTION => *last_end = end,
                _ => shared.appended.push_back((end, now)),
            }
            self.publish(&shared);
            end
        };
        self.sync_to(my_end)
    }

    /// Makes everything up to `target` durable, sharing one fsync among concurrent appenders.
    fn sync_to(&self, target: Position) -> Result<(), QueueError> {
        let _sync = self
            .inner
            .sync_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.shared().durable >= target {
            return Ok(());
        }
        let (file, upto) = {
            let w = self.writer();
            if let Some(reason) = self.failure() {
                return Err(QueueError::Failed(reason));
            }
            (
                Arc::clone(&w.file),
                Position {
                    segment: w.segment,
                    offset: w.end,
                },
            )
        };
        if let Err(source) = file.sync_data() {
            // After a failed fsync the kernel may have dropped the dirty pages: stop trusting
            // the file rather than acknowledge data that may not be there.
            let path = segment_path(&self.inner.dir, upto.segment);
            let reason = format!("{}: fsync failed: {source}", path.display());
            self.fail(reason);
            return Err(QueueError::Io { path, source });
        }
        let mut shared = self.shared();
        if upto > shared.durable {
            shared.durable = upto;
            self.inner.cond.notify_all();
        }
        Ok(())
    }

    /// Seals the current segment (fsynced) and starts the next one.
    fn roll(&self, w: &mut Writer) -> Result<(), QueueError> {
        let old = segment_path(&self.inner.dir, w.segment);
        w.file.sync_data().map_err(|source| {
            self.fail(format!("{}: fsync failed: {source}", old.display()));
            QueueError::Io {
                path: old.clone(),
                source,
            }
        })?;
        let next = w.segment + 1;
        let file = new_segment(&segment_path(&self.inner.dir, next))?;
        sync_dir(&self.inner.dir)?;
        debug!(segment = next, "Queue segment started");
        {
            // The old segment is complete and synced: readers may pass its end.
            let mut shared = self.shared();
            let sealed = Position {
                segment: w.segment,
                offset: w.end,
            };
            if sealed > shared.durable {
                shared.durable = sealed;
            }
        }
        w.segment = next;
        w.file = Arc::new(file);
        w.end = 0;
        Ok(())
    }

    fn publish(&self, shared: &Shared) {
        let m = &self.inner.metrics;
        m.queue_bytes.store(shared.queued_bytes, Ordering::Relaxed);
        m.queue_records
            .store(shared.queued_records, Ordering::Relaxed);
    }

    /// Records that `consumer` committed everything before `position` (`bytes` and `records`
    /// being what it consumed since its last commit) and deletes the segments every consumer has
    /// passed.
    pub(crate) fn commit(
        &self,
        consumer: ConsumerId,
        position: Position,
        bytes: u64,
        records: u64,
    ) {
        let trim = {
            let mut shared = self.shared();
            let Some(c) = shared.consumers.get_mut(consumer.0) else {
                return;
            };
            c.position = c.position.max(position);
            c.bytes = c.bytes.saturating_sub(bytes);
            c.records = c.records.saturating_sub(records);
            let slowest = shared
                .consumers
                .iter()
                .map(|c| c.position)
                .min()
                .unwrap_or(position);
            shared.queued_bytes = shared.consumers.iter().map(|c| c.bytes).max().unwrap_or(0);
            shared.queued_records = shared
                .consumers
                .iter()
                .map(|c| c.records)
                .max()
                .unwrap_or(0);
            while shared
                .appended
                .front()
                .is_some_and(|(end, _)| *end <= slowest)
            {
                shared.appended.pop_front();
            }
            self.publish(&shared);
            slowest
        };
        let segments = match list_segments(&self.inner.dir) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "Queue trim failed");
                return;
            }
        };
        let mut trimmed = false;
        for seg in segments.into_iter().filter(|&s| s < trim.segment) {
            let path = segment_path(&self.inner.dir, seg);
            match fs::remove_file(&path) {
                Ok(()) => {
                    trimmed = true;
                    debug!(segment = seg, "Queue segment trimmed");
                }
                Err(e) => warn!(path = %path.display(), error = %e, "Queue trim failed"),
            }
        }
        if trimmed && self.inner.out_of_room.load(Ordering::SeqCst) {
            match take_reserve(&self.inner.dir, self.inner.segment_bytes) {
                Ok(()) => {
                    self.inner.out_of_room.store(false, Ordering::SeqCst);
                    info!(dir = %self.inner.dir.display(), "Queue disk has room again: taking batches");
                }
                Err(e) => debug!(error = %e, "Queue disk still full"),
            }
        }
    }

    /// A write on the queue's file system failed for want of room (an append, or a sink's
    /// position or dead letter): refuse appends until a trim frees room, and give the reserve
    /// to the sinks.
    pub(crate) fn out_of_room(&self) {
        if !self.inner.out_of_room.swap(true, Ordering::SeqCst) {
            let _ = fs::remove_file(self.inner.dir.join(RESERVE_FILE));
            warn!(dir = %self.inner.dir.display(), "Queue disk is full: refusing batches (503) until the sinks free room");
        }
    }

    /// A handle that does not keep the queue alive.
    pub(crate) fn downgrade(&self) -> WeakQueue {
        WeakQueue(Arc::downgrade(&self.inner))
    }

    /// What `consumer` has not committed: (bytes, log records).
    pub(crate) fn depth(&self, consumer: ConsumerId) -> (u64, u64) {
        let shared = self.shared();
        shared
            .consumers
            .get(consumer.0)
            .map_or((0, 0), |c| (c.bytes, c.records))
    }

    /// How long ago the oldest entry `consumer` has not committed was appended (`None`: nothing
    /// left). Entries queued before the queue opened count from the opening.
    pub(crate) fn oldest_age(&self, consumer: ConsumerId) -> Option<Duration> {
        let shared = self.shared();
        let position = shared.consumers.get(consumer.0)?.position;
        let first = shared.appended.partition_point(|(end, _)| *end <= position);
        shared.appended.get(first).map(|(_, at)| at.elapsed())
    }

    /// The drain deadline [`Queue::close`] set, if the queue is closed.
    pub(crate) fn closed(&self) -> Option<Instant> {
        self.shared().closed
    }

    /// Stops the queue: readers drain what is durable until `deadline`, then return `None`.
    pub(crate) fn close(&self, deadline: Instant) {
        let mut shared = self.shared();
        shared.closed = Some(deadline);
        self.inner.cond.notify_all();
    }

    /// Pauses up to `timeout`, cut short when the queue closes or its drain deadline comes.
    /// Returns whether the drain deadline has passed (the caller should give up).
    pub(crate) fn pause(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        let mut shared = self.shared();
        let was_closed = shared.closed.is_some();
        loop {
            let now = Instant::now();
            let mut until = start + timeout;
            if let Some(deadline) = shared.closed {
                if now >= deadline {
                    return true;
                }
                if !was_closed {
                    return false;
                }
                until = until.min(deadline);
            }
            if now >= until {
                return false;
            }
            shared = self
                .inner
                .cond
                .wait_timeout(shared, until - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Whether an earlier write or fsync failure made the queue refuse appends. Never waits for
    /// an append or an fsync in progress.
    pub(crate) fn failure(&self) -> Option<String> {
        self.inner
            .failed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn fail(&self, reason: String) {
        *self
            .inner
            .failed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(reason);
    }

    /// A new consumer reading from `position`: a sink's committed position, or the one
    /// [`Queue::open`] returned. A position before that one starts there; one past the end starts
    /// at the end; one in a segment that no longer exists starts at the next segment.
    pub(crate) fn reader(&self, position: Position) -> QueueReader {
        let mut shared = self.shared();
        let position = if position <= shared.opened {
            shared.opened
        } else {
            self.clamp(position, shared.durable)
        };
        let (bytes, records) = self
            .count_between(position, shared.durable)
            .unwrap_or_else(|e| {
                warn!(error = %e, "Queue depth of a reader unknown; counting what the queue holds");
                (shared.queued_bytes, shared.queued_records)
            });
        let consumer = Consumer {
            position,
            bytes,
            records,
        };
        let id = ConsumerId(shared.consumers.len());
        shared.consumers.push(consumer);
        QueueReader {
            queue: self.clone(),
            position,
            file: None,
            consumer: id,
        }
    }

    /// `position` moved onto an existing entry boundary's segment (see [`Queue::reader`]).
    fn clamp(&self, position: Position, durable: Position) -> Position {
        if position >= durable {
            return durable;
        }
        let segments = list_segments(&self.inner.dir).unwrap_or_default();
        if segments.contains(&position.segment) {
            return position;
        }
        match segments.into_iter().find(|&s| s > position.segment) {
            Some(next) => Position {
                segment: next,
                offset: 0,
            },
            None => durable,
        }
    }

    /// Bytes and log records of the entries from `from` to `to` (both entry boundaries).
    fn count_between(&self, from: Position, to: Position) -> Result<(u64, u64), QueueError> {
        let dir = &self.inner.dir;
        let segments: Vec<u64> = list_segments(dir)?
            .into_iter()
            .filter(|&s| s <= to.segment)
            .collect();
        let (mut bytes, mut records) = (0, 0);
        for &seg in segments.iter().filter(|&&s| s >= from.segment) {
            let path = segment_path(dir, seg);
            let len = fs::metadata(&path).map_err(io_err(&path))?.len();
            let end = if seg == to.segment { to.offset } else { len };
            let (b, r) = count_from(
                dir,
                &[seg],
                if seg == from.segment {
                    from
                } else {
                    Position {
                        segment: seg,
                        offset: 0,
                    }
                },
                seg,
                end,
            )?;
            bytes += b;
            records += r;
        }
        Ok((bytes, records))
    }

    #[cfg(test)]
    pub(crate) fn queued(&self) -> (u64, u64) {
        let s = self.shared();
        (s.queued_bytes, s.queued_records)
    }
}

/// Creates an empty segment file at `path` (a leftover file of that name, only possible after
/// manual meddling, is emptied).
/// Whether a write failed for want of room (ENOSPC, or EDQUOT past a quota).
pub(crate) fn no_room(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Makes sure the reserve file holds its room (written with real bytes: a sparse file would
/// hold none); on failure nothing of it is left.
fn take_reserve(dir: &Path, segment_bytes: u64) -> io::Result<()> {
    let bytes = segment_bytes.clamp(64 << 10, RESERVE_MAX_BYTES);
    let path = dir.join(RESERVE_FILE);
    if fs::metadata(&path).is_ok_and(|m| m.len() >= bytes) {
        return Ok(());
    }
    let written = File::create(&path).and_then(|mut f| {
        f.write_all(&vec![0u8; bytes as usize])?;
        f.sync_all()
    });
    if written.is_err() {
        let _ = fs::remove_file(&path);
    }
    written
}

fn new_segment(path: &Path) -> Result<File, QueueError> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err(path))?;
    file.set_len(0).map_err(io_err(path))?;
    Ok(file)
}

/// Scans the newest segment: damage followed by an intact entry is left for the reader (see
/// the module docs); a torn tail (a bad entry with nothing intact after it) is cut. Returns the
/// segment's end and format.
fn recover_last(file: &File, path: &Path, segment: u64) -> Result<(u64, Format), QueueError> {
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let format = frame::detect(file, segment, file_len).map_err(io_err(path))?;
    let mut offset = 0;
    let mut buf = Vec::new();
    loop {
        let scan = frame::scan_entry(file, format, segment, offset, file_len, true, &mut buf)
            .map_err(io_err(path))?;
        match scan {
            Scan::Entry { len } => offset += format.header_bytes() + len,
            Scan::End => return Ok((offset, format)),
            Scan::Bad(reason) => {
                match frame::resync(file, format, segment, offset + 1, file_len)
                    .map_err(io_err(path))?
                {
                    Some(next) => {
                        warn!(
                            path = %path.display(),
                            offset,
                            damaged_bytes = next - offset,
                            reason = %reason,
                            "Queue segment damaged before intact entries; keeping them (the damage is moved aside when the sink reaches it)"
                        );
                        offset = next;
                    }
                    None => {
                        warn!(
                            path = %path.display(),
                            offset,
                            cut_bytes = file_len - offset,
                            reason = %reason,
                            "Queue segment has a torn tail; cutting it"
                        );
                        file.set_len(offset).map_err(io_err(path))?;
                        file.sync_all().map_err(io_err(path))?;
                        return Ok((offset, format));
                    }
                }
            }
        }
    }
}

/// Bytes and log records queued from `start` to the end (`last` segment, `end` offset). Every
/// byte counts, damage included (the reader passes over it); records are counted in the entries
/// found, without verifying their payloads.
fn count_from(
    dir: &Path,
    segments: &[u64],
    start: Position,
    last: u64,
    end: u64,
) -> Result<(u64, u64), QueueError> {
    let mut bytes = 0;
    let mut records = 0;
    let mut head = vec![0u8; 4096];
    let mut unused = Vec::new();
    for &seg in segments.iter().filter(|&&s| s >= start.segment) {
        let path = segment_path(dir, seg);
        let file = File::open(&path).map_err(io_err(&path))?;
        let file_len = if seg == last {
            end
        } else {
            file.metadata().map_err(io_err(&path))?.len()
        };
        let format = frame::detect(&file, seg, file_len).map_err(io_err(&path))?;
        let mut offset = if seg == start.segment {
            start.offset
        } else {
            0
        };
        bytes += file_len.saturating_sub(offset);
        loop {
            let scan = frame::scan_entry(&file, format, seg, offset, file_len, false, &mut unused)
                .map_err(io_err(&path))?;
            match scan {
                Scan::Entry { len } => {
                    let n = (len as usize).min(head.len());
                    let payload = offset + format.header_bytes();
                    file.read_exact_at(&mut head[..n], payload)
                        .map_err(io_err(&path))?;
                    records += payload_records(&head[..n]);
                    offset = payload + len;
                }
                Scan::End => break,
                Scan::Bad(_) => {
                    match frame::resync(&file, format, seg, offset + 1, file_len)
                        .map_err(io_err(&path))?
                    {
                        Some(next) => offset = next,
                        None => break,
                    }
                }
            }
        }
    }
    Ok((bytes, records))
}

/// One durable queue entry, as the sink reads it.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) data: Vec<u8>,
    /// Bytes the entry occupies in the queue (header included).
    pub(crate) bytes: u64,
    /// Log records in the batch.
    pub(crate) records: u64,
}

/// A sink's cursor over durable entries, in order.
#[derive(Debug)]
pub(crate) struct QueueReader {
    queue: Queue,
    position: Position,
    file: Option<OpenSegment>,
    consumer: ConsumerId,
}

/// The segment a reader is in.
#[derive(Debug)]
struct OpenSegment {
    segment: u64,
    file: File,
    format: Format,
}

/// Whether [`QueueReader::next`] may wait for an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Wait until an entry is durable or the queue closes.
    Block,
    /// Return `None` at once when nothing is ready.
    NoWait,
}

impl QueueReader {
    /// The consumer this reader commits as.
    pub(crate) fn consumer(&self) -> ConsumerId {
        self.consumer
    }

    /// The position just past the last entry returned.
    pub(crate) fn position(&self) -> Position {
        self.position
    }

    /// Opens the reader's current segment (when it is not open yet) and returns it with the
    /// end of its readable bytes.
    fn segment(&mut self, durable: Position) -> Result<(&OpenSegment, u64), QueueError> {
        let seg = self.position.segment;
        let path = segment_path(&self.queue.inner.dir, seg);
        if self.file.as_ref().map(|f| f.segment) != Some(seg) {
            let file = File::open(&path).map_err(io_err(&path))?;
            let len = file.metadata().map_err(io_err(&path))?.len();
            let format = frame::detect(&file, seg, len).map_err(io_err(&path))?;
            self.file = Some(OpenSegment {
                segment: seg,
                file,
                format,
            });
        }
        let open = self.file.as_ref().expect("opened above");
        let limit = if seg == durable.segment {
            durable.offset
        } else {
            open.file.metadata().map_err(io_err(&path))?.len()
        };
        Ok((open, limit))
    }

    /// The next durable entry, or `None` (with [`Wait::Block`]: only when the queue closed and
    /// the reader caught up or the drain deadline passed). On [`QueueError::Corrupt`] the
    /// position stays on the damage: call [`Self::skip_damaged`] to move past it.
    pub(crate) fn next(&mut self, wait: Wait) -> Result<Option<Entry>, QueueError> {
        loop {
            let durable = {
                let mut shared = self.queue.shared();
                loop {
                    if let Some(deadline) = shared.closed {
                        if Instant::now() >= deadline {
                            return Ok(None);
                        }
                    }
                    if shared.durable > self.position {
                        break;
                    }
                    if wait == Wait::NoWait || shared.closed.is_some() {
                        return Ok(None);
                    }
                    shared = self
                        .queue
                        .inner
                        .cond
                        .wait(shared)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                shared.durable
            };
            let seg = self.position.segment;
            let offset = self.position.offset;
            let (open, limit) = self.segment(durable)?;
            let format = open.format;
            // The buffer of the last batch read on this thread, when there is one: for a sink
            // that decodes its entries, no zeroed allocation per entry.
            let mut data = ferry_wire::batch_buffer();
            let scan = frame::scan_entry(&open.file, format, seg, offset, limit, true, &mut data)
                .map_err(io_err(&segment_path(&self.queue.inner.dir, seg)))?;
            match scan {
                Scan::Entry { len } => {
                    let bytes = format.header_bytes() + len;
                    self.position.offset += bytes;
                    let records = payload_records(&data[..data.len().min(4096)]);
                    return Ok(Some(Entry {
                        data,
                        bytes,
                        records,
                    }));
                }
                Scan::End => {
                    // A sealed segment is finished: go on with the next one.
                    let dir = &self.queue.inner.dir;
                    let next = list_segments(dir)?
                        .into_iter()
                        .find(|&s| s > seg)
                        .ok_or_else(|| QueueError::Corrupt {
                            path: segment_path(dir, seg),
                            offset,
                            reason: "the queue ends inside a sealed segment".into(),
                        })?;
                    self.position = Position {
                        segment: next,
                        offset: 0,
                    };
                    self.file = None;
                }
                Scan::Bad(reason) => {
                    return Err(QueueError::Corrupt {
                        path: segment_path(&self.queue.inner.dir, seg),
                        offset,
                        reason,
                    })
                }
            }
        }
    }

    /// After [`QueueError::Corrupt`]: finds the next intact entry after the damaged bytes (or
    /// the end of what the segment holds), keeps a copy of the damaged bytes under
    /// `queue/damaged/`, counts them, and moves the position past them. Returns the bytes skipped.
    pub(crate) fn skip_damaged(&mut self) -> Result<u64, QueueError> {
        let durable = self.queue.shared().durable;
        let seg = self.position.segment;
        let from = self.position.offset;
        let dir = self.queue.inner.dir.clone();
        let path = segment_path(&dir, seg);
        let (open, limit) = self.segment(durable)?;
        if from >= limit {
            return Ok(0);
        }
        let next = frame::resync(&open.file, open.format, seg, from + 1, limit)
            .map_err(io_err(&path))?
            .unwrap_or(limit);
        let skipped = next - from;
        match keep_damaged(&dir, seg, &open.file, from, skipped) {
            Ok(kept) => warn!(
                path = %path.display(),
                offset = from,
                damaged_bytes = skipped,
                resumed_at = next,
                kept = %kept.display(),
                "Damaged queue bytes moved aside; reading on at the next intact entry"
            ),
            Err(e) => warn!(
                path = %path.display(),
                offset = from,
                damaged_bytes = skipped,
                resumed_at = next,
                error = %e,
                "Damaged queue bytes could not be copied aside (they stay in the segment until it is trimmed); reading on at the next intact entry"
            ),
        }
        self.queue
            .inner
            .metrics
            .queue_damaged_bytes
            .fetch_add(skipped, Ordering::Relaxed);
        self.position.offset = next;
        Ok(skipped)
    }
}

/// Copies `len` damaged bytes at `offset` of `segment` to
/// `<dir>/damaged/<segment>.seg.damaged-<offset>` (fsynced), unless an earlier pass already did.
fn keep_damaged(
    dir: &Path,
    segment: u64,
    file: &File,
    offset: u64,
    len: u64,
) -> Result<PathBuf, QueueError> {
    let damaged = dir.join(DAMAGED_DIR);
    fs::create_dir_all(&damaged).map_err(io_err(&damaged))?;
    let path = damaged.join(format!("{segment:020}{SEGMENT_SUFFIX}.damaged-{offset}"));
    if fs::metadata(&path).is_ok_and(|m| m.len() == len) {
        return Ok(path);
    }
    let mut out = File::create(&path).map_err(io_err(&path))?;
    let mut chunk = vec![0u8; (len as usize).min(1 << 20)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(chunk.len() as u64) as usize;
        let segment_path = segment_path(dir, segment);
        file.read_exact_at(&mut chunk[..n], offset + done)
            .map_err(io_err(&segment_path))?;
        out.write_all(&chunk[..n]).map_err(io_err(&path))?;
        done += n as u64;
    }
    out.sync_all().map_err(io_err(&path))?;
    sync_dir(&damaged)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize, tag: &str) -> Vec<u8> {
        let mut b = format!("{{\"ferry\":1,\"host\":\"h\",\"logs\":{n},\"stats\":0}}\n");
        for i in 0..n {
            b.push_str(&format!("{{\"tag\":\"{tag}\",\"i\":{i}}}\n"));
        }
        b.into_bytes()
    }

    fn open(dir: &Path, seg: u64, max: u64, start: Position) -> (Queue, Position) {
        Queue::open(dir, seg, max, start, Arc::new(Metrics::default())).unwrap()
    }

    fn drain(reader: &mut QueueReader) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(e) = reader.next(Wait::NoWait).unwrap() {
            out.push(e.data);
        }
        out
    }

    /// Drains as the sink does: passes over damage. Returns the payloads and the bytes skipped.
    pub(super) fn drain_skipping(reader: &mut QueueReader) -> (Vec<Vec<u8>>, u64) {
        let mut out = Vec::new();
        let mut skipped = 0;
        loop {
            match reader.next(Wait::NoWait) {
                Ok(Some(e)) => out.push(e.data),
                Ok(None) => return (out, skipped),
                Err(QueueError::Corrupt { .. }) => skipped += reader.skip_damaged().unwrap(),
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn start_of(segment: u64) -> Position {
        Position { segment, offset: 0 }
    }

    /// A tmpfs of a few MiB mounted for one test (root only), unmounted when dropped.
    struct SmallDisk(PathBuf);

    impl SmallDisk {
        /// `None` when FERRY_TEST_SKIP_MOUNT=1; panics when the mount fails otherwise.
        fn mount(path: &Path, bytes: u64) -> Option<SmallDisk> {
            if std::env::var("FERRY_TEST_SKIP_MOUNT").is_ok_and(|v| v == "1") {
                eprintln!("FERRY_TEST_SKIP_MOUNT=1: skipping a test that mounts a tmpfs");
                return None;
            }
            fs::create_dir_all(path).unwrap();
            let out = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "ferry-test"])
                .arg(path)
                .output()
                .expect("mount runs");
            assert!(
                out.status.success(),
                "mounting a tmpfs failed (the test needs root; FERRY_TEST_SKIP_MOUNT=1 skips it): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some(SmallDisk(path.to_path_buf()))
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    /// Found by the soak (benches/soak.rs, seed 1): with the queue's disk full, the
    /// Elasticsearch sink could not write its position (ENOSPC), so it never committed, the
    /// queue never trimmed, and the pipeline stalled for good. A full disk must refuse appends
    /// (answered 503), leave the sinks room to commit, and take batches again after a trim,
    /// every entry intact.
    #[test]
    fn a_full_disk_refuses_appends_leaves_the_sinks_room_and_recovers_after_a_trim() {
        let tmp = tempfile::tempdir().unwrap();
        let mnt = tmp.path().join("disk");
        let Some(_disk) = SmallDisk::mount(&mnt, 3 << 20) else {
            return;
        };
        let dir = mnt.join("queue");
        let (q, start) = open(&dir, 256 << 10, 1 << 30, Position::default());
        let b = batch(200, "x");
        let mut appended = 0;
        let err = loop {
            match q.append(&b) {
                Ok(()) => appended += 1,
                Err(e) => break e,
            }
            assert!(appended < 10_000, "a 3 MiB disk never filled");
        };
        assert!(matches!(err, QueueError::NoRoom(_)), "{err}");
        assert!(matches!(q.append(&b), Err(QueueError::NoRoom(_))));
        // What a sink writes beside the queue (its position, dead letters) still fits.
        fs::write(mnt.join("position.json"), vec![b'p'; 8192])
            .expect("the sink can write its position on a full disk");
        // The sink passes three segments: they are trimmed and appends are taken again.
        let mut r = q.reader(start);
        let first = r.position().segment;
        let mut read = 0;
        while r.position().segment < first + 3 {
            let e = r.next(Wait::NoWait).unwrap().expect("entries to read");
            assert_eq!(e.data, b);
            q.commit(r.consumer(), r.position(), e.bytes, e.records);
            read += 1;
        }
        q.append(&b).expect("room again after the trim");
        appended += 1;
        let rest = drain(&mut r);
        assert_eq!(
            read + rest.len(),
            appended,
            "every appended entry reads back"
        );
        assert!(rest.iter().all(|e| *e == b));
    }

    #[test]
    fn appends_reads_in_order_and_trims_whole_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("queue");
        let (q, start) = open(&dir, 300, 1 << 20, Position::default());
        let batches: Vec<_> = (0..10).map(|i| batch(2, &format!("b{i}"))).collect();
        for b in &batches {
            q.append(b).unwrap();
        }
        assert!(
            list_segments(&dir).unwrap().len() > 2,
            "rolled at 300 bytes"
        );
        let total: u64 = batches
            .iter()
            .map(|b| b.len() as u64 + ENTRY_OVERHEAD_BYTES)
            .sum();
        assert_eq!(q.queued(), (total, 20));

        let mut r = q.reader(start);
        let mut got = Vec::new();
        for _ in 0..5 {
            let e = r.next(Wait::NoWait).unwrap().unwrap();
            q.commit(r.consumer(), r.position(), e.bytes, e.records);
            got.push(e.data);
        }
        assert_eq!(got, batches[..5]);
        let segs = list_segments(&dir).unwrap();
        assert_eq!(
            segs[0],
            r.position().segment,
            "segments below the position are gone"
        );
        let pos = r.position();
        got.extend(drain(&mut r));
        assert_eq!(got, batches);

        // Reopening at the committed position sees only the uncommitted entries.
        drop(q);
        let (q, start) = open(&dir, 300, 1 << 20, pos);
        let mut r = q.reader(start);
        assert_eq!(drain(&mut r), batches[5..]);
        let rest: u64 = batches[5..]
            .iter()
            .map(|b| b.len() as u64 + ENTRY_OVERHEAD_BYTES)
            .sum();
        assert_eq!(q.queued(), (rest, 10));
    }

    #[test]
    fn torn_tail_is_cut_on_reopen_and_earlier_entries_survive() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("queue");
        let (q, _) = open(&dir, 1 << 20, 1 << 20, Position::default());
        q.append(&batch(1, "a")).unwrap();
        q.append(&batch(1, "b")).unwrap();
        drop(q);
        let seg = segment_path(&dir, 1);
        let good_len = fs::metadata(&seg).unwrap().len();
        // Half an entry: a header promising 1000 bytes, then 10 of them.
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&1000u32.to_le_bytes()).unwrap();
        f.write_all(&0u32.to_le_bytes()).unwrap();
        f.write_all(&[b'x'; 10]).unwrap();
        drop(f);

        let (q, start) = open(&dir, 1 << 20, 1 << 20, Position::default());
        assert_eq!(fs::metadata(&seg).unwrap().len(), good_len);
        let mut r = q.reader(start);
        assert_eq!(drain(&mut r), [batch(1, "a"), batch(1, "b")]);
        // Appends after the repair land where the torn entry was.
        q.append(&batch(1, "c")).unwrap();
        assert_eq!(drain(&mut r), [batch(1, "c")]);

        // Garbage shorter than a header is cut too.
        drop((q, r));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"abc").unwrap();
        drop(f);
        let (q, start) = open(&dir, 1 << 20, 1 << 20, Position::default());
        let mut r = q.reader(start);
        assert_eq!(drain(&mut r).len(), 3);
    }

    /// Regression (issue 10, finding 5): a checksum mismatch in the middle of the newest segment
    /// used to cut the segment there, dropping the acknowledged entries after it.
    #[test]
    fn corrupt_checksum_mid_segment_keeps_the_entries_after_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("queue");
        let (q, _) = open(&dir, 1 << 20, 1 << 20, Position::default());
        let (a, b, c) = (batch(1, "a"), batch(1, "b"), batch(1, "c"));
        for e in [&a, &b, &c] {
            q.append(e).unwrap();
        }
        drop(q);
        let seg = segment_path(&dir, 1);
        let mut bytes = fs::read(&seg).unwrap();
        let b_start = a.len() + 16;
        let b_payload = b_start + 16 + 3;
        bytes[b_payload] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();

        let metrics = Arc::new(Metrics::default());
        let (q, start) =
            Queue::open(&dir, 1 << 20, 1 << 20, start_of(1), Arc::clone(&metrics)).unwrap();
        assert_eq!(fs::metadata(&seg).unwrap().len(), bytes.len() as u64);
        let mut r = q.reader(start);
        let (got, skipped) = drain_skipping(&mut r);
        assert_eq!(got, [a, c]);
        assert_eq!(skipped, b.len() as u64 + 16);
        assert_eq!(metrics.queue_damaged_bytes.load(Ordering::Relaxed), skipped);
        let kept = dir
            .join(DAMAGED_DIR)
            .join(format!("{:020}.seg.damaged-{b_start}", 1));
        assert_eq!(
            fs::read(kept).unwrap(),
            bytes[b_start..b_start + 16 + b.len()]
        );
    }

    #[test]
    fn refuses_appends_over_the_limit_and_appends_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("queue");
        let b = batch(3, "x");
        let limit = 2 * (b.len() as u64 + ENTRY_OVERHEAD_BYTES);
        let (q, start) = open(&dir, 1 << 20, limit, Position::default());
        q.append(&b).unwrap();
        q.append(&b).unwrap();
        let before = fs::metadata(segment_path(&dir, 1)).unwrap().len();
        let err = q.append(&b).unwrap_err();
        assert!(matches!(err, QueueError::Full { .. }), "{err}");
        assert_eq!(fs::metadata(segment_path(&dir, 1)).unwrap().len(), before);
        // Committing frees room.
        let mut r = q.reader(start);
        let e = r.next(Wait::NoWait).unwrap().unwrap();
        q.commit(r.consumer(), r.position(), e.bytes, e.records);
        q.append(&b).unwrap();
    }

    #[test]
    fn blocked_reader_wakes_on_append_and_on_close() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("queue");
        let (q, start) = open(&dir, 1 << 20, 1 << 20, Position::default());
        let mut r = q.reader(start);
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            while let Some(e) = r.next(Wait::Block).unwrap() {
                got.push(e.data);
            }
            got
        });
        let appended: Vec<_> = (0..20).map(|i| batch(1, &i.to_string())).collect();
        std::thread::scope(|s| {
            for chunk in appended.chunks(5) {
                let q = q.clone();
                s.spawn(move || {
                    for b in chunk {
                        q.append(b).unwrap();
                    }
                });
            }
        });
        q.close(Instant::now() + Duration::from_secs(10));
        let mut got = reader.join().unwrap();
        got.sort();
        let mut want = appended;
        want.sort();
        assert_eq!(
            got, want,
            "every appended entry is read once, then the reader stops"
        );
    }

    /// Regression (review of issue 10): `failure()`, which `/health` calls on an async worker,
    /// took the writer's lock, held across an append's write and a segment roll's fsync.
    #[test]
    fn failure_never_waits_for_the_writer() {
        let tmp = tempfile::tempdir().unwrap();
        let (q, _) = open(
            &tmp.path().join("queue"),
            1 << 20,
            1 << 20,
            Position::default(),
        );
        let busy = q.writer();
        let (tx, rx) = std::sync::mpsc::channel();
        let probe = q.clone();
        std::thread::spawn(move || tx.send(probe.failure()).unwrap());
        let answer = rx.recv_timeout(Duration::from_secs(10));
        drop(busy);
        assert_eq!(answer, Ok(None), "failure() waited for the writer's lock");
    }

    #[test]
    fn each_reader_has_its_own_position_and_segments_wait_for_the_slowest() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("queue");
        let b = batch(2, "x");
        let entry = b.len() as u64 + ENTRY_OVERHEAD_BYTES;
        // One entry per segment; room for six entries.
        let (q, start) = open(&dir, 10, 6 * entry, Position::default());
        let mut fast = q.reader(start);
        let mut slow = q.reader(start);
        for _ in 0..4 {
            q.append(&b).unwrap();
        }
        assert_eq!(q.depth(fast.consumer()), (4 * entry, 8));
        assert!(q.oldest_age(slow.consumer()).is_some());
        for _ in 0..4 {
            let e = fast.next(Wait::NoWait).unwrap().unwrap();
            q.commit(fast.consumer(), fast.position(), e.bytes, e.records);
        }
        assert_eq!(q.depth(fast.consumer()), (0, 0));
        assert_eq!(q.oldest_age(fast.consumer()), None);
        assert_eq!(q.depth(slow.consumer()), (4 * entry, 8));
        assert_eq!(
            list_segments(&dir).unwrap().len(),
            4,
            "nothing trimmed: one reader is behind"
        );
        assert_eq!(
            q.queued(),
            (4 * entry, 8),
            "the bound counts what the slowest has left"
        );
        q.append(&b).unwrap();
        q.append(&b).unwrap();
        assert!(matches!(q.append(&b), Err(QueueError::Full { .. })));
        for _ in 0..3 {
            let e = slow.next(Wait::NoWait).unwrap().unwrap();
            q.commit(slow.consumer(), slow.position(), e.bytes, e.records);
        }
        assert_eq!(q.depth(slow.consumer()), (3 * entry, 6));
        let segments = list_segments(&dir).unwrap();
        assert_eq!(
            segments.first(),
            Some(&slow.position().segment),
            "trimmed up to the slowest"
        );
        q.append(&b).unwrap();

        // A reader added at a position past the start counts only what lies after it.
        let late = q.reader(fast.position());
        assert_eq!(q.depth(late.consumer()), (3 * entry, 6));
    }

    #[test]
    fn position_past_the_end_is_clamped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("queue");
        let (q, _) = open(&dir, 1 << 20, 1 << 20, Position::default());
        q.append(&batch(1, "a")).unwrap();
        drop(q);
        let far = Position {
            segment: 1,
            offset: 1 << 30,
        };
        let (q, start) = open(&dir, 1 << 20, 1 << 20, far);
        assert!(start < far);
        q.append(&batch(1, "b")).unwrap();
        assert_eq!(drain(&mut q.reader(start)), [batch(1, "b")]);
    }
}
