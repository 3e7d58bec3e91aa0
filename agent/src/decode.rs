//! Line decoders: Docker json-file, CRI and plain lines, with partial-line joining.
//!
//! A [`Decoder`] belongs to one file. It is fed complete lines (without their `\n`) together with
//! their byte offset and emits zero or one [`Decoded`] record per line. It never drops input: a line
//! that does not have the expected shape becomes a record holding the raw line with a `malformed_*`
//! flag. Partial messages (Docker's 16 KiB chunks, CRI `P` lines) are joined per stream; the joined
//! record carries the offset of the line that completed it, so records leave in strictly
//! increasing offset order. Joined messages are capped at `max_line_bytes`, so a decoder holds at
//! most that much per stream. The decoder knows nothing about files or batches.

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};
use ferry_wire::{Flag, Stream};
use serde::Deserialize;

/// How lines of one file are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Docker,
    Cri,
    Plain,
}

/// A small set of [`Flag`]s.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flags(u8);

impl Flags {
    fn bit(flag: Flag) -> u8 {
        1 << Flag::ALL.iter().position(|f| *f == flag).unwrap_or(0)
    }

    pub fn with(mut self, flag: Flag) -> Self {
        self.0 |= Self::bit(flag);
        self
    }

    pub fn set(&mut self, flag: Flag) {
        self.0 |= Self::bit(flag);
    }

    pub fn contains(self, flag: Flag) -> bool {
        self.0 & Self::bit(flag) != 0
    }

    pub fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// The flags in a fixed order.
    pub fn iter(self) -> impl Iterator<Item = Flag> {
        Flag::ALL.into_iter().filter(move |f| self.contains(*f))
    }
}

/// One decoded record, borrowing from the line or the decoder's join buffer.
#[derive(Debug)]
pub(crate) struct Decoded<'a> {
    pub message: Cow<'a, str>,
    /// The time the container runtime recorded (RFC 3339, UTC); `None` for plain lines.
    pub timestamp: Option<Cow<'a, str>>,
    pub stream: Option<Stream>,
    /// Offset of the line that completed the record.
    pub offset: u64,
    /// Offset of the record's first line (its first part, for a joined partial message).
    pub start: u64,
    pub flags: Flags,
}

/// A partial message waiting for its last part.
#[derive(Debug, Default)]
struct Partial {
    /// Offset of the first part (the checkpoint may not move past it).
    start: u64,
    parts: u32,
    timestamp: Option<String>,
    flags: Flags,
}

/// Decoder state of one file.
#[derive(Debug)]
pub(crate) struct Decoder {
    format: Format,
    max_line_bytes: usize,
    /// Pending partial per stream (index 0 stdout, 1 stderr).
    partials: [Option<Partial>; 2],
    /// Join buffers, kept across records to reuse their capacity.
    bufs: [Vec<u8>; 2],
}

#[derive(Deserialize)]
struct DockerLine<'a> {
    #[serde(borrow)]
    log: Cow<'a, str>,
    #[serde(borrow, default)]
    stream: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    time: Option<Cow<'a, str>>,
}

impl Decoder {
    pub fn new(format: Format, max_line_bytes: usize) -> Self {
        Decoder {
            format,
            max_line_bytes,
            partials: [None, None],
            bufs: [Vec::new(), Vec::new()],
        }
    }

    /// Start offset of the oldest pending partial message, if any.
    pub fn pending_start(&self) -> Option<u64> {
        self.partials.iter().flatten().map(|p| p.start).min()
    }

    /// Bytes held in join buffers (capacity), for memory assertions.
    #[cfg(test)]
    pub fn held_bytes(&self) -> usize {
        self.bufs.iter().map(Vec::capacity).sum()
    }

    /// Decodes one line (without its `\n`) that starts at `offset`. `base` carries what the reader
    /// already knows: `truncated` (the line was longer than `max_line_bytes` and `line` holds its
    /// first bytes only) or `incomplete` (the file ended without a `\n`).
    pub fn push_line(
        &mut self,
        line: &[u8],
        offset: u64,
        base: Flags,
        emit: impl FnOnce(Decoded<'_>),
    ) {
        match self.format {
            Format::Plain => {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let (message, flags) = text(line, self.max_line_bytes);
                emit(Decoded {
                    message,
                    timestamp: None,
                    stream: None,
                    offset,
                    start: offset,
                    flags: base.union(flags),
                });
            }
            Format::Docker => self.push_docker(line, offset, base, emit),
            Format::Cri => self.push_cri(line, offset, base, emit),
        }
    }

    fn push_docker(
        &mut self,
        line: &[u8],
        offset: u64,
        base: Flags,
        emit: impl FnOnce(Decoded<'_>),
    ) {
        let parsed: DockerLine<'_> = match serde_json::from_slice(line) {
            Ok(parsed) => parsed,
            Err(_) => {
                return emit(raw(
                    line,
                    offset,
                    base.with(Flag::MalformedJson),
                    self.max_line_bytes,
                ))
            }
        };
        let stream = match parsed.stream.as_deref() {
            Some("stderr") => Stream::Stderr,
            _ => Stream::Stdout,
        };
        let timestamp = parsed.time.as_deref().and_then(normalize_time);
        let (body, complete) = match parsed.log.strip_suffix('\n') {
            Some(body) => (body.strip_suffix('\r').unwrap_or(body), true),
            None => (&parsed.log[..], false),
        };
        self.join(
            stream,
            body.as_bytes(),
            complete,
            offset,
            base,
            timestamp,
            emit,
        );
    }

    fn push_cri(&mut self, line: &[u8], offset: u64, base: Flags, emit: impl FnOnce(Decoded<'_>)) {
        let Some(cri) = CriLine::split(line) else {
            return emit(raw(
                line,
                offset,
                base.with(Flag::MalformedCri),
                self.max_line_bytes,
            ));
        };
        self.join(
            cri.stream,
            cri.message,
            cri.complete,
            offset,
            base,
            Some(cri.timestamp),
            emit,
        );
    }

    /// Adds one part to the stream's partial message; emits when `complete`.
    #[allow(clippy::too_many_arguments)]
    fn join(
        &mut self,
        stream: Stream,
        part: &[u8],
        complete: bool,
        offset: u64,
        flags: Flags,
        timestamp: Option<Cow<'_, str>>,
        emit: impl FnOnce(Decoded<'_>),
    ) {
        let slot = stream_index(stream);
        if complete && self.partials[slot].is_none() {
            let (message, text_flags) = text(part, self.max_line_bytes);
            return emit(Decoded {
                message,
                timestamp,
                stream: Some(stream),
                offset,
                start: offset,
                flags: flags.union(text_flags),
            });
        }
        let max = self.max_line_bytes;
        let partial = self.partials[slot].get_or_insert_with(|| Partial {
            start: offset,
            parts: 0,
            timestamp: timestamp.as_deref().map(str::to_string),
            flags: Flags::default(),
        });
        partial.parts += 1;
        partial.flags = partial.flags.union(flags);
        let buf = &mut self.bufs[slot];
        let room = max.saturating_sub(buf.len());
        if part.len() > room {
            buf.extend_from_slice(&part[..utf8_cut(part, room)]);
            partial.flags.set(Flag::Truncated);
        } else {
            buf.extend_from_slice(part);
        }
        if complete {
            self.emit_partial(slot, offset, Flags::default(), emit);
        }
    }

    fn emit_partial(
        &mut self,
        slot: usize,
        offset: u64,
        extra: Flags,
        emit: impl FnOnce(Decoded<'_>),
    ) {
        let Some(partial) = self.partials[slot].take() else {
            return;
        };
        let mut flags = partial.flags.union(extra);
        if partial.parts > 1 {
            flags.set(Flag::Joined);
        }
        let buf = &self.bufs[slot];
        let message = lossy(buf);
        if matches!(message, Cow::Owned(_)) {
            flags.set(Flag::InvalidUtf8);
        }
        emit(Decoded {
            message,
            timestamp: partial.timestamp.as_deref().map(Cow::Borrowed),
            stream: Some(if slot == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            }),
            offset,
            start: partial.start,
            flags,
        });
        let buf = &mut self.bufs[slot];
        buf.clear();
        if buf.capacity() > 64 * 1024 {
            buf.shrink_to(64 * 1024);
        }
    }

    /// Emits pending partial messages flagged `incomplete` because the file ended for good
    /// (deleted, rotated away, truncated). They get offsets `end`, `end + 1`, … in the order they
    /// started: past every line of the file, so the order rule holds and the ids stay stable.
    pub fn flush(&mut self, end: u64, mut emit: impl FnMut(Decoded<'_>)) {
        let mut slots: Vec<usize> = (0..2).filter(|s| self.partials[*s].is_some()).collect();
        slots.sort_by_key(|s| self.partials[*s].as_ref().map(|p| p.start));
        for (i, slot) in slots.into_iter().enumerate() {
            let incomplete = Flags::default().with(Flag::Incomplete);
            self.emit_partial(slot, end + i as u64, incomplete, &mut emit);
        }
    }
}

fn stream_index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

/// A CRI log line, borrowed.
struct CriLine<'a> {
    timestamp: Cow<'a, str>,
    stream: Stream,
    complete: bool,
    message: &'a [u8],
}

impl<'a> CriLine<'a> {
    /// `<RFC3339Nano> <stdout|stderr> <P|F>[:tags] <message>`; `None` if the line has another shape.
    fn split(line: &'a [u8]) -> Option<Self> {
        let mut fields = line.splitn(4, |b| *b == b' ');
        let time = std::str::from_utf8(fields.next()?).ok()?;
        let stream = match fields.next()? {
            b"stdout" => Stream::Stdout,
            b"stderr" => Stream::Stderr,
            _ => return None,
        };
        let tag = fields.next()?;
        let complete = match tag.split(|b| *b == b':').next()? {
            b"F" => true,
            b"P" => false,
            _ => return None,
        };
        let message = fields.next().unwrap_or(b"");
        Some(CriLine {
            timestamp: normalize_time(time)?,
            stream,
            complete,
            message,
        })
    }
}

/// RFC 3339 in any offset → RFC 3339 UTC; a `…Z` input with a `T` is returned as it is (RFC
/// 3339 also allows `t`, `z` and a space, which Elasticsearch's date format does not take: such
/// times are written out again; found by the `decode_docker` fuzz target).
pub(crate) fn normalize_time(time: &str) -> Option<Cow<'_, str>> {
    let parsed = DateTime::parse_from_rfc3339(time).ok()?;
    if time.ends_with('Z') && time.as_bytes().get(10) == Some(&b'T') {
        Some(Cow::Borrowed(time))
    } else {
        Some(Cow::Owned(
            parsed
                .with_timezone(&Utc)
                .to_rfc3339_opts(SecondsFormat::AutoSi, true),
        ))
    }
}

/// The line itself as the message (for malformed lines).
fn raw(line: &[u8], offset: u64, flags: Flags, max: usize) -> Decoded<'_> {
    let (message, text_flags) = text(line, max);
    Decoded {
        message,
        timestamp: None,
        stream: None,
        offset,
        start: offset,
        flags: flags.union(text_flags),
    }
}

/// Bytes → text, cut to `max` bytes at a character boundary, invalid UTF-8 replaced.
fn text(bytes: &[u8], max: usize) -> (Cow<'_, str>, Flags) {
    let mut flags = Flags::default();
    let bytes = if bytes.len() > max {
        flags.set(Flag::Truncated);
        &bytes[..utf8_cut(bytes, max)]
    } else {
        bytes
    };
    let message = lossy(bytes);
    if matches!(message, Cow::Owned(_)) {
        flags.set(Flag::InvalidUtf8);
    }
    (message, flags)
}

/// `String::from_utf8_lossy` with the validation done by `str::from_utf8`, whose ASCII fast path
/// is several times quicker on log lines; only invalid input takes the slow, replacing path.
fn lossy(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// The largest `n <= max` that does not split a UTF-8 sequence of `bytes` (falls back to `max`
/// when the bytes are not UTF-8 around the cut anyway).
pub(crate) fn utf8_cut(bytes: &[u8], max: usize) -> usize {
    if max >= bytes.len() {
        return bytes.len();
    }
    let mut n = max;
    while n > 0 && max - n < 4 && (bytes[n] & 0xC0) == 0x80 {
        n -= 1;
    }
    if max - n >= 4 {
        max
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Rec {
        message: String,
        timestamp: Option<String>,
        stream: Option<Stream>,
        offset: u64,
        flags: Vec<Flag>,
    }

    fn feed(dec: &mut Decoder, lines: &[&[u8]]) -> Vec<Rec> {
        let mut out = Vec::new();
        let mut offset = 0u64;
        for line in lines {
            dec.push_line(line, offset, Flags::default(), |d| out.push(rec(d)));
            offset += line.len() as u64 + 1;
        }
        out
    }

    fn rec(d: Decoded<'_>) -> Rec {
        Rec {
            message: d.message.into_owned(),
            timestamp: d.timestamp.map(Cow::into_owned),
            stream: d.stream,
            offset: d.offset,
            flags: d.flags.iter().collect(),
        }
    }

    fn docker_line(log: &str, stream: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "log": log, "stream": stream, "time": "2026-11-28T08:00:00.123456789Z"
        }))
        .unwrap()
    }

    /// Fuzzing found it (`decode_docker`, `decode_cri`): a time with a lower-case `t` (valid
    /// RFC 3339) was passed on as it was, and Elasticsearch refuses it.
    #[test]
    fn lower_case_rfc3339_times_are_written_out_in_the_canonical_form() {
        assert_eq!(
            normalize_time("2026-11-28t08:00:00.5z").as_deref(),
            Some("2026-11-28T08:00:00.500Z")
        );
        assert_eq!(
            normalize_time("2026-11-28t08:00:00.123456789Z").as_deref(),
            Some("2026-11-28T08:00:00.123456789Z")
        );
        let canonical = "2026-11-28T08:00:00.123456789Z";
        assert!(matches!(normalize_time(canonical), Some(Cow::Borrowed(t)) if t == canonical));
    }

    #[test]
    fn docker_partials_of_a_40k_line_are_joined() {
        let message: String = (0..40 * 1024)
            .map(|i| (b'a' + (i % 26) as u8) as char)
            .collect();
        let chunks: Vec<&str> = vec![&message[..16384], &message[16384..32768], &message[32768..]];
        let mut lines = vec![docker_line("before\n", "stdout")];
        lines.push(docker_line(chunks[0], "stdout"));
        lines.push(docker_line(chunks[1], "stdout"));
        lines.push(docker_line(&format!("{}\n", chunks[2]), "stdout"));
        lines.push(docker_line("after\n", "stdout"));
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        let mut dec = Decoder::new(Format::Docker, 256 * 1024);
        let out = feed(&mut dec, &refs);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].message, "before");
        assert_eq!(out[1].message, message);
        assert_eq!(out[1].flags, [Flag::Joined]);
        let last_part_offset: u64 = lines[..3].iter().map(|l| l.len() as u64 + 1).sum();
        assert_eq!(
            out[1].offset, last_part_offset,
            "joined record carries the last part's offset"
        );
        assert_eq!(
            out[1].timestamp.as_deref(),
            Some("2026-11-28T08:00:00.123456789Z")
        );
        assert_eq!(out[2].message, "after");
        assert!(out.windows(2).all(|w| w[0].offset < w[1].offset));
        assert_eq!(dec.pending_start(), None);
    }

    #[test]
    fn docker_pending_partial_holds_the_checkpoint_back() {
        let mut dec = Decoder::new(Format::Docker, 1024);
        let first = docker_line("part one ", "stderr");
        let out = feed(&mut dec, &[&first]);
        assert!(out.is_empty());
        assert_eq!(dec.pending_start(), Some(0));
    }

    #[test]
    fn cri_partials_are_joined_per_stream_in_offset_order() {
        let lines: Vec<&[u8]> = vec![
            b"2026-11-28T08:00:00.000000001Z stdout P out-a ",
            b"2026-11-28T08:00:00.000000002Z stderr P err-a ",
            b"2026-11-28T08:00:00.000000003Z stdout P out-b ",
            b"2026-11-28T08:00:00.000000004Z stderr F err-b",
            b"2026-11-28T08:00:00.000000005Z stdout F out-c",
            b"2026-11-28T09:00:00+01:00 stdout F single",
        ];
        let mut dec = Decoder::new(Format::Cri, 1024);
        let mut out = Vec::new();
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for line in &lines {
            offsets.push(offset);
            dec.push_line(line, offset, Flags::default(), |d| out.push(rec(d)));
            if out.is_empty() {
                assert_eq!(dec.pending_start(), Some(0));
            }
            offset += line.len() as u64 + 1;
        }
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].message, "err-a err-b");
        assert_eq!(out[0].stream, Some(Stream::Stderr));
        assert_eq!(out[0].offset, offsets[3]);
        assert_eq!(
            out[0].timestamp.as_deref(),
            Some("2026-11-28T08:00:00.000000002Z")
        );
        assert_eq!(out[1].message, "out-a out-b out-c");
        assert_eq!(out[1].stream, Some(Stream::Stdout));
        assert_eq!(out[1].offset, offsets[4]);
        assert_eq!(out[1].flags, [Flag::Joined]);
        assert_eq!(out[2].message, "single");
        assert_eq!(out[2].timestamp.as_deref(), Some("2026-11-28T08:00:00Z"));
        assert!(out.windows(2).all(|w| w[0].offset < w[1].offset));
        assert_eq!(dec.pending_start(), None);
    }

    #[test]
    fn malformed_lines_are_kept_and_flagged() {
        let mut dec = Decoder::new(Format::Docker, 1024);
        let out = feed(&mut dec, &[b"{\"log\":\"cut", b"not json at all"]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].message, "{\"log\":\"cut");
        assert_eq!(out[0].flags, [Flag::MalformedJson]);
        assert_eq!(out[1].message, "not json at all");

        let mut dec = Decoder::new(Format::Cri, 1024);
        let out = feed(
            &mut dec,
            &[
                b"garbage line",
                b"2026-11-28T08:00:00Z stdin F x",
                b"not-a-time stdout F x",
                b"2026-11-28T08:00:00Z stdout F",
            ],
        );
        assert_eq!(out.len(), 4);
        for r in &out[..3] {
            assert_eq!(r.flags, [Flag::MalformedCri], "{r:?}");
        }
        assert_eq!(out[0].message, "garbage line");
        assert_eq!(out[3].message, "");
        assert_eq!(out[3].flags, []);
    }

    #[test]
    fn invalid_utf8_is_lossy_and_flagged_and_nul_is_kept() {
        let mut dec = Decoder::new(Format::Plain, 1024);
        let out = feed(&mut dec, &[b"bad \xff\xfe byte", b"nul \0 inside\r"]);
        assert_eq!(out[0].message, "bad \u{fffd}\u{fffd} byte");
        assert_eq!(out[0].flags, [Flag::InvalidUtf8]);
        assert_eq!(out[1].message, "nul \0 inside");
        assert_eq!(out[1].flags, []);

        let mut dec = Decoder::new(Format::Cri, 1024);
        let out = feed(&mut dec, &[b"2026-11-28T08:00:00Z stdout F caf\xc3"]);
        assert_eq!(out[0].flags, [Flag::InvalidUtf8]);

        let mut dec = Decoder::new(Format::Docker, 1024);
        let line = docker_line("nul \u{0} kept\n", "stdout");
        let out = feed(&mut dec, &[&line]);
        assert_eq!(out[0].message, "nul \0 kept");
    }

    #[test]
    fn joined_message_is_capped_and_flagged() {
        let mut dec = Decoder::new(Format::Cri, 10);
        let out = feed(
            &mut dec,
            &[
                b"2026-11-28T08:00:00Z stdout P 123456",
                b"2026-11-28T08:00:00Z stdout P 789abc",
                b"2026-11-28T08:00:00Z stdout F def",
            ],
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].message, "123456789a");
        assert_eq!(out[0].flags, [Flag::Truncated, Flag::Joined]);
        assert!(dec.held_bytes() <= 64 * 1024);
    }

    #[test]
    fn flush_emits_pending_partials_past_the_end() {
        let mut dec = Decoder::new(Format::Cri, 1024);
        let lines: Vec<&[u8]> = vec![
            b"2026-11-28T08:00:00Z stderr P e1",
            b"2026-11-28T08:00:00Z stdout P o1",
            b"2026-11-28T08:00:00Z stdout F o2",
            b"2026-11-28T08:00:00Z stdout P o3",
        ];
        let out = feed(&mut dec, &lines);
        assert_eq!(out.len(), 1);
        let mut flushed = Vec::new();
        dec.flush(500, |d| flushed.push(rec(d)));
        assert_eq!(flushed.len(), 2);
        assert_eq!(
            (flushed[0].message.as_str(), flushed[0].offset),
            ("e1", 500)
        );
        assert_eq!(
            (flushed[1].message.as_str(), flushed[1].offset),
            ("o3", 501)
        );
        assert_eq!(flushed[0].flags, [Flag::Incomplete]);
        assert_eq!(dec.pending_start(), None);
    }

    #[test]
    fn cut_never_splits_a_character() {
        let s = "aé€😀".as_bytes();
        for max in 0..=s.len() {
            let n = utf8_cut(s, max);
            assert!(n <= max);
            assert!(std::str::from_utf8(&s[..n]).is_ok(), "max {max} -> {n}");
        }
    }
}
