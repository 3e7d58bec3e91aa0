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
//! files on disk are the buffer. Records of one fingerprint leave strictly in offset order.
//! This module never writes the checkpoint file and never talks to the network.
//!
//! Parsing: the files of one log path share a [`Group`]: the record template (container
//! metadata), the parser [`Selection`] (chosen when the path is first opened, again when its
//! container metadata or the rules change) and, when a chosen rule is multiline, an
//! [`Assembler`] with one joiner per stream. The group outlives a file that is rotated away, so a
//! trace split by a rename rotation continues in the new file and is still one event (identity:
//! the fingerprint and offset of its last line). The ordering rule for joined events is
//! documented in `crate::multiline`: an event waits until no pending event of its fingerprint
//! could still end before it. The committable offset of a file is also held back to the first
//! line of it that a joiner holds or that waits to leave ([`Assembler::hold`]), so a restart
//! re-reads held lines and rebuilds the same events with the same ids; for the same reason
//! pending events are not flushed at shutdown. They are flushed when their `flush_timeout_ms`
//! passes (checked every loop turn; the loop sleeps no longer than the next deadline), when the
//! last file of their path closes (deleted, rotated away with no successor), when the file is
//! truncated, and when the path's rules change.
//!
//! The file edges: before every read of a file the tailer checks that it still holds what was
//! read (at least as long as the read position, the same head, the same [`TAIL_BYTES`] just
//! before the position). When it does not (copytruncate, truncation, refilled past the position
//! while the tailer waited on the channel), the source is finished in a copy beside it among the
//! file's rotated siblings (`crate::rotated`), matched by head and those bytes, under its own
//! fingerprint; the file itself is read from 0 as the next generation. At start, a checkpointed
//! source whose file left its path is finished the same way in the sibling with its inode, or in
//! a copy. At every scan, the siblings of every known log path that no open file, checkpoint
//! entry or finished entry claims are read from their start, oldest first (the live file waits,
//! [`TailedFile::after`]). A rotated file read to its end stays in the checkpoint as `finished`
//! while it is on disk, so it is never taken for an unread one, and a new source is registered
//! in the checkpoint before its first record leaves ([`Sealed::register`]). What cannot be found
//! is counted as lost (`ferry_agent_sources_lost_total{reason}`) and logged, never forgotten
//! silently.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use ferry_parsers::{Scratch, Selection};
use ferry_wire::{BatchBuilder, Compression, Flag, Host, LogRecord};
use tracing::{debug, info, warn};

use crate::checkpoint::{Entry, Sources, Update};
use crate::config::{AgentConfig, FormatConfig, ReadFrom};
use crate::decode::{Decoded, Decoder, Flags};
use crate::docker::Registry;
use crate::enrich::{format_for, Enricher, Found};
use crate::fingerprint::{fingerprint, hash_tail, holds, tail_hash_at, FileKey, Head, TAIL_BYTES};
use crate::metrics::{DecodeError, LostReason, Metrics};
use crate::multiline::{Assembler, Event, Piece, SourceRef};
use crate::rotated::{siblings, Sibling};
use crate::rules::{parse_into, ParserKey, Rules};
use crate::sealed::Sealed;
use crate::watcher::{discover, Wakeups};

/// At most this many reads from one file before the loop moves on to the next (fairness).
const CHUNKS_PER_TURN: usize = 8;

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

/// Identity of one generation of a file.
#[derive(Debug, Clone)]
struct Source {
    /// Fingerprint and path, as put on records (shared with the lines a joiner holds).
    r: Arc<SourceRef>,
    head_hash: String,
    generation: u32,
}

/// What the files found at one log path share (see the module docs). A file belongs to the group
/// of the path it was first found at, for as long as it is open.
struct Group {
    /// Open files of this group.
    files: usize,
    /// `container.*`, `kubernetes.*` and `host.*` of its records; reused for every record.
    record: LogRecord,
    parser: ParserKey,
    selection: Selection,
    /// When the selection has a multiline rule.
    assembler: Option<Assembler>,
}

impl Group {
    fn new(found: Found, host_name: &str, rules: &Rules) -> Self {
        let selection = rules.select(&rules.current(), &found.parser);
        Group {
            files: 0,
            record: LogRecord {
                container: found.container,
                kubernetes: found.kubernetes,
                host: Host {
                    name: host_name.to_string(),
                },
                ..Default::default()
            },
            parser: found.parser,
            assembler: Assembler::new(&selection),
            selection,
        }
    }

    /// Passes on everything its joiners hold.
    fn flush(&mut self, ctx: &mut Ctx<'_>) {
        let Group {
            record,
            selection,
            assembler,
            ..
        } = self;
        if let Some(a) = assembler {
            a.flush(&mut |e| ctx.push_event(record, selection, e));
        }
    }

    /// Switches to `selection`, passing on what the old joiners held first.
    fn reselect(&mut self, selection: Selection, ctx: &mut Ctx<'_>) {
        self.flush(ctx);
        self.assembler = Assembler::new(&selection);
        self.selection = selection;
    }

    /// The first offset of `source` the joiners hold (see [`Assembler::hold`]).
    fn hold(&self, source: &Source) -> Option<u64> {
        self.assembler
            .as_ref()
            .and_then(|a| a.hold(&source.r.fingerprint))
    }
}

/// One open file.
struct TailedFile {
    key: FileKey,
    path: PathBuf,
    /// The live path whose rotated siblings this file is among (the path it was found at, or for
    /// a rotated copy read on purpose, the path it was rotated from): its checkpoint `path`.
    home: PathBuf,
    file: File,
    /// `None` until the file has a head to fingerprint (again, after a truncation).
    source: Option<Source>,
    /// Generation the next [`Source`] gets.
    generation: u32,
    /// `Some(size at discovery)` for a file found at the very first start with `read_from = end`.
    start_at_end: Option<u64>,
    /// Next byte to read: the start of the next line, or while `skipping`, the scan position.
    pos: u64,
    /// End of the last fully handled line (while skipping: the start of the truncated line).
    consumed: u64,
    /// Skipping the rest of a line that was already emitted truncated.
    skipping: bool,
    decoder: Decoder,
    /// The key of its [`Group`] in [`Tailer::groups`]: the path it was first found at.
    group: PathBuf,
    /// The last (offset, path) put into a checkpoint update.
    reported: Option<(u64, String)>,
    /// Found by the last glob scan.
    matched: bool,
    /// Link count dropped to zero.
    deleted: bool,
    /// Since when every read found no new complete line.
    eof_since: Option<Instant>,
    /// The (at most [`TAIL_BYTES`]) bytes just before `pos`, as read: a file that holds other
    /// bytes there now was truncated and written again.
    tail: Vec<u8>,
    /// The size at the last look (what is known to have been there).
    size_seen: u64,
    /// An older rotated file of the same log, read first: this one is not read until that one
    /// has been read to its end once.
    after: Option<FileKey>,
    /// A new source not in the checkpoint yet: registered at this offset (where its reading
    /// started) with the next sealed batch.
    register_at: Option<u64>,
}

impl TailedFile {
    fn new(key: FileKey, path: PathBuf, file: File, home: PathBuf, decoder: Decoder) -> Self {
        TailedFile {
            key,
            group: home.clone(),
            home,
            path,
            file,
            source: None,
            generation: 0,
            start_at_end: None,
            pos: 0,
            consumed: 0,
            skipping: false,
            decoder,
            reported: None,
            matched: true,
            deleted: false,
            eof_since: None,
            tail: Vec::new(),
            size_seen: 0,
            after: None,
            register_at: None,
        }
    }

    /// Remembers the bytes just before `pos` (after a resume or a seek).
    fn load_tail(&mut self) {
        let len = self.pos.min(TAIL_BYTES as u64) as usize;
        self.tail.resize(len, 0);
        if self
            .file
            .read_exact_at(&mut self.tail, self.pos - len as u64)
            .is_err()
        {
            self.tail.clear();
        }
    }

    /// Appends what was just consumed (`data`, ending at the new `pos`) to the remembered tail.
    fn note_tail(&mut self, data: &[u8]) {
        if data.len() >= TAIL_BYTES {
            self.tail.clear();
            self.tail
                .extend_from_slice(&data[data.len() - TAIL_BYTES..]);
        } else {
            self.tail.extend_from_slice(data);
            let excess = self.tail.len().saturating_sub(TAIL_BYTES);
            self.tail.drain(..excess);
        }
    }

    /// The offset a restart may resume at; `hold` is what its group's joiners hold of it.
    fn committable(&self, hold: Option<u64>) -> u64 {
        [self.decoder.pending_start(), hold]
            .into_iter()
            .flatten()
            .fold(self.consumed, u64::min)
    }
}

/// Shared per-read context (split from the file map to satisfy the borrow checker).
struct Ctx<'a> {
    s: &'a Settings,
    buf: &'a mut Vec<u8>,
    builder: &'a mut BatchBuilder,
    batch_started: &'a mut Option<Instant>,
    metrics: &'a Metrics,
    scratch: &'a mut Scratch,
    read_time: &'a str,
}

/// A [`Ctx`] from the tailer's fields (a macro, so the other fields stay free to borrow).
macro_rules! ctx {
    ($t:expr, $read_time:expr) => {
        Ctx {
            s: &$t.s,
            buf: &mut $t.buf,
            builder: &mut $t.builder,
            batch_started: &mut $t.batch_started,
            metrics: &$t.metrics,
            scratch: &mut $t.scratch,
            read_time: $read_time,
        }
    };
}

impl Ctx<'_> {
    fn full(&self) -> bool {
        self.builder.bytes() >= self.s.batch_max_bytes
            || self.builder.len() >= self.s.batch_max_records
    }

    /// Takes one decoded record of `source` (a file of `g`): into the batch, or into the joiners.
    fn accept(&mut self, g: &mut Group, source: &Arc<SourceRef>, d: Decoded<'_>) {
        for (flag, kind) in [
            (Flag::MalformedJson, DecodeError::MalformedJson),
            (Flag::MalformedCri, DecodeError::MalformedCri),
            (Flag::InvalidUtf8, DecodeError::InvalidUtf8),
        ] {
            if d.flags.contains(flag) {
                self.metrics.decode_error(kind);
            }
        }
        let read_time = self.read_time;
        let timestamp = d.timestamp.as_deref().unwrap_or(read_time);
        let Group {
            record,
            selection,
            assembler,
            ..
        } = g;
        match assembler {
            None => {
                match d.message {
                    std::borrow::Cow::Owned(s) => record.message = s,
                    std::borrow::Cow::Borrowed(s) => {
                        record.message.clear();
                        record.message.push_str(s);
                    }
                }
                record.timestamp.clear();
                record.timestamp.push_str(timestamp);
                record.stream = d.stream;
                record.log.flags.clear();
                record.log.flags.extend(d.flags.iter());
                self.push(record, selection, source, d.offset);
            }
            Some(a) => {
                let piece = Piece {
                    source,
                    start: d.start,
                    offset: d.offset,
                    text: d.message.into_owned(),
                    timestamp,
                    stream: d.stream,
                    flags: d.flags,
                };
                a.push(piece, Instant::now(), &mut |e| {
                    self.push_event(record, selection, e);
                });
            }
        }
    }

    /// Puts an event passed on by the joiners into the batch.
    fn push_event(&mut self, record: &mut LogRecord, selection: &Selection, e: Event) {
        record.message = e.text;
        record.timestamp = e.timestamp;
        record.stream = e.stream;
        record.log.flags.clear();
        record.log.flags.extend(e.flags.iter());
        self.push(record, selection, &e.source, e.offset);
    }

    /// Completes `record` (message, timestamp, stream and flags are set) with its identity,
    /// parses it and pushes it into the batch.
    fn push(
        &mut self,
        record: &mut LogRecord,
        selection: &Selection,
        source: &SourceRef,
        offset: u64,
    ) {
        record.event.id = ferry_wire::event_id(&source.fingerprint, offset);
        record.event.created = None;
        record.log.file.fingerprint.clone_from(&source.fingerprint);
        record.log.file.path.clone_from(&source.path);
        record.log.offset = offset;
        record.log.level = None;
        record.fields.clear();
        parse_into(self.builder, record, selection, self.scratch);
        if self.batch_started.is_none() {
            *self.batch_started = Some(Instant::now());
        }
    }

    fn line(&mut self, f: &mut TailedFile, g: &mut Group, line: &[u8], offset: u64, flags: Flags) {
        self.metrics.lines_read.fetch_add(1, Relaxed);
        if flags.contains(Flag::Truncated) {
            self.metrics.lines_truncated.fetch_add(1, Relaxed);
        }
        let TailedFile {
            decoder, source, ..
        } = f;
        let Some(source) = source else { return };
        decoder.push_line(line, offset, flags, |d| self.accept(g, &source.r, d));
    }
}

/// What one turn of reading a file did.
#[derive(Debug, Default)]
struct Turn {
    progressed: bool,
    full: bool,
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
    /// True until the first scan is done; `first_start` is the agent's very first start.
    first_scan: bool,
    first_start: bool,
    /// The checkpoint was a version 1 document, which does not list finished rotated files.
    legacy: bool,
    removals: Vec<String>,
    /// Checkpoint entries to write with the next batch (besides the open files' positions).
    updates: Vec<Update>,
    builder: BatchBuilder,
    batch_started: Option<Instant>,
    last_report: Instant,
    last_scan: Option<Instant>,
    buf: Vec<u8>,
    enricher: Enricher,
    /// The Docker registry version the open files' metadata was last refreshed at.
    registry_version: u64,
    /// Per log path: record template, parser selection, joiners.
    groups: HashMap<PathBuf, Group>,
    rules: Arc<Rules>,
    /// The rules version the groups' selections were made from.
    rules_version: u64,
    scratch: Scratch,
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
            scratch: Scratch::new(),
            builder: BatchBuilder::new(s.host_name.clone()),
            buf: vec![0; s.read_buffer_bytes],
            s,
            files: BTreeMap::new(),
            restored: by_key,
            finished,
            first_scan: true,
            first_start,
            legacy,
            removals: Vec::new(),
            updates: Vec::new(),
            batch_started: None,
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
                .batch_started
                .is_some_and(|t| now.duration_since(t) >= self.s.batch_max_age);
            let report_due = now.duration_since(self.last_report) >= self.s.batch_max_age;
            if (age_due || report_due) && !self.seal() {
                return;
            }
            if !progressed {
                let mut timeout = self.s.poll_interval;
                if let Some(t) = self.batch_started {
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

    /// Re-reads the container metadata of every log path when the Docker registry changed
    /// (a container was renamed, or became known after its file was opened); a changed
    /// `ferry.parser` label or image changes the path's rules.
    fn refresh_metadata(&mut self) {
        let version = self.enricher.registry_version();
        if version == self.registry_version {
            return;
        }
        self.registry_version = version;
        let mut ctx = ctx!(self, "");
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
                g.reselect(selection, &mut ctx);
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
        let mut ctx = ctx!(self, "");
        for g in self.groups.values_mut() {
            let selection = self.rules.select(&set, &g.parser);
            g.reselect(selection, &mut ctx);
        }
    }

    /// Passes on the pending multiline events whose flush timeout passed.
    fn flush_due(&mut self) {
        let now = Instant::now();
        let mut ctx = ctx!(self, "");
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
                a.flush_expired(now, &mut |e| ctx.push_event(record, selection, e));
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

    /// Expands the globs: opens new files, notes paths and which files are still matched.
    fn scan(&mut self) {
        let found = discover(&self.s.include, &self.s.exclude);
        let mut seen = HashSet::with_capacity(found.len());
        for (path, meta) in found {
            let key = FileKey::of(&meta);
            if !seen.insert(key) {
                continue;
            }
            if let Some(f) = self.files.get_mut(&key) {
                if f.path != path && !points_to(&f.path, key) {
                    debug!(from = %f.path.display(), to = %path.display(), "Tailed file found under a new path");
                    if let Some(source) = &mut f.source {
                        source.r = Arc::new(SourceRef {
                            fingerprint: source.r.fingerprint.clone(),
                            path: path.to_string_lossy().into_owned(),
                        });
                    }
                    f.home.clone_from(&path);
                    f.path = path;
                }
                continue;
            }
            let Some(found) = self.enricher.for_path(&path) else {
                debug!(path = %path.display(), "Not tailing the log of an opted-out or filtered container");
                continue;
            };
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(error) => {
                    debug!(path = %path.display(), %error, "Cannot open a matched file");
                    continue;
                }
            };
            match file.metadata() {
                Ok(m) if FileKey::of(&m) == key => {}
                _ => continue, // replaced between stat and open: the next scan sees the new one
            }
            let start_at_end =
                (self.first_scan && self.first_start && self.s.read_from == ReadFrom::End)
                    .then_some(meta.len());
            if let Some(dir) = path.parent() {
                self.wakeups.watch(dir);
            }
            // A file at a path whose previous file is still open (rotated away, or deleted and
            // recreated) joins its group: pending multiline events continue in it.
            let mut ctx = ctx!(self, "");
            let g = match self.groups.entry(path.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => {
                    let g = e.into_mut();
                    g.record.container = found.container;
                    g.record.kubernetes = found.kubernetes;
                    if found.parser != g.parser {
                        let selection = self.rules.select(&self.rules.current(), &found.parser);
                        g.parser = found.parser;
                        g.reselect(selection, &mut ctx);
                    }
                    g
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    let g = Group::new(found, &self.s.host_name, &self.rules);
                    debug!(path = %path.display(), rules = g.selection.rules(), chosen = ?g.selection.chosen(), "Parser rules chosen");
                    e.insert(g)
                }
            };
            g.files += 1;
            let decoder = Decoder::new(format_for(self.s.format, &path), self.s.max_line_bytes);
            debug!(path = %path.display(), dev = key.dev, ino = key.ino, "Found file");
            let group = path.clone();
            let mut f = TailedFile::new(key, path.clone(), file, group, decoder);
            f.start_at_end = start_at_end;
            self.files.insert(key, f);
        }
        for f in self.files.values_mut() {
            f.matched = seen.contains(&f.key);
        }
        let first_scan = std::mem::replace(&mut self.first_scan, false);
        if first_scan {
            // Checkpointed sources whose file is not at a matched path: finish them in their
            // rotated sibling, or report them lost.
            let gone: Vec<FileKey> = self
                .restored
                .keys()
                .filter(|k| !seen.contains(k))
                .copied()
                .collect();
            for key in gone {
                let mut entries = self.restored.remove(&key).unwrap_or_default();
                entries.sort_by_key(|(_, e)| e.generation);
                // The latest generation may be the file itself; earlier ones (truncated, their
                // rest copied) can only be in copies.
                if let Some((fp, entry)) = entries.pop() {
                    self.follow(fp, entry, Some(key), LostReason::Gone);
                }
                for (fp, entry) in entries {
                    self.follow(fp, entry, None, LostReason::Truncated);
                }
            }
        }
        // Rotated siblings nobody read (a file met after its first rotations, or generations
        // written, rotated or copied and truncated between two looks). At the first start with
        // `read_from = end`, and after an upgrade from a checkpoint that does not list finished
        // files, the siblings on disk count as read.
        let adopt =
            first_scan && (self.legacy || (self.first_start && self.s.read_from == ReadFrom::End));
        // Every log path the agent knows, whether or not a file is at it now (it may have been
        // rotated or deleted, its siblings still unread).
        let mut homes: BTreeMap<PathBuf, Option<FileKey>> = BTreeMap::new();
        for f in self.files.values() {
            let live = homes.entry(f.home.clone()).or_default();
            if f.matched && f.path == f.home {
                *live = Some(f.key);
            }
        }
        for (_, e) in self.finished.values() {
            homes.entry(PathBuf::from(&e.path)).or_default();
        }
        for (path, key) in homes {
            self.catch_up(&path, key, adopt);
        }
        self.prune_finished();
        self.metrics
            .files_tailed
            .store(self.files.len() as u64, Relaxed);
    }

    /// Whether `sibling` is a file this agent reads or has read: open, or finished (same inode
    /// and head).
    fn taken(&self, sibling: &Sibling) -> bool {
        if self.files.contains_key(&sibling.key) {
            return true;
        }
        self.finished.get(&sibling.key).is_some_and(|(_, e)| {
            File::open(&sibling.path)
                .ok()
                .and_then(|f| Head::read(&f).ok().flatten())
                .is_some_and(|h| h.hash() == e.head_hash)
        })
    }

    /// [`Tailer::taken`], or it may hold a source not finished yet: a checkpointed one not
    /// resumed yet (same inode, or the same head), or an open one (a copy holding what was read
    /// of it, made before the truncation that the agent has not seen yet).
    fn claimed(&self, sibling: &Sibling) -> bool {
        if self.taken(sibling) || self.restored.contains_key(&sibling.key) {
            return true;
        }
        let Ok(file) = File::open(&sibling.path) else {
            return true; // gone meanwhile: nothing to read
        };
        let Ok(Some(head)) = Head::read(&file) else {
            return true; // no head yet: looked at again next time
        };
        let hash = head.hash();
        let restored = self
            .restored
            .values()
            .flatten()
            .any(|(_, e)| e.head_hash == hash && sibling.len >= e.offset);
        restored
            || self.files.values().any(|f| {
                f.source.as_ref().is_some_and(|s| {
                    s.head_hash == hash
                        && sibling.len >= f.pos
                        && (f.tail.is_empty()
                            || tail_hash_at(&file, f.pos).as_deref() == Some(&hash_tail(&f.tail)))
                })
            })
    }

    /// The rotated siblings of `live` (the file `live_key`) nobody read are read (oldest first,
    /// each as its own source, the live file last), or with `adopt`, recorded as finished without
    /// reading them.
    fn catch_up(&mut self, live: &std::path::Path, live_key: Option<FileKey>, adopt: bool) {
        let mut prev = None;
        let mut caught = false;
        for sibling in siblings(live, &self.s.rotated_suffixes) {
            if self.files.contains_key(&sibling.key) {
                prev = Some(sibling.key);
                continue;
            }
            if sibling.compressed || self.claimed(&sibling) {
                continue;
            }
            let Ok(file) = File::open(&sibling.path) else {
                continue;
            };
            if adopt {
                let Ok(Some(head)) = Head::read(&file) else {
                    continue;
                };
                let fp = fingerprint(&self.s.host_name, sibling.key, &head, 0);
                let entry = Entry {
                    path: live.to_string_lossy().into_owned(),
                    dev: sibling.key.dev,
                    ino: sibling.key.ino,
                    head_hash: head.hash(),
                    generation: 0,
                    offset: sibling.len,
                    tail_hash: tail_hash_at(&file, sibling.len),
                    finished: true,
                };
                debug!(path = %sibling.path.display(), "Rotated file present at the first start counts as read");
                self.updates.push((fp.clone(), Some(entry.clone())));
                self.finished.insert(sibling.key, (fp, entry));
                continue;
            }
            info!(path = %sibling.path.display(), live = %live.display(), "Reading a rotated file the agent never read");
            // Its own group: its multiline events do not mix with the live file's.
            if !self.join_group(&sibling.path, live) {
                return;
            }
            let decoder = Decoder::new(format_for(self.s.format, live), self.s.max_line_bytes);
            let mut f = TailedFile::new(
                sibling.key,
                sibling.path.clone(),
                file,
                live.to_path_buf(),
                decoder,
            );
            f.group = sibling.path;
            f.matched = false;
            f.after = prev;
            prev = Some(sibling.key);
            caught = true;
            self.files.insert(sibling.key, f);
        }
        let live_file = live_key.and_then(|k| self.files.get_mut(&k));
        if let Some(f) = live_file.filter(|_| caught) {
            f.after = prev.filter(|k| Some(*k) != live_key);
        }
    }

    /// Adds a file to the group at `group` (made with the metadata of `live` if it does not exist
    /// yet). `false` when `live` belongs to an opted-out or filtered container.
    fn join_group(&mut self, group: &std::path::Path, live: &std::path::Path) -> bool {
        if let Some(g) = self.groups.get_mut(group) {
            g.files += 1;
            return true;
        }
        let Some(found) = self.enricher.for_path(live) else {
            return false;
        };
        let mut g = Group::new(found, &self.s.host_name, &self.rules);
        g.files = 1;
        self.groups.insert(group.to_path_buf(), g);
        true
    }

    /// Finishes the checkpointed source `fp` in the rotated sibling of `entry.path` that holds it:
    /// the file `key` itself if it is there, else a copy (same head, and the same bytes before
    /// the checkpoint). Without one, the source is reported lost (`reason`, or `compressed` when
    /// only compressed siblings are left) and forgotten.
    fn follow(&mut self, fp: String, entry: Entry, key: Option<FileKey>, reason: LostReason) {
        let live = PathBuf::from(&entry.path);
        let all = siblings(&live, &self.s.rotated_suffixes);
        let tail = entry.tail_hash.as_deref();
        let holder = all
            .iter()
            .filter(|s| !s.compressed && s.len >= entry.offset)
            .filter(|s| Some(s.key) == key || !self.taken(s))
            .find_map(|s| {
                let file = File::open(&s.path).ok()?;
                holds(&file, &entry.head_hash, entry.offset, tail).then(|| (s.clone(), file))
            });
        let Some((sibling, file)) = holder else {
            let reason = match all.iter().any(|s| s.compressed) {
                true => LostReason::Compressed,
                false => reason,
            };
            warn!(path = %entry.path, fingerprint = %fp, offset = entry.offset, reason = reason.as_str(),
                "A source's file and every rotated copy of it are gone; what it held after the checkpoint is lost");
            self.metrics.source_lost(reason, 0);
            self.metrics.error(format!(
                "source {fp} of {} lost: {}",
                entry.path,
                reason.as_str()
            ));
            self.removals.push(fp);
            return;
        };
        if !self.join_group(&live, &live) {
            self.removals.push(fp);
            return;
        }
        info!(path = %sibling.path.display(), live = %entry.path, fingerprint = %fp, offset = entry.offset,
            "Finishing a source in its rotated copy");
        let decoder = Decoder::new(format_for(self.s.format, &live), self.s.max_line_bytes);
        let mut f = TailedFile::new(sibling.key, sibling.path, file, live.clone(), decoder);
        f.matched = false;
        f.generation = entry.generation;
        f.source = Some(Source {
            r: Arc::new(SourceRef {
                fingerprint: fp,
                path: entry.path,
            }),
            head_hash: entry.head_hash,
            generation: entry.generation,
        });
        f.pos = entry.offset;
        f.consumed = entry.offset;
        f.load_tail();
        self.files.insert(sibling.key, f);
    }

    /// Forgets finished rotated files that are no longer on disk.
    fn prune_finished(&mut self) {
        if self.finished.is_empty() {
            return;
        }
        let mut present: HashMap<String, HashSet<FileKey>> = HashMap::new();
        let suffixes = &self.s.rotated_suffixes;
        let mut gone = Vec::new();
        for (key, (_, e)) in &self.finished {
            let keys = present.entry(e.path.clone()).or_insert_with(|| {
                siblings(std::path::Path::new(&e.path), suffixes)
                    .into_iter()
                    .map(|s| s.key)
                    .collect()
            });
            if !keys.contains(key) {
                gone.push(*key);
            }
        }
        for key in gone {
            if let Some((fp, _)) = self.finished.remove(&key) {
                debug!(fingerprint = %fp, "Finished rotated file is gone; forgetting it");
                self.removals.push(fp);
            }
        }
    }

    /// Looks at `key` before it is read: a file truncated (shorter than what was read, another
    /// head, or other bytes just before the read position) has its source finished in a copy
    /// beside it if there is one, and is read again from its start as the next generation.
    fn check_truncation(&mut self, key: FileKey) {
        let Some(f) = self.files.get_mut(&key) else {
            return;
        };
        let Some(source) = &f.source else { return };
        let Ok(meta) = f.file.metadata() else { return };
        let len = meta.len();
        let known = f.size_seen.max(f.pos);
        f.size_seen = len;
        let head_hash = source.head_hash.clone();
        let truncated = len < f.pos
            || match Head::read(&f.file) {
                Ok(Some(head)) => head.hash() != head_hash,
                Ok(None) => true,
                Err(_) => false,
            }
            || (!f.tail.is_empty()
                && tail_hash_at(&f.file, f.pos).as_deref() != Some(&hash_tail(&f.tail)));
        if !truncated {
            return;
        }
        let (pos, tail) = (f.pos, hash_tail(&f.tail));
        let tail = (!f.tail.is_empty()).then_some(tail);
        let home = f.home.clone();
        let copy = siblings(&home, &self.s.rotated_suffixes)
            .into_iter()
            .filter(|s| !s.compressed && s.len >= pos && s.key != key)
            .filter(|s| !self.taken(s))
            .find_map(|s| {
                let file = File::open(&s.path).ok()?;
                holds(&file, &head_hash, pos, tail.as_deref()).then_some((s, file))
            });
        let read_time = Utc::now().to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let Some(f) = self.files.get_mut(&key) else {
            return;
        };
        let Some(g) = self.groups.get_mut(&f.group) else {
            return;
        };
        match copy {
            Some((sibling, file)) => {
                let Some(source) = f.source.take() else {
                    return;
                };
                info!(path = %f.path.display(), copy = %sibling.path.display(), fingerprint = %source.r.fingerprint,
                    offset = pos, "File truncated; finishing its source in the copy beside it");
                let decoder =
                    Decoder::new(format_for(self.s.format, &f.home), self.s.max_line_bytes);
                let mut moved = TailedFile::new(
                    sibling.key,
                    sibling.path,
                    file,
                    f.home.clone(),
                    std::mem::replace(&mut f.decoder, decoder),
                );
                moved.group = f.group.clone();
                moved.matched = false;
                moved.generation = source.generation;
                moved.pos = f.pos;
                moved.consumed = f.consumed;
                moved.skipping = f.skipping;
                moved.tail = std::mem::take(&mut f.tail);
                moved.size_seen = sibling.len;
                f.generation = source.generation + 1;
                moved.source = Some(source);
                f.pos = 0;
                f.consumed = 0;
                f.skipping = false;
                f.reported = None;
                f.eof_since = None;
                // The source's rest first, then the file's new contents.
                f.after = Some(sibling.key);
                g.files += 1;
                self.files.insert(sibling.key, moved);
            }
            None => {
                let unread = known.saturating_sub(pos);
                let reason = LostReason::Truncated;
                let fp = f
                    .source
                    .as_ref()
                    .map(|s| s.r.fingerprint.clone())
                    .unwrap_or_default();
                warn!(path = %f.path.display(), fingerprint = %fp, offset = pos, unread_bytes = unread,
                    "File truncated and no copy of it beside it; what was written after the last read is lost");
                self.metrics.source_lost(reason, unread);
                let mut ctx = ctx!(self, &read_time);
                restart_truncated(f, g, &mut ctx, &mut self.removals, len);
            }
        }
        // Generations written, copied and truncated while the agent was not looking are in
        // copies nobody read: read them before the file's new contents.
        self.catch_up(&home, Some(key), false);
    }

    /// One turn over every file. `Err` when the forwarder is gone.
    fn read_all(&mut self) -> Result<bool, ()> {
        let read_time = Utc::now().to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let keys: Vec<FileKey> = self.files.keys().copied().collect();
        let mut progressed = false;
        for key in keys {
            loop {
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
                // Before every read: a truncation (even one refilled past our position while we
                // waited for the forwarder) must not be read on from the old position.
                self.check_truncation(key);
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
                let mut ctx = ctx!(self, &read_time);
                let turn = read_file(f, g, &mut ctx);
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

    /// Checks every file for truncation, deletion and rotation; closes drained files.
    /// `false` when the forwarder is gone.
    fn check_files(&mut self) -> bool {
        let read_time = Utc::now().to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let now = Instant::now();
        let mut close = Vec::new();
        for f in self.files.values_mut() {
            let meta = match f.file.metadata() {
                Ok(m) => m,
                Err(error) => {
                    warn!(path = %f.path.display(), %error, "Cannot stat an open file");
                    continue;
                }
            };
            f.deleted = meta.nlink() == 0;
            let Some(g) = self.groups.get_mut(&f.group) else {
                continue;
            };
            let mut ctx = ctx!(self, &read_time);
            let gone = f.deleted || !f.matched;
            // A deleted file waits too: its writer may still be finishing its last lines.
            if gone
                && f.eof_since
                    .is_some_and(|t| now.duration_since(t) >= self.s.rotate_wait)
            {
                // Whatever is left after the last newline is the file's last, unterminated line.
                if f.source.is_some() {
                    finish_file(f, g, &mut ctx, meta.len());
                }
                close.push(f.key);
            }
        }
        for key in close {
            if let Some(f) = self.files.remove(&key) {
                info!(path = %f.path.display(), deleted = f.deleted, offset = f.pos, "Closed drained file");
                if let Some(g) = self.groups.get_mut(&f.group) {
                    g.files = g.files.saturating_sub(1);
                    // Without a successor at its path, nothing can continue its pending events.
                    if g.files == 0 {
                        let mut ctx = ctx!(self, &read_time);
                        g.flush(&mut ctx);
                        self.groups.remove(&f.group);
                    }
                }
                self.retire(f);
            }
        }
        if self.files.len() as u64 != self.metrics.files_tailed.load(Relaxed) {
            self.metrics
                .files_tailed
                .store(self.files.len() as u64, Relaxed);
            let files = &self.files;
            self.wakeups.retain(|dir| {
                files.values().any(|f| f.path.parent() == Some(dir))
                    || is_glob_parent(&self.s.include, dir)
            });
            self.enricher
                .retain(|dir| files.values().any(|f| f.path.parent() == Some(dir)));
        }
        if self.s.batch_max_records <= self.builder.len()
            || self.s.batch_max_bytes <= self.builder.bytes()
        {
            return self.seal();
        }
        true
    }

    /// A closed file's source: kept as finished while the file is still on disk among the rotated
    /// siblings of `home` (so it is never read again), forgotten otherwise.
    fn retire(&mut self, f: TailedFile) {
        let Some(source) = f.source else { return };
        let present = !f.deleted
            && siblings(&f.home, &self.s.rotated_suffixes)
                .iter()
                .any(|s| s.key == f.key);
        if !present {
            self.removals.push(source.r.fingerprint.clone());
            return;
        }
        let entry = Entry {
            path: f.home.to_string_lossy().into_owned(),
            dev: f.key.dev,
            ino: f.key.ino,
            head_hash: source.head_hash,
            generation: source.generation,
            offset: f.pos,
            tail_hash: tail_hash_at(&f.file, f.pos),
            finished: true,
        };
        let fp = source.r.fingerprint.clone();
        self.updates.push((fp.clone(), Some(entry.clone())));
        self.finished.insert(f.key, (fp, entry));
    }

    /// Seals the current batch with the checkpoint updates it allows and sends it (blocking while
    /// the forwarder is busy). `false` when the forwarder is gone.
    fn seal(&mut self) -> bool {
        self.last_report = Instant::now();
        let mut updates: Vec<Update> = self.removals.drain(..).map(|fp| (fp, None)).collect();
        updates.append(&mut self.updates);
        let mut register = Vec::new();
        for f in self.files.values_mut() {
            let Some(source) = &f.source else { continue };
            let hold = self.groups.get(&f.group).and_then(|g| g.hold(source));
            let offset = f.committable(hold);
            let path = f.home.to_string_lossy();
            if let Some(start) = f.register_at.take() {
                register.push((
                    source.r.fingerprint.clone(),
                    Some(Entry {
                        path: path.to_string(),
                        dev: f.key.dev,
                        ino: f.key.ino,
                        head_hash: source.head_hash.clone(),
                        generation: source.generation,
                        offset: start,
                        tail_hash: tail_hash_at(&f.file, start),
                        finished: false,
                    }),
                ));
            }
            if f.reported
                .as_ref()
                .is_some_and(|(o, p)| *o == offset && *p == path)
            {
                continue;
            }
            f.reported = Some((offset, path.to_string()));
            updates.push((
                source.r.fingerprint.clone(),
                Some(Entry {
                    path: path.to_string(),
                    dev: f.key.dev,
                    ino: f.key.ino,
                    head_hash: source.head_hash.clone(),
                    generation: source.generation,
                    offset,
                    tail_hash: tail_hash_at(&f.file, offset),
                    finished: false,
                }),
            ));
        }
        if self.builder.is_empty() && updates.is_empty() && register.is_empty() {
            return true;
        }
        let batch = (!self.builder.is_empty()).then(|| match self.s.discard {
            true => self.builder.discard(),
            false => self.builder.finish(self.s.compression),
        });
        self.batch_started = None;
        if let Some(b) = &batch {
            debug!(
                records = b.logs,
                bytes = b.raw_bytes,
                updates = updates.len(),
                "Sealed batch"
            );
        }
        self.tx
            .blocking_send(Sealed {
                batch,
                updates,
                register,
            })
            .is_ok()
    }
}

/// The file was truncated in place: pending partials and multiline events leave (partials flagged
/// incomplete), the old source is forgotten (once acked), and the file is read from 0 as the next
/// generation.
fn restart_truncated(
    f: &mut TailedFile,
    g: &mut Group,
    ctx: &mut Ctx<'_>,
    removals: &mut Vec<String>,
    size: u64,
) {
    if let Some(source) = f.source.take() {
        warn!(path = %f.path.display(), fingerprint = %source.r.fingerprint, size, offset = f.pos,
            "File truncated; reading it from the start as a new source");
        let end = f.pos;
        f.decoder.flush(end, |d| ctx.accept(g, &source.r, d));
        g.flush(ctx);
        removals.push(source.r.fingerprint.clone());
        f.generation = source.generation + 1;
    }
    f.pos = 0;
    f.consumed = 0;
    f.skipping = false;
    f.reported = None;
    f.eof_since = None;
    f.tail.clear();
    f.size_seen = size;
}

/// What [`establish`] made of a file.
enum Established {
    /// It has no head yet: try again later.
    NoHead,
    /// Its source is set: read on.
    Ready,
    /// Ready; these checkpointed sources (fingerprint, entry) of its inode are no longer in it
    /// (truncated, or truncated and written again, their rest perhaps in a copy).
    Replaced(Vec<(String, Entry)>),
}

/// Fingerprints a file once it has a head, resuming from its checkpoint entry when the file
/// still holds what the entry describes (same head, at least as long, the same bytes just before
/// the offset).
fn establish(
    f: &mut TailedFile,
    host: &str,
    restored: &mut HashMap<FileKey, Vec<(String, Entry)>>,
) -> Established {
    let head = match Head::read(&f.file) {
        Ok(Some(head)) => head,
        Ok(None) => return Established::NoHead,
        Err(error) => {
            warn!(path = %f.path.display(), %error, "Cannot read the head of a file");
            return Established::NoHead;
        }
    };
    let head_hash = head.hash();
    let size = f.file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut resumed: Option<String> = None;
    let mut replaced = Vec::new();
    let mut start = 0;
    if let Some(mut entries) = restored.remove(&f.key) {
        // The latest generation may be the file's current source; earlier ones were truncated
        // (their rest may be in a copy).
        entries.sort_by_key(|(_, e)| e.generation);
        let (fp, e) = entries.pop().expect("restored lists are never empty");
        replaced = entries;
        if holds(&f.file, &e.head_hash, e.offset, e.tail_hash.as_deref()) {
            resumed = Some(fp);
            f.generation = e.generation;
            start = e.offset;
        } else {
            info!(path = %f.path.display(), size, offset = e.offset,
                "File truncated while the agent was down; looking for a copy, then reading it from the start");
            f.generation = e.generation + 1;
            replaced.push((fp, e));
        }
    } else if let Some(limit) = f.start_at_end {
        start = last_line_end(&f.file, limit.min(size));
    }
    let resumed_at_entry = resumed.is_some();
    let fp = resumed.unwrap_or_else(|| fingerprint(host, f.key, &head, f.generation));
    info!(path = %f.path.display(), fingerprint = %fp, offset = start, "Tailing file");
    f.source = Some(Source {
        r: Arc::new(SourceRef {
            fingerprint: fp,
            path: f.home.to_string_lossy().into_owned(),
        }),
        head_hash,
        generation: f.generation,
    });
    f.pos = start;
    f.consumed = start;
    f.start_at_end = None;
    f.size_seen = size;
    f.load_tail();
    f.register_at = (!resumed_at_entry).then_some(start);
    match replaced.is_empty() {
        true => Established::Ready,
        false => Established::Replaced(replaced),
    }
}

/// Reads up to [`CHUNKS_PER_TURN`] chunks of `f`, emitting every complete line.
fn read_file(f: &mut TailedFile, g: &mut Group, ctx: &mut Ctx<'_>) -> Turn {
    let mut turn = Turn::default();
    let max = ctx.s.max_line_bytes;
    for _ in 0..CHUNKS_PER_TURN {
        let want = ctx.buf.len();
        let n = match f.file.read_at(&mut ctx.buf[..want], f.pos) {
            Ok(n) => n,
            Err(error) => {
                warn!(path = %f.path.display(), %error, "Read failed");
                ctx.metrics
                    .error(format!("read {}: {error}", f.path.display()));
                return turn;
            }
        };
        if n == 0 {
            f.eof_since.get_or_insert_with(Instant::now);
            return turn;
        }
        let base = f.pos;
        // Split borrow: the data lives in ctx.buf, which `line` does not touch.
        let data = std::mem::take(ctx.buf);
        let chunk = &data[..n];
        let mut start = 0;
        if f.skipping {
            match memchr::memchr(b'\n', chunk) {
                None => start = n,
                Some(i) => {
                    start = i + 1;
                    f.skipping = false;
                    f.consumed = base + start as u64;
                }
            }
            turn.progressed = true;
            f.eof_since = None;
        }
        if !f.skipping {
            while let Some(i) = memchr::memchr(b'\n', &chunk[start..]) {
                let line = &chunk[start..start + i];
                let offset = base + start as u64;
                if line.len() > max {
                    ctx.line(
                        f,
                        g,
                        &line[..max],
                        offset,
                        Flags::default().with(Flag::Truncated),
                    );
                } else {
                    ctx.line(f, g, line, offset, Flags::default());
                }
                start += i + 1;
                f.consumed = base + start as u64;
                turn.progressed = true;
                f.eof_since = None;
                if ctx.full() {
                    turn.full = true;
                    break;
                }
            }
        }
        let rest = n - start;
        let mut grow = false;
        if !turn.full && !f.skipping && rest > 0 {
            if rest > max {
                // A line longer than the cap with no newline yet: emit its head now, skip the rest.
                let offset = base + start as u64;
                ctx.line(
                    f,
                    g,
                    &chunk[start..start + max],
                    offset,
                    Flags::default().with(Flag::Truncated),
                );
                f.skipping = true;
                start = n;
                turn.progressed = true;
                f.eof_since = None;
            } else if n == want && start == 0 {
                grow = true;
            } else if n < want {
                // An incomplete last line: read it again once it has its newline.
                f.eof_since.get_or_insert_with(Instant::now);
            }
        }
        f.note_tail(&data[..start]);
        *ctx.buf = data;
        ctx.metrics.bytes_read.fetch_add(start as u64, Relaxed);
        f.pos = base + start as u64;
        if grow {
            let len = (want * 2).min(max + 1).max(want);
            ctx.buf.reserve_exact(len - want);
            ctx.buf.resize(len, 0);
        }
        if turn.full || (n < want && !grow && !f.skipping) {
            return turn;
        }
    }
    turn
}

/// Emits a closing file's unterminated last line and pending partial messages, flagged incomplete.
fn finish_file(f: &mut TailedFile, g: &mut Group, ctx: &mut Ctx<'_>, size: u64) {
    if !f.skipping && f.pos < size {
        let len = ((size - f.pos) as usize).min(ctx.s.max_line_bytes);
        let mut tail = vec![0; len];
        if let Ok(n) = f.file.read_at(&mut tail, f.pos) {
            tail.truncate(n);
            let mut flags = Flags::default().with(Flag::Incomplete);
            if (size - f.pos) as usize > len {
                flags.set(Flag::Truncated);
            }
            let offset = f.pos;
            ctx.line(f, g, &tail, offset, flags);
            f.pos += n as u64;
            f.consumed = f.pos;
            f.note_tail(&tail);
        }
    }
    let end = f.pos.max(size);
    let TailedFile {
        decoder, source, ..
    } = f;
    if let Some(source) = source {
        decoder.flush(end, |d| ctx.accept(g, &source.r, d));
    }
}

/// The end of the last complete line before `limit` (0 if there is none in the last 64 KiB).
fn last_line_end(file: &File, limit: u64) -> u64 {
    let window = limit.min(64 * 1024);
    let mut buf = vec![0; window as usize];
    match file.read_exact_at(&mut buf, limit - window) {
        Ok(()) => match memchr::memrchr(b'\n', &buf) {
            Some(i) => limit - window + i as u64 + 1,
            None if window == limit => 0,
            None => limit,
        },
        Err(_) => limit,
    }
}

fn points_to(path: &std::path::Path, key: FileKey) -> bool {
    std::fs::metadata(path).is_ok_and(|m| FileKey::of(&m) == key)
}

fn is_glob_parent(include: &[String], dir: &std::path::Path) -> bool {
    include
        .iter()
        .any(|p| crate::watcher::glob_parent(p) == dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn settings(max_line_bytes: usize, read_buffer_bytes: usize) -> Settings {
        let mut c = AgentConfig {
            max_line_bytes,
            read_buffer_bytes,
            batch_max_records: usize::MAX,
            batch_max_bytes: usize::MAX,
            format: FormatConfig::Plain,
            ..AgentConfig::default()
        };
        c.host_name = "h".into();
        Settings::from_config(&c)
    }

    fn open(path: &std::path::Path, s: &Settings) -> TailedFile {
        let file = File::open(path).unwrap();
        let key = FileKey::of(&file.metadata().unwrap());
        let decoder = Decoder::new(crate::decode::Format::Plain, s.max_line_bytes);
        let mut f = TailedFile::new(key, path.to_path_buf(), file, path.to_path_buf(), decoder);
        assert!(matches!(
            establish(&mut f, "h", &mut HashMap::new()),
            Established::Ready
        ));
        f
    }

    /// Reads until EOF; returns the decoded records.
    fn drain(
        f: &mut TailedFile,
        s: &Settings,
        buf: &mut Vec<u8>,
        max_buf: &mut usize,
    ) -> Vec<LogRecord> {
        let metrics = Metrics::default();
        let mut builder = BatchBuilder::new("h");
        let mut started = None;
        let mut scratch = Scratch::new();
        let rules = Rules::load(Vec::new(), None).unwrap();
        let mut g = Group::new(Found::default(), "h", &rules);
        loop {
            let mut ctx = Ctx {
                s,
                buf,
                builder: &mut builder,
                batch_started: &mut started,
                metrics: &metrics,
                scratch: &mut scratch,
                read_time: "2026-11-28T08:00:00Z",
            };
            let turn = read_file(f, &mut g, &mut ctx);
            *max_buf = (*max_buf).max(buf.capacity());
            if !turn.progressed {
                break;
            }
        }
        let batch = builder.finish(Compression::None);
        let decoded = ferry_wire::decode_batch(&batch.body, Compression::None, 1 << 30).unwrap();
        decoded
            .logs
            .iter()
            .map(|l| serde_json::from_slice(&decoded.record(l)).unwrap())
            .collect()
    }

    #[test]
    fn ten_mib_line_without_newline_is_one_truncated_record_in_bounded_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.log");
        let mut w = File::create(&path).unwrap();
        writeln!(w, "first").unwrap();
        let chunk = vec![b'z'; 1 << 20];
        for _ in 0..10 {
            w.write_all(&chunk).unwrap();
        }
        let s = settings(64 * 1024, 16 * 1024);
        let mut f = open(&path, &s);
        let mut buf = vec![0; s.read_buffer_bytes];
        let mut max_buf = 0;
        let out = drain(&mut f, &s, &mut buf, &mut max_buf);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].message.len(), 64 * 1024);
        assert_eq!(out[1].log.flags, [Flag::Truncated]);
        assert_eq!(out[1].log.offset, 6);
        assert!(
            max_buf <= s.max_line_bytes + s.read_buffer_bytes,
            "buffer grew to {max_buf}"
        );
        assert!(f.decoder.held_bytes() <= s.max_line_bytes);
        assert!(f.skipping);
        assert_eq!(
            f.committable(None),
            6,
            "checkpoint stays at the start of the cut line"
        );

        // The line ends: skipping stops, the next line is read normally.
        w.write_all(b"tail of the long line\nnext\n").unwrap();
        let out = drain(&mut f, &s, &mut buf, &mut max_buf);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].message, "next");
        assert_eq!(f.committable(None), std::fs::metadata(&path).unwrap().len());
        assert!(max_buf <= s.max_line_bytes + s.read_buffer_bytes);
    }

    #[test]
    fn lines_longer_than_the_read_buffer_but_under_the_cap_are_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let long = "y".repeat(50_000);
        std::fs::write(&path, format!("short\n{long}\nafter\n")).unwrap();
        let s = settings(64 * 1024, 4096);
        let mut f = open(&path, &s);
        let mut buf = vec![0; s.read_buffer_bytes];
        let mut max_buf = 0;
        let out = drain(&mut f, &s, &mut buf, &mut max_buf);
        let msgs: Vec<&str> = out.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(msgs, ["short", long.as_str(), "after"]);
        assert!(out.iter().all(|r| r.log.flags.is_empty()));
        assert_eq!(out[2].log.offset, 6 + 50_001);
    }
}
