//! The local store's commit record: the committed length of every day file, the queue position
//! to resume from, and each source's high-water mark (the dedup state), kept so that a commit
//! costs what it changes, not what the store remembers.
//!
//! On disk, under the store's folder:
//! ```text
//! state.json      snapshot: {"version":2,"seq":S,"queue_position":{"segment":…,"offset":…},
//!                 "files":{"ferry-2026-11-28.ndjson":LEN,…},"sources":{"<fingerprint>":[OFFSET,LAST],…}}
//! state.journal   one line per commit after the snapshot: `<crc32 hex> <record JSON>\n`, a record
//!                 being {"seq":S+1,"queue_position":…,"files":{changed lengths},"removed_files":[…],
//!                 "dropped":[fingerprints],"marks":{"<fingerprint>":OFFSET,…}}
//! ```
//! `LAST` is the `seq` of the last commit that stored a record of the source (for eviction).
//!
//! **A commit** appends one record and fsyncs the journal: that fsync is the commit point. A
//! crash during the append leaves a torn last line, which [`StateFiles::load`] cuts (the commit
//! did not happen); a damaged line with intact lines after it is not a torn write, and the store
//! refuses to open rather than guess. **Compaction**, once the journal has grown past the
//! snapshot (and [`COMPACT_MIN_BYTES`]), writes a new snapshot (temp file, fsync, rename, fsync
//! the folder) and then empties the journal; a crash between the two leaves records at or
//! below the snapshot's `seq`, which loading skips. So the cost of a commit is its own record,
//! and compaction's cost, proportional to the state, is paid once per as many journal bytes.
//!
//! **Dedup state** is bounded without forgetting by time: a source's mark is dropped when an
//! agent reports it retired (in the same record as the batch that says so) or, only when more
//! than `max_sources` sources are known, for the least recently stored tenth (evicted: counted
//! and logged loudly by the caller). This module does no day-file I/O besides the steps its
//! failure-injection seam counts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{io_err, sync_dir, StoreError};
use crate::queue::Position;

const SNAPSHOT_FILE: &str = "state.json";
const SNAPSHOT_TMP: &str = "state.json.tmp";
const JOURNAL_FILE: &str = "state.journal";
const SNAPSHOT_VERSION: u32 = 2;
/// The journal is compacted once it is larger than the snapshot and than this.
pub(super) const COMPACT_MIN_BYTES: u64 = 1 << 20;

/// A source's high-water mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(u64, u64)", into = "(u64, u64)")]
pub(super) struct Mark {
    /// Largest `log.offset` stored.
    pub(super) offset: u64,
    /// `seq` of the last commit that stored a record of the source.
    pub(super) last: u64,
}

impl From<(u64, u64)> for Mark {
    fn from((offset, last): (u64, u64)) -> Self {
        Mark { offset, last }
    }
}

impl From<Mark> for (u64, u64) {
    fn from(m: Mark) -> Self {
        (m.offset, m.last)
    }
}

/// The committed state, in memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct State {
    /// `seq` of the last commit.
    pub(super) seq: u64,
    pub(super) queue_position: Position,
    /// Day file name → committed length in bytes.
    pub(super) files: BTreeMap<String, u64>,
    /// Source fingerprint → high-water mark.
    pub(super) sources: HashMap<String, Mark>,
}

/// One commit: what it changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Record {
    pub(super) seq: u64,
    pub(super) queue_position: Position,
    /// New committed lengths of the day files written.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) files: BTreeMap<String, u64>,
    /// Day files deleted by retention.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) removed_files: Vec<String>,
    /// Sources whose marks are dropped (retired or evicted); applied before `marks`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) dropped: Vec<String>,
    /// New high-water marks.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub(super) marks: HashMap<String, u64>,
}

impl State {
    /// The state after `record` (the one path for live commits and for replay).
    fn apply(&mut self, record: &Record) {
        self.seq = record.seq;
        self.queue_position = record.queue_position;
        for (name, &len) in &record.files {
            self.files.insert(name.clone(), len);
        }
        for name in &record.removed_files {
            self.files.remove(name);
        }
        for fingerprint in &record.dropped {
            self.sources.remove(fingerprint);
        }
        for (fingerprint, &offset) in &record.marks {
            let mark = Mark {
                offset,
                last: record.seq,
            };
            match self.sources.get_mut(fingerprint) {
                Some(m) => *m = mark,
                None => {
                    self.sources.insert(fingerprint.clone(), mark);
                }
            }
        }
    }

    /// A record that changes nothing but what the caller sets.
    pub(super) fn next_record(&self) -> Record {
        Record {
            seq: self.seq + 1,
            queue_position: self.queue_position,
            ..Default::default()
        }
    }
}

/// The dedup changes of one group of queue entries, over the committed state.
#[derive(Debug, Default)]
pub(super) struct Pending {
    marks: HashMap<String, u64>,
    retired: HashSet<String>,
    /// Retired sources that had state.
    retired_known: u64,
}

/// Sources a commit dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Dropped {
    pub(super) retired: u64,
    pub(super) evicted: u64,
}

impl Pending {
    /// Whether a record of `fingerprint` at `offset` is new (above the source's high-water
    /// mark); if it is, the mark rises to `offset`.
    pub(super) fn admit(&mut self, committed: &State, fingerprint: &str, offset: u64) -> bool {
        let mark = match self.marks.get_mut(fingerprint) {
            Some(mark) => {
                if offset <= *mark {
                    return false;
                }
                *mark = offset;
                return true;
            }
            None if self.retired.contains(fingerprint) => None,
            None => committed.sources.get(fingerprint).map(|m| m.offset),
        };
        if mark.is_some_and(|m| offset <= m) {
            return false;
        }
        self.marks.insert(fingerprint.to_owned(), offset);
        true
    }

    /// Drops the state of sources an agent will never send again.
    pub(super) fn retire(&mut self, committed: &State, fingerprints: &[String]) {
        for fingerprint in fingerprints {
            let had = self.marks.remove(fingerprint).is_some()
                || (!self.retired.contains(fingerprint)
                    && committed.sources.contains_key(fingerprint));
            if had {
                self.retired_known += 1;
            }
            self.retired.insert(fingerprint.clone());
        }
    }

    /// The record of this group: its marks and retirements and, when the store would then know
    /// more than `max_sources` sources, the eviction of the least recently stored ones down to
    /// nine tenths of it (never a source this group stored).
    pub(super) fn into_record(
        self,
        committed: &State,
        max_sources: usize,
        queue_position: Position,
        files: BTreeMap<String, u64>,
    ) -> (Record, Dropped) {
        let mut size = committed.sources.len();
        for fingerprint in &self.retired {
            if committed.sources.contains_key(fingerprint) && !self.marks.contains_key(fingerprint)
            {
                size -= 1;
            }
        }
        size += self
            .marks
            .keys()
            .filter(|fp| !committed.sources.contains_key(*fp))
            .count();
        let mut evicted = Vec::new();
        if size > max_sources {
            let target = max_sources - max_sources / 10;
            let mut candidates: Vec<(u64, &String)> = committed
                .sources
                .iter()
                .filter(|(fp, _)| !self.marks.contains_key(*fp) && !self.retired.contains(*fp))
                .map(|(fp, m)| (m.last, fp))
                .collect();
            let excess = (size - target).min(candidates.len());
            if excess > 0 && excess < candidates.len() {
                candidates.select_nth_unstable(excess - 1);
            }
            evicted.extend(candidates[..excess].iter().map(|(_, fp)| (*fp).clone()));
        }
        let counts = Dropped {
            retired: self.retired_known,
            evicted: evicted.len() as u64,
        };
        let mut dropped: Vec<String> = self.retired.into_iter().collect();
        dropped.append(&mut evicted);
        let record = Record {
            seq: committed.seq + 1,
            queue_position,
            files,
            removed_files: Vec::new(),
            dropped,
            marks: self.marks,
        };
        (record, counts)
    }
}

/// One step that touches the disk, in the order a commit (then a compaction) takes them: the
/// failure-injection seam of the crash tests counts these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    DayWrite,
    DaySync,
    DayDirSync,
    JournalWrite,
    JournalSync,
    SnapshotWrite,
    SnapshotSync,
    SnapshotRename,
    SnapshotDirSync,
    JournalTruncate,
    JournalTruncateSync,
    FileDelete,
}

/// The snapshot as written.
#[derive(Serialize)]
struct SnapshotOut<'a> {
    version: u32,
    seq: u64,
    queue_position: Position,
    files: &'a BTreeMap<String, u64>,
    sources: &'a HashMap<String, Mark>,
}

/// The snapshot as read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotIn {
    version: u32,
    seq: u64,
    queue_position: Position,
    files: BTreeMap<String, u64>,
    sources: HashMap<String, Mark>,
}

/// The whole state file of version 1 (before the journal): rewritten at every commit.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotV1 {
    #[allow(dead_code)]
    version: u32,
    queue_position: Position,
    files: BTreeMap<String, u64>,
    hwm: BTreeMap<String, HwmV1>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HwmV1 {
    offset: u64,
    #[allow(dead_code)]
    seen: NaiveDate,
}

#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

/// The snapshot and journal files, and the committed state they hold.
#[derive(Debug)]
pub(super) struct StateFiles {
    dir: PathBuf,
    committed: State,
    /// Open for appending.
    journal: File,
    /// Length of the journal's committed records.
    journal_len: u64,
    snapshot_len: u64,
    pub(super) compact_min_bytes: u64,
    #[cfg(test)]
    pub(super) faults: faults::Faults,
}

impl StateFiles {
    /// Loads the committed state from `dir`: the snapshot, then the journal's records after it
    /// (a torn last record is cut). `None` when there is no snapshot (a new store, or one whose
    /// state was deleted): then [`Self::create`].
    pub(super) fn load(dir: &Path) -> Result<Option<StateFiles>, StoreError> {
        let tmp = dir.join(SNAPSHOT_TMP);
        if tmp.exists() {
            // A compaction that did not reach its rename: the old snapshot is the committed one.
            fs::remove_file(&tmp).map_err(io_err(&tmp))?;
        }
        let path = dir.join(SNAPSHOT_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let bad = |reason: String| StoreError::State {
            path: path.clone(),
            reason,
        };
        let version = serde_json::from_slice::<VersionOnly>(&bytes)
            .map_err(|e| bad(e.to_string()))?
            .version;
        let (mut state, migrated) = match version {
            SNAPSHOT_VERSION => {
                let s: SnapshotIn = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
                debug_assert_eq!(s.version, SNAPSHOT_VERSION);
                let state = State {
                    seq: s.seq,
                    queue_position: s.queue_position,
                    files: s.files,
                    sources: s.sources,
                };
                (state, false)
            }
            1 => {
                let s: SnapshotV1 = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
                let state = State {
                    seq: 0,
                    queue_position: s.queue_position,
                    files: s.files,
                    sources: s
                        .hwm
                        .into_iter()
                        .map(|(fp, h)| (fp, Mark { offset: h.offset, last: 0 }))
                        .collect(),
                };
                (state, true)
            }
            other => {
                return Err(bad(format!(
                    "version {other} is not supported (this build reads versions 1 and {SNAPSHOT_VERSION})"
                )))
            }
        };
        let journal_path = dir.join(JOURNAL_FILE);
        let journal = open_journal(&journal_path)?;
        let (journal_len, stale) = replay(&journal, &journal_path, &mut state)?;
        let mut files = StateFiles {
            dir: dir.to_path_buf(),
            committed: state,
            journal,
            journal_len,
            snapshot_len: bytes.len() as u64,
            compact_min_bytes: COMPACT_MIN_BYTES,
            #[cfg(test)]
            faults: faults::Faults::default(),
        };
        if migrated || stale > 0 {
            if migrated {
                info!(path = %path.display(), "Store state of version 1 converted to a snapshot and journal");
            }
            files.compact()?;
        }
        Ok(Some(files))
    }

    /// Starts the state files in `dir` with `state` (a snapshot and an empty journal).
    pub(super) fn create(dir: &Path, state: State) -> Result<StateFiles, StoreError> {
        let journal_path = dir.join(JOURNAL_FILE);
        match fs::metadata(&journal_path) {
            Ok(m) if m.len() > 0 => {
                warn!(path = %journal_path.display(), bytes = m.len(), "Store journal without a snapshot discarded (the state is rebuilt from the day files)");
            }
            _ => {}
        }
        let journal = open_journal(&journal_path)?;
        // Emptied before the snapshot exists, so its records can never be read on top of it.
        journal.set_len(0).map_err(io_err(&journal_path))?;
        journal.sync_all().map_err(io_err(&journal_path))?;
        let mut files = StateFiles {
            dir: dir.to_path_buf(),
            committed: state,
            journal,
            journal_len: 0,
            snapshot_len: 0,
            compact_min_bytes: COMPACT_MIN_BYTES,
            #[cfg(test)]
            faults: faults::Faults::default(),
        };
        files.compact()?;
        Ok(files)
    }

    pub(super) fn committed(&self) -> &State {
        &self.committed
    }

    /// The failure-injection seam: tests make the numbered step fail (see [`faults`]); a no-op
    /// otherwise.
    pub(super) fn step(&self, step: Step) -> Result<(), StoreError> {
        #[cfg(test)]
        self.faults.check(&self.dir, step)?;
        let _ = step;
        Ok(())
    }

    /// Commits `record` (appended to the journal and fsynced), then compacts when due. A
    /// failure leaves the committed state as it was; call [`Self::cut_back`] before the next.
    pub(super) fn commit(&mut self, record: Record) -> Result<(), StoreError> {
        debug_assert_eq!(record.seq, self.committed.seq + 1);
        let json = serde_json::to_vec(&record).expect("a record always serialises");
        let mut line = format!("{:08x} ", crc32fast::hash(&json)).into_bytes();
        line.extend_from_slice(&json);
        line.push(b'\n');
        let path = self.dir.join(JOURNAL_FILE);
        let write = self.step(Step::JournalWrite);
        // A write that fails half-way leaves half a record.
        #[cfg(test)]
        if write.is_err() && self.faults.tear {
            let _ = self.journal.write_all(&line[..line.len() / 2]);
        }
        write?;
        self.journal.write_all(&line).map_err(io_err(&path))?;
        self.step(Step::JournalSync)?;
        self.journal.sync_data().map_err(io_err(&path))?;
        self.journal_len += line.len() as u64;
        self.committed.apply(&record);
        if self.journal_len > self.snapshot_len.max(self.compact_min_bytes) {
            if let Err(e) = self.compact() {
                warn!(error = %e, "Store state compaction failed; the journal keeps growing until it succeeds");
            }
        }
        Ok(())
    }

    /// Cuts the journal back to its committed records (after a failed commit).
    pub(super) fn cut_back(&mut self) -> Result<(), StoreError> {
        let path = self.dir.join(JOURNAL_FILE);
        let len = self.journal.metadata().map_err(io_err(&path))?.len();
        if len != self.journal_len {
            self.journal
                .set_len(self.journal_len)
                .map_err(io_err(&path))?;
            self.journal.sync_all().map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Writes the committed state as the new snapshot and empties the journal.
    fn compact(&mut self) -> Result<(), StoreError> {
        let tmp = self.dir.join(SNAPSHOT_TMP);
        let snapshot = SnapshotOut {
            version: SNAPSHOT_VERSION,
            seq: self.committed.seq,
            queue_position: self.committed.queue_position,
            files: &self.committed.files,
            sources: &self.committed.sources,
        };
        self.step(Step::SnapshotWrite)?;
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut out = BufWriter::with_capacity(1 << 16, file);
        serde_json::to_writer(&mut out, &snapshot)
            .map_err(io::Error::from)
            .and_then(|()| out.flush())
            .map_err(io_err(&tmp))?;
        let file = out.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
        self.step(Step::SnapshotSync)?;
        file.sync_all().map_err(io_err(&tmp))?;
        let snapshot_len = file.metadata().map_err(io_err(&tmp))?.len();
        drop(file);
        let path = self.dir.join(SNAPSHOT_FILE);
        self.step(Step::SnapshotRename)?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        self.step(Step::SnapshotDirSync)?;
        sync_dir(&self.dir)?;
        self.snapshot_len = snapshot_len;
        // From here the journal's records are all at or below the snapshot's seq.
        let journal = self.dir.join(JOURNAL_FILE);
        self.step(Step::JournalTruncate)?;
        self.journal.set_len(0).map_err(io_err(&journal))?;
        self.journal_len = 0;
        self.step(Step::JournalTruncateSync)?;
        self.journal.sync_all().map_err(io_err(&journal))?;
        Ok(())
    }
}

fn open_journal(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(io_err(path))
}

/// Applies the journal's records after `state`'s seq. Cuts a torn last record; refuses damage
/// followed by intact records and gaps in the sequence. Returns the journal's committed length
/// and how many records were at or below the snapshot (left by an interrupted compaction).
fn replay(journal: &File, path: &Path, state: &mut State) -> Result<(u64, u64), StoreError> {
    let bytes = {
        use std::io::Read;
        let mut bytes = Vec::new();
        (&*journal).read_to_end(&mut bytes).map_err(io_err(path))?;
        bytes
    };
    let bad = |reason: String| StoreError::State {
        path: path.to_path_buf(),
        reason,
    };
    let mut at = 0;
    let mut stale = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let parsed = match memchr::memchr(b'\n', rest) {
            Some(end) => parse_line(&rest[..end]).map(|r| (r, end + 1)),
            None => Err("no line end".to_string()),
        };
        match parsed {
            Ok((record, len)) => {
                if record.seq <= state.seq {
                    stale += 1;
                } else if record.seq != state.seq + 1 {
                    return Err(bad(format!(
                        "record at byte {at} has seq {} where {} was expected",
                        record.seq,
                        state.seq + 1
                    )));
                } else {
                    state.apply(&record);
                }
                at += len;
            }
            Err(reason) => {
                let is_last =
                    memchr::memchr(b'\n', rest).is_none_or(|end| at + end + 1 == bytes.len());
                if !is_last {
                    return Err(bad(format!(
                        "damaged record at byte {at} ({reason}) with intact records after it: \
                         this is not a torn write, and dropping it could store records twice. \
                         Move state.json and state.journal aside to rebuild the state from the day files"
                    )));
                }
                warn!(path = %path.display(), offset = at, cut_bytes = bytes.len() - at, reason = %reason, "Store journal has a torn last record; cutting it (that commit did not happen)");
                journal.set_len(at as u64).map_err(io_err(path))?;
                journal.sync_all().map_err(io_err(path))?;
                break;
            }
        }
    }
    Ok((at as u64, stale))
}

/// One journal line without its `\n`: `<crc32 hex> <json>`.
pub(super) fn parse_line(line: &[u8]) -> Result<Record, String> {
    if line.len() < 10 || line[8] != b' ' {
        return Err("not a `<crc32> <record>` line".into());
    }
    let stored = std::str::from_utf8(&line[..8])
        .ok()
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or("checksum is not hex")?;
    let json = &line[9..];
    let actual = crc32fast::hash(json);
    if actual != stored {
        return Err(format!(
            "checksum {actual:08x} does not match the stored {stored:08x}"
        ));
    }
    serde_json::from_slice(json).map_err(|e| e.to_string())
}

/// The failure-injection seam: a store's steps are numbered from 0 as they are taken, and a
/// test can make one of them fail; tests elsewhere in the crate can block a store's commits.
#[cfg(test)]
pub(crate) mod faults {
    use std::cell::Cell;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use super::{Step, StoreError};

    #[derive(Debug, Default)]
    pub(crate) struct Faults {
        /// Steps taken so far.
        pub(in crate::local) steps: Cell<u64>,
        /// The step (by number) that fails.
        pub(in crate::local) fail_at: Option<u64>,
        /// Every step taken, in order.
        pub(in crate::local) log: std::cell::RefCell<Vec<Step>>,
        /// A failing journal write writes half its record first.
        pub(in crate::local) tear: bool,
    }

    static BLOCKED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    /// Makes the journal writes of the store in `dir` fail (after the day-file lines were
    /// written, as a crash between the two would leave them) until the guard is dropped.
    pub(crate) fn block_commits(dir: &Path) -> Blocked {
        BLOCKED.lock().unwrap().push(dir.to_path_buf());
        Blocked(dir.to_path_buf())
    }

    pub(crate) struct Blocked(PathBuf);

    impl Drop for Blocked {
        fn drop(&mut self) {
            BLOCKED.lock().unwrap().retain(|d| d != &self.0);
        }
    }

    impl Faults {
        pub(super) fn check(&self, dir: &Path, step: Step) -> Result<(), StoreError> {
            let n = self.steps.get();
            self.steps.set(n + 1);
            self.log.borrow_mut().push(step);
            let blocked =
                step == Step::JournalWrite && BLOCKED.lock().unwrap().iter().any(|d| d == dir);
            if self.fail_at == Some(n) || blocked {
                return Err(StoreError::Io {
                    path: dir.to_path_buf(),
                    source: std::io::Error::other(format!("injected failure before {step:?}")),
                });
            }
            Ok(())
        }
    }
}
