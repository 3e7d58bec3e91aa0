//! The tailer: one plain thread that reads every tailed file, decodes lines into records, batches
//! them and hands sealed batches to the forwarder.
//!
//! Files are read in large chunks into one shared buffer and split in place with `memchr`; an
//! incomplete last line is not copied aside but read again next time, so the memory of the whole
//! tailer is bounded by `max(read_buffer_bytes, max_line_bytes + 1)` plus the decoders' join
//! buffers, however long a line grows. Each sealed batch carries the checkpoint updates it makes
//! possible (per fingerprint, the committable offset after it: the end of the last consumed line,
//! held back to the start of any pending partial message). The channel to the forwarder is small
//! and `blocking_send` waits when it is full, so a slow aggregator stops the reading and the log
//! files on disk are the buffer. Records of one fingerprint leave strictly in offset order. This
//! module never writes the checkpoint file and never talks to the network.
//!
//! Parsing: the files of one log path share a [`Group`]: the record template (container metadata),
//! the parser [`Selection`](ferry_parsers::Selection) (chosen when the path is first opened, again
//! when its container metadata or the rules change) and, when a chosen rule is multiline, an
//! [`Assembler`](crate::multiline::Assembler) with one joiner per stream. The group outlives a file
//! that is rotated away, so a trace split by a rename rotation continues in the new file and is
//! still one event (identity: the fingerprint and offset of its last line). The ordering rule for
//! joined events is documented in `crate::multiline`: an event waits until no pending event of its
//! fingerprint could still end before it. The committable offset of a file is also held back to the
//! first line of it that a joiner holds or that waits to leave
//! ([`Assembler::hold`](crate::multiline::Assembler::hold)), so a restart re-reads held lines and
//! rebuilds the same events with the same ids; for the same reason pending events are not flushed
//! at shutdown. They are flushed when their `flush_timeout_ms` passes (checked every loop turn; the
//! loop sleeps no longer than the next deadline), when the last file of their path closes (deleted,
//! rotated away with no successor), when the file is truncated, and when the path's rules change.
//!
//! The file edges: before every read of a file the tailer checks that it still holds what was read
//! (at least as long as the read position, the same head, the same
//! [`TAIL_BYTES`](crate::fingerprint::TAIL_BYTES) just before the position). When it does not
//! (copytruncate, truncation, refilled past the position while the tailer waited on the channel),
//! the source is finished in a copy beside it among the file's rotated siblings (`crate::rotated`),
//! matched by head and those bytes, under its own fingerprint; the file itself is read from 0 as
//! the next generation. At start, a checkpointed source whose file left its path is finished the
//! same way in the sibling with its inode, or in a copy. At every scan, the siblings of every known
//! log path that no open file, checkpoint entry or finished entry claims are read from their start,
//! oldest first (the live file waits, [`TailedFile::after`]). A rotated file read to its end stays
//! in the checkpoint as `finished` while it is on disk, so it is never taken for an unread one, and
//! a new source is registered in the checkpoint before its first record leaves
//! ([`Sealed::register`]). What cannot be found is counted as lost
//! (`ferry_agent_sources_lost_total{reason}`) and logged, never forgotten silently.
//!
//! The parts: `file` (one open file's state), `record` (groups, and the [`record::Batcher`] that
//! builds records into the open batch), `read` (reading chunks and lines), `sources` (the scan,
//! rotation, truncation and following a source to its copy), `checkpointing` (resume positions,
//! sealing, finished files). This file holds the settings, the state and the loop.

mod checkpointing;
mod file;
mod read;
mod record;
mod sources;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use ferry_wire::Compression;
use tracing::{debug, info, warn};

use crate::checkpoint::{Entry, Sources, Update};
use crate::config::{AgentConfig, FormatConfig, ReadFrom};
use crate::docker::Registry;
use crate::enrich::Enricher;
use crate::fingerprint::FileKey;
use crate::metrics::{LostReason, Metrics};
use crate::rules::Rules;
use crate::sealed::Sealed;
use crate::watcher::Wakeups;
use checkpointing::{establish, Established};
use file::TailedFile;
use read::Reader;
use record::{Batcher, Group};

/// What the tailer needs from the configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub include: Vec<String>,
    pub exclude: Vec<glob::Pattern>,
    pub format: FormatConfig,
    pub read_from: ReadFrom,
    pub max_line_bytes: usize,
    pub read_buffer_bytes: usize,
    pub poll_interval: Duration,
    pub glob_interval: Duration,
    pub rotate_wait: Duration,
    pub rotated_suffixes: Vec<glob::Pattern>,
    pub batch_max_bytes: usize,
    pub batch_max_records: usize,
    pub batch_max_age: Duration,
    pub compression: Compression,
    /// `output = "discard"`: batches are counted and dropped, not encoded into a body.
    pub discard: bool,
    pub host_name: String,
    pub labels_allowlist: Vec<String>,
}

impl Settings {
    /// From a validated configuration.
    pub fn from_config(c: &AgentConfig) -> Self {
        Settings {
            include: c.include.clone(),
            exclude: c
                .exclude
                .iter()
                .filter_map(|p| glob::Pattern::new(p).ok())
                .collect(),
            format: c.format,
            read_from: c.read_from,
            max_line_bytes: c.max_line_bytes,
            read_buffer_bytes: c.read_buffer_bytes,
            poll_interval: Duration::from_millis(c.poll_interval_ms),
            glob_interval: Duration::from_millis(c.glob_interval_ms),
            rotate_wait: Duration::from_millis(c.rotate_wait_ms),
            rotated_suffixes: crate::rotated::patterns(&c.rotated_suffixes),
            batch_max_bytes: c.batch_max_bytes,
            batch_max_records: c.batch_max_records,
            batch_max_age: Duration::from_millis(c.batch_max_age_ms),
            compression: c.wire_compression(),
            discard: c.output == crate::config::OutputConfig::Discard,
            host_name: c.host_name.clone(),
            labels_allowlist: c.container_labels_allowlist.clone(),
        }
    }
}

/// The tailer thread's state.
pub(crate) struct Tailer {
    s: Settings,
    files: BTreeMap<FileKey, TailedFile>,
    /// Checkpoint entries not yet claimed by a file, by (dev, ino).
    restored: HashMap<FileKey, Vec<(String, Entry)>>,
    /// Rotated files read to their end and still on disk (checkpoint entries with `finished`), by
    /// (dev, ino): never read again.
    finished: HashMap<FileKey, (String, Entry)>,
    /// Finished files missing from the latest listings of their siblings, with how many listings
    /// in a row missed them (a listing made while a writer renames files can miss one).
    unlisted: HashMap<FileKey, u32>,
    /// True until the first scan is done; `first_start` is the agent's very first start.
    first_scan: bool,
    first_start: bool,
    /// The checkpoint was a version 1 document, which does not list finished rotated files.
    legacy: bool,
    removals: Vec<String>,
    /// Checkpoint entries to write with the next batch (besides the open files' positions).
    updates: Vec<Update>,
    /// The open batch (a field of its own, so it can be lent beside a file and a group).
    batcher: Batcher,
    last_report: Instant,
    last_scan: Option<Instant>,
    reader: Reader,
    enricher: Enricher,
    /// The Docker registry version the open files' metadata was last refreshed at.
    registry_version: u64,
    /// Per log path: record template, parser selection, joiners.
    groups: HashMap<PathBuf, Group>,
    rules: Arc<Rules>,
    /// The rules version the groups' selections were made from.
    rules_version: u64,
    wakeups: Wakeups,
    metrics: Arc<Metrics>,
    tx: tokio::sync::mpsc::Sender<Sealed>,
    stop: Arc<AtomicBool>,
}

impl Tailer {
    /// `restored` is the loaded checkpoint; `first_start` says no checkpoint file existed;
    /// `legacy` that it was a version 1 document.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        s: Settings,
        restored: &Sources,
        first_start: bool,
        legacy: bool,
        metrics: Arc<Metrics>,
        tx: tokio::sync::mpsc::Sender<Sealed>,
        stop: Arc<AtomicBool>,
        registry: Arc<Registry>,
        rules: Arc<Rules>,
    ) -> Self {
        let mut by_key: HashMap<FileKey, Vec<(String, Entry)>> = HashMap::new();
        let mut finished = HashMap::new();
        // Logs-API sources belong to the Docker followers, not to files.
        let files = restored
            .iter()
            .filter(|(fp, _)| !fp.starts_with(crate::docker::FINGERPRINT_PREFIX));
        for (fp, entry) in files {
            let key = FileKey {
                dev: entry.dev,
                ino: entry.ino,
            };
            if entry.finished {
                finished.insert(key, (fp.clone(), entry.clone()));
            } else {
                by_key
                    .entry(key)
                    .or_default()
                    .push((fp.clone(), entry.clone()));
            }
        }
        Tailer {
            wakeups: Wakeups::new(&s.include),
            registry_version: registry.version(),
            enricher: Enricher::new(s.labels_allowlist.clone(), registry),
            groups: HashMap::new(),
            rules_version: rules.version(),
            rules,
            batcher: Batcher::new(
                s.host_name.clone(),
                s.batch_max_bytes,
                s.batch_max_records,
                metrics.clone(),
            ),
            reader: Reader::new(s.read_buffer_bytes, s.max_line_bytes, metrics.clone()),
            s,
            files: BTreeMap::new(),
            restored: by_key,
            finished,
            unlisted: HashMap::new(),
            first_scan: true,
            first_start,
            legacy,
            removals: Vec::new(),
            updates: Vec::new(),
            last_report: Instant::now(),
            last_scan: None,
            metrics,
            tx,
            stop,
        }
    }

    /// A handle that wakes the loop (used at shutdown).
    pub fn waker(&self) -> std::sync::mpsc::SyncSender<()> {
        self.wakeups.waker()
    }

    /// Runs until `stop` is set or the forwarder goes away; seals what was read before returning.
    pub fn run(mut self) {
        info!(patterns = ?self.s.include, "Tailer started");
        while !self.stop.load(Relaxed) {
            let now = Instant::now();
            self.reload_rules();
            self.refresh_metadata();
            let rescan = self.wakeups.take_rescan();
            if rescan
                || self
                    .last_scan
                    .is_none_or(|t| now.duration_since(t) >= self.s.glob_interval)
            {
                self.scan();
                self.last_scan = Some(now);
            }
            let Ok(progressed) = self.read_all() else {
                return;
            };
            self.flush_due();
            if !self.check_files() {
                return;
            }
            let now = Instant::now();
            let age_due = self
                .batcher
                .started
                .is_some_and(|t| now.duration_since(t) >= self.s.batch_max_age);
            let report_due = now.duration_since(self.last_report) >= self.s.batch_max_age;
            if (age_due || report_due) && !self.seal() {
                return;
            }
            if !progressed {
                let mut timeout = self.s.poll_interval;
                if let Some(t) = self.batcher.started {
                    timeout =
                        timeout.min((t + self.s.batch_max_age).saturating_duration_since(now));
                }
                if let Some(t) = self.next_deadline() {
                    timeout = timeout.min(t.saturating_duration_since(now));
                }
                self.wakeups.wait(timeout.max(Duration::from_millis(1)));
            }
        }
        self.seal();
        info!("Tailer stopped");
    }

    /// One turn over every file. `Err` when the forwarder is gone.
    fn read_all(&mut self) -> Result<bool, ()> {
        let read_time = read_time();
        let keys: Vec<FileKey> = self.files.keys().copied().collect();
        let mut progressed = false;
        for key in keys {
            loop {
                // Before every read: a truncation (even one refilled past our position while we
                // waited for the forwarder) must not be read on from the old position. When it
                // moves the source to a copy, the file's new contents wait for the copy (below):
                // checked after the wait, they overtook the copy's rest in this very turn.
                self.check_truncation(key);
                // An older rotated file of the same log is read to its end first.
                if let Some(after) = self.files.get(&key).and_then(|f| f.after) {
                    let waiting = self
                        .files
                        .get(&after)
                        .is_some_and(|p| p.eof_since.is_none());
                    if waiting {
                        break;
                    }
                    if let Some(f) = self.files.get_mut(&key) {
                        f.after = None;
                    }
                }
                let Some(f) = self.files.get_mut(&key) else {
                    break;
                };
                if f.source.is_none() {
                    match establish(f, &self.s.host_name, &mut self.restored) {
                        Established::NoHead => {
                            // Nothing to read yet: at its end, as far as the files after it go.
                            f.eof_since.get_or_insert_with(Instant::now);
                            break;
                        }
                        Established::Ready => {}
                        Established::Replaced(earlier) => {
                            for (fp, entry) in earlier {
                                self.follow(fp, entry, None, LostReason::Truncated);
                            }
                            continue;
                        }
                    }
                }
                let Some(f) = self.files.get_mut(&key) else {
                    break;
                };
                let Some(g) = self.groups.get_mut(&f.group) else {
                    warn!(path = %f.path.display(), "Tailed file without its group; not reading it");
                    break;
                };
                let turn = self.reader.read(f, g, &mut self.batcher, &read_time);
                progressed |= turn.progressed;
                if !turn.full {
                    break;
                }
                if !self.seal() {
                    return Err(());
                }
            }
        }
        Ok(progressed)
    }

    /// Re-reads the container metadata of every log path when the Docker registry changed
    /// (a container was renamed, or became known after its file was opened); a changed
    /// `ferry.parser` label or image changes the path's rules.
    fn refresh_metadata(&mut self) {
        let version = self.enricher.registry_version();
        if version == self.registry_version {
            return;
        }
        self.registry_version = version;
        for (path, g) in &mut self.groups {
            let Some(found) = self.enricher.refresh(path) else {
                continue;
            };
            g.record.container = found.container;
            g.record.kubernetes = found.kubernetes;
            if found.parser != g.parser {
                debug!(path = %path.display(), parser = ?found.parser, "Container parser settings changed");
                let selection = self.rules.select(&self.rules.current(), &found.parser);
                g.parser = found.parser;
                g.reselect(selection, &mut self.batcher);
            }
        }
    }

    /// Picks up reloaded rules: every path's selection is made again (what the old joiners held
    /// is passed on first).
    fn reload_rules(&mut self) {
        let version = self.rules.version();
        if version == self.rules_version {
            return;
        }
        self.rules_version = version;
        let set = self.rules.current();
        for g in self.groups.values_mut() {
            let selection = self.rules.select(&set, &g.parser);
            g.reselect(selection, &mut self.batcher);
        }
    }

    /// Passes on the pending multiline events whose flush timeout passed.
    fn flush_due(&mut self) {
        let now = Instant::now();
        let out = &mut self.batcher;
        for g in self.groups.values_mut() {
            let Group {
                record,
                selection,
                assembler: Some(a),
                ..
            } = g
            else {
                continue;
            };
            if a.next_deadline().is_some_and(|t| t <= now) {
                a.flush_expired(now, &mut |e| out.push_event(record, selection, e));
            }
        }
    }

    /// The earliest flush deadline of any pending multiline event.
    fn next_deadline(&self) -> Option<Instant> {
        self.groups
            .values()
            .filter_map(|g| g.assembler.as_ref()?.next_deadline())
            .min()
    }
}

/// The time put on records that carry none of their own: when their turn of reading began.
fn read_time() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::AutoSi, true)
}
