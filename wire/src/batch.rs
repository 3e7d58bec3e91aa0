//! The batch codec: what travels from agent to aggregator in one request body.
//!
//! Layout (NDJSON, optionally gzip- or zstd-compressed as a whole):
//! ```text
//! {"ferry":1,"host":"node-1","logs":2,"stats":1}     <- header, line 1
//! {"event":{"id":"…"},"@timestamp":"…",…}              <- `logs` log records
//! {"event":{"id":"…"},"@timestamp":"…",…}
//! {"@timestamp":"…","metrics":{…},…}                   <- `stats` stats samples
//! ```
//! Decoding is bounded: the decompressed size is capped before it is allocated, and every error
//! names the line (1-based, header = line 1) and what was wrong with it.

use std::borrow::Cow;
use std::io::{Read, Write};
use std::ops::Range;

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};

use crate::record::{LogRecord, StatsSample};

/// The batch format version this build writes and reads.
pub const WIRE_VERSION: u32 = 1;

/// How a batch body is compressed; sent as the `Content-Encoding` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip {
        level: u32,
    },
    /// zstd: about twice as fast as gzip level 1 at a better ratio; the agent's default.
    Zstd {
        level: i32,
    },
}

impl Compression {
    /// The `Content-Encoding` value for this compression.
    pub fn content_encoding(self) -> &'static str {
        match self {
            Compression::None => "identity",
            Compression::Gzip { .. } => "gzip",
            Compression::Zstd { .. } => "zstd",
        }
    }

    /// Parses a `Content-Encoding` header value (absent means identity).
    pub fn from_content_encoding(value: Option<&str>) -> Result<Self, BatchError> {
        match value.map(str::trim) {
            None | Some("") | Some("identity") => Ok(Compression::None),
            Some(v) if v.eq_ignore_ascii_case("gzip") => Ok(Compression::Gzip { level: 1 }),
            Some(v) if v.eq_ignore_ascii_case("zstd") => Ok(Compression::Zstd { level: 1 }),
            Some(other) => Err(BatchError::Encoding(other.to_string())),
        }
    }
}

/// The first line of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchHeader {
    /// Format version ([`WIRE_VERSION`]).
    pub ferry: u32,
    /// The agent's `host.name`.
    pub host: String,
    pub logs: usize,
    pub stats: usize,
    /// Source fingerprints the agent has durably forgotten (their files are gone and fully
    /// read): it will never send a record of them again, so a store may drop their
    /// de-duplication state once this batch is committed. Absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<String>,
}

/// A batch ready to send.
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    pub body: Vec<u8>,
    pub compression: Compression,
    pub logs: usize,
    pub stats: usize,
    /// Size before compression.
    pub raw_bytes: usize,
}

/// Collects records into the NDJSON body of one batch.
///
/// The log records are written after room left for the header line, so that a sealed batch is
/// one contiguous buffer: the header (whose counts are only known at the end) is written into
/// the end of that room and the body compressed from there, with no copy of the records.
#[derive(Debug)]
pub struct BatchBuilder {
    host: String,
    /// The longest header line this builder can write.
    room: usize,
    /// `room` bytes, then the log records.
    logs: Vec<u8>,
    stats: Vec<u8>,
    log_count: usize,
    stats_count: usize,
    zstd: ZstdContext,
    escapes: crate::json::Escapes,
}

/// One zstd compression context, kept across batches (no context set up per batch).
#[derive(Default)]
struct ZstdContext {
    level: i32,
    compressor: Option<zstd::bulk::Compressor<'static>>,
}

impl std::fmt::Debug for ZstdContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZstdContext")
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

impl ZstdContext {
    fn compress(&mut self, data: &[u8], level: i32) -> Vec<u8> {
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

impl BatchBuilder {
    pub fn new(host: impl Into<String>) -> Self {
        let host = host.into();
        let longest = BatchHeader {
            ferry: WIRE_VERSION,
            host: host.clone(),
            logs: usize::MAX,
            stats: usize::MAX,
            retired: Vec::new(),
        };
        let room = serde_json::to_vec(&longest)
            .expect("header serialises")
            .len()
            + 1;
        BatchBuilder {
            host,
            room,
            logs: vec![b' '; room],
            stats: Vec::new(),
            log_count: 0,
            stats_count: 0,
            zstd: ZstdContext::default(),
            escapes: Default::default(),
        }
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
        crate::json::write_log_record(&mut self.logs, record, &mut self.escapes, extra);
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

    /// Uncompressed size of the records collected so far.
    pub fn bytes(&self) -> usize {
        self.logs.len() - self.room + self.stats.len()
    }

    /// Empties the builder like [`BatchBuilder::finish`] without making a body: the batch has its
    /// counts and sizes and nothing to send (for an agent whose output discards).
    pub fn discard(&mut self) -> EncodedBatch {
        let batch = EncodedBatch {
            body: Vec::new(),
            compression: Compression::None,
            logs: self.log_count,
            stats: self.stats_count,
            raw_bytes: self.bytes(),
        };
        self.logs.truncate(self.room);
        self.stats.clear();
        self.log_count = 0;
        self.stats_count = 0;
        batch
    }

    /// Seals the batch and leaves the builder empty (buffers keep their capacity).
    pub fn finish(&mut self, compression: Compression) -> EncodedBatch {
        let header = BatchHeader {
            ferry: WIRE_VERSION,
            host: self.host.clone(),
            logs: self.log_count,
            stats: self.stats_count,
            retired: Vec::new(),
        };
        let mut head = serde_json::to_vec(&header).expect("header serialises");
        head.push(b'\n');
        let start = self.room - head.len();
        self.logs[start..self.room].copy_from_slice(&head);
        self.logs.extend_from_slice(&self.stats);
        let data = &self.logs[start..];
        let raw_bytes = data.len();
        let body = match compression {
            Compression::None => data.to_vec(),
            Compression::Gzip { level } => {
                let out = Vec::with_capacity(raw_bytes / 6 + 64);
                let mut enc = GzEncoder::new(out, flate2::Compression::new(level.min(9)));
                enc.write_all(data).expect("writing to a Vec cannot fail");
                enc.finish().expect("writing to a Vec cannot fail")
            }
            Compression::Zstd { level } => self.zstd.compress(data, level),
        };
        let batch = EncodedBatch {
            body,
            compression,
            logs: self.log_count,
            stats: self.stats_count,
            raw_bytes,
        };
        self.logs.truncate(self.room);
        self.stats.clear();
        self.log_count = 0;
        self.stats_count = 0;
        batch
    }
}

/// Why a batch was refused. Every variant says where and what.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("unsupported Content-Encoding {0:?} (expected zstd, gzip or identity)")]
    Encoding(String),
    #[error("body is not valid gzip or zstd: {0}")]
    Compression(String),
    #[error("decompressed body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("empty batch: no header line")]
    Empty,
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("header says {expected} records but the body has {found}")]
    Count { expected: usize, found: usize },
}

/// The keys the aggregator needs from a log record, borrowed from the line.
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

/// One log record of a decoded batch: its line and the keys that order and identify it.
#[derive(Debug, Clone)]
pub struct DecodedLog {
    pub line: Range<usize>,
    pub id: String,
    pub fingerprint: String,
    pub offset: u64,
    pub timestamp: String,
}

/// A batch that passed validation.
#[derive(Debug)]
pub struct DecodedBatch {
    pub header: BatchHeader,
    /// The decompressed NDJSON body.
    pub data: Vec<u8>,
    pub logs: Vec<DecodedLog>,
    pub stats: Vec<StatsSample>,
}

impl DecodedBatch {
    pub fn log_line(&self, log: &DecodedLog) -> &[u8] {
        &self.data[log.line.clone()]
    }
}

/// Decompresses (at most `max_decompressed` bytes) and validates a batch body.
pub fn decode_batch(
    body: &[u8],
    compression: Compression,
    max_decompressed: usize,
) -> Result<DecodedBatch, BatchError> {
    parse_body(decompress(body, compression, max_decompressed)?)
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
            body.to_vec()
        }
        Compression::Gzip { .. } => {
            let dec = GzDecoder::new(body);
            read_bounded(dec, body.len().saturating_mul(4), max_decompressed)?
        }
        Compression::Zstd { .. } => {
            let dec = zstd::stream::Decoder::new(body)
                .map_err(|e| BatchError::Compression(e.to_string()))?;
            read_bounded(dec, body.len().saturating_mul(6), max_decompressed)?
        }
    };
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

fn parse_body(data: Vec<u8>) -> Result<DecodedBatch, BatchError> {
    let mut lines = LineRanges::new(&data);
    let (_, head_range) = lines.next().ok_or(BatchError::Empty)?;
    let header: BatchHeader =
        serde_json::from_slice(&data[head_range]).map_err(|e| BatchError::Line {
            line: 1,
            reason: format!("bad batch header: {e}"),
        })?;
    if header.ferry != WIRE_VERSION {
        return Err(BatchError::Line {
            line: 1,
            reason: format!(
                "batch format version {} is not supported (this build reads version {WIRE_VERSION})",
                header.ferry
            ),
        });
    }
    let expected = header.logs + header.stats;
    let mut logs = Vec::with_capacity(header.logs.min(1 << 20));
    let mut stats = Vec::new();
    let mut found = 0;
    for (line_no, range) in lines {
        found += 1;
        if found > expected {
            continue;
        }
        let line = &data[range.clone()];
        if found <= header.logs {
            let keys: RecordKeys<'_> =
                serde_json::from_slice(line).map_err(|e| BatchError::Line {
                    line: line_no,
                    reason: format!("bad log record: {e}"),
                })?;
            logs.push(DecodedLog {
                line: range,
                id: keys.event.id.into_owned(),
                fingerprint: keys.log.file.fingerprint.into_owned(),
                offset: keys.log.offset,
                timestamp: keys.timestamp.into_owned(),
            });
        } else {
            let sample: StatsSample =
                serde_json::from_slice(line).map_err(|e| BatchError::Line {
                    line: line_no,
                    reason: format!("bad stats sample: {e}"),
                })?;
            stats.push(sample);
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
    })
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
    const PREFIX: &[u8] = b"{\"event\":{";
    if line.starts_with(PREFIX) && !line[PREFIX.len()..].starts_with(b"\"ingested\"") {
        out.extend_from_slice(PREFIX);
        out.extend_from_slice(b"\"ingested\":");
        serde_json::to_writer(&mut *out, ingested).expect("writing to a Vec cannot fail");
        out.push(b',');
        out.extend_from_slice(&line[PREFIX.len()..]);
    } else {
        match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(mut value) => {
                if let Some(event) = value.get_mut("event").and_then(|e| e.as_object_mut()) {
                    event.insert("ingested".into(), ingested.into());
                }
                serde_json::to_writer(&mut *out, &value).expect("writing to a Vec cannot fail");
            }
            Err(_) => out.extend_from_slice(line),
        }
    }
    out.push(b'\n');
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
    fn round_trips_through_gzip_and_plain() {
        for compression in [
            Compression::None,
            Compression::Gzip { level: 1 },
            Compression::Zstd { level: 1 },
        ] {
            // The header is written into room left before the records: a host name that needs
            // escaping, and a builder used for several batches of different sizes.
            let mut b = BatchBuilder::new("nöde \"1\"");
            for n in [3, 0] {
                for r in (0..n).map(record) {
                    b.push_log(&r);
                }
                let dec = decode_batch(&b.finish(compression).body, compression, 1 << 20).unwrap();
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
            assert_eq!(dec.logs.len(), 50);
            assert_eq!(dec.stats.len(), 1);
            for (r, d) in records.iter().zip(&dec.logs) {
                let back: LogRecord = serde_json::from_slice(dec.log_line(d)).unwrap();
                assert_eq!(&back, r);
                assert_eq!(d.offset, r.log.offset);
                assert_eq!(d.id, r.event.id);
            }
        }
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
    fn bad_record_names_its_line() {
        let mut b = BatchBuilder::new("node");
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
        for _ in 0..2000 {
            let len = rng.usize(0..300);
            let mut body: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if rng.bool() {
                body.splice(
                    0..0,
                    b"{\"ferry\":1,\"host\":\"h\",\"logs\":1,\"stats\":0}\n"
                        .iter()
                        .copied(),
                );
            }
            let _ = decode_batch(&body, Compression::None, 1 << 16);
            let _ = decode_batch(&body, Compression::Gzip { level: 1 }, 1 << 16);
            let _ = decode_batch(&body, Compression::Zstd { level: 1 }, 1 << 16);
        }
    }
}
