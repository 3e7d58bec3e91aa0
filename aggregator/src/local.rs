//! The local store: per-day NDJSON files that plain tools (`grep`, `jq`, `zcat`-free `less`) can
//! read, and `ferry search` scans.
//!
//! Layout under `<data_dir>/store/`:
//! ```text
//! ferry-2026-11-28.ndjson   one log record per line, as the agent sent it, with
//!                           `event.ingested` set; the file is chosen by the UTC day the
//!                           aggregator stored the record (its ingest day), not by `@timestamp`
//! state.json, state.journal the commit record: a snapshot and the commits since (see [`state`])
//! ```
//!
//! **Exactly once.** One agent sends one batch at a time and a source's records arrive in
//! increasing `log.offset` order, so the store keeps a high-water mark per source fingerprint (the
//! largest offset stored) and treats a record at or below it as a replay: counted in
//! `ferry_sink_duplicates_total`, not written. A group of queue entries is committed by writing
//! its lines, fsyncing the day file, then appending one record (the new file length, the queue
//! position, the marks that moved, the sources dropped) to the state journal and fsyncing it. On
//! open every day file is cut back to its committed length, so lines written after the last
//! commit (a crash in between) are dropped and re-applied from the queue, which resumes at the
//! committed position.
//!
//! **What the dedup state remembers.** A source's mark is kept until its agent reports it
//! retired (`retired` in a batch header: the agent has durably forgotten the file and will never
//! send it again); it is dropped in the same commit as that batch. Nothing is forgotten because
//! time passed. The one bound is `max_sources`: past it, the least recently stored tenth is
//! evicted, counted in `ferry_store_sources_evicted_total` and logged; a replay of an evicted
//! source would be stored again. Retention deletes day files older than `retention_days`. This
//! module does no HTTP and reads no queue.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Days, NaiveDate, SecondsFormat, Utc};
use ferry_wire::{decode_batch, Compression, Ingested};
use tracing::{debug, info, warn};

use crate::queue::Position;

mod state;
#[cfg(test)]
mod state_tests;

#[cfg(test)]
pub(crate) use state::faults;
use state::{Mark, Pending, State, StateFiles, Step};

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

/// What applying a group of queue entries did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Applied {
    pub(crate) stored: u64,
    pub(crate) duplicates: u64,
    /// Entries that did not decode (skipped).
    pub(crate) undecodable: u64,
    /// Sources whose state was dropped because their agent retired them.
    pub(crate) retired: u64,
    /// Sources whose state was dropped because the store knew more than `max_sources`.
    pub(crate) evicted: u64,
}

/// The local store, owned by the sink thread.
#[derive(Debug)]
pub(crate) struct LocalStore {
    dir: PathBuf,
    retention_days: u32,
    max_sources: usize,
    /// What is on disk and committed (boxed: the sink enum holds the store by value).
    state: Box<StateFiles>,
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
    /// committed length, and applies retention as of `now`. `max_sources` bounds the dedup state
    /// (see the module docs).
    pub(crate) fn open(
        dir: &Path,
        retention_days: u32,
        max_sources: usize,
        now: DateTime<Utc>,
    ) -> Result<LocalStore, StoreError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let state = Box::new(match StateFiles::load(dir)? {
            Some(state) => state,
            // Without a state but with day files (state deleted by hand, or a store copied
            // from elsewhere): keep the files as they are and rebuild the marks from them.
            None => StateFiles::create(dir, adopt_orphans(dir)?)?,
        });
        let mut store = LocalStore {
            dir: dir.to_path_buf(),
            retention_days,
            max_sources,
            state,
            day_file: None,
            dirty: false,
            retained_on: None,
            buf: Vec::new(),
        };
        store.cut_to_committed()?;
        store.retain_daily(now)?;
        info!(
            dir = %dir.display(),
            files = store.state.committed().files.len(),
            sources = store.sources(),
            "Local store opened"
        );
        Ok(store)
    }

    /// Where the queue must resume.
    pub(crate) fn queue_position(&self) -> Position {
        self.state.committed().queue_position
    }

    /// Sources whose high-water marks the store keeps.
    pub(crate) fn sources(&self) -> usize {
        self.state.committed().sources.len()
    }

    /// Cuts every day file back to its committed length (a file with no committed length was
    /// created after the last commit and is removed), and the journal to its committed records.
    fn cut_to_committed(&mut self) -> Result<(), StoreError> {
        self.day_file = None;
        self.state.cut_back()?;
        let mut shorter = BTreeMap::new();
        for (name, path) in day_files(&self.dir)? {
            let len = fs::metadata(&path).map_err(io_err(&path))?.len();
            match self.state.committed().files.get(&name) {
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
                    shorter.insert(name, len);
                }
                Some(_) => {}
                None => {
                    warn!(path = %path.display(), cut_bytes = len, "Store file was never committed; removing it (its lines are re-applied from the queue)");
                    fs::remove_file(&path).map_err(io_err(&path))?;
                }
            }
        }
        if !shorter.is_empty() {
            let mut record = self.state.committed().next_record();
            record.files = shorter;
            self.state.commit(record)?;
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
        let ingested = Ingested::new(&now.to_rfc3339_opts(SecondsFormat::Millis, true));
        let mut pending = Pending::default();
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
                if !pending.admit(self.state.committed(), batch.fingerprint(log), log.offset()) {
                    applied.duplicates += 1;
                    continue;
                }
                batch.write_record(log, Some(&ingested), &mut self.buf);
                self.buf.push(b'\n');
                applied.stored += 1;
            }
            pending.retire(self.state.committed(), &batch.header.retired);
        }
        let mut files = BTreeMap::new();
        if !self.buf.is_empty() {
            let path = self.dir.join(&name);
            let known = self.state.committed().files.get(&name).copied();
            if self.day_file.as_ref().map(|(n, _)| n) != Some(&name) {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                self.day_file = Some((name.clone(), file));
                if known.is_none() {
                    debug!(path = %path.display(), "Store day file started");
                }
            }
            let file = &mut self.day_file.as_mut().expect("opened above").1;
            self.state.step(Step::DayWrite)?;
            file.write_all(&self.buf).map_err(io_err(&path))?;
            self.state.step(Step::DaySync)?;
            file.sync_data().map_err(io_err(&path))?;
            if known.is_none() {
                // The new file's directory entry must be durable before the state names it.
                self.state.step(Step::DayDirSync)?;
                sync_dir(&self.dir)?;
            }
            files.insert(name, known.unwrap_or(0) + self.buf.len() as u64);
        }
        let (record, dropped) =
            pending.into_record(self.state.committed(), self.max_sources, position, files);
        self.state.commit(record)?;
        self.dirty = false;
        applied.retired = dropped.retired;
        applied.evicted = dropped.evicted;
        if dropped.evicted > 0 {
            warn!(
                evicted = dropped.evicted,
                max_sources = self.max_sources,
                sources = self.sources(),
                "Store knew more sources than max_sources; forgot the least recently stored (a replay of one of them would be stored again)"
            );
        }
        Ok(applied)
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

    /// Deletes day files whose day is more than `retention_days` before `now`'s day. Their
    /// removal is committed before the files are deleted, so a crash in between leaves only
    /// files that [`Self::open`] removes as uncommitted. Sources are not forgotten here.
    pub(crate) fn retain(&mut self, now: DateTime<Utc>) -> Result<(), StoreError> {
        let Some(cutoff) = now
            .date_naive()
            .checked_sub_days(Days::new(u64::from(self.retention_days)))
        else {
            return Ok(());
        };
        let old: Vec<(String, PathBuf)> = day_files(&self.dir)?
            .into_iter()
            .filter(|(name, _)| day_of_file(name).is_some_and(|d| d < cutoff))
            .collect();
        let gone: Vec<String> = self
            .state
            .committed()
            .files
            .keys()
            .filter(|name| day_of_file(name).is_none_or(|d| d < cutoff))
            .cloned()
            .collect();
        if old.is_empty() && gone.is_empty() {
            return Ok(());
        }
        if self.dirty {
            self.cut_to_committed()?;
        }
        if !gone.is_empty() {
            let mut record = self.state.committed().next_record();
            record.removed_files = gone;
            self.state.commit(record)?;
        }
        if self
            .day_file
            .as_ref()
            .is_some_and(|(n, _)| !self.state.committed().files.contains_key(n))
        {
            self.day_file = None;
        }
        for (name, path) in old {
            self.state.step(Step::FileDelete)?;
            match fs::remove_file(&path) {
                Ok(()) => info!(path = %path.display(), "Store day file past retention deleted"),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, file = %name, "Store retention could not delete a file")
                }
            }
        }
        Ok(())
    }
}

/// Day files present in the store, by name.
fn day_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if let Some(name) = entry.file_name().to_str() {
            if day_of_file(name).is_some() {
                out.push((name.to_string(), entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The state of a store found without one: its day files as they are (a partial last line is
/// cut), and marks rebuilt from their records.
fn adopt_orphans(dir: &Path) -> Result<State, StoreError> {
    let mut state = State::default();
    for (name, path) in day_files(dir)? {
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        // Only whole lines count; a partial last line is cut.
        let len = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for line in bytes[..len].split(|&b| b == b'\n') {
            let Ok(keys) = serde_json::from_slice::<ferry_wire::RecordKeys<'_>>(line) else {
                continue;
            };
            let mark = state
                .sources
                .entry(keys.log.file.fingerprint.into_owned())
                .or_insert(Mark {
                    offset: keys.log.offset,
                    last: 0,
                });
            mark.offset = mark.offset.max(keys.log.offset);
        }
        warn!(path = %path.display(), bytes = len, "Store file without a commit record adopted");
        state.files.insert(name, len as u64);
    }
    Ok(state)
}

/// What `benches/store_commit.rs` drives (see [`crate::bench_support`]).
#[doc(hidden)]
pub mod bench {
    use super::*;

    /// A local store.
    #[derive(Debug)]
    pub struct Store(LocalStore);

    impl Store {
        /// Opens the store in `dir` (30 days of retention).
        pub fn open(dir: &Path, max_sources: usize) -> Result<Store, StoreError> {
            LocalStore::open(dir, 30, max_sources, Utc::now()).map(Store)
        }

        /// Applies and commits one decompressed batch at queue position `offset`.
        pub fn apply(&mut self, batch: &[u8], offset: u64) -> Result<(), StoreError> {
            let position = Position { segment: 1, offset };
            self.0.apply([batch], position, Utc::now()).map(drop)
        }

        /// Sources the store keeps marks for.
        pub fn sources(&self) -> usize {
            self.0.sources()
        }
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

    /// The decompressed NDJSON batch of `records`, in the current format version.
    pub(crate) fn batch(records: &[LogRecord]) -> Vec<u8> {
        batch_of_version(records, ferry_wire::WIRE_VERSION)
    }

    /// The decompressed NDJSON batch of `records` in format `version`.
    pub(crate) fn batch_of_version(records: &[LogRecord], version: u32) -> Vec<u8> {
        let mut b = BatchBuilder::with_version("node-1", version);
        for r in records {
            b.push_log(r);
        }
        b.finish(Compression::None).body
    }

    /// Records of three sources (Docker, Kubernetes, a plain file), in runs and interleaved,
    /// with what records carry: levels, flags, parsed fields, text that needs escaping.
    pub(crate) fn varied_records() -> Vec<LogRecord> {
        let docker = |r: &mut LogRecord| {
            r.log.file.path = "/var/lib/docker/containers/3f4e/3f4e-json.log".into();
            r.container.id = Some("3f4e".into());
            r.container.name = Some("web-1".into());
            r.container.image.name = Some("nginx:1.27".into());
            r.container.labels = [
                ("com.docker.compose.service".to_string(), "web".to_string()),
                ("app".to_string(), "shop \"front\"".to_string()),
            ]
            .into();
        };
        let kubernetes = |r: &mut LogRecord| {
            r.log.file.path = "/var/log/pods/prod_api-7f9_0a1b/api/0.log".into();
            r.kubernetes.namespace = Some("prod".into());
            r.kubernetes.pod.name = Some("api-7f9".into());
            r.kubernetes.pod.uid = Some("0a1b".into());
            r.kubernetes.container.name = Some("api".into());
        };
        let mut out = Vec::new();
        for i in 0..60u64 {
            let source = ["docker", "pod", "plain"][((i / 4 + i % 3) % 3) as usize];
            let mut r = record(
                source,
                i * 100,
                &format!("line {i}: \"q\" \\ tab\t ünï \u{1}"),
            );
            r.host.name = "node-1".into();
            match source {
                "docker" => docker(&mut r),
                "pod" => kubernetes(&mut r),
                _ => {}
            }
            if i % 2 == 0 {
                r.log.level = Some(["info", "warn", "error"][(i % 3) as usize].into());
            }
            if i % 5 == 0 {
                r.log.flags = vec![ferry_wire::Flag::Joined, ferry_wire::Flag::Truncated];
            }
            if i % 3 == 0 {
                r.event.created = Some("2026-11-28T08:40:00.2Z".into());
                r.stream = Some(ferry_wire::Stream::Stderr);
                r.fields.insert(
                    "http".into(),
                    serde_json::json!({"response": {"status_code": 200 + i}}),
                );
            }
            out.push(r);
        }
        out
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
        let mut store = LocalStore::open(tmp.path(), 7, 1000, at(28, 9)).unwrap();
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

        let reopened = LocalStore::open(tmp.path(), 7, 1000, at(29, 1)).unwrap();
        assert_eq!(reopened.queue_position(), pos(200));
    }

    #[test]
    fn replay_of_the_same_batch_stores_nothing_new() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = LocalStore::open(tmp.path(), 7, 1000, at(28, 9)).unwrap();
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
        let mut store = LocalStore::open(tmp.path(), 7, 1000, at(28, 10)).unwrap();
        let data = batch(&[record("s", 20, "c"), record("u", 1, "p")]);
        let applied = store.apply([&data[..]], pos(5), at(28, 10)).unwrap();
        assert_eq!((applied.stored, applied.duplicates), (0, 2));
        let file = tmp.path().join("ferry-2026-11-28.ndjson");
        assert_eq!(offsets(&file), [0, 5, 10, 20, 6, 1]);
    }

    #[test]
    fn uncommitted_lines_are_cut_on_open_and_reapplied_once() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = LocalStore::open(tmp.path(), 7, 1000, at(28, 9)).unwrap();
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
            dec.write_record(
                log,
                Some(&Ingested::new("2026-11-28T09:00:01.000Z")),
                &mut out,
            );
            out.push(b'\n');
        }
        out.extend_from_slice(b"{\"event\":{\"id\":\"half");
        let mut f = OpenOptions::new().append(true).open(&file).unwrap();
        f.write_all(&out).unwrap();
        drop(f);
        // A day file the crash created but never committed.
        let orphan = tmp.path().join("ferry-2026-11-29.ndjson");
        fs::write(&orphan, &out).unwrap();
        // And a state commit that never reached its rename.
        fs::write(
            tmp.path().join("state.json.tmp"),
            b"{\"version\":1,\"garbage",
        )
        .unwrap();

        let mut store = LocalStore::open(tmp.path(), 7, 1000, at(28, 9)).unwrap();
        assert_eq!(fs::metadata(&file).unwrap().len(), committed);
        assert!(!orphan.exists());
        assert!(!tmp.path().join("state.json.tmp").exists());
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
        let mut store = LocalStore::open(tmp.path(), 7, 1000, at(28, 9)).unwrap();
        let first = batch(&[record("s", 0, "a")]);
        store.apply([&first[..]], pos(1), at(28, 9)).unwrap();
        // The commit fails after the group's lines were written.
        let blocked = faults::block_commits(tmp.path());
        let second = batch(&[record("s", 10, "b")]);
        assert!(store.apply([&second[..]], pos(2), at(28, 9)).is_err());
        assert_eq!(
            offsets(&tmp.path().join("ferry-2026-11-28.ndjson")),
            [0, 10]
        );
        drop(blocked);
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

    /// Regression (issue 10, finding 6): retention used to forget a source's high-water mark
    /// after `retention_days` of silence, so a later replay of it was stored twice.
    #[test]
    fn retention_deletes_old_day_files_but_never_forgets_a_source() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = LocalStore::open(tmp.path(), 2, 1000, at(20, 9)).unwrap();
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
        // "old" has been silent for three days, longer than retention: a replay of it is still
        // recognised, as is one of "new".
        let replay = batch(&[record("old", 5, "a"), record("new", 5, "b")]);
        let applied = store.apply([&replay[..]], pos(3), at(23, 1)).unwrap();
        assert_eq!((applied.stored, applied.duplicates), (0, 2));
        // Retention also runs on open, and still forgets no source.
        drop(store);
        let mut store = LocalStore::open(tmp.path(), 2, 1000, at(30, 0)).unwrap();
        let mut left: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["state.journal", "state.json"]);
        let applied = store.apply([&replay[..]], pos(4), at(30, 1)).unwrap();
        assert_eq!((applied.stored, applied.duplicates), (0, 2));
    }

    #[test]
    fn without_state_existing_files_are_adopted_with_their_marks() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = LocalStore::open(tmp.path(), 7, 1000, at(28, 9)).unwrap();
        store
            .apply(
                [&batch(&[record("s", 0, "a"), record("s", 10, "b")])[..]],
                pos(1),
                at(28, 9),
            )
            .unwrap();
        drop(store);
        fs::remove_file(tmp.path().join("state.json")).unwrap();
        let mut store = LocalStore::open(tmp.path(), 7, 1000, at(28, 9)).unwrap();
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
        // The journal of the lost state is not read on top of the rebuilt one.
        drop(store);
        let store = LocalStore::open(tmp.path(), 7, 1000, at(28, 9)).unwrap();
        assert_eq!(store.queue_position(), pos(2));
        assert_eq!(store.state.committed().sources["s"].offset, 20);
    }

    #[test]
    fn version_1_and_version_2_batches_store_the_same_records_byte_for_byte() {
        let records = varied_records();
        let (t1, t2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut v1_store = LocalStore::open(t1.path(), 7, 1000, at(28, 9)).unwrap();
        let mut v2_store = LocalStore::open(t2.path(), 7, 1000, at(28, 9)).unwrap();
        for (i, chunk) in records.chunks(7).enumerate() {
            let (v1, v2) = (batch_of_version(chunk, 1), batch_of_version(chunk, 2));
            assert!(v2.len() < v1.len(), "{} vs {} bytes", v2.len(), v1.len());
            let a1 = v1_store.apply([&v1[..]], pos(i as u64), at(28, 9)).unwrap();
            let a2 = v2_store.apply([&v2[..]], pos(i as u64), at(28, 9)).unwrap();
            assert_eq!(a1, a2);
            assert_eq!(a2.stored, chunk.len() as u64);
        }
        // A replay is a duplicate whichever version carries it: the marks are the same.
        let (v1, v2) = (batch_of_version(&records[..9], 1), batch(&records[..9]));
        let a1 = v1_store.apply([&v2[..]], pos(20), at(28, 9)).unwrap();
        let a2 = v2_store.apply([&v1[..]], pos(20), at(28, 9)).unwrap();
        assert_eq!((a1.stored, a1.duplicates), (0, 9));
        assert_eq!(a1, a2);
        assert_eq!(
            v1_store.state.committed().sources,
            v2_store.state.committed().sources
        );
        let name = "ferry-2026-11-28.ndjson";
        let (b1, b2) = (
            fs::read(t1.path().join(name)).unwrap(),
            fs::read(t2.path().join(name)).unwrap(),
        );
        assert_eq!(String::from_utf8_lossy(&b2), String::from_utf8_lossy(&b1));
        // Every record once, in order, whole, with event.ingested.
        let stored: Vec<LogRecord> = b2
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        let expected: Vec<LogRecord> = records
            .iter()
            .cloned()
            .map(|mut r| {
                r.event.ingested = Some("2026-11-28T09:00:00.000Z".into());
                r
            })
            .collect();
        assert_eq!(stored, expected);
    }

    #[test]
    fn undecodable_entries_are_skipped_and_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = LocalStore::open(tmp.path(), 7, 1000, at(28, 9)).unwrap();
        let good = batch(&[record("s", 0, "a")]);
        let applied = store
            .apply([&b"not a batch"[..], &good[..]], pos(9), at(28, 9))
            .unwrap();
        assert_eq!((applied.stored, applied.undecodable), (1, 1));
        assert_eq!(store.queue_position(), pos(9));
    }
}
