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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use ferry_parsers::{Scratch, Selection};
use ferry_wire::{BatchBuilder, Compression, EncodedBatch, Flag, Host, LogRecord};
use tracing::{debug, info, warn};

use crate::checkpoint::{Entry, Sources, Update};
use crate::config::{AgentConfig, FormatConfig, ReadFrom};
use crate::decode::{Decoded, Decoder, Flags};
use crate::docker::Registry;
use crate::enrich::{format_for, parse_into, Enricher, Found};
use crate::fingerprint::{fingerprint, FileKey, Head};
use crate::metrics::{DecodeError, Metrics};
use crate::multiline::{Assembler, Event, Piece, SourceRef};
use crate::rules::{ParserKey, Rules};
use crate::watcher::{discover, Wakeups};

/// At most this many reads from one file before the loop moves on to the next (fairness).
const CHUNKS_PER_TURN: usize = 8;

/// A sealed batch (or none, when only checkpoints moved) and the checkpoint updates that become
/// true once it is acknowledged.
#[derive(Debug)]
pub(crate) struct Sealed {
    pub batch: Option<EncodedBatch>,
    pub updates: Vec<Update>,
}

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
}

impl TailedFile {
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
    /// True until the first scan is done; `first_start` is the agent's very first start.
    first_scan: bool,
    first_start: bool,
    removals: Vec<String>,
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
    /// `restored` is the loaded checkpoint; `first_start` says no checkpoint file existed.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        s: Settings,
        restored: &Sources,
        first_start: bool,
        metrics: Arc<Metrics>,
        tx: tokio::sync::mpsc::Sender<Sealed>,
        stop: Arc<AtomicBool>,
        registry: Arc<Registry>,
        rules: Arc<Rules>,
    ) -> Self {
        let mut by_key: HashMap<FileKey, Vec<(String, Entry)>> = HashMap::new();
        // Logs-API sources belong to the Docker followers, not to files.
        let files = restored
            .iter()
            .filter(|(fp, _)| !fp.starts_with(crate::docker::FINGERPRINT_PREFIX));
        for (fp, entry) in files {
            by_key
                .entry(FileKey {
                    dev: entry.dev,
                    ino: entry.ino,
                })
                .or_default()
                .push((fp.clone(), entry.clone()));
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
            first_scan: true,
            first_start,
            removals: Vec::new(),
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
            self.files.insert(
                key,
                TailedFile {
                    key,
                    path,
                    file,
                    source: None,
                    generation: 0,
                    start_at_end,
                    pos: 0,
                    consumed: 0,
                    skipping: false,
                    decoder,
                    group,
                    reported: None,
                    matched: true,
                    deleted: false,
                    eof_since: None,
                },
            );
        }
        for f in self.files.values_mut() {
            f.matched = seen.contains(&f.key);
        }
        if self.first_scan {
            // Checkpointed files that are gone: forget them.
            let gone: Vec<FileKey> = self
                .restored
                .keys()
                .filter(|k| !seen.contains(k))
                .copied()
                .collect();
            for key in gone {
                for (fp, _) in self.restored.remove(&key).unwrap_or_default() {
                    self.removals.push(fp);
                }
            }
            self.first_scan = false;
        }
        self.metrics
            .files_tailed
            .store(self.files.len() as u64, Relaxed);
    }

    /// One turn over every file. `Err` when the forwarder is gone.
    fn read_all(&mut self) -> Result<bool, ()> {
        let read_time = Utc::now().to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let keys: Vec<FileKey> = self.files.keys().copied().collect();
        let mut progressed = false;
        for key in keys {
            while let Some(f) = self.files.get_mut(&key) {
                let Some(g) = self.groups.get_mut(&f.group) else {
                    warn!(path = %f.path.display(), "Tailed file without its group; not reading it");
                    break;
                };
                let mut ctx = ctx!(self, &read_time);
                // Waking from EOF: a copytruncate followed by new writes past our offset is only
                // visible as a changed head, so check it before reading on.
                if f.eof_since.is_some() && head_changed(f) {
                    let size = f.file.metadata().map(|m| m.len()).unwrap_or(0);
                    restart_truncated(f, g, &mut ctx, &mut self.removals, size);
                }
                if f.source.is_none() && !establish(f, &mut self.restored, &mut self.removals) {
                    break;
                }
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
            if meta.len() < f.pos {
                restart_truncated(f, g, &mut ctx, &mut self.removals, meta.len());
                continue;
            }
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
                if let Some(source) = f.source {
                    self.removals.push(source.r.fingerprint.clone());
                }
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

    /// Seals the current batch with the checkpoint updates it allows and sends it (blocking while
    /// the forwarder is busy). `false` when the forwarder is gone.
    fn seal(&mut self) -> bool {
        self.last_report = Instant::now();
        let mut updates: Vec<Update> = self.removals.drain(..).map(|fp| (fp, None)).collect();
        for f in self.files.values_mut() {
            let Some(source) = &f.source else { continue };
            let hold = self.groups.get(&f.group).and_then(|g| g.hold(source));
            let offset = f.committable(hold);
            let path = source.r.path.as_str();
            if f.reported
                .as_ref()
                .is_some_and(|(o, p)| *o == offset && p == path)
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
                }),
            ));
        }
        if self.builder.is_empty() && updates.is_empty() {
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
        self.tx.blocking_send(Sealed { batch, updates }).is_ok()
    }
}

/// Whether an established file's head is no longer the one it was fingerprinted with.
fn head_changed(f: &TailedFile) -> bool {
    let Some(source) = &f.source else {
        return false;
    };
    match Head::read(&f.file) {
        Ok(Some(head)) => head.hash() != source.head_hash,
        Ok(None) => true,
        Err(_) => false,
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
}

/// Fingerprints a file once it has a head, resuming from a matching checkpoint entry.
/// `false` while the file has no head yet.
fn establish(
    f: &mut TailedFile,
    restored: &mut HashMap<FileKey, Vec<(String, Entry)>>,
    removals: &mut Vec<String>,
) -> bool {
    let head = match Head::read(&f.file) {
        Ok(Some(head)) => head,
        Ok(None) => return false,
        Err(error) => {
            warn!(path = %f.path.display(), %error, "Cannot read the head of a file");
            return false;
        }
    };
    let head_hash = head.hash();
    let size = f.file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut resumed: Option<String> = None;
    let mut start = 0;
    if let Some(entries) = restored.remove(&f.key) {
        let best = entries
            .iter()
            .filter(|(_, e)| e.head_hash == head_hash)
            .max_by_key(|(_, e)| e.generation);
        match best {
            Some((fp, e)) if e.offset <= size => {
                resumed = Some(fp.clone());
                f.generation = e.generation;
                start = e.offset;
            }
            Some((_, e)) => {
                info!(path = %f.path.display(), size, offset = e.offset, "File shrank while the agent was down; reading it from the start");
                f.generation = e.generation + 1;
            }
            None => {
                info!(path = %f.path.display(), "File head changed while the agent was down; reading it from the start");
                f.generation = entries
                    .iter()
                    .map(|(_, e)| e.generation + 1)
                    .max()
                    .unwrap_or(0);
            }
        }
        for (fp, _) in entries {
            if resumed.as_ref() != Some(&fp) {
                removals.push(fp);
            }
        }
    } else if let Some(limit) = f.start_at_end {
        start = last_line_end(&f.file, limit.min(size));
    }
    let fp = resumed.unwrap_or_else(|| fingerprint(f.key, &head, f.generation));
    info!(path = %f.path.display(), fingerprint = %fp, offset = start, "Tailing file");
    f.source = Some(Source {
        r: Arc::new(SourceRef {
            fingerprint: fp,
            path: f.path.to_string_lossy().into_owned(),
        }),
        head_hash,
        generation: f.generation,
    });
    f.pos = start;
    f.consumed = start;
    f.start_at_end = None;
    true
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
        let mut f = TailedFile {
            key,
            path: path.to_path_buf(),
            file,
            source: None,
            generation: 0,
            start_at_end: None,
            pos: 0,
            consumed: 0,
            skipping: false,
            decoder: Decoder::new(crate::decode::Format::Plain, s.max_line_bytes),
            group: path.to_path_buf(),
            reported: None,
            matched: true,
            deleted: false,
            eof_since: None,
        };
        assert!(establish(&mut f, &mut HashMap::new(), &mut Vec::new()));
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
