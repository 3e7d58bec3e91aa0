//! The local store: per-day NDJSON files that plain tools (`grep`, `jq`, `zcat`-free `less`) can
//! read, and `ferry search` scans.
//!
//! Layout under `<data_dir>/store/`:
//! ```text
//! ferry-2026-11-28.ndjson   one log record per line, as the agent sent it, with
//!                           `event.ingested` set; the file is chosen by the UTC day the
//!                           aggregator stored the record (its ingest day), not by `@timestamp`
//! state.json                the commit record (below)
//! ```
//! `state.json` is `{"version":1,"queue_position":{"segment":S,"offset":O},
//! "files":{"ferry-2026-11-28.ndjson":LEN,…},"hwm":{"<fingerprint>":{"offset":N,"seen":"2026-11-28"},…}}`.
//!
//! **Exactly once.** One agent sends one batch at a time and a source's records arrive in
//! increasing `log.offset` order, so the store keeps a high-water mark per source fingerprint (the
//! largest offset stored) and treats a record at or below it as a replay: counted in
//! `ferry_sink_duplicates_total`, not written. A group of queue entries is committed by writing
//! its lines, fsyncing the day file, then atomically replacing `state.json` (temp file, fsync,
//! rename, fsync directory). On open every day file is cut back to its committed length, so lines
//! written after the last commit (a crash in between) are dropped and re-applied from the queue,
//! which resumes at the committed `queue_position`. Retention deletes day files (and forgets
//! high-water marks) older than `retention_days`. This module does no HTTP and reads no queue.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Days, NaiveDate, SecondsFormat, Utc};
use ferry_wire::{decode_batch, splice_ingested, Compression};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::queue::Position;

const STATE_FILE: &str = "state.json";
const STATE_TMP: &str = "state.json.tmp";
const STATE_VERSION: u32 = 1;

/// Name of the day file for `day`.
pub(crate) fn day_file_name(day: NaiveDate) -> String {
    format!("ferry-{}.ndjson", day.format("%Y-%m-%d"))
}

/// The day a store file name stands for (`ferry-YYYY-MM-DD.ndjson`).
pub(crate) fn day_of_file(name: &str) -> Option<NaiveDate> {
    let day = name.strip_prefix("ferry-")?.strip_suffix(".ndjson")?;
    NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: unreadable store state: {reason}")]
    State { path: PathBuf, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A source's high-water mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hwm {
    /// Largest `log.offset` stored.
    offset: u64,
    /// Last ingest day a record of this source was stored (for retention).
    seen: NaiveDate,
}

/// The commit record (`state.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    version: u32,
    queue_position: Position,
    /// Day file name → committed length in bytes.
    files: BTreeMap<String, u64>,
    /// Source fingerprint → high-water mark.
    hwm: BTreeMap<String, Hwm>,
}

/// What applying a group of queue entries did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Applied {
    pub(crate) stored: u64,
    pub(crate) duplicates: u64,
    /// Entries that did not decode (skipped).
    pub(crate) undecodable: u64,
}

/// The local store, owned by the sink thread.
#[derive(Debug)]
pub(crate) struct LocalStore {
    dir: PathBuf,
    retention_days: u32,
    /// What is on disk and committed.
    committed: State,
    /// The open day file (name, handle); its length equals the committed one between applies.
    day_file: Option<(String, File)>,
    /// A failed apply left the files past their committed length: cut them before the next one.
    dirty: bool,
    /// The day retention last ran for.
    retained_on: Option<NaiveDate>,
    buf: Vec<u8>,
}

impl LocalStore {
    /// Opens the store in `dir`: loads the commit record, cuts every day file back to its
    /// committed length, and applies retention as of `now`.
    pub(crate) fn open(
        dir: &Path,
        retention_days: u32,
        now: DateTime<Utc>,
    ) -> Result<LocalStore, StoreError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let state_path = dir.join(STATE_FILE);
        let tmp = dir.join(STATE_TMP);
        if tmp.exists() {
            // A commit that did not reach its rename: the old state is the committed one.
            fs::remove_file(&tmp).map_err(io_err(&tmp))?;
        }
        let committed = match fs::read(&state_path) {
            Ok(bytes) => {
                let state: State =
                    serde_json::from_slice(&bytes).map_err(|e| StoreError::State {
                        path: state_path.clone(),
                        reason: e.to_string(),
                    })?;
                if state.version != STATE_VERSION {
                    return Err(StoreError::State {
                        path: state_path,
                        reason: format!(
                            "version {} is not supported (this build reads version {STATE_VERSION})",
                            state.version
                        ),
                    });
                }
                state
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => State {
                version: STATE_VERSION,
                ..Default::default()
            },
            Err(e) => return Err(io_err(&state_path)(e)),
        };
        let fresh = !state_path.exists();
        let mut store = LocalStore {
            dir: dir.to_path_buf(),
            retention_days,
            committed,
            day_file: None,
            dirty: false,
            retained_on: None,
            buf: Vec::new(),
        };
        if fresh {
            store.adopt_orphans()?;
        }
        store.cut_to_committed()?;
        store.retain_daily(now)?;
        info!(
            dir = %dir.display(),
            files = store.committed.files.len(),
            sources = store.committed.hwm.len(),
            "Local store opened"
        );
        Ok(store)
    }

    /// Where the queue must resume.
    pub(crate) fn queue_position(&self) -> Position {
        self.committed.queue_position
    }

    /// Without a `state.json` but with day files (state deleted by hand, or a store copied from
    /// elsewhere): keep the files as they are and rebuild the high-water marks from them.
    fn adopt_orphans(&mut self) -> Result<(), StoreError> {
        for (name, path) in self.day_files()? {
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            // Only whole lines count; a partial last line is cut.
            let len = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let day = day_of_file(&name).expect("day_files filters names");
            for line in bytes[..len].split(|&b| b == b'\n') {
                let Ok(keys) = serde_json::from_slice::<ferry_wire::RecordKeys<'_>>(line) else {
                    continue;
                };
                let entry = self
                    .committed
                    .hwm
                    .entry(keys.log.file.fingerprint.into_owned())
                    .or_insert(Hwm {
                        offset: keys.log.offset,
                        seen: day,
                    });
                entry.offset = entry.offset.max(keys.log.offset);
                entry.seen = entry.seen.max(day);
            }
            warn!(path = %path.display(), bytes = len, "Store file without a commit record adopted");
            self.committed.files.insert(name, len as u64);
        }
        Ok(())
    }

    /// Day files present in the store, by name.
    fn day_files(&self) -> Result<Vec<(String, PathBuf)>, StoreError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            if let Some(name) = entry.file_name().to_str() {
                if day_of_file(name).is_some() {
                    out.push((name.to_string(), entry.path()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Cuts every day file back to its committed length (a file with no committed length was
    /// created after the last commit and is removed).
    fn cut_to_committed(&mut self) -> Result<(), StoreError> {
        self.day_file = None;
        for (name, path) in self.day_files()? {
            let len = fs::metadata(&path).map_err(io_err(&path))?.len();
            match self.committed.files.get(&name) {
                Some(&committed) if len > committed => {
                    warn!(path = %path.display(), committed, cut_bytes = len - committed, "Store file has uncommitted lines; cutting them (they are re-applied from the queue)");
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_err(&path))?;
                    file.set_len(committed).map_err(io_err(&path))?;
                    file.sync_all().map_err(io_err(&path))?;
                }
                Some(&committed) if len < committed => {
                    warn!(path = %path.display(), committed, len, "Store file is shorter than committed; records were lost outside ferry");
                    self.committed.files.insert(name, len);
                }
                Some(_) => {}
                None => {
                    warn!(path = %path.display(), cut_bytes = len, "Store file was never committed; removing it (its lines are re-applied from the queue)");
                    fs::remove_file(&path).map_err(io_err(&path))?;
                }
            }
        }
        self.dirty = false;
        Ok(())
    }

    /// Stores the log records of `entries` (in order) as of `now`, then commits the group with
    /// `position` as the queue position to resume from.
    pub(crate) fn apply<'a>(
        &mut self,
        entries: impl IntoIterator<Item = &'a [u8]>,
        position: Position,
        now: DateTime<Utc>,
    ) -> Result<Applied, StoreError> {
        if self.dirty {
            self.cut_to_committed()?;
        }
        self.dirty = true;
        let day = now.date_naive();
        let name = day_file_name(day);
        let ingested = now.to_rfc3339_opts(SecondsFormat::Millis, true);
        let mut next = self.committed.clone();
        next.queue_position = position;
        let mut applied = Applied::default();
        self.buf.clear();
        for data in entries {
            let batch = match decode_batch(data, Compression::None, usize::MAX) {
                Ok(batch) => batch,
                Err(e) => {
                    warn!(error = %e, "Queue entry does not decode; skipping it");
                    applied.undecodable += 1;
                    continue;
                }
            };
            for log in &batch.logs {
                let seen = next.hwm.get(&log.fingerprint).map(|h| h.offset);
                if seen.is_some_and(|hwm| log.offset <= hwm) {
                    applied.duplicates += 1;
                    continue;
                }
                next.hwm.insert(
                    log.fingerprint.clone(),
                    Hwm {
                        offset: log.offset,
                        seen: day,
                    },
                );
                splice_ingested(batch.log_line(log), &ingested, &mut self.buf);
                applied.stored += 1;
            }
        }
        if !self.buf.is_empty() {
            let path = self.dir.join(&name);
            if self.day_file.as_ref().map(|(n, _)| n) != Some(&name) {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                self.day_file = Some((name.clone(), file));
                if !self.committed.files.contains_key(&name) {
                    debug!(path = %path.display(), "Store day file started");
                }
            }
            let file = &mut self.day_file.as_mut().expect("opened above").1;
            file.write_all(&self.buf).map_err(io_err(&path))?;
            file.sync_data().map_err(io_err(&path))?;
            if !self.committed.files.contains_key(&name) {
                // The new file's directory entry must be durable before the state names it.
                sync_dir(&self.dir)?;
            }
            *next.files.entry(name).or_insert(0) += self.buf.len() as u64;
        }
        self.write_state(&next)?;
        self.committed = next;
        self.dirty = false;
        Ok(applied)
    }

    /// Atomically replaces `state.json`.
    fn write_state(&self, state: &State) -> Result<(), StoreError> {
        let tmp = self.dir.join(STATE_TMP);
        let bytes = serde_json::to_vec(state).expect("the state always serialises");
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(&bytes).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        let path = self.dir.join(STATE_FILE);
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir)
    }

    /// Runs [`Self::retain`] once per day.
    pub(crate) fn retain_daily(&mut self, now: DateTime<Utc>) -> Result<(), StoreError> {
        if self.retained_on == Some(now.date_naive()) {
            return Ok(());
        }
        self.retain(now)?;
        self.retained_on = Some(now.date_naive());
        Ok(())
    }

    /// Deletes day files whose day is more than `retention_days` before `now`'s day and forgets
    /// sources not seen since then. The state is committed before files are removed, so a crash
    /// in between leaves only files that [`Self::open`] removes as uncommitted.
    pub(crate) fn retain(&mut self, now: DateTime<Utc>) -> Result<(), StoreError> {
        let Some(cutoff) = now
            .date_naive()
            .checked_sub_days(Days::new(u64::from(self.retention_days)))
        else {
            return Ok(());
        };
        let old: Vec<(String, PathBuf)> = self
            .day_files()?
            .into_iter()
            .filter(|(name, _)| day_of_file(name).is_some_and(|d| d < cutoff))
            .collect();
        let stale = self.committed.hwm.values().any(|h| h.seen < cutoff);
        let gone = self
            .committed
            .files
            .keys()
            .any(|name| day_of_file(name).is_none_or(|d| d < cutoff));
        if old.is_empty() && !stale && !gone {
            return Ok(());
        }
        if self.dirty {
            self.cut_to_committed()?;
        }
        let mut next = self.committed.clone();
        next.files
            .retain(|name, _| day_of_file(name).is_some_and(|d| d >= cutoff));
        let before = next.hwm.len();
        next.hwm.retain(|_, h| h.seen >= cutoff);
        self.write_state(&next)?;
        self.committed = next;
        if self
            .day_file
            .as_ref()
            .is_some_and(|(n, _)| !self.committed.files.contains_key(n))
        {
            self.day_file = None;
        }
        for (name, path) in old {
            match fs::remove_file(&path) {
                Ok(()) => info!(path = %path.display(), "Store day file past retention deleted"),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, file = %name, "Store retention could not delete a file")
                }
            }
        }
        let forgotten = before - self.committed.hwm.len();
        if forgotten > 0 {
            debug!(sources = forgotten, "Store forgot sources past retention");
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;
    use ferry_wire::{BatchBuilder, LogFile, LogMeta, LogRecord};

    /// A log record of `source` at `offset`.
    pub(crate) fn record(source: &str, offset: u64, message: &str) -> LogRecord {
        LogRecord {
            event: ferry_wire::Event {
                id: ferry_wire::event_id(source, offset),
                ..Default::default()
            },
            timestamp: "2026-11-28T08:40:00.123456789Z".into(),
            message: message.into(),
            log: LogMeta {
                file: LogFile {
                    path: format!("/var/log/{source}.log"),
                    fingerprint: source.into(),
                },
                offset,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// The decompressed NDJSON batch of `records`.
    pub(crate) fn batch(records: &[LogRecord]) -> Vec<u8> {
        let mut b = BatchBuilder::new("node-1");
        for r in records {
            b.push_log(r);
        }
        b.finish(Compression::None).body
    }

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0).unwrap()
    }

    fn pos(offset: u64) -> Position {
        Position { segment: 1, offset }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn offsets(path: &Path) -> Vec<u64> {
        lines(path)
            .iter()
            .map(|v| v["log"]["offset"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn stores_lines_with_ingested_in_the_ingest_day_file() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = LocalStore::open(tmp.path(), 7, at(28, 9)).unwrap();
        let data = batch(&[record("s", 0, "a"), record("s", 10, "b")]);
        let applied = store.apply([&data[..]], pos(100), at(28, 9)).unwrap();
        assert_eq!(applied.stored, 2);
        let file = tmp.path().join("ferry-2026-11-28.ndjson");
        let stored = lines(&file);
        assert_eq!(stored.len(), 2);
        assert_eq!(stored[0]["event"]["ingested"], "2026-11-28T09:00:00.000Z");
        assert_eq!(stored[1]["message"], "b");
        assert_eq!(store.queue_position(), pos(100));

        // The next day goes to the next file.
        let data = batch(&[record("s", 20, "c")]);
        store.apply([&data[..]], pos(200), at(29, 0)).unwrap();
        assert_eq!(offsets(&tmp.path().join("ferry-2026-11-29.ndjson")), [20]);
        assert_eq!(offsets(&file), [0, 10]);

        let reopened = LocalStore::open(tmp.path(), 7, at(29, 1)).unwrap();
        assert_eq!(reopened.queue_position(), pos(200));
    }

    #[test]
    fn replay_of_the_same_batch_stores_nothing_new() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = LocalStore::open(tmp.path(), 7, at(28, 9)).unwrap();
        let data = batch(&[
            record("s", 0, "a"),
            record("t", 5, "x"),
            record("s", 10, "b"),
        ]);
        store.apply([&data[..]], pos(1), at(28, 9)).unwrap();
        let applied = store.apply([&data[..]], pos(2), at(28, 9)).unwrap();
        assert_eq!((applied.stored, applied.duplicates), (0, 3));

        // A replay that overlaps and extends: only the new tail is stored.
        let data = batch(&[
            record("s", 10, "b"),
            record("s", 20, "c"),
            record("t", 6, "y"),
        ]);
        let applied = store.apply([&data[..]], pos(3), at(28, 9)).unwrap();
        assert_eq!((applied.stored, applied.duplicates), (2, 1));
        // And the same batch twice within one group counts once.
        let data = batch(&[record("u", 1, "p")]);
        let applied = store
            .apply([&data[..], &data[..]], pos(4), at(28, 9))
            .unwrap();
        assert_eq!((applied.stored, applied.duplicates), (1, 1));

        // The marks survive a restart.
        drop(store);
        let mut store = LocalStore::open(tmp.path(), 7, at(28, 10)).unwrap();
        let data = batch(&[record("s", 20, "c"), record("u", 1, "p")]);
        let applied = store.apply([&data[..]], pos(5), at(28, 10)).unwrap();
        assert_eq!((applied.stored, applied.duplicates), (0, 2));
        let file = tmp.path().join("ferry-2026-11-28.ndjson");
        assert_eq!(offsets(&file), [0, 5, 10, 20, 6, 1]);
    }

    #[test]
    fn uncommitted_lines_are_cut_on_open_and_reapplied_once() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = LocalStore::open(tmp.path(), 7, at(28, 9)).unwrap();
        let first = batch(&[record("s", 0, "a"), record("s", 10, "b")]);
        let second = batch(&[record("s", 20, "c"), record("s", 30, "d")]);
        store.apply([&first[..]], pos(1), at(28, 9)).unwrap();
        drop(store);

        // Crash after writing the second entry's lines (and half a line) but before the commit.
        let file = tmp.path().join("ferry-2026-11-28.ndjson");
        let committed = fs::metadata(&file).unwrap().len();
        let mut out = Vec::new();
        let dec = decode_batch(&second, Compression::None, usize::MAX).unwrap();
        for log in &dec.logs {
            splice_ingested(dec.log_line(log), "2026-11-28T09:00:01.000Z", &mut out);
        }
        out.extend_from_slice(b"{\"event\":{\"id\":\"half");
        let mut f = OpenOptions::new().append(true).open(&file).unwrap();
        f.write_all(&out).unwrap();
        drop(f);
        // A day file the crash created but never committed.
        let orphan = tmp.path().join("ferry-2026-11-29.ndjson");
        fs::write(&orphan, &out).unwrap();
        // And a state commit that never reached its rename.
        fs::write(tmp.path().join(STATE_TMP), b"{\"version\":1,\"garbage").unwrap();

        let mut store = LocalStore::open(tmp.path(), 7, at(28, 9)).unwrap();
        assert_eq!(fs::metadata(&file).unwrap().len(), committed);
        assert!(!orphan.exists());
        assert!(!tmp.path().join(STATE_TMP).exists());
        assert_eq!(
            store.queue_position(),
            pos(1),
            "resumes at the uncommitted entry"
        );
        let applied = store.apply([&second[..]], pos(2), at(28, 9)).unwrap();
        assert_eq!((applied.stored, applied.duplicates), (2, 0));
        assert_eq!(offsets(&file), [0, 10, 20, 30]);
    }

    #[test]
    fn a_failed_apply_is_cut_back_before_the_next() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = LocalStore::open(tmp.path(), 7, at(28, 9)).unwrap();
        let first = batch(&[record("s", 0, "a")]);
        store.apply([&first[..]], pos(1), at(28, 9)).unwrap();
        // Make the state commit fail: a directory where the temp file goes.
        fs::create_dir(tmp.path().join(STATE_TMP)).unwrap();
        let second = batch(&[record("s", 10, "b")]);
        assert!(store.apply([&second[..]], pos(2), at(28, 9)).is_err());
        fs::remove_dir(tmp.path().join(STATE_TMP)).unwrap();
        let applied = store.apply([&second[..]], pos(2), at(28, 9)).unwrap();
        assert_eq!(
            applied.stored, 1,
            "the failed attempt did not raise the mark"
        );
        assert_eq!(
            offsets(&tmp.path().join("ferry-2026-11-28.ndjson")),
            [0, 10]
        );
    }

    #[test]
    fn retention_deletes_old_day_files_and_forgets_old_sources() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = LocalStore::open(tmp.path(), 2, at(20, 9)).unwrap();
        store
            .apply([&batch(&[record("old", 5, "a")])[..]], pos(1), at(20, 9))
            .unwrap();
        store
            .apply([&batch(&[record("new", 5, "b")])[..]], pos(2), at(22, 9))
            .unwrap();
        assert!(tmp.path().join("ferry-2026-11-20.ndjson").exists());
        // Day 22 - 2 = 20 is kept; day 23 drops it.
        store.retain(at(22, 23)).unwrap();
        assert!(tmp.path().join("ferry-2026-11-20.ndjson").exists());
        store.retain(at(23, 0)).unwrap();
        assert!(!tmp.path().join("ferry-2026-11-20.ndjson").exists());
        assert!(tmp.path().join("ferry-2026-11-22.ndjson").exists());
        // "old" was forgotten, so its replay is stored again; "new" is still known.
        let applied = store
            .apply(
                [&batch(&[record("old", 5, "a"), record("new", 5, "b")])[..]],
                pos(3),
                at(23, 1),
            )
            .unwrap();
        assert_eq!((applied.stored, applied.duplicates), (1, 1));
        // Retention also runs on open.
        drop(store);
        let _store = LocalStore::open(tmp.path(), 2, at(30, 0)).unwrap();
        let left: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, [STATE_FILE]);
    }

    #[test]
    fn without_state_existing_files_are_adopted_with_their_marks() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = LocalStore::open(tmp.path(), 7, at(28, 9)).unwrap();
        store
            .apply(
                [&batch(&[record("s", 0, "a"), record("s", 10, "b")])[..]],
                pos(1),
                at(28, 9),
            )
            .unwrap();
        drop(store);
        fs::remove_file(tmp.path().join(STATE_FILE)).unwrap();
        let mut store = LocalStore::open(tmp.path(), 7, at(28, 9)).unwrap();
        let applied = store
            .apply(
                [&batch(&[record("s", 10, "b"), record("s", 20, "c")])[..]],
                pos(2),
                at(28, 9),
            )
            .unwrap();
        assert_eq!((applied.stored, applied.duplicates), (1, 1));
        assert_eq!(
            offsets(&tmp.path().join("ferry-2026-11-28.ndjson")),
            [0, 10, 20]
        );
    }

    #[test]
    fn undecodable_entries_are_skipped_and_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = LocalStore::open(tmp.path(), 7, at(28, 9)).unwrap();
        let good = batch(&[record("s", 0, "a")]);
        let applied = store
            .apply([&b"not a batch"[..], &good[..]], pos(9), at(28, 9))
            .unwrap();
        assert_eq!((applied.stored, applied.undecodable), (1, 1));
        assert_eq!(store.queue_position(), pos(9));
    }
}
