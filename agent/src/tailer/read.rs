//! Reading a file: large chunks into one buffer, lines split in place with `memchr`, an
//! incomplete last line read again next time, a line longer than `max_line_bytes` cut (its head
//! emitted, flagged `truncated`) and the rest skipped; and what happens to a file's pending
//! lines when it closes ([`Reader::finish`]) or was truncated in place ([`restart_truncated`]).
//! Whether a file was truncated, and where its source continues, is decided in `sources`.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use ferry_wire::Flag;
use tracing::warn;

use super::file::TailedFile;
use super::record::{Batcher, Group};
use crate::decode::Flags;
use crate::metrics::Metrics;

/// At most this many reads from one file before the loop moves on to the next (fairness).
const CHUNKS_PER_TURN: usize = 8;

/// What one turn of reading a file did.
#[derive(Debug, Default)]
pub(super) struct Turn {
    pub(super) progressed: bool,
    /// The open batch is full: seal it before reading on.
    pub(super) full: bool,
}

/// The read buffer (grown up to `max_line_bytes + 1` for a long line, never beyond).
pub(super) struct Reader {
    buf: Vec<u8>,
    max_line_bytes: usize,
    metrics: Arc<Metrics>,
}

impl Reader {
    pub(super) fn new(
        read_buffer_bytes: usize,
        max_line_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Reader {
            buf: vec![0; read_buffer_bytes],
            max_line_bytes,
            metrics,
        }
    }

    /// Reads up to [`CHUNKS_PER_TURN`] chunks of `f`, emitting every complete line.
    pub(super) fn read(
        &mut self,
        f: &mut TailedFile,
        g: &mut Group,
        out: &mut Batcher,
        read_time: &str,
    ) -> Turn {
        let mut turn = Turn::default();
        let max = self.max_line_bytes;
        for _ in 0..CHUNKS_PER_TURN {
            let want = self.buf.len();
            let n = match f.file.read_at(&mut self.buf[..want], f.pos) {
                Ok(n) => n,
                Err(error) => {
                    warn!(path = %f.path.display(), %error, "Read failed");
                    self.metrics
                        .error(format!("read {}: {error}", f.path.display()));
                    return turn;
                }
            };
            if n == 0 {
                f.eof_since.get_or_insert_with(Instant::now);
                return turn;
            }
            // The file was checked before this read, but a writer on its own schedule may have
            // truncated and refilled it since: then these bytes are another generation's, not
            // the rest of this source. Left unread; the next check finds the truncation.
            if !f.holds_source() {
                return turn;
            }
            let base = f.pos;
            let chunk = &self.buf[..n];
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
                        out.line(
                            f,
                            g,
                            &line[..max],
                            offset,
                            Flags::default().with(Flag::Truncated),
                            read_time,
                        );
                    } else {
                        out.line(f, g, line, offset, Flags::default(), read_time);
                    }
                    start += i + 1;
                    f.consumed = base + start as u64;
                    turn.progressed = true;
                    f.eof_since = None;
                    if out.full() {
                        turn.full = true;
                        break;
                    }
                }
            }
            let rest = n - start;
            let mut grow = false;
            if !turn.full && !f.skipping && rest > 0 {
                if rest > max {
                    // A line longer than the cap with no newline yet: emit its head now, skip the
                    // rest.
                    let offset = base + start as u64;
                    out.line(
                        f,
                        g,
                        &chunk[start..start + max],
                        offset,
                        Flags::default().with(Flag::Truncated),
                        read_time,
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
            f.note_tail(&chunk[..start]);
            self.metrics.bytes_read.fetch_add(start as u64, Relaxed);
            f.pos = base + start as u64;
            if grow {
                let len = (want * 2).min(max + 1).max(want);
                self.buf.reserve_exact(len - want);
                self.buf.resize(len, 0);
            }
            if turn.full || (n < want && !grow && !f.skipping) {
                return turn;
            }
        }
        turn
    }

    /// Emits a closing file's unterminated last line and pending partial messages, flagged
    /// incomplete.
    pub(super) fn finish(
        &self,
        f: &mut TailedFile,
        g: &mut Group,
        out: &mut Batcher,
        size: u64,
        read_time: &str,
    ) {
        if !f.skipping && f.pos < size {
            let len = ((size - f.pos) as usize).min(self.max_line_bytes);
            let mut tail = vec![0; len];
            if let Ok(n) = f.file.read_at(&mut tail, f.pos) {
                tail.truncate(n);
                let mut flags = Flags::default().with(Flag::Incomplete);
                if (size - f.pos) as usize > len {
                    flags.set(Flag::Truncated);
                }
                let offset = f.pos;
                out.line(f, g, &tail, offset, flags, read_time);
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
            decoder.flush(end, |d| out.accept(g, &source.r, d, read_time));
        }
    }
}

/// The file was truncated in place: pending partials and multiline events leave (partials flagged
/// incomplete), the old source is forgotten (once acked), and the file is read from 0 as the next
/// generation.
pub(super) fn restart_truncated(
    f: &mut TailedFile,
    g: &mut Group,
    out: &mut Batcher,
    removals: &mut Vec<String>,
    size: u64,
    read_time: &str,
) {
    if let Some(source) = f.source.take() {
        warn!(path = %f.path.display(), fingerprint = %source.r.fingerprint, size, offset = f.pos,
            "File truncated; reading it from the start as a new source");
        let end = f.pos;
        f.decoder
            .flush(end, |d| out.accept(g, &source.r, d, read_time));
        g.flush(out);
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::fs::File;
    use std::io::Write;

    use ferry_wire::{Compression, LogRecord};

    use super::super::checkpointing::{establish, Established};
    use super::super::Settings;
    use super::*;
    use crate::config::{AgentConfig, FormatConfig};
    use crate::decode::Decoder;
    use crate::enrich::Found;
    use crate::fingerprint::FileKey;
    use crate::rules::Rules;

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

    fn reader(s: &Settings) -> Reader {
        Reader::new(
            s.read_buffer_bytes,
            s.max_line_bytes,
            Arc::new(Metrics::default()),
        )
    }

    /// Reads until EOF; returns the decoded records.
    fn drain(f: &mut TailedFile, reader: &mut Reader, max_buf: &mut usize) -> Vec<LogRecord> {
        let mut out = Batcher::new(
            "h".into(),
            usize::MAX,
            usize::MAX,
            Arc::new(Metrics::default()),
        );
        let rules = Rules::load(Vec::new(), None).unwrap();
        let mut g = Group::new(Found::default(), "h", &rules);
        loop {
            let turn = reader.read(f, &mut g, &mut out, "2026-11-28T08:00:00Z");
            *max_buf = (*max_buf).max(reader.buf.capacity());
            if !turn.progressed {
                break;
            }
        }
        let batch = out.builder.finish(Compression::None);
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
        let mut reader = reader(&s);
        let mut max_buf = 0;
        let out = drain(&mut f, &mut reader, &mut max_buf);
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
        let out = drain(&mut f, &mut reader, &mut max_buf);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].message, "next");
        assert_eq!(f.committable(None), std::fs::metadata(&path).unwrap().len());
        assert!(max_buf <= s.max_line_bytes + s.read_buffer_bytes);
    }

    /// The file is checked for truncation before a read, but a writer may truncate and refill it
    /// between the check and the read: the bytes then read are another generation's and must not
    /// be emitted as the rest of this source (found by the copytruncate edge test: they came out
    /// under the old fingerprint and again from the copy).
    #[test]
    fn bytes_of_a_file_truncated_and_refilled_since_the_check_are_not_read_as_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, "first generation line 1\nline 2\n").unwrap();
        let s = settings(64 * 1024, 4096);
        let mut f = open(&path, &s);
        let mut reader = reader(&s);
        let mut max_buf = 0;
        let out = drain(&mut f, &mut reader, &mut max_buf);
        assert_eq!(out.len(), 2);
        let pos = f.pos;

        // Truncated and written again, past the read position, without a check in between.
        let w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        w.set_len(0).unwrap();
        std::fs::write(
            &path,
            "second generation, a longer first line\nmore\nand more\n",
        )
        .unwrap();
        let out = drain(&mut f, &mut reader, &mut max_buf);
        assert!(out.is_empty(), "read as the old source: {out:?}");
        assert_eq!(f.pos, pos, "nothing consumed");
        assert!(!f.holds_source());

        // Same first line, other bytes before the read position: also another generation.
        std::fs::write(&path, "first generation line 1\nLINE 2\nline 3\n").unwrap();
        let out = drain(&mut f, &mut reader, &mut max_buf);
        assert!(out.is_empty(), "read as the old source: {out:?}");
        assert!(!f.holds_source());

        // Only appended to: read on.
        std::fs::write(&path, "first generation line 1\nline 2\nline 3\n").unwrap();
        let out = drain(&mut f, &mut reader, &mut max_buf);
        let msgs: Vec<&str> = out.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(msgs, ["line 3"]);
    }

    #[test]
    fn lines_longer_than_the_read_buffer_but_under_the_cap_are_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let long = "y".repeat(50_000);
        std::fs::write(&path, format!("short\n{long}\nafter\n")).unwrap();
        let s = settings(64 * 1024, 4096);
        let mut f = open(&path, &s);
        let mut reader = reader(&s);
        let mut max_buf = 0;
        let out = drain(&mut f, &mut reader, &mut max_buf);
        let msgs: Vec<&str> = out.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(msgs, ["short", long.as_str(), "after"]);
        assert!(out.iter().all(|r| r.log.flags.is_empty()));
        assert_eq!(out[2].log.offset, 6 + 50_001);
    }
}
