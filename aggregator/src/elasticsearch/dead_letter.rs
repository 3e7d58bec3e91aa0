//! The local dead-letter store: NDJSON files under `<data_dir>/sinks/<name>/dead-letter/`, one
//! line per record Elasticsearch refused for good, with the reason and the original record.
//!
//! A writer only ever appends to a file it created itself (`create_new`: never a name that
//! exists, so neither a second process nor a restart can overwrite or interleave with an
//! earlier file), named `dead-letter-<UTC time>-<pid>-<n>.ndjson`, and starts a new file past
//! [`MAX_FILE_BYTES`]. A record counts as dead-lettered only once its line is fsynced.
//!
//! Each line carries the queue position of its entry. A record refused again when its entry is
//! replayed (the sink stopped after writing the line, before committing the entry) is written
//! once: at start, [`DeadLetterFiles::uncommitted_ids`] reads back the ids of lines whose entry
//! lies past the committed position, and the sink skips them.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use ferry_wire::write_str;
use serde::Deserialize;

use crate::queue::Position;

/// Size at which the writer starts a new file.
pub(crate) const MAX_FILE_BYTES: u64 = 64 << 20;

/// One refused record.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub(crate) id: Box<str>,
    pub(crate) index: std::sync::Arc<str>,
    /// The item status (or the request's, for a single document refused whole).
    pub(crate) status: u16,
    /// The item's `error` object as Elasticsearch sent it (JSON), or a JSON string.
    pub(crate) error: String,
    pub(crate) original: Bytes,
    /// The end of the record's queue entry.
    pub(crate) position: Position,
}

impl DeadLetter {
    /// The NDJSON line: `{"@timestamp","sink","_index","_id","status","error","queue_position","record"}`.
    pub(crate) fn write_line(&self, sink: &str, at: DateTime<Utc>, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"@timestamp\":");
        write_str(out, &at.to_rfc3339_opts(SecondsFormat::Millis, true));
        out.extend_from_slice(b",\"sink\":");
        write_str(out, sink);
        out.extend_from_slice(b",\"_index\":");
        write_str(out, &self.index);
        out.extend_from_slice(b",\"_id\":");
        write_str(out, &self.id);
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(self.status.to_string().as_bytes());
        out.extend_from_slice(b",\"error\":");
        out.extend_from_slice(self.error.as_bytes());
        out.extend_from_slice(
            format!(
                ",\"queue_position\":{{\"segment\":{},\"offset\":{}}}",
                self.position.segment, self.position.offset
            )
            .as_bytes(),
        );
        out.extend_from_slice(b",\"record\":");
        out.extend_from_slice(&self.original);
        out.extend_from_slice(b"}\n");
    }

    /// The document for the dead-letter index: the reason, and the record as a string (so it
    /// cannot hit the mapping problem that refused it).
    pub(crate) fn index_document(&self, sink: &str, at: DateTime<Utc>) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.original.len() + self.error.len() + 200);
        out.extend_from_slice(b"{\"@timestamp\":");
        write_str(&mut out, &at.to_rfc3339_opts(SecondsFormat::Millis, true));
        out.extend_from_slice(b",\"event\":{\"id\":");
        write_str(&mut out, &self.id);
        out.extend_from_slice(b"},\"ferry\":{\"sink\":");
        write_str(&mut out, sink);
        out.extend_from_slice(b",\"target\":");
        write_str(&mut out, &self.index);
        out.extend_from_slice(b"},\"error\":{\"status\":");
        out.extend_from_slice(self.status.to_string().as_bytes());
        out.extend_from_slice(b",\"message\":");
        write_str(&mut out, &super::settlement::error_text(&self.error));
        out.extend_from_slice(b"},\"record\":");
        write_str(&mut out, &String::from_utf8_lossy(&self.original));
        out.push(b'}');
        out
    }
}

/// The writer of one sink's dead-letter folder.
#[derive(Debug)]
pub(crate) struct DeadLetterFiles {
    dir: PathBuf,
    sink: String,
    current: Option<(PathBuf, File, u64)>,
    buf: Vec<u8>,
}

impl DeadLetterFiles {
    pub(crate) fn open(dir: &Path, sink: &str) -> io::Result<DeadLetterFiles> {
        fs::create_dir_all(dir)?;
        Ok(DeadLetterFiles {
            dir: dir.to_path_buf(),
            sink: sink.to_string(),
            current: None,
            buf: Vec::new(),
        })
    }

    /// Ids of dead letters whose queue entry lies past `committed`: written by a sink that
    /// stopped before committing them, so their records come again. Reads files newest first and
    /// stops at one whose every line is at or before `committed` (everything older was
    /// committed by then).
    pub(crate) fn uncommitted_ids(&self, committed: Position) -> io::Result<HashSet<Box<str>>> {
        #[derive(Deserialize)]
        struct Line {
            #[serde(rename = "_id")]
            id: Box<str>,
            queue_position: Position,
        }
        let mut names: Vec<PathBuf> = fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("dead-letter-") && n.ends_with(".ndjson"))
            })
            .collect();
        names.sort();
        let mut ids = HashSet::new();
        for path in names.iter().rev() {
            let text = fs::read(path)?;
            let mut lines = 0;
            let mut past = 0;
            for line in text.split(|&b| b == b'\n') {
                // A torn last line (a crash mid-write) is not a dead letter: it comes again.
                let Ok(line) = serde_json::from_slice::<Line>(line) else {
                    continue;
                };
                lines += 1;
                if line.queue_position > committed {
                    past += 1;
                    ids.insert(line.id);
                }
            }
            if lines > 0 && past == 0 {
                break;
            }
        }
        Ok(ids)
    }

    /// Appends `letters` and fsyncs; returns the file they went to.
    pub(crate) fn write(&mut self, letters: &[DeadLetter]) -> io::Result<PathBuf> {
        let now = Utc::now();
        self.buf.clear();
        for letter in letters {
            letter.write_line(&self.sink, now, &mut self.buf);
        }
        if self
            .current
            .as_ref()
            .is_none_or(|(_, _, len)| *len >= MAX_FILE_BYTES)
        {
            self.current = Some(new_file(&self.dir, now)?);
        }
        let (path, file, len) = self.current.as_mut().expect("opened above");
        let result = file.write_all(&self.buf).and_then(|()| file.sync_data());
        if let Err(e) = result {
            // Whatever part of it landed stays (a reader skips a torn last line); the next
            // write goes to a new file.
            let path = path.clone();
            self.current = None;
            return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
        }
        *len += self.buf.len() as u64;
        Ok(path.clone())
    }
}

/// Creates a file of a name no one used, and makes its directory entry durable.
fn new_file(dir: &Path, now: DateTime<Utc>) -> io::Result<(PathBuf, File, u64)> {
    let stamp = now.format("%Y%m%dT%H%M%S%.3fZ");
    let pid = std::process::id();
    for n in 0u32.. {
        let path = dir.join(format!("dead-letter-{stamp}-{pid}-{n}.ndjson"));
        match OpenOptions::new().append(true).create_new(true).open(&path) {
            Ok(file) => {
                File::open(dir).and_then(|d| d.sync_all())?;
                return Ok((path, file, 0));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }
    unreachable!("u32 names run out only after four billion files in one millisecond")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(id: &str) -> DeadLetter {
        DeadLetter {
            id: id.into(),
            index: "logs-ferry-default".into(),
            status: 400,
            error: r#"{"type":"mapper_parsing_exception","reason":"failed to parse field [n]"}"#
                .into(),
            original: Bytes::from_static(br#"{"event":{"id":"x"},"message":"m \"q\""}"#),
            position: Position {
                segment: 1,
                offset: id.len() as u64 * 100,
            },
        }
    }

    #[test]
    fn lines_hold_reason_and_original_and_files_are_never_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dl");
        let mut a = DeadLetterFiles::open(&dir, "es").unwrap();
        let mut b = DeadLetterFiles::open(&dir, "es").unwrap();
        let pa = a.write(&[letter("1"), letter("2")]).unwrap();
        // A second writer at the same moment (same pid, same millisecond) gets its own file.
        let pb = b.write(&[letter("3")]).unwrap();
        assert_ne!(pa, pb);
        assert_eq!(
            a.write(&[letter("4")]).unwrap(),
            pa,
            "a writer keeps its file"
        );
        let text = fs::read_to_string(&pa).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["_id"], "1");
        assert_eq!(lines[0]["sink"], "es");
        assert_eq!(lines[0]["status"], 400);
        assert_eq!(lines[0]["error"]["type"], "mapper_parsing_exception");
        assert_eq!(lines[0]["record"]["message"], "m \"q\"");
        assert_eq!(lines[0]["queue_position"]["offset"], 100);
        assert_eq!(fs::read_to_string(&pb).unwrap().lines().count(), 1);
    }

    #[test]
    fn uncommitted_dead_letters_are_found_again_after_a_stop() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dl");
        let at = |offset| Position { segment: 2, offset };
        let mut older = DeadLetterFiles::open(&dir, "es").unwrap();
        let mut l = letter("old");
        l.position = at(10);
        older.write(&[l]).unwrap();
        // The run that stopped: two letters past the committed position, one before it.
        let mut newer = DeadLetterFiles::open(&dir, "es").unwrap();
        let letters: Vec<DeadLetter> = [("a", 50), ("b", 150), ("c", 250)]
            .iter()
            .map(|&(id, offset)| DeadLetter {
                position: at(offset),
                ..letter(id)
            })
            .collect();
        newer.write(&letters).unwrap();
        // A torn line is ignored.
        let path = newer.write(&[]).unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap()
            .write_all(b"{\"_id\":\"torn")
            .unwrap();
        let reader = DeadLetterFiles::open(&dir, "es").unwrap();
        let ids = reader.uncommitted_ids(at(100)).unwrap();
        let mut ids: Vec<&str> = ids.iter().map(|s| &**s).collect();
        ids.sort();
        assert_eq!(ids, ["b", "c"]);
        assert!(reader.uncommitted_ids(at(1000)).unwrap().is_empty());
    }

    #[test]
    fn index_document_keeps_the_record_as_a_string() {
        let doc = letter("9").index_document("es", Utc::now());
        let v: serde_json::Value = serde_json::from_slice(&doc).unwrap();
        assert_eq!(v["event"]["id"], "9");
        assert_eq!(
            v["error"]["message"],
            "mapper_parsing_exception: failed to parse field [n]"
        );
        assert_eq!(v["record"], r#"{"event":{"id":"x"},"message":"m \"q\""}"#);
        assert_eq!(v["ferry"]["target"], "logs-ferry-default");
    }
}
