//! Deterministic test workloads: container log files (Docker json-file and CRI) whose every line
//! can be recognised and checked in the store (`<tag> <stream> <seq>` plus a known payload).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Docker and CRI split messages into parts of this size.
const PART: usize = 16 * 1024;
const TIME: &str = "2026-11-28T08:00:00.123456789Z";

/// The message for `seq` on `stream` of the file tagged `tag`: mostly short, every 997th over
/// 16 KiB (so it is split into partial lines), with quotes, backslashes and non-ASCII inside.
pub fn message(tag: &str, stream: &str, seq: u64) -> String {
    let len = if seq % 997 == 5 {
        20_000 + (seq as usize * 7) % 30_000
    } else {
        10 + (seq as usize * 13) % 150
    };
    let mut m = format!("{tag} {stream} {seq:07} ");
    let pattern = "say \"hi\" \\ ünï ";
    while m.len() < len {
        m.push_str(pattern);
    }
    m
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Docker,
    Cri,
}

/// One log file being written, with the per-stream sequence numbers written so far.
pub struct LogWriter {
    pub tag: String,
    pub kind: Kind,
    pub path: PathBuf,
    file: File,
    pub next_seq: u64,
}

impl LogWriter {
    /// A Docker container's `<root>/containers/<id>/<id>-json.log`; the id starts with `tag`.
    pub fn docker(root: &Path, tag: &str) -> LogWriter {
        let id = container_id(tag);
        let dir = root.join("containers").join(&id);
        std::fs::create_dir_all(&dir).unwrap();
        Self::open(tag, Kind::Docker, dir.join(format!("{id}-json.log")))
    }

    /// A Kubernetes container's `<root>/pods/<ns>_<pod>_<uid>/<container>/0.log`, all named after `tag`.
    pub fn cri(root: &Path, tag: &str) -> LogWriter {
        let dir = root
            .join("pods")
            .join(format!("ns-{tag}_pod-{tag}_uid-{tag}"))
            .join(format!("c-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        Self::open(tag, Kind::Cri, dir.join("0.log"))
    }

    fn open(tag: &str, kind: Kind, path: PathBuf) -> LogWriter {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        LogWriter {
            tag: tag.into(),
            kind,
            path,
            file,
            next_seq: 0,
        }
    }

    /// Writes `pairs` rounds: each round one stdout and one stderr message with the same seq.
    /// A long stdout message has the stderr message written between its parts, so partial lines of
    /// the two streams interleave.
    pub fn write_pairs(&mut self, pairs: u64) {
        let mut buf = Vec::new();
        for _ in 0..pairs {
            let seq = self.next_seq;
            self.next_seq += 1;
            let out = message(&self.tag, "stdout", seq);
            let err = message(&self.tag, "stderr", seq);
            let out_parts = split(&out);
            for (i, part) in out_parts.iter().enumerate() {
                let last = i + 1 == out_parts.len();
                if last {
                    self.write_message(&err, "stderr", &mut buf);
                }
                self.encode_part(part, "stdout", last, &mut buf);
            }
        }
        self.file.write_all(&buf).unwrap();
    }

    fn write_message(&self, text: &str, stream: &str, buf: &mut Vec<u8>) {
        let parts = split(text);
        for (i, part) in parts.iter().enumerate() {
            self.encode_part(part, stream, i + 1 == parts.len(), buf);
        }
    }

    /// One part of a message (the whole of a short one) as one line of the file's format.
    fn encode_part(&self, text: &str, stream: &str, last: bool, buf: &mut Vec<u8>) {
        match self.kind {
            Kind::Docker => {
                let mut log = text.to_string();
                if last {
                    log.push('\n');
                }
                let line = serde_json::json!({"log": log, "stream": stream, "time": TIME});
                buf.extend_from_slice(line.to_string().as_bytes());
                buf.push(b'\n');
            }
            Kind::Cri => {
                let tag = if last { "F" } else { "P" };
                buf.extend_from_slice(format!("{TIME} {stream} {tag} {text}\n").as_bytes());
            }
        }
    }

    /// Rename rotation: the current file becomes `<path>.1` and writing goes on in a new file.
    pub fn rotate_by_rename(&mut self) {
        let rotated = PathBuf::from(format!("{}.1", self.path.display()));
        std::fs::rename(&self.path, rotated).unwrap();
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .unwrap();
    }

    /// copytruncate: copy the file aside, then truncate it in place; writing goes on in the same file.
    pub fn copy_truncate(&mut self) {
        let copy = PathBuf::from(format!("{}.1", self.path.display()));
        std::fs::copy(&self.path, copy).unwrap();
        self.file.set_len(0).unwrap();
    }

    pub fn lines_written(&self) -> u64 {
        self.next_seq * 2
    }
}

pub fn container_id(tag: &str) -> String {
    let hex: String = tag.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{hex}{}", "0".repeat(64 - hex.len()))
}

fn split(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.len() > PART {
        let mut cut = PART;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        parts.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    parts.push(rest);
    parts
}

/// What the store holds for a set of writers, checked line by line.
pub struct Verdict {
    pub total: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub out_of_order: usize,
    pub wrong: Vec<String>,
}

/// Checks `records` against what `writers` wrote: every (tag, stream, seq) exactly once, in order
/// per (tag, stream), message intact, container / Kubernetes fields right.
pub fn verify(records: &[Value], writers: &[&LogWriter]) -> Verdict {
    let by_tag: HashMap<&str, &LogWriter> = writers.iter().map(|w| (w.tag.as_str(), *w)).collect();
    let mut seen: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    let mut ids = HashSet::new();
    let mut wrong = Vec::new();
    let mut duplicated = 0;
    for r in records {
        let msg = r["message"].as_str().unwrap_or_default();
        let mut it = msg.splitn(4, ' ');
        let (Some(tag), Some(stream), Some(seq)) = (it.next(), it.next(), it.next()) else {
            wrong.push(format!("unrecognised message {:.80}", msg));
            continue;
        };
        let Some(w) = by_tag.get(tag) else {
            wrong.push(format!("unknown tag in {:.80}", msg));
            continue;
        };
        let seq: u64 = seq.parse().unwrap_or(u64::MAX);
        if !ids.insert(r["event"]["id"].as_str().unwrap_or_default().to_string()) {
            duplicated += 1;
        }
        if msg != message(tag, stream, seq) {
            wrong.push(format!(
                "{tag} {stream} {seq}: message differs ({} bytes)",
                msg.len()
            ));
        }
        if r["stream"] != stream {
            wrong.push(format!(
                "{tag} {stream} {seq}: stream field is {}",
                r["stream"]
            ));
        }
        if msg.len() > PART
            && !r["log"]["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "joined"))
        {
            wrong.push(format!(
                "{tag} {stream} {seq}: joined record without the joined flag"
            ));
        }
        match w.kind {
            Kind::Docker => {
                if r["container"]["id"] != container_id(tag).as_str() {
                    wrong.push(format!(
                        "{tag} {stream} {seq}: container.id is {}",
                        r["container"]["id"]
                    ));
                }
            }
            Kind::Cri => {
                let k = &r["kubernetes"];
                let ok = k["namespace"] == format!("ns-{tag}").as_str()
                    && k["pod"]["name"] == format!("pod-{tag}").as_str()
                    && k["pod"]["uid"] == format!("uid-{tag}").as_str()
                    && k["container"]["name"] == format!("c-{tag}").as_str();
                if !ok {
                    wrong.push(format!("{tag} {stream} {seq}: kubernetes fields are {k}"));
                }
            }
        }
        if r["host"]["name"] != "test-node" {
            wrong.push(format!("{tag}: host.name is {}", r["host"]["name"]));
        }
        seen.entry((tag.to_string(), stream.to_string()))
            .or_default()
            .push(seq);
    }
    let mut lost = 0;
    let mut out_of_order = 0;
    for w in writers {
        for stream in ["stdout", "stderr"] {
            let seqs = seen
                .get(&(w.tag.clone(), stream.to_string()))
                .cloned()
                .unwrap_or_default();
            out_of_order += seqs.windows(2).filter(|p| p[1] <= p[0]).count();
            let distinct: HashSet<u64> = seqs.iter().copied().collect();
            duplicated += seqs.len() - distinct.len();
            lost += (0..w.next_seq).filter(|s| !distinct.contains(s)).count();
        }
    }
    wrong.truncate(20);
    Verdict {
        total: records.len(),
        lost,
        duplicated,
        out_of_order,
        wrong,
    }
}

/// Counts stored lines whose message starts with `tag ` without parsing JSON (cheap polling).
pub fn count_tag(store: &Path, tag: &str) -> usize {
    let needle = format!("\"message\":\"{tag} ");
    let mut n = 0;
    for e in std::fs::read_dir(store).into_iter().flatten().flatten() {
        if let Ok(text) = std::fs::read_to_string(e.path()) {
            n += text.matches(&needle).count();
        }
    }
    n
}
