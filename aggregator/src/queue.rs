//! The durable queue between ingest and sink: append-only segment files under
//! `<data_dir>/queue/`, named `<20-digit sequence>.seg`.
//!
//! Each entry is `[u32 len LE][u32 crc32 LE of payload][payload]`, the payload being one validated,
//! decompressed NDJSON batch. [`Queue::append`] returns only once the entry is fsynced (appenders
//! that arrive while an fsync runs share the next one: group commit), and the sink's
//! [`QueueReader`] never sees an entry before it is durable, so a position the sink commits always
//! survives a crash. On open the last segment is scanned and cut at the first torn or corrupt
//! entry (what a SIGKILL or power loss leaves). Segments wholly below the committed consumer
//! position are deleted by [`Queue::commit`]. This module knows nothing of HTTP or of the store.

use std::cmp::Ordering as CmpOrdering;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

const HEADER_BYTES: u64 = 8;
const SEGMENT_SUFFIX: &str = ".seg";

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
    failed: Option<String>,
}

#[derive(Debug)]
struct Shared {
    /// Everything before this position is fsynced.
    durable: Position,
    queued_bytes: u64,
    queued_records: u64,
    /// Set by [`Queue::close`]: readers return `None` once caught up or past the deadline.
    closed: Option<Instant>,
}

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

/// What reading one entry found.
enum Scan {
    Entry {
        len: u64,
    },
    /// Clean end of the segment.
    End,
    /// The entry at this offset is torn or corrupt.
    Bad(String),
}

/// Reads the entry header at `offset` of a segment `file_len` long, and verifies its payload when
/// `verify` (then `buf` holds the payload).
fn scan_entry(
    file: &File,
    offset: u64,
    file_len: u64,
    verify: bool,
    buf: &mut Vec<u8>,
) -> io::Result<Scan> {
    if offset == file_len {
        return Ok(Scan::End);
    }
    if file_len - offset < HEADER_BYTES {
        return Ok(Scan::Bad(format!(
            "{} bytes left, too short for an entry header",
            file_len - offset
        )));
    }
    let mut header = [0u8; HEADER_BYTES as usize];
    file.read_exact_at(&mut header, offset)?;
    let len = u64::from(u32::from_le_bytes([
        header[0], header[1], header[2], header[3],
    ]));
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 {
        return Ok(Scan::Bad("zero-length entry".into()));
    }
    if len > file_len - offset - HEADER_BYTES {
        return Ok(Scan::Bad(format!(
            "entry says {len} bytes but only {} remain",
            file_len - offset - HEADER_BYTES
        )));
    }
    if verify {
        buf.clear();
        buf.resize(len as usize, 0);
        file.read_exact_at(buf, offset + HEADER_BYTES)?;
        let actual = crc32fast::hash(buf);
        if actual != crc {
            return Ok(Scan::Bad(format!(
                "checksum {actual:08x} does not match the stored {crc:08x}"
            )));
        }
    }
    Ok(Scan::Entry { len })
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
        let last = *segments.last().expect("at least one segment");
        let last_path = segment_path(dir, last);
        let last_file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&last_path)
            .map_err(io_err(&last_path))?;
        let end = repair_tail(&last_file, &last_path)?;

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
        let queue = Queue {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                segment_bytes,
                max_bytes,
                metrics,
                writer: Mutex::new(Writer {
                    segment: last,
                    file: Arc::new(last_file),
                    end,
                    failed: None,
                }),
                sync_lock: Mutex::new(()),
                shared: Mutex::new(Shared {
                    durable,
                    queued_bytes,
                    queued_records,
                    closed: None,
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
        let entry_bytes = HEADER_BYTES + u64::from(len);
        let records = payload_records(&payload[..payload.len().min(4096)]);
        let my_end = {
            let mut w = self.writer();
            if let Some(reason) = &w.failed {
                return Err(QueueError::Failed(reason.clone()));
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
            let mut header = [0u8; HEADER_BYTES as usize];
            header[..4].copy_from_slice(&len.to_le_bytes());
            header[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
            let path = segment_path(&self.inner.dir, w.segment);
            let written = (&*w.file)
                .write_all(&header)
                .and_then(|()| (&*w.file).write_all(payload));
            if let Err(source) = written {
                // Cut what was half-written so the segment stays a clean sequence of entries.
                if let Err(e) = w.file.set_len(w.end) {
                    let reason = format!("{}: cannot cut a failed write: {e}", path.display());
                    w.failed = Some(reason);
                }
                return Err(QueueError::Io { path, source });
            }
            w.end += entry_bytes;
            let mut shared = self.shared();
            shared.queued_bytes += entry_bytes;
            shared.queued_records += records;
            self.publish(&shared);
            Position {
                segment: w.segment,
                offset: w.end,
            }
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
            if let Some(reason) = &w.failed {
                return Err(QueueError::Failed(reason.clone()));
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
            self.writer().failed = Some(reason);
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
            w.failed = Some(format!("{}: fsync failed: {source}", old.display()));
            QueueError::Io {
                path: old.clone(),
                source,
            }
        })?;
        let next = w.segment + 1;
        let path = segment_path(&self.inner.dir, next);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        // A leftover file of that name (only possible after manual meddling) is emptied.
        file.set_len(0).map_err(io_err(&path))?;
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

    /// Records that the sink committed everything before `position` (`bytes` and `records`
    /// being what it consumed since the last commit) and deletes segments wholly below it.
    pub(crate) fn commit(&self, position: Position, bytes: u64, records: u64) {
        {
            let mut shared = self.shared();
            shared.queued_bytes = shared.queued_bytes.saturating_sub(bytes);
            shared.queued_records = shared.queued_records.saturating_sub(records);
            self.publish(&shared);
        }
        let segments = match list_segments(&self.inner.dir) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "Queue trim failed");
                return;
            }
        };
        for seg in segments.into_iter().filter(|&s| s < position.segment) {
            let path = segment_path(&self.inner.dir, seg);
            match fs::remove_file(&path) {
                Ok(()) => debug!(segment = seg, "Queue segment trimmed"),
                Err(e) => warn!(path = %path.display(), error = %e, "Queue trim failed"),
            }
        }
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

    /// Whether an earlier write or fsync failure made the queue refuse appends.
    pub(crate) fn failure(&self) -> Option<String> {
        self.writer().failed.clone()
    }

    /// A reader starting at `position` (as returned by [`Queue::open`]).
    pub(crate) fn reader(&self, position: Position) -> QueueReader {
        QueueReader {
            queue: self.clone(),
            position,
            file: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn queued(&self) -> (u64, u64) {
        let s = self.shared();
        (s.queued_bytes, s.queued_records)
    }
}

/// Scans the last segment and cuts it at the first torn or corrupt entry; returns its length.
fn repair_tail(file: &File, path: &Path) -> Result<u64, QueueError> {
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let mut offset = 0;
    let mut buf = Vec::new();
    loop {
        match scan_entry(file, offset, file_len, true, &mut buf).map_err(io_err(path))? {
            Scan::Entry { len } => offset += HEADER_BYTES + len,
            Scan::End => return Ok(offset),
            Scan::Bad(reason) => {
                warn!(
                    path = %path.display(),
                    offset,
                    cut_bytes = file_len - offset,
                    reason = %reason,
                    "Queue segment has a torn or corrupt tail; cutting it"
                );
                file.set_len(offset).map_err(io_err(path))?;
                file.sync_all().map_err(io_err(path))?;
                return Ok(offset);
            }
        }
    }
}

/// Bytes and log records queued from `start` to the end (`last` segment, `end` offset).
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
    for &seg in segments.iter().filter(|&&s| s >= start.segment) {
        let path = segment_path(dir, seg);
        let file = File::open(&path).map_err(io_err(&path))?;
        let file_len = if seg == last {
            end
        } else {
            file.metadata().map_err(io_err(&path))?.len()
        };
        let mut offset = if seg == start.segment {
            start.offset
        } else {
            0
        };
        let mut unused = Vec::new();
        loop {
            match scan_entry(&file, offset, file_len, false, &mut unused).map_err(io_err(&path))? {
                Scan::Entry { len } => {
                    let n = (len as usize).min(head.len());
                    file.read_exact_at(&mut head[..n], offset + HEADER_BYTES)
                        .map_err(io_err(&path))?;
                    records += payload_records(&head[..n]);
                    bytes += HEADER_BYTES + len;
                    offset += HEADER_BYTES + len;
                }
                Scan::End => break,
                Scan::Bad(reason) => {
                    warn!(path = %path.display(), offset, reason = %reason, "Queue segment damaged; the sink will skip past it");
                    bytes += file_len - offset;
                    break;
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

/// The sink's cursor over durable entries, in order.
#[derive(Debug)]
pub(crate) struct QueueReader {
    queue: Queue,
    position: Position,
    file: Option<(u64, File)>,
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
    /// The position just past the last entry returned.
    pub(crate) fn position(&self) -> Position {
        self.position
    }

    /// The next durable entry, or `None` (with [`Wait::Block`]: only when the queue closed and
    /// the reader caught up or the drain deadline passed).
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
            let dir = &self.queue.inner.dir;
            let seg = self.position.segment;
            let path = segment_path(dir, seg);
            if self.file.as_ref().map(|(s, _)| *s) != Some(seg) {
                let file = File::open(&path).map_err(io_err(&path))?;
                self.file = Some((seg, file));
            }
            let file = &self.file.as_ref().expect("opened above").1;
            let limit = if seg == durable.segment {
                durable.offset
            } else {
                file.metadata().map_err(io_err(&path))?.len()
            };
            let mut data = Vec::new();
            match scan_entry(file, self.position.offset, limit, true, &mut data)
                .map_err(io_err(&path))?
            {
                Scan::Entry { len } => {
                    self.position.offset += HEADER_BYTES + len;
                    let records = payload_records(&data[..data.len().min(4096)]);
                    return Ok(Some(Entry {
                        data,
                        bytes: HEADER_BYTES + len,
                        records,
                    }));
                }
                Scan::End => {
                    // A sealed segment is finished: go on with the next one.
                    let next = list_segments(dir)?
                        .into_iter()
                        .find(|&s| s > seg)
                        .ok_or_else(|| QueueError::Corrupt {
                            path: path.clone(),
                            offset: self.position.offset,
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
                        path,
                        offset: self.position.offset,
                        reason,
                    })
                }
            }
        }
    }

    /// Skips the rest of the current segment (after [`QueueError::Corrupt`]); returns the bytes
    /// skipped.
    pub(crate) fn skip_segment(&mut self) -> Result<u64, QueueError> {
        let durable = self.queue.shared().durable;
        let seg = self.position.segment;
        let end = if seg == durable.segment {
            durable.offset
        } else {
            let path = segment_path(&self.queue.inner.dir, seg);
            fs::metadata(&path).map_err(io_err(&path))?.len()
        };
        let skipped = end.saturating_sub(self.position.offset);
        self.position.offset = end.max(self.position.offset);
        Ok(skipped)
    }
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
        let total: u64 = batches.iter().map(|b| b.len() as u64 + 8).sum();
        assert_eq!(q.queued(), (total, 20));

        let mut r = q.reader(start);
        let mut got = Vec::new();
        for _ in 0..5 {
            let e = r.next(Wait::NoWait).unwrap().unwrap();
            q.commit(r.position(), e.bytes, e.records);
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
        let rest: u64 = batches[5..].iter().map(|b| b.len() as u64 + 8).sum();
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

    #[test]
    fn corrupt_checksum_cuts_the_tail_from_that_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("queue");
        let (q, _) = open(&dir, 1 << 20, 1 << 20, Position::default());
        let a = batch(1, "a");
        q.append(&a).unwrap();
        q.append(&batch(1, "b")).unwrap();
        q.append(&batch(1, "c")).unwrap();
        drop(q);
        let seg = segment_path(&dir, 1);
        let mut bytes = fs::read(&seg).unwrap();
        let b_payload = a.len() + 8 + 8 + 3;
        bytes[b_payload] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();

        let (q, start) = open(&dir, 1 << 20, 1 << 20, Position::default());
        assert_eq!(fs::metadata(&seg).unwrap().len(), a.len() as u64 + 8);
        assert_eq!(drain(&mut q.reader(start)), [a]);
    }

    #[test]
    fn reader_reports_corruption_in_a_sealed_segment_and_can_skip_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("queue");
        let (q, start) = open(&dir, 100, 1 << 20, Position::default());
        for tag in ["a", "b", "c"] {
            q.append(&batch(1, tag)).unwrap();
        }
        // Each entry has its own segment (each is > 50 bytes); damage the first.
        let seg = segment_path(&dir, 1);
        let mut bytes = fs::read(&seg).unwrap();
        bytes[10] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        let mut r = q.reader(start);
        let err = r.next(Wait::NoWait).unwrap_err();
        assert!(
            matches!(err, QueueError::Corrupt { offset: 0, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("checksum"), "{err}");
        assert_eq!(r.skip_segment().unwrap(), bytes.len() as u64);
        assert_eq!(drain(&mut r), [batch(1, "b"), batch(1, "c")]);
    }

    #[test]
    fn refuses_appends_over_the_limit_and_appends_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("queue");
        let b = batch(3, "x");
        let limit = 2 * (b.len() as u64 + 8);
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
        q.commit(r.position(), e.bytes, e.records);
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
