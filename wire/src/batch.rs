//! The batch codec: what travels from agent to aggregator in one request body.
//!
//! Three versions, all NDJSON (optionally gzip-, zstd- or lz4-compressed as a whole), all read by this
//! build. **Version 2** carries the fields a record shares with every other record of its source
//! once per batch, not once per record:
//! ```text
//! {"ferry":2,"host":"node-1","logs":2,"stats":1,"sources":1}  <- header, line 1
//! {"event":{"id":"…"},"@timestamp":"…",…,"log":{"offset":7},…} 0 97   <- `logs` log records
//! {"event":{"id":"…"},…} 0 104
//! {"@timestamp":"…","metrics":{…},…}                            <- `stats` stats samples
//! {"log":{"file":{"path":"…","fingerprint":"…"}},"container":{…},"host":{"name":"…"}}
//!                                                               <- `sources` sources, from 0
//! ```
//! A version 2 log record is the record's JSON without its source's fields (`log.file`,
//! `container`, `kubernetes`, `host`), then a space and the number of its source, then a space
//! and the position (from the record's first byte) of its `"offset":` member. Its first members
//! are always `event` (`id`, then `created` when set; never `ingested`) and `@timestamp`, and
//! its `log` object ends with `offset` and `flags`, so the aggregator reads `event.id`,
//! `@timestamp` and `log.offset` at known places and puts the source's fields back
//! ([`DecodedBatch::write_record`]) with three copies and no JSON parse: the expanded record is
//! byte for byte the record a version 1 batch carries.
//!
//! **Version 3** (written by default) is version 2 where a record may leave out `event.id` when
//! it is the id derived from its source's fingerprint and its offset ([`crate::event_id`], what
//! the tailer gives every record): such a record begins `{"event":{"created":…` or
//! `{"event":{}`, and the aggregator writes the derived id back in its place. Thirty-two random
//! hex digits a record are the bytes zstd spends the most on and gains nothing from: leaving
//! them out cut the agent's compression time by about 17 % and the compressed bytes by 18 %
//! (nginx reference records, `zstd -b1`). A record with another id (the Docker logs API's)
//! carries it as in version 2.
//!
//! **Version 1** (written by agents before version 2, and by this one when an aggregator refuses
//! its version) has no source lines and carries every record whole:
//! ```text
//! {"ferry":1,"host":"node-1","logs":2,"stats":1}
//! {"event":{"id":"…"},"@timestamp":"…",…}
//! ```
//! Decoding is bounded: the decompressed size is capped before it is allocated, and every error
//! names the line (1-based, header = line 1) and what was wrong with it. A version 2 or 3
//! record's frame (its id, `@timestamp`, offset, source and UTF-8) is checked, not its full JSON.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::{Read, Write};
use std::ops::Range;
use std::sync::OnceLock;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};

use crate::json::{
    write_file_member, write_log_record_deriving_id, write_log_record_without_source,
    write_source_members, Id,
};
use crate::record::{Container, Host, Kubernetes, LogFile, LogRecord, StatsSample};

/// The batch format version this build writes (it reads versions 1 to 3).
pub const WIRE_VERSION: u32 = 3;

/// How a batch body is compressed; sent as the `Content-Encoding` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip {
        level: u32,
    },
    /// zstd: about twice as fast as gzip level 1 at a better ratio.
    Zstd {
        level: i32,
    },
    /// LZ4's block format after the uncompressed length (4 bytes, little-endian): about 1.6×
    /// zstd level 1's speed and 2× its decompression speed on agent batches, at 60 % more
    /// bytes. Not LZ4's frame format (which the `lz4` tool reads): a frame costs 20 % more.
    Lz4,
}

impl Compression {
    /// The `Content-Encoding` value for this compression.
    pub fn content_encoding(self) -> &'static str {
        match self {
            Compression::None => "identity",
            Compression::Gzip { .. } => "gzip",
            Compression::Zstd { .. } => "zstd",
            Compression::Lz4 => "lz4",
        }
    }

    /// Parses a `Content-Encoding` header value (absent means identity).
    pub fn from_content_encoding(value: Option<&str>) -> Result<Self, BatchError> {
        match value.map(str::trim) {
            None | Some("") | Some("identity") => Ok(Compression::None),
            Some(v) if v.eq_ignore_ascii_case("gzip") => Ok(Compression::Gzip { level: 1 }),
            Some(v) if v.eq_ignore_ascii_case("zstd") => Ok(Compression::Zstd { level: 1 }),
            Some(v) if v.eq_ignore_ascii_case("lz4") => Ok(Compression::Lz4),
            Some(other) => Err(BatchError::Encoding(other.to_string())),
        }
    }
}

/// The first line of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchHeader {
    /// Format version (1 or 2).
    pub ferry: u32,
    /// The agent's `host.name`.
    pub host: String,
    pub logs: usize,
    pub stats: usize,
    /// Version 2: the number of source lines after the stats samples. Absent when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sources: usize,
    /// Source fingerprints the agent has durably forgotten (their files are gone and fully
    /// read): it will never send a record of them again, so a store may drop their
    /// de-duplication state once this batch is committed. Absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The message a refusal of an unsupported version carries (this build's and version 1 builds'
/// wording): an agent that reads it in a 400 answer knows to send version 1.
pub const UNSUPPORTED_VERSION: &str = "batch format version";

/// Whether an aggregator's 400 answer refused the batch for its format version (and not for
/// its content): then the same records sent as version 1 are taken by an aggregator that
/// predates version 2.
pub fn refused_for_version(answer: &str) -> bool {
    answer.contains(UNSUPPORTED_VERSION) && answer.contains("is not supported")
}

/// A batch ready to send.
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    pub body: Vec<u8>,
    pub compression: Compression,
    /// The format version of `body`.
    pub version: u32,
    pub logs: usize,
    pub stats: usize,
    /// Size before compression.
    pub raw_bytes: usize,
}

impl EncodedBatch {
    /// The same batch compressed as `compression` instead (for an aggregator that refuses this
    /// one's `Content-Encoding`).
    pub fn recompressed(&self, compression: Compression) -> Result<EncodedBatch, BatchError> {
        let data = decompress(&self.body, self.compression, self.raw_bytes)?;
        Ok(EncodedBatch {
            body: compress(&data, compression, &mut Compressors::default()),
            compression,
            version: self.version,
            logs: self.logs,
            stats: self.stats,
            raw_bytes: self.raw_bytes,
        })
    }
}

/// Whether an aggregator's 415 answer refused the batch's `Content-Encoding` (this build's and
/// older builds' wording, which names the encoding; the answer may be the JSON that quotes it).
pub fn refused_encoding(answer: &str, compression: Compression) -> bool {
    let name = compression.content_encoding();
    answer.contains("unsupported Content-Encoding")
        && (answer.contains(&format!("\"{name}\"")) || answer.contains(&format!("\\\"{name}\\\"")))
}

/// Collects records into the NDJSON body of one batch.
///
/// The log records are written after room left for the header line, so that a sealed batch is
/// one contiguous buffer: the header (whose counts are only known at the end) is written into
/// the end of that room and the body compressed from there, with no copy of the records.
#[derive(Debug)]
pub struct BatchBuilder {
    host: String,
    version: u32,
    /// The longest header line this builder can write.
    room: usize,
    /// `room` bytes, then the log records.
    logs: Vec<u8>,
    stats: Vec<u8>,
    log_count: usize,
    stats_count: usize,
    /// Version 2: the sources of the records so far, and their lines.
    sources: SourceTable,
    compressors: Compressors,
    escapes: crate::json::Escapes,
}

/// What compressing keeps across batches: a zstd context, and the buffer LZ4 compresses into
/// (sized once for the largest batch: a body is then only as long as its compressed bytes,
/// with no zeroed worst-case buffer allocated per batch).
#[derive(Default)]
struct Compressors {
    level: i32,
    compressor: Option<zstd::bulk::Compressor<'static>>,
    lz4: Vec<u8>,
}

impl std::fmt::Debug for Compressors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressors")
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

impl Compressors {
    /// LZ4's block format after the uncompressed length (4 bytes, little-endian).
    fn lz4(&mut self, data: &[u8]) -> Vec<u8> {
        let room = lz4_flex::block::get_maximum_output_size(data.len());
        if self.lz4.len() < room {
            self.lz4.resize(room, 0);
        }
        let len = lz4_flex::block::compress_into(data, &mut self.lz4)
            .expect("the buffer holds LZ4's worst case");
        let mut body = Vec::with_capacity(4 + len);
        body.extend_from_slice(&(data.len() as u32).to_le_bytes());
        body.extend_from_slice(&self.lz4[..len]);
        body
    }

    fn zstd(&mut self, data: &[u8], level: i32) -> Vec<u8> {
        if self.compressor.is_none() || self.level != level {
            self.compressor =
                Some(zstd::bulk::Compressor::new(level).expect("zstd context allocates"));
            self.level = level;
        }
        let compressor = self.compressor.as_mut().expect("just set");
        compressor
            .compress(data)
            .expect("zstd compresses any input into a Vec")
    }
}

/// `data` compressed as `compression` says.
fn compress(data: &[u8], compression: Compression, contexts: &mut Compressors) -> Vec<u8> {
    match compression {
        Compression::None => data.to_vec(),
        Compression::Gzip { level } => {
            let out = Vec::with_capacity(data.len() / 6 + 64);
            let mut enc = GzEncoder::new(out, flate2::Compression::new(level.min(9)));
            enc.write_all(data).expect("writing to a Vec cannot fail");
            enc.finish().expect("writing to a Vec cannot fail")
        }
        Compression::Zstd { level } => contexts.zstd(data, level),
        Compression::Lz4 => contexts.lz4(data),
    }
}

/// A source's fields, as a version 2 batch carries them once (its source line).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceLine {
    log: SourceLog,
    #[serde(default, skip_serializing_if = "Container::is_empty")]
    container: Container,
    #[serde(default, skip_serializing_if = "Kubernetes::is_empty")]
    kubernetes: Kubernetes,
    host: Host,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceLog {
    file: LogFile,
}

impl SourceLine {
    fn of(record: &LogRecord) -> SourceLine {
        SourceLine {
            log: SourceLog {
                file: record.log.file.clone(),
            },
            container: record.container.clone(),
            kubernetes: record.kubernetes.clone(),
            host: record.host.clone(),
        }
    }

    fn matches(&self, record: &LogRecord) -> bool {
        self.log.file.fingerprint == record.log.file.fingerprint
            && self.log.file.path == record.log.file.path
            && self.host.name == record.host.name
            && self.container == record.container
            && self.kubernetes == record.kubernetes
    }
}

/// The builder's sources: each distinct set of source fields gets a number and a line.
#[derive(Debug, Default)]
struct SourceTable {
    list: Vec<SourceLine>,
    lines: Vec<u8>,
    /// The source of the last record (records of one source come in runs).
    last: usize,
}

impl SourceTable {
    fn index(&mut self, record: &LogRecord) -> usize {
        if self.list.get(self.last).is_some_and(|s| s.matches(record)) {
            return self.last;
        }
        self.last = match self.list.iter().position(|s| s.matches(record)) {
            Some(i) => i,
            None => {
                let source = SourceLine::of(record);
                serde_json::to_writer(&mut self.lines, &source)
                    .expect("a source line always serialises");
                self.lines.push(b'\n');
                self.list.push(source);
                self.list.len() - 1
            }
        };
        self.last
    }

    fn clear(&mut self) {
        self.list.clear();
        self.lines.clear();
        self.last = 0;
    }
}

impl BatchBuilder {
    /// A builder of [`WIRE_VERSION`] batches.
    pub fn new(host: impl Into<String>) -> Self {
        Self::with_version(host, WIRE_VERSION)
    }

    /// A builder of batches of format `version` (1, 2 or 3).
    ///
    /// # Panics
    /// On any other version: which versions exist is this crate's to say.
    pub fn with_version(host: impl Into<String>, version: u32) -> Self {
        assert!(
            (1..=3).contains(&version),
            "batch format version {version} does not exist"
        );
        let host = host.into();
        let longest = BatchHeader {
            ferry: version,
            host: host.clone(),
            logs: usize::MAX,
            stats: usize::MAX,
            sources: usize::MAX,
            retired: Vec::new(),
        };
        let room = serde_json::to_vec(&longest)
            .expect("header serialises")
            .len()
            + 1;
        BatchBuilder {
            host,
            version,
            room,
            logs: vec![b' '; room],
            stats: Vec::new(),
            log_count: 0,
            stats_count: 0,
            sources: SourceTable::default(),
            compressors: Compressors::default(),
            escapes: Default::default(),
        }
    }

    /// The format version this builder writes.
    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn push_log(&mut self, record: &LogRecord) {
        self.push_log_with(record, |_, _| {});
    }

    /// Adds `record` with more top-level members written by `extra` (see
    /// [`crate::write_log_record`]): the agent's parser writes its typed fields this way.
    pub fn push_log_with(
        &mut self,
        record: &LogRecord,
        extra: impl FnOnce(&mut Vec<u8>, &crate::json::Escapes),
    ) {
        if self.version == 1 {
            write_log_record_deriving_id(&mut self.logs, record, &mut self.escapes, extra);
        } else {
            let source = self.sources.index(record);
            let at = write_log_record_without_source(
                &mut self.logs,
                record,
                &mut self.escapes,
                extra,
                match self.version {
                    2 => Id::Derive,
                    _ => Id::Omit,
                },
            );
            self.logs.push(b' ');
            crate::json::write_u64(&mut self.logs, source as u64);
            self.logs.push(b' ');
            crate::json::write_u64(&mut self.logs, at as u64);
        }
        self.logs.push(b'\n');
        self.log_count += 1;
    }

    pub fn push_stats(&mut self, sample: &StatsSample) {
        serde_json::to_writer(&mut self.stats, sample).expect("a StatsSample always serialises");
        self.stats.push(b'\n');
        self.stats_count += 1;
    }

    /// Number of records (logs and stats) collected so far.
    pub fn len(&self) -> usize {
        self.log_count + self.stats_count
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Uncompressed size of the records (and source lines) collected so far.
    pub fn bytes(&self) -> usize {
        self.logs.len() - self.room + self.stats.len() + self.sources.lines.len()
    }

    fn clear(&mut self) {
        self.logs.truncate(self.room);
        self.stats.clear();
        self.sources.clear();
        self.log_count = 0;
        self.stats_count = 0;
    }

    /// Empties the builder like [`BatchBuilder::finish`] without making a body: the batch has its
    /// counts and sizes and nothing to send (for an agent whose output discards).
    pub fn discard(&mut self) -> EncodedBatch {
        let batch = EncodedBatch {
            body: Vec::new(),
            compression: Compression::None,
            version: self.version,
            logs: self.log_count,
            stats: self.stats_count,
            raw_bytes: self.bytes(),
        };
        self.clear();
        batch
    }

    /// Seals the batch and leaves the builder empty (buffers keep their capacity).
    pub fn finish(&mut self, compression: Compression) -> EncodedBatch {
        let header = BatchHeader {
            ferry: self.version,
            host: self.host.clone(),
            logs: self.log_count,
            stats: self.stats_count,
            sources: self.sources.list.len(),
            retired: Vec::new(),
        };
        let mut head = serde_json::to_vec(&header).expect("header serialises");
        head.push(b'\n');
        let start = self.room - head.len();
        self.logs[start..self.room].copy_from_slice(&head);
        self.logs.extend_from_slice(&self.stats);
        self.logs.extend_from_slice(&self.sources.lines);
        let data = &self.logs[start..];
        let raw_bytes = data.len();
        let body = compress(data, compression, &mut self.compressors);
        let batch = EncodedBatch {
            body,
            compression,
            version: self.version,
            logs: self.log_count,
            stats: self.stats_count,
            raw_bytes,
        };
        self.clear();
        batch
    }
}

/// Why a batch was refused. Every variant says where and what.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("unsupported Content-Encoding {0:?} (expected zstd, lz4, gzip or identity)")]
    Encoding(String),
    #[error("body is not valid gzip, zstd or lz4: {0}")]
    Compression(String),
    #[error("decompressed body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("empty batch: no header line")]
    Empty,
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("header says {expected} lines after it but the body has {found}")]
    Count { expected: usize, found: usize },
}

/// The keys the aggregator needs from a version 1 log record, borrowed from the line.
#[derive(Debug, Deserialize)]
pub struct RecordKeys<'a> {
    #[serde(borrow)]
    pub event: EventKeys<'a>,
    #[serde(rename = "@timestamp", borrow)]
    pub timestamp: Cow<'a, str>,
    #[serde(borrow)]
    pub log: LogKeys<'a>,
    #[serde(rename = "message")]
    _message: serde::de::IgnoredAny,
}

#[derive(Debug, Deserialize)]
pub struct EventKeys<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
}

#[derive(Debug, Deserialize)]
pub struct LogKeys<'a> {
    #[serde(borrow)]
    pub file: LogFileKeys<'a>,
    pub offset: u64,
}

#[derive(Debug, Deserialize)]
pub struct LogFileKeys<'a> {
    #[serde(borrow)]
    pub fingerprint: Cow<'a, str>,
}

/// A string of a decoded record: a JSON string in the batch's data (quotes included), text
/// taken out of a version 1 record, or an id a version 3 record left out, derived from its
/// source's fingerprint and its offset ([`crate::event_id_bytes`]) the first time it is read:
/// the aggregator's intake validates a batch without reading its ids, its sinks read each once.
#[derive(Debug, Clone)]
enum Text {
    Raw(Range<usize>),
    Owned(Box<str>),
    Derived(OnceLock<[u8; 32]>),
}

/// One log record of a decoded batch: where it is and the keys that order and identify it
/// (read through [`DecodedBatch`]'s accessors).
#[derive(Debug, Clone)]
pub struct DecodedLog {
    /// The record's JSON in the batch's data (version 2: without its source's fields).
    line: Range<usize>,
    offset: u64,
    /// Index into the batch's sources.
    source: u32,
    /// [`Text::Derived`] for a version 3 record that left it out.
    id: Text,
    timestamp: Text,
    /// Version 2: where, from the record's first byte, `"file":{…},` goes back in (the start
    /// of `"offset":`) and where the other source fields do (just after the `log` object).
    split: Option<(u32, u32)>,
}

impl DecodedLog {
    /// `log.offset`.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// One source of a decoded batch.
#[derive(Debug)]
struct Source {
    fingerprint: String,
    /// Version 2: the fields and the bytes they expand to.
    fields: Option<SourceFields>,
}

#[derive(Debug)]
struct SourceFields {
    line: SourceLine,
    /// `"file":{…},`
    file_member: Vec<u8>,
    /// `,"container":{…},"kubernetes":{…},"host":{…}`
    members: Vec<u8>,
}

/// A batch that passed validation.
#[derive(Debug)]
pub struct DecodedBatch {
    pub header: BatchHeader,
    /// The decompressed NDJSON body.
    pub data: Vec<u8>,
    pub logs: Vec<DecodedLog>,
    pub stats: Vec<StatsSample>,
    sources: Vec<Source>,
}

thread_local! {
    /// The data of the last batch dropped on this thread, for the next batch to decompress or
    /// be read into: a buffer already the right size, with no zeroing or fresh pages to fault in
    /// per batch (for 4.9 M records the aggregator's intake and its Elasticsearch reader each
    /// went through 3.3 GB of them).
    static SPARE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A spare buffer larger than this is freed rather than kept (an agent's batch is 1 MiB by
/// default; a larger one now and then costs its allocation, not a thread's memory for good).
const SPARE_MAX: usize = 8 << 20;

/// A buffer for a batch's bytes: the data of the last [`DecodedBatch`] dropped on this thread,
/// or an empty one. Its length is the last batch's, so resizing it zeroes only what it grows by.
pub fn batch_buffer() -> Vec<u8> {
    SPARE.with_borrow_mut(std::mem::take)
}

impl Drop for DecodedBatch {
    fn drop(&mut self) {
        let data = std::mem::take(&mut self.data);
        if data.capacity() > SPARE_MAX {
            return;
        }
        // `try_with`: a batch dropped while this thread's locals are torn down is just freed.
        let _ = SPARE.try_with(|spare| {
            if let Ok(mut spare) = spare.try_borrow_mut() {
                if data.capacity() >= spare.capacity() {
                    *spare = data;
                }
            }
        });
    }
}

impl DecodedBatch {
    /// The batch's stats samples, taken out of it (its data goes back to the thread's spare
    /// when the rest is dropped).
    pub fn into_stats(mut self) -> Vec<StatsSample> {
        std::mem::take(&mut self.stats)
    }

    /// `log.file.fingerprint` of `log`.
    pub fn fingerprint(&self, log: &DecodedLog) -> &str {
        &self.sources[log.source as usize].fingerprint
    }

    /// `event.id` of `log` (derived from its fingerprint and offset when the record left it
    /// out).
    pub fn id<'a>(&'a self, log: &'a DecodedLog) -> Cow<'a, str> {
        match &log.id {
            Text::Derived(id) => Cow::Borrowed(
                std::str::from_utf8(self.derived_id(log, id)).expect("an id is hex digits"),
            ),
            text => self.text(text),
        }
    }

    /// The 32 hex digits of the id `log` left out (`id`, its [`Text::Derived`]), derived on
    /// the first call.
    fn derived_id<'a>(&self, log: &DecodedLog, id: &'a OnceLock<[u8; 32]>) -> &'a [u8; 32] {
        id.get_or_init(|| {
            crate::event_id_bytes(&self.sources[log.source as usize].fingerprint, log.offset)
        })
    }

    /// `@timestamp` of `log`.
    pub fn timestamp<'a>(&'a self, log: &'a DecodedLog) -> Cow<'a, str> {
        self.text(&log.timestamp)
    }

    fn text<'a>(&'a self, text: &'a Text) -> Cow<'a, str> {
        match text {
            Text::Owned(s) => Cow::Borrowed(s),
            Text::Derived(_) => unreachable!("only an id is derived, and id() derives it"),
            Text::Raw(range) => {
                let inner = &self.data[range.start + 1..range.end - 1];
                if memchr::memchr(b'\\', inner).is_none() {
                    String::from_utf8_lossy(inner)
                } else {
                    serde_json::from_slice::<String>(&self.data[range.clone()])
                        .map(Cow::Owned)
                        .unwrap_or_else(|_| String::from_utf8_lossy(inner))
                }
            }
        }
    }

    /// Version 2: `log`'s record split around the opening of its `log` object: the bytes before
    /// `,"log":{` (they end with the `stream` member when there is one) and the object's members
    /// from its first on (`"level":…` when set, else `"offset":…`). Found from the known place
    /// of `"offset":` backwards, without reading the message. `None` for a version 1 record.
    pub fn log_object(&self, log: &DecodedLog) -> Option<(&[u8], &[u8])> {
        const LOG_OBJECT: &[u8] = b",\"log\":{";
        let (at, _) = log.split?;
        let record = &self.data[log.line.clone()];
        let head = &record[..at as usize];
        if head.ends_with(LOG_OBJECT) {
            // No level: the object opens right before `"offset":`.
            return Some((
                &record[..head.len() - LOG_OBJECT.len()],
                &record[head.len()..],
            ));
        }
        // A quote inside a JSON string is escaped, so the last `,"log":{` before `"offset":`
        // is the object's own (a `{` inside a level value only costs a look).
        let open = memchr::memrchr_iter(b'{', head).find(|&i| head[..=i].ends_with(LOG_OBJECT))?;
        Some((&record[..open + 1 - LOG_OBJECT.len()], &record[open + 1..]))
    }

    /// The index of `log`'s source in its batch: records with the same index share every
    /// source field.
    pub fn source_index(&self, log: &DecodedLog) -> usize {
        log.source as usize
    }

    /// The value of a field of `log`'s source, when `path` (a dotted name split at its dots)
    /// names one: `Some(None)` when the source has no such value, `None` when `path` is not a
    /// source field or the batch (version 1) carries its records whole: then only the record
    /// says. A string value, like [`crate`]'s readers of a record's field by path would find.
    pub fn source_field(&self, log: &DecodedLog, path: &[&str]) -> Option<Option<&str>> {
        let fields = self.sources[log.source as usize].fields.as_ref()?;
        let line = &fields.line;
        let c = &line.container;
        let k = &line.kubernetes;
        let value = match path {
            ["log", "file", "path"] => Some(line.log.file.path.as_str()),
            ["log", "file", "fingerprint"] => Some(line.log.file.fingerprint.as_str()),
            ["log", "file", ..] => None,
            ["host", "name"] => Some(line.host.name.as_str()),
            ["container", "id"] => c.id.as_deref(),
            ["container", "name"] => c.name.as_deref(),
            ["container", "image", "name"] => c.image.name.as_deref(),
            ["container", "labels", label] => c.labels.get(*label).map(String::as_str),
            ["kubernetes", "namespace"] => k.namespace.as_deref(),
            ["kubernetes", "pod", "name"] => k.pod.name.as_deref(),
            ["kubernetes", "pod", "uid"] => k.pod.uid.as_deref(),
            ["kubernetes", "container", "name"] => k.container.name.as_deref(),
            ["host" | "container" | "kubernetes", ..] => None,
            _ => return None,
        };
        Some(value)
    }

    /// Appends `log`'s whole record (no newline) to `out`: a version 2 record with its source's
    /// fields put back, byte for byte what a version 1 batch carries. With `ingested`, the
    /// record gets `event.ingested`; returns the length of the `"ingested":"…",` member written
    /// right after `{"event":{` (the record without it is the record as sent), or `None` when
    /// there was none or the record had to be re-encoded to take it (a version 1 record not
    /// written by a ferry agent).
    pub fn write_record(
        &self,
        log: &DecodedLog,
        ingested: Option<&Ingested>,
        out: &mut Vec<u8>,
    ) -> Option<usize> {
        let record = &self.data[log.line.clone()];
        let Some((at, log_end)) = log.split else {
            return match ingested {
                Some(ingested) => splice_ingested_into(record, ingested, out),
                None => {
                    out.extend_from_slice(record);
                    None
                }
            };
        };
        let fields = self.sources[log.source as usize]
            .fields
            .as_ref()
            .expect("a version 2 record's source has fields");
        let (at, log_end) = (at as usize, log_end as usize);
        // Exactly what is written (a caller that sized `out` for whole records must not see it
        // grow, and copy all it holds, near its end).
        out.reserve(self.record_len(log) + ingested.map_or(0, Ingested::member_len));
        out.extend_from_slice(EVENT_PREFIX);
        let spliced = ingested.map(|ingested| {
            out.extend_from_slice(&ingested.member);
            ingested.member.len()
        });
        let rest = &record[EVENT_PREFIX.len()..at];
        if let Text::Derived(id) = &log.id {
            out.extend_from_slice(b"\"id\":\"");
            out.extend_from_slice(self.derived_id(log, id));
            out.push(b'"');
            if rest.first() != Some(&b'}') {
                out.push(b',');
            }
        }
        out.extend_from_slice(rest);
        out.extend_from_slice(&fields.file_member);
        out.extend_from_slice(&record[at..log_end]);
        out.extend_from_slice(&fields.members);
        out.extend_from_slice(&record[log_end..]);
        spliced
    }

    /// The length of `log`'s whole record (what [`Self::write_record`] writes without
    /// `ingested`), for sizing a buffer before writing.
    pub fn record_len(&self, log: &DecodedLog) -> usize {
        let source = match log.split {
            Some(_) => self.sources[log.source as usize]
                .fields
                .as_ref()
                .map_or(0, |f| f.file_member.len() + f.members.len()),
            None => 0,
        };
        // A derived id comes back as `"id":"<32 hex>"`, and a comma before a next member.
        let id = match log.id {
            Text::Derived(_) => {
                let next = self.data.get(log.line.start + EVENT_PREFIX.len());
                39 + usize::from(next != Some(&b'}'))
            }
            _ => 0,
        };
        log.line.len() + source + id
    }

    /// `log`'s whole record as a version 1 batch carries it.
    pub fn record(&self, log: &DecodedLog) -> Cow<'_, [u8]> {
        if log.split.is_none() {
            return Cow::Borrowed(&self.data[log.line.clone()]);
        }
        let mut out = Vec::new();
        self.write_record(log, None, &mut out);
        Cow::Owned(out)
    }

    /// The same records as a version 1 batch (for an aggregator that predates version 2, and
    /// for files an operator reads).
    pub fn encode_v1(&self, compression: Compression) -> EncodedBatch {
        let header = BatchHeader {
            ferry: 1,
            sources: 0,
            ..self.header.clone()
        };
        let mut data = serde_json::to_vec(&header).expect("header serialises");
        data.push(b'\n');
        for log in &self.logs {
            self.write_record(log, None, &mut data);
            data.push(b'\n');
        }
        for sample in &self.stats {
            serde_json::to_writer(&mut data, sample).expect("a StatsSample always serialises");
            data.push(b'\n');
        }
        EncodedBatch {
            body: compress(&data, compression, &mut Compressors::default()),
            compression,
            version: 1,
            logs: self.logs.len(),
            stats: self.stats.len(),
            raw_bytes: data.len(),
        }
    }
}

const EVENT_PREFIX: &[u8] = b"{\"event\":{";

/// `event.ingested` for the records it is spliced into: the member `"ingested":"…",`,
/// written once for all the records of a batch.
#[derive(Debug, Clone)]
pub struct Ingested {
    stamp: String,
    member: Vec<u8>,
}

impl Ingested {
    pub fn new(stamp: &str) -> Self {
        let mut member = b"\"ingested\":".to_vec();
        crate::json::write_str(&mut member, stamp);
        member.push(b',');
        Ingested {
            stamp: stamp.to_owned(),
            member,
        }
    }

    /// The length of the member, comma included.
    pub fn member_len(&self) -> usize {
        self.member.len()
    }
}

/// Decompresses (at most `max_decompressed` bytes) and validates a batch body.
pub fn decode_batch(
    body: &[u8],
    compression: Compression,
    max_decompressed: usize,
) -> Result<DecodedBatch, BatchError> {
    parse_body(decompress(body, compression, max_decompressed)?, true)
}

/// Reads a batch that is already decompressed and was validated by [`decode_batch`] when it
/// arrived (a queue entry, whose checksum guards it since): the same checks, except that a
/// version 2 record's UTF-8 is not checked again.
pub fn parse_batch(data: Vec<u8>) -> Result<DecodedBatch, BatchError> {
    parse_body(data, false)
}

/// The NDJSON inside a batch body, refusing to grow past `max_decompressed` bytes.
pub fn decompress(
    body: &[u8],
    compression: Compression,
    max_decompressed: usize,
) -> Result<Vec<u8>, BatchError> {
    let too_large = BatchError::TooLarge {
        limit: max_decompressed,
    };
    let data = match compression {
        Compression::None => {
            if body.len() > max_decompressed {
                return Err(too_large);
            }
            let mut data = batch_buffer();
            data.clear();
            data.extend_from_slice(body);
            data
        }
        Compression::Gzip { .. } => {
            let dec = GzDecoder::new(body);
            read_bounded(dec, body.len().saturating_mul(4), max_decompressed)?
        }
        Compression::Zstd { .. } => match zstd_in_one_call(body, max_decompressed)? {
            Some(data) => data,
            None => {
                let dec = zstd::stream::Decoder::new(body)
                    .map_err(|e| BatchError::Compression(e.to_string()))?;
                read_bounded(dec, body.len().saturating_mul(6), max_decompressed)?
            }
        },
        Compression::Lz4 => lz4_block(body, max_decompressed)?,
    };
    Ok(data)
}

thread_local! {
    /// One zstd decompression context per thread, kept across batches.
    static ZSTD_DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// A zstd body whose frame states its size (as the agent's do), decompressed in one call into
/// a buffer of exactly that size with this thread's context: no context, window buffer or
/// growing output set up per batch. `None` when the frame does not say its size or holds more
/// than it says (several frames): then the streaming decoder decides.
fn zstd_in_one_call(body: &[u8], max: usize) -> Result<Option<Vec<u8>>, BatchError> {
    let size = match zstd::zstd_safe::get_frame_content_size(body) {
        Ok(Some(size)) => size,
        Ok(None) => return Ok(None),
        Err(_) => return Err(BatchError::Compression("not a zstd frame".into())),
    };
    if size > max as u64 {
        return Err(BatchError::TooLarge { limit: max });
    }
    let mut out = Vec::with_capacity(size as usize);
    let done = ZSTD_DCTX.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = zstd::bulk::Decompressor::new().ok();
        }
        cell.as_mut()
            .map(|dctx| dctx.decompress_to_buffer(body, &mut out))
    });
    Ok(match done {
        Some(Ok(n)) if n == out.len() && n as u64 == size => Some(out),
        _ => None,
    })
}

/// An LZ4 body: the uncompressed length (4 bytes, little-endian), then one LZ4 block. The length
/// is checked against `max` before anything is allocated, and the block must fill it exactly.
fn lz4_block(body: &[u8], max: usize) -> Result<Vec<u8>, BatchError> {
    let Some((len, block)) = body.split_first_chunk::<4>() else {
        return Err(BatchError::Compression(
            "lz4 body shorter than its 4-byte length".into(),
        ));
    };
    let len = u32::from_le_bytes(*len) as usize;
    if len > max {
        return Err(BatchError::TooLarge { limit: max });
    }
    let mut data = batch_buffer();
    data.resize(len, 0);
    let written = lz4_flex::block::decompress_into(block, &mut data)
        .map_err(|e| BatchError::Compression(format!("lz4: {e}")))?;
    if written != len {
        return Err(BatchError::Compression(format!(
            "lz4 block holds {written} bytes, its length says {len}"
        )));
    }
    Ok(data)
}

fn read_bounded(reader: impl Read, guess: usize, max: usize) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::with_capacity(guess.min(max));
    reader
        .take((max as u64).saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| BatchError::Compression(e.to_string()))?;
    if out.len() > max {
        return Err(BatchError::TooLarge { limit: max });
    }
    Ok(out)
}

fn parse_body(data: Vec<u8>, check_utf8: bool) -> Result<DecodedBatch, BatchError> {
    let mut lines = LineRanges::new(&data);
    let (_, head_range) = lines.next().ok_or(BatchError::Empty)?;
    let header: BatchHeader =
        serde_json::from_slice(&data[head_range]).map_err(|e| BatchError::Line {
            line: 1,
            reason: format!("bad batch header: {e}"),
        })?;
    if !(1..=3).contains(&header.ferry) {
        return Err(BatchError::Line {
            line: 1,
            reason: format!(
                "{UNSUPPORTED_VERSION} {} is not supported (this build reads versions 1 to {WIRE_VERSION})",
                header.ferry
            ),
        });
    }
    if header.ferry == 1 && header.sources != 0 {
        return Err(BatchError::Line {
            line: 1,
            reason: "a version 1 batch has no source lines".into(),
        });
    }
    let expected = header
        .logs
        .saturating_add(header.stats)
        .saturating_add(header.sources);
    let mut logs = Vec::with_capacity(header.logs.min(1 << 20));
    let mut stats = Vec::new();
    let mut sources = Vec::with_capacity(header.sources.min(1 << 16));
    let mut found = 0;
    for (line_no, range) in lines {
        found += 1;
        if found > expected {
            continue;
        }
        let bad = |reason: String| BatchError::Line {
            line: line_no,
            reason,
        };
        if found <= header.logs {
            let log = if header.ferry == 1 {
                v1_log(&data, range, &mut sources, check_utf8)
            } else {
                v2_log(&data, range, header.sources, check_utf8, header.ferry)
            };
            logs.push(log.map_err(bad)?);
        } else if found <= header.logs + header.stats {
            let sample: StatsSample = serde_json::from_slice(&data[range])
                .map_err(|e| bad(format!("bad stats sample: {e}")))?;
            stats.push(sample);
        } else {
            let line: SourceLine = serde_json::from_slice(&data[range])
                .map_err(|e| bad(format!("bad source line: {e}")))?;
            let mut file_member = Vec::new();
            write_file_member(
                &mut file_member,
                &line.log.file.path,
                &line.log.file.fingerprint,
            );
            let mut members = Vec::new();
            write_source_members(
                &mut members,
                &line.container,
                &line.kubernetes,
                &line.host.name,
            );
            sources.push(Source {
                fingerprint: line.log.file.fingerprint.clone(),
                fields: Some(SourceFields {
                    line,
                    file_member,
                    members,
                }),
            });
        }
    }
    if found != expected {
        return Err(BatchError::Count { expected, found });
    }
    Ok(DecodedBatch {
        header,
        data,
        logs,
        stats,
        sources,
    })
}

/// A version 1 log record: parsed for its keys; its fingerprint joins `sources`. With
/// `check_utf8`, the whole record must be UTF-8: serde_json does not check the strings it
/// skips (the message, the parsed fields), and a store or Elasticsearch must never get a record
/// that is not (found by the `batch` fuzz target).
fn v1_log(
    data: &[u8],
    line: Range<usize>,
    sources: &mut Vec<Source>,
    check_utf8: bool,
) -> Result<DecodedLog, String> {
    if check_utf8 {
        std::str::from_utf8(&data[line.clone()])
            .map_err(|e| format!("record is not UTF-8: {e}"))?;
    }
    let keys: RecordKeys<'_> =
        serde_json::from_slice(&data[line.clone()]).map_err(|e| format!("bad log record: {e}"))?;
    let fingerprint = keys.log.file.fingerprint;
    if sources.last().is_none_or(|s| s.fingerprint != fingerprint) {
        sources.push(Source {
            fingerprint: fingerprint.into_owned(),
            fields: None,
        });
    }
    Ok(DecodedLog {
        line,
        offset: keys.log.offset,
        source: (sources.len() - 1) as u32,
        id: Text::Owned(keys.event.id.into()),
        timestamp: Text::Owned(keys.timestamp.into()),
        split: None,
    })
}

/// A version 2 log record: `<record> <source> <offset position>`, its frame checked.
fn v2_log(
    data: &[u8],
    line: Range<usize>,
    sources: usize,
    check_utf8: bool,
    version: u32,
) -> Result<DecodedLog, String> {
    let bytes = &data[line.clone()];
    let trailer = "a version 2 record ends with ` <source> <position>`";
    let (rest, at) = split_number(bytes).ok_or(trailer)?;
    let (rest, source) = split_number(rest).ok_or(trailer)?;
    let record = rest;
    if source >= sources as u64 {
        return Err(format!(
            "source {source} does not exist (the batch has {sources})"
        ));
    }
    if check_utf8 {
        std::str::from_utf8(record).map_err(|e| format!("record is not UTF-8: {e}"))?;
    }
    const ID: &[u8] = b"{\"event\":{\"id\":";
    // Version 3 leaves out an id derived from the fingerprint and offset.
    let derived = version >= 3
        && record.starts_with(EVENT_PREFIX)
        && [&b"\"created\":"[..], b"}"]
            .iter()
            .any(|next| record[EVENT_PREFIX.len()..].starts_with(next));
    let (id, mut pos) = if record.starts_with(ID) {
        let end = string_end(record, ID.len()).ok_or("bad event.id")?;
        (Some(ID.len()..end), end)
    } else if derived {
        (None, EVENT_PREFIX.len())
    } else {
        return Err(format!(
            "a version {version} record begins with {{\"event\":{{\"id\":{} (event.ingested is the aggregator's to set)",
            if version >= 3 {
                ", {\"event\":{\"created\": or {\"event\":{}"
            } else {
                ""
            }
        ));
    };
    let created: &[u8] = if id.is_some() {
        b",\"created\":"
    } else {
        b"\"created\":"
    };
    if record[pos..].starts_with(created) {
        pos = string_end(record, pos + created.len()).ok_or("bad event.created")?;
    }
    const TIMESTAMP: &[u8] = b"},\"@timestamp\":";
    if !record[pos..].starts_with(TIMESTAMP) {
        return Err("event is not followed by @timestamp".into());
    }
    let timestamp =
        pos + TIMESTAMP.len()..string_end(record, pos + TIMESTAMP.len()).ok_or("bad @timestamp")?;
    let at = usize::try_from(at).unwrap_or(usize::MAX);
    let offset_member = b"\"offset\":";
    if at <= timestamp.end
        || !record
            .get(at..)
            .is_some_and(|r| r.starts_with(offset_member))
        || !opens_log(record, at)
    {
        return Err(format!("position {at} is not where log.offset begins"));
    }
    let digits_at = at + offset_member.len();
    let digits = record[digits_at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let offset = std::str::from_utf8(&record[digits_at..digits_at + digits])
        .ok()
        .and_then(|d| d.parse::<u64>().ok())
        .ok_or("log.offset is not a number")?;
    let mut end = digits_at + digits;
    const FLAGS: &[u8] = b",\"flags\":[";
    if record[end..].starts_with(FLAGS) {
        end = memchr::memchr(b']', &record[end..])
            .map(|i| end + i + 1)
            .ok_or("unclosed log.flags")?;
    }
    // The log object ends here, and the record goes on after it.
    if record.get(end) != Some(&b'}') || end + 2 > record.len() || record.last() != Some(&b'}') {
        return Err("log does not end after offset and flags".into());
    }
    let shift = |r: Range<usize>| line.start + r.start..line.start + r.end;
    Ok(DecodedLog {
        line: line.start..line.start + record.len(),
        offset,
        source: source as u32,
        // A left-out id is derived when first read (its source line comes after the records).
        id: id.map_or(Text::Derived(OnceLock::new()), |id| Text::Raw(shift(id))),
        timestamp: Text::Raw(shift(timestamp)),
        split: Some((at as u32, (end + 1) as u32)),
    })
}

/// Whether `log.offset` at `at` is a member of the record's `log` object: right after
/// `,"log":{`, or after `,"log":{"level":"…",` (a frame whose offset sat in another object was
/// taken before: found by the `batch` fuzz target).
fn opens_log(record: &[u8], at: usize) -> bool {
    const LOG: &[u8] = b",\"log\":{";
    const LEVEL: &[u8] = b"\"level\":";
    let before = &record[..at];
    if before.ends_with(LOG) {
        return true;
    }
    memchr::memmem::rfind(before, LOG).is_some_and(|p| {
        let level = p + LOG.len();
        record[level..].starts_with(LEVEL)
            && string_end(record, level + LEVEL.len()) == Some(at - 1)
            && record[at - 1] == b','
    })
}

/// `bytes` without its last ` <number>`, and the number.
fn split_number(bytes: &[u8]) -> Option<(&[u8], u64)> {
    let space = memchr::memrchr(b' ', bytes)?;
    let digits = &bytes[space + 1..];
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((&bytes[..space], n))
}

/// The position just after the JSON string that starts at `start`.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    if bytes.get(start) != Some(&b'"') {
        return None;
    }
    let mut i = start + 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', bytes.get(i..)?)?;
        if bytes[i] == b'"' {
            return Some(i + 1);
        }
        i += 2;
    }
}

/// Non-empty lines of an NDJSON body with their 1-based line numbers (a `\r` before `\n` is dropped).
struct LineRanges<'a> {
    data: &'a [u8],
    pos: usize,
    line_no: usize,
}

impl<'a> LineRanges<'a> {
    fn new(data: &'a [u8]) -> Self {
        LineRanges {
            data,
            pos: 0,
            line_no: 0,
        }
    }
}

impl Iterator for LineRanges<'_> {
    type Item = (usize, Range<usize>);

    fn next(&mut self) -> Option<Self::Item> {
        while self.pos < self.data.len() {
            let start = self.pos;
            let end = memchr::memchr(b'\n', &self.data[start..])
                .map(|i| start + i)
                .unwrap_or(self.data.len());
            self.pos = end + 1;
            self.line_no += 1;
            let mut stop = end;
            if stop > start && self.data[stop - 1] == b'\r' {
                stop -= 1;
            }
            if stop > start {
                return Some((self.line_no, start..stop));
            }
        }
        None
    }
}

/// Writes `line` to `out` with `event.ingested` set to `ingested`, plus a newline.
///
/// Lines written by [`BatchBuilder`] start with `{"event":{`, so the field is spliced in without
/// re-encoding; any other valid record is parsed and re-encoded.
pub fn splice_ingested(line: &[u8], ingested: &str, out: &mut Vec<u8>) {
    splice_ingested_into(line, &Ingested::new(ingested), out);
    out.push(b'\n');
}

/// [`splice_ingested`] without the newline; the length of the member spliced in, if it was.
fn splice_ingested_into(line: &[u8], ingested: &Ingested, out: &mut Vec<u8>) -> Option<usize> {
    if line.starts_with(EVENT_PREFIX) && !line[EVENT_PREFIX.len()..].starts_with(b"\"ingested\"") {
        out.extend_from_slice(EVENT_PREFIX);
        out.extend_from_slice(&ingested.member);
        out.extend_from_slice(&line[EVENT_PREFIX.len()..]);
        return Some(ingested.member.len());
    }
    match serde_json::from_slice::<serde_json::Value>(line) {
        Ok(mut value) => {
            if let Some(event) = value.get_mut("event").and_then(|e| e.as_object_mut()) {
                event.insert("ingested".into(), ingested.stamp.as_str().into());
            }
            serde_json::to_writer(&mut *out, &value).expect("writing to a Vec cannot fail");
        }
        Err(_) => out.extend_from_slice(line),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::*;

    fn record(i: u64) -> LogRecord {
        LogRecord {
            event: Event {
                id: crate::event_id("src", i),
                ..Default::default()
            },
            timestamp: "2026-11-28T08:00:00.000000001Z".into(),
            message: format!("line {i} with \"quotes\" and \u{0} nul and ünïcode"),
            stream: Some(Stream::Stderr),
            log: LogMeta {
                level: None,
                file: LogFile {
                    path: "/var/log/pods/ns_pod_uid/c/0.log".into(),
                    fingerprint: "src".into(),
                },
                offset: i * 100,
                flags: vec![Flag::Joined],
            },
            kubernetes: Kubernetes {
                namespace: Some("ns".into()),
                ..Default::default()
            },
            host: Host {
                name: "node".into(),
            },
            ..Default::default()
        }
    }

    #[test]
    fn round_trips_through_every_compression_in_both_versions() {
        for version in [1, 2] {
            for compression in [
                Compression::None,
                Compression::Gzip { level: 1 },
                Compression::Zstd { level: 1 },
                Compression::Lz4,
            ] {
                // The header is written into room left before the records: a host name that
                // needs escaping, and a builder used for several batches of different sizes.
                let mut b = BatchBuilder::with_version("nöde \"1\"", version);
                for n in [3, 0] {
                    for r in (0..n).map(record) {
                        b.push_log(&r);
                    }
                    let enc = b.finish(compression);
                    assert_eq!(enc.version, version);
                    let dec = decode_batch(&enc.body, compression, 1 << 20).unwrap();
                    assert_eq!(
                        (dec.header.host.as_str(), dec.logs.len()),
                        ("nöde \"1\"", n as usize)
                    );
                }
                let records: Vec<_> = (0..50).map(record).collect();
                for r in &records {
                    b.push_log(r);
                }
                b.push_stats(&StatsSample {
                    timestamp: "2026-11-28T08:00:00Z".into(),
                    metrics: [("container_cpu_usage_seconds_total".to_string(), 1.5)].into(),
                    ..Default::default()
                });
                let enc = b.finish(compression);
                assert!(b.is_empty());
                let dec = decode_batch(&enc.body, compression, 1 << 20).unwrap();
                assert_eq!(dec.header.ferry, version);
                assert_eq!(dec.logs.len(), 50);
                assert_eq!(dec.stats.len(), 1);
                for (r, d) in records.iter().zip(&dec.logs) {
                    let back: LogRecord = serde_json::from_slice(&dec.record(d)).unwrap();
                    assert_eq!(&back, r);
                    assert_eq!(d.offset(), r.log.offset);
                    assert_eq!(dec.id(d), r.event.id);
                    assert_eq!(dec.fingerprint(d), r.log.file.fingerprint);
                    assert_eq!(dec.timestamp(d), r.timestamp);
                }
            }
        }
    }

    /// Random records of a few random sources, in runs and interleaved.
    fn random_batch(rng: &mut fastrand::Rng) -> Vec<LogRecord> {
        let sources: Vec<LogRecord> = (0..rng.usize(1..4))
            .map(|_| crate::json::tests::random_record(rng))
            .collect();
        (0..rng.usize(1..30))
            .map(|_| {
                let source = &sources[rng.usize(..sources.len())];
                let mut r = crate::json::tests::random_record(rng);
                r.event.ingested = None;
                // Half of them with the id derived from fingerprint and offset (the tailer's).
                if rng.bool() {
                    r.event.id.clear();
                }
                r.log.file = source.log.file.clone();
                r.container = source.container.clone();
                r.kubernetes = source.kubernetes.clone();
                r.host = source.host.clone();
                r
            })
            .collect()
    }

    #[test]
    fn version_2_and_3_records_expand_to_the_bytes_version_1_carries() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut smaller = 0;
        for i in 0..1000 {
            let records = random_batch(&mut rng);
            let mut v1 = BatchBuilder::with_version("h", 1);
            let mut v2 = BatchBuilder::with_version("h", 2 + i % 2);
            for r in &records {
                v1.push_log(r);
                v2.push_log(r);
            }
            let (e1, e2) = (v1.finish(Compression::None), v2.finish(Compression::None));
            smaller += usize::from(e2.raw_bytes < e1.raw_bytes);
            let d1 = decode_batch(&e1.body, Compression::None, 1 << 20).unwrap();
            let d2 = decode_batch(&e2.body, Compression::None, 1 << 20).unwrap();
            assert_eq!(d2.logs.len(), records.len());
            for ((l1, l2), r) in d1.logs.iter().zip(&d2.logs).zip(&records) {
                let stamp = Ingested::new("2026-11-28T09:00:00.000Z");
                for ingested in [None, Some(&stamp)] {
                    let (mut o1, mut o2) = (Vec::new(), Vec::new());
                    let s1 = d1.write_record(l1, ingested, &mut o1);
                    let s2 = d2.write_record(l2, ingested, &mut o2);
                    assert_eq!(String::from_utf8_lossy(&o2), String::from_utf8_lossy(&o1));
                    assert_eq!(s1, s2);
                    if let Some(len) = s2 {
                        // Without the member spliced in: the record as sent.
                        let mut without = o2[..EVENT_PREFIX.len()].to_vec();
                        without.extend_from_slice(&o2[EVENT_PREFIX.len() + len..]);
                        assert_eq!(without, &*d2.record(l2));
                    }
                }
                assert_eq!(d2.record_len(l2), d1.record(l1).len());
                // The `log` object is found from `"offset":` backwards, whatever the message.
                assert!(d1.log_object(l1).is_none());
                let (before, members) = d2.log_object(l2).unwrap();
                let first: &[u8] = if r.log.level.is_some() {
                    b"\"level\":"
                } else {
                    b"\"offset\":"
                };
                assert!(
                    members.starts_with(first),
                    "{}",
                    String::from_utf8_lossy(members)
                );
                let stream: &[u8] = match r.stream {
                    Some(crate::record::Stream::Stdout) => b",\"stream\":\"stdout\"",
                    Some(crate::record::Stream::Stderr) => b",\"stream\":\"stderr\"",
                    None => b"\"",
                };
                assert!(
                    before.ends_with(stream),
                    "{}",
                    String::from_utf8_lossy(before)
                );
                assert_eq!(&d2.data[l2.line.start + before.len()..][..8], b",\"log\":{");
                assert_eq!(d1.record_len(l1), d1.record(l1).len());
                let id = match r.event.id.as_str() {
                    "" => crate::event_id(&r.log.file.fingerprint, r.log.offset),
                    id => id.to_string(),
                };
                assert_eq!(d2.id(l2), id);
                assert_eq!(d1.id(l1), id);
                assert_eq!(d2.timestamp(l2), r.timestamp);
                assert_eq!(d2.fingerprint(l2), r.log.file.fingerprint);
                assert_eq!((l1.offset(), l2.offset()), (r.log.offset, r.log.offset));
                // A source field read from the source line is what the whole record says.
                let whole: serde_json::Value = serde_json::from_slice(&d1.record(l1)).unwrap();
                let mut paths = vec![
                    "log.file.path",
                    "log.file.fingerprint",
                    "log.file",
                    "host.name",
                    "host",
                    "container.id",
                    "container.name",
                    "container.image.name",
                    "container.image",
                    "kubernetes.namespace",
                    "kubernetes.pod.name",
                    "kubernetes.pod.uid",
                    "kubernetes.container.name",
                    "kubernetes.pod",
                ];
                let labels: Vec<String> = r
                    .container
                    .labels
                    .keys()
                    .filter(|k| !k.contains('.'))
                    .map(|k| format!("container.labels.{k}"))
                    .collect();
                paths.extend(labels.iter().map(String::as_str));
                for path in paths {
                    let parts: Vec<&str> = path.split('.').collect();
                    let mut value = &whole;
                    for p in &parts {
                        value = value.get(p).unwrap_or(&serde_json::Value::Null);
                    }
                    assert_eq!(
                        d2.source_field(l2, &parts),
                        Some(value.as_str()),
                        "{path} of {whole}"
                    );
                    assert_eq!(
                        d1.source_field(l1, &parts),
                        None,
                        "version 1: the record says"
                    );
                }
                assert_eq!(d2.source_field(l2, &["log", "level"]), None);
                assert_eq!(d2.source_field(l2, &["message"]), None);
            }
        }
        assert!(
            smaller > 450,
            "version 2 smaller in {smaller} of 500 batches"
        );
    }

    #[test]
    fn a_version_2_batch_re_encodes_as_version_1() {
        let mut rng = fastrand::Rng::with_seed(3);
        let records = random_batch(&mut rng);
        let mut b = BatchBuilder::new("h");
        for r in &records {
            b.push_log(r);
        }
        b.push_stats(&StatsSample {
            timestamp: "2026-11-28T08:00:00Z".into(),
            ..Default::default()
        });
        let mut v2 = decode_batch(
            &b.finish(Compression::None).body,
            Compression::None,
            1 << 20,
        )
        .unwrap();
        v2.header.retired = vec!["gone".into()];
        for compression in [
            Compression::Zstd { level: 1 },
            Compression::Gzip { level: 1 },
        ] {
            let v1 = v2.encode_v1(compression);
            assert_eq!((v1.version, v1.logs, v1.stats), (1, records.len(), 1));
            let back = decode_batch(&v1.body, compression, 1 << 20).unwrap();
            assert_eq!(back.header.ferry, 1);
            assert_eq!(back.header.retired, ["gone"]);
            assert_eq!(back.stats, v2.stats);
            let got: Vec<LogRecord> = back
                .logs
                .iter()
                .map(|l| serde_json::from_slice(&back.record(l)).unwrap())
                .collect();
            assert_eq!(got, with_derived_ids(&records));
        }
    }

    /// `records` as they come out of a batch: an empty `event.id` is the derived one.
    fn with_derived_ids(records: &[LogRecord]) -> Vec<LogRecord> {
        let mut records = records.to_vec();
        for r in &mut records {
            if r.event.id.is_empty() {
                r.event.id = crate::event_id(&r.log.file.fingerprint, r.log.offset);
            }
        }
        records
    }

    #[test]
    fn an_old_aggregators_refusal_is_recognised() {
        // What aggregators that read only version 1 answer (their BatchError::Line, as JSON).
        let old = r#"{"error":"line 1: batch format version 2 is not supported (this build reads version 1)"}"#;
        assert!(refused_for_version(old));
        let body = b"{\"ferry\":4,\"host\":\"h\",\"logs\":0,\"stats\":0}\n";
        let err = decode_batch(body, Compression::None, 1024).unwrap_err();
        assert!(refused_for_version(&err.to_string()), "{err}");
        assert!(!refused_for_version(
            "line 2: bad log record: missing field `event`"
        ));
    }

    #[test]
    fn refuses_a_decompression_bomb() {
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::new(9));
        enc.write_all(&vec![b' '; 10 << 20]).unwrap();
        let body = enc.finish().unwrap();
        let err = decode_batch(&body, Compression::Gzip { level: 1 }, 1 << 20).unwrap_err();
        assert!(matches!(err, BatchError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn zstd_bodies_of_several_frames_or_without_a_size_still_decode() {
        let raw = ten_records().finish(Compression::None).body;
        let (head, tail) = raw.split_at(raw.len() / 3);
        // Two frames, each stating the size of its own part only.
        let mut two = zstd::bulk::compress(head, 1).unwrap();
        two.extend(zstd::bulk::compress(tail, 1).unwrap());
        // A streamed frame, which does not state its size.
        let streamed = zstd::stream::encode_all(&raw[..], 1).unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&streamed).unwrap(),
            None
        );
        for body in [two, streamed, zstd::bulk::compress(&raw, 3).unwrap()] {
            let dec = decode_batch(&body, Compression::Zstd { level: 1 }, 1 << 20).unwrap();
            assert_eq!(dec.data, raw);
            assert_eq!(dec.logs.len(), 10);
        }
        // A frame that states more than the limit is refused before anything is allocated.
        let big = zstd::bulk::compress(&vec![b' '; 2 << 20], 1).unwrap();
        let err = decode_batch(&big, Compression::Zstd { level: 1 }, 1 << 20).unwrap_err();
        assert!(matches!(err, BatchError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn lz4_bodies_are_checked_before_and_after_decompression() {
        let raw = ten_records().finish(Compression::None).body;
        let body = compress(&raw, Compression::Lz4, &mut Compressors::default());
        assert_eq!(
            decode_batch(&body, Compression::Lz4, 1 << 20).unwrap().data,
            raw
        );
        // A length over the limit is refused before anything is allocated (a bomb).
        let bomb = lz4_flex::block::compress_prepend_size(&vec![b' '; 10 << 20]);
        let err = decode_batch(&bomb, Compression::Lz4, 1 << 20).unwrap_err();
        assert!(matches!(err, BatchError::TooLarge { .. }), "{err}");
        // Cut short, a length that lies either way, or no length at all: compression errors.
        let mut longer = body.clone();
        longer[..4].copy_from_slice(&(raw.len() as u32 + 1).to_le_bytes());
        let mut shorter = body.clone();
        shorter[..4].copy_from_slice(&(raw.len() as u32 - 1).to_le_bytes());
        for bad in [&body[..body.len() - 5], &longer, &shorter, &body[..3]] {
            let err = decode_batch(bad, Compression::Lz4, 1 << 20).unwrap_err();
            assert!(matches!(err, BatchError::Compression(_)), "{err}");
        }
    }

    #[test]
    fn a_batch_decoded_into_the_last_batchs_buffer_holds_only_its_own_bytes() {
        let mut big = BatchBuilder::new("node");
        for i in 0..200 {
            big.push_log(&record(i));
        }
        let big = big.finish(Compression::None).body;
        let small = ten_records().finish(Compression::None).body;
        assert!(small.len() < big.len());
        for compression in [Compression::Lz4, Compression::None] {
            let body = |raw: &[u8]| compress(raw, compression, &mut Compressors::default());
            let (big_body, small_body) = (body(&big), body(&small));
            // The big batch's buffer becomes this thread's spare when the batch is dropped.
            let data_at = {
                let first = decode_batch(&big_body, compression, 1 << 20).unwrap();
                assert_eq!(first.data, big);
                first.data.as_ptr() as usize
            };
            let second = decode_batch(&small_body, compression, 1 << 20).unwrap();
            assert_eq!(
                second.data.as_ptr() as usize,
                data_at,
                "{compression:?}: the spare buffer is reused"
            );
            assert_eq!(
                second.data, small,
                "{compression:?}: no byte of the last batch"
            );
            assert_eq!(second.logs.len(), 10);
            drop(second);
            // The queue's reader takes the spare too; an empty one when none is left.
            assert!(batch_buffer().capacity() >= big.len());
            assert_eq!(batch_buffer().capacity(), 0);
            // A body that decompresses short, into a spare that still holds the last batch's
            // bytes past its end: refused, never read as a batch.
            if compression == Compression::Lz4 {
                drop(decode_batch(&big_body, compression, 1 << 20).unwrap());
                let mut lying = small_body.clone();
                lying[..4].copy_from_slice(&(big.len() as u32).to_le_bytes());
                let err = decode_batch(&lying, compression, 1 << 20).unwrap_err();
                assert!(matches!(err, BatchError::Compression(_)), "{err}");
            }
        }
    }

    /// A builder holding records 0 to 9.
    fn ten_records() -> BatchBuilder {
        let mut b = BatchBuilder::new("node");
        for i in 0..10 {
            b.push_log(&record(i));
        }
        b
    }

    #[test]
    fn a_batch_recompressed_for_an_aggregator_without_lz4_keeps_its_bytes() {
        let lz4 = ten_records().finish(Compression::Lz4);
        let zstd = lz4.recompressed(Compression::Zstd { level: 1 }).unwrap();
        assert_eq!(
            (zstd.version, zstd.logs, zstd.stats, zstd.raw_bytes),
            (lz4.version, lz4.logs, lz4.stats, lz4.raw_bytes)
        );
        let a = decode_batch(&lz4.body, Compression::Lz4, 1 << 20).unwrap();
        let z = decode_batch(&zstd.body, zstd.compression, 1 << 20).unwrap();
        assert_eq!(a.data, z.data);
        // What an aggregator that predates lz4 answers (its BatchError::Encoding, as JSON).
        let old =
            r#"{"error":"unsupported Content-Encoding \"lz4\" (expected zstd, gzip or identity)"}"#;
        assert!(refused_encoding(old, Compression::Lz4));
        let now = BatchError::Encoding("lz4".into()).to_string();
        assert!(refused_encoding(&now, Compression::Lz4), "{now}");
        assert!(!refused_encoding(old, Compression::Zstd { level: 1 }));
        assert!(!refused_encoding("queue is full", Compression::Lz4));
    }

    #[test]
    fn refuses_a_zstd_bomb() {
        let body = zstd::bulk::compress(&vec![b' '; 10 << 20], 3).unwrap();
        let err = decode_batch(&body, Compression::Zstd { level: 1 }, 1 << 20).unwrap_err();
        assert!(matches!(err, BatchError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn truncated_gzip_is_a_compression_error() {
        let mut b = BatchBuilder::new("node");
        for i in 0..100 {
            b.push_log(&record(i));
        }
        let enc = b.finish(Compression::Gzip { level: 1 });
        let cut = &enc.body[..enc.body.len() / 2];
        let err = decode_batch(cut, Compression::Gzip { level: 1 }, 1 << 20).unwrap_err();
        assert!(matches!(err, BatchError::Compression(_)), "{err}");
    }

    #[test]
    fn bad_version_1_record_names_its_line() {
        let mut b = BatchBuilder::with_version("node", 1);
        b.push_log(&record(1));
        let mut body = b.finish(Compression::None).body;
        let text = String::from_utf8(body.clone())
            .unwrap()
            .replace("\"logs\":1", "\"logs\":2");
        body = text.into_bytes();
        body.extend_from_slice(b"{\"event\":{\"id\":\"x\"}}\n");
        let err = decode_batch(&body, Compression::None, 1 << 20).unwrap_err();
        match err {
            BatchError::Line { line, reason } => {
                assert_eq!(line, 3);
                assert!(reason.contains("missing field"), "{reason}");
            }
            other => panic!("unexpected {other}"),
        }
    }

    /// Fuzzing found it (`batch` target): serde_json skips the strings a version 1 record's
    /// keys do not need without checking their UTF-8, so such a record was queued.
    #[test]
    fn version_1_record_with_invalid_utf8_in_its_message_is_refused() {
        let mut b = BatchBuilder::with_version("node", 1);
        b.push_log(&record(1));
        b.push_log(&record(2));
        let body = b.finish(Compression::None).body;
        let at = memchr::memmem::rfind(&body, b"\"message\":\"").unwrap() + 11;
        let mut bad = body.clone();
        bad[at] = 0xa1;
        let err = decode_batch(&bad, Compression::None, 1 << 20).unwrap_err();
        match err {
            BatchError::Line { line, reason } => {
                assert_eq!(line, 3);
                assert!(reason.contains("not UTF-8"), "{reason}");
            }
            other => panic!("unexpected {other}"),
        }
        assert!(decode_batch(&body, Compression::None, 1 << 20).is_ok());
    }

    /// Fuzzing found it (`batch` target): the frame check took an offset member of an object
    /// other than `log`, so the record was stored without `log.file` and `log.offset` where
    /// they belong.
    #[test]
    fn version_2_offset_outside_the_log_object_is_refused() {
        let mut b = BatchBuilder::new("node");
        b.push_log(&record(1));
        let body = String::from_utf8(b.finish(Compression::None).body).unwrap();
        assert!(decode_batch(body.as_bytes(), Compression::None, 1 << 20).is_ok());
        let bad = body.replacen("\"log\":{", "\"hos\":{", 1);
        let err = decode_batch(bad.as_bytes(), Compression::None, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("log.offset"), "{err}");
    }

    #[test]
    fn bad_version_2_frames_are_refused_naming_their_line() {
        let mut b = BatchBuilder::new("node");
        b.push_log(&record(1));
        let body = String::from_utf8(b.finish(Compression::None).body).unwrap();
        let lines: Vec<&str> = body.lines().collect();
        let (head, good, source) = (lines[0], lines[1], lines[2]);
        let (json, trailer) = good.rsplit_once(" 0 ").unwrap();
        let at: usize = trailer.parse().unwrap();
        let cases = [
            (format!("{json} 1 {at}"), "source 1 does not exist"),
            (format!("{json} 0"), "ends with"),
            (format!("{json} 0 x{at}"), "ends with"),
            (
                format!("{json} 0 {}", at + 1),
                "not where log.offset begins",
            ),
            (format!("{json} 0 99999"), "not where log.offset begins"),
            (
                format!(
                    "{} 0 {}",
                    json.replacen("{\"event\":{", "{\"event\":{\"ingested\":\"t\",", 1),
                    at + 16
                ),
                "event.ingested",
            ),
            (
                format!(
                    "{} 0 {at}",
                    json.replacen("\"@timestamp\"", "\"@timestanp\"", 1)
                ),
                "@timestamp",
            ),
            (
                format!(
                    "{} 0 {at}",
                    json.replacen("\"offset\":100", "\"offset\":1e2", 1)
                ),
                "log does not end",
            ),
        ];
        for (line, expected) in cases {
            let body = format!("{head}\n{line}\n{source}\n");
            match decode_batch(body.as_bytes(), Compression::None, 1 << 20) {
                Err(BatchError::Line { line: 2, reason }) => {
                    assert!(reason.contains(expected), "{reason} for {line}")
                }
                other => panic!("{line}: {other:?}"),
            }
        }
        let body = format!("{head}\n{good}\n{{\"log\":{{}}}}\n");
        match decode_batch(body.as_bytes(), Compression::None, 1 << 20) {
            Err(BatchError::Line { line: 3, reason }) => {
                assert!(reason.contains("bad source line"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// Only version 3 may leave the id out; its frame is then `{"event":{"created":…` or
    /// `{"event":{}`, and the id comes back derived from the source's fingerprint and offset.
    #[test]
    fn only_version_3_records_leave_the_id_out() {
        let mut r = record(1);
        r.event.id.clear();
        for created in [Some("2026-11-28T08:00:00Z".to_string()), None] {
            r.event.created = created;
            let mut b = BatchBuilder::new("node");
            b.push_log(&r);
            let body = String::from_utf8(b.finish(Compression::None).body).unwrap();
            let record_line = body.lines().nth(1).unwrap();
            assert!(!record_line.contains("\"id\""), "{record_line}");
            let d = decode_batch(body.as_bytes(), Compression::None, 1 << 20).unwrap();
            let id = crate::event_id(&r.log.file.fingerprint, r.log.offset);
            assert_eq!(d.id(&d.logs[0]), id);
            let whole: LogRecord = serde_json::from_slice(&d.record(&d.logs[0])).unwrap();
            assert_eq!(whole.event.id, id);
            assert_eq!(d.record_len(&d.logs[0]), d.record(&d.logs[0]).len());
            // The same frame in a version 2 batch is refused.
            let as_v2 = body.replacen("{\"ferry\":3,", "{\"ferry\":2,", 1);
            match decode_batch(as_v2.as_bytes(), Compression::None, 1 << 20) {
                Err(BatchError::Line { line: 2, reason }) => {
                    assert!(reason.contains("version 2 record begins with"), "{reason}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn count_mismatch_and_version_are_refused() {
        let body = b"{\"ferry\":1,\"host\":\"h\",\"logs\":3,\"stats\":0}\n";
        assert!(matches!(
            decode_batch(body, Compression::None, 1024),
            Err(BatchError::Count {
                expected: 3,
                found: 0
            })
        ));
        let body = b"{\"ferry\":2,\"host\":\"h\",\"logs\":0,\"stats\":0,\"sources\":1}\n";
        assert!(matches!(
            decode_batch(body, Compression::None, 1024),
            Err(BatchError::Count {
                expected: 1,
                found: 0
            })
        ));
        let body = b"{\"ferry\":9,\"host\":\"h\",\"logs\":0,\"stats\":0}\n";
        assert!(matches!(
            decode_batch(body, Compression::None, 1024),
            Err(BatchError::Line { line: 1, .. })
        ));
    }

    #[test]
    fn splices_ingested_without_reencoding() {
        let line = serde_json::to_vec(&record(3)).unwrap();
        let mut out = Vec::new();
        splice_ingested(&line, "2026-11-28T09:00:00Z", &mut out);
        let back: LogRecord = serde_json::from_slice(&out).unwrap();
        assert_eq!(back.event.ingested.as_deref(), Some("2026-11-28T09:00:00Z"));
        let mut expected = record(3);
        expected.event.ingested = back.event.ingested.clone();
        assert_eq!(back, expected);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut b = BatchBuilder::new("h");
        b.push_log(&record(1));
        let v2 = b.finish(Compression::None).body;
        for _ in 0..4000 {
            let len = rng.usize(0..300);
            let noise: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let prefix: &[u8] = match rng.u8(0..3) {
                0 => b"{\"ferry\":1,\"host\":\"h\",\"logs\":1,\"stats\":0}\n",
                1 => b"{\"ferry\":2,\"host\":\"h\",\"logs\":1,\"stats\":0,\"sources\":1}\n",
                _ => b"",
            };
            let mut body = [prefix, &noise].concat();
            if rng.bool() {
                // A valid version 2 batch with some bytes changed.
                body = v2.clone();
                for _ in 0..rng.usize(1..4) {
                    let at = rng.usize(..body.len());
                    body[at] = rng.u8(..);
                }
            }
            // A queue entry is read without its UTF-8 checked again: nothing may panic either.
            if let Ok(batch) = parse_batch(body.clone()) {
                for log in &batch.logs {
                    let mut out = Vec::new();
                    batch.write_record(log, Some(&Ingested::new("t")), &mut out);
                    let _ = (batch.id(log), batch.timestamp(log), batch.record(log));
                }
            }
            for compression in [
                Compression::None,
                Compression::Gzip { level: 1 },
                Compression::Zstd { level: 1 },
                Compression::Lz4,
            ] {
                if let Ok(batch) = decode_batch(&body, compression, 1 << 16) {
                    for log in &batch.logs {
                        let mut out = Vec::new();
                        batch.write_record(log, Some(&Ingested::new("t")), &mut out);
                        let _ = (batch.id(log), batch.timestamp(log), batch.fingerprint(log));
                    }
                }
            }
        }
    }
}
