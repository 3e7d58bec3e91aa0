//! What the tailer tells the checkpoint: where a file's reading starts or resumes
//! ([`establish`]: its checkpoint entry, when the file still holds what the entry describes), what
//! each sealed batch makes committable ([`Tailer::seal`]: per source, the end of the last consumed
//! line held back to anything a decoder or joiner still holds, and new sources registered before
//! their first record leaves), and which closed rotated files are finished ([`Tailer::retire`]).
//! The forwarder writes the checkpoint file once a batch is acknowledged; nothing here writes it.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::file::{Source, TailedFile};
use super::Tailer;
use crate::checkpoint::{Entry, Update};
use crate::fingerprint::{fingerprint, holds, tail_hash_at, FileKey, Head};
use crate::multiline::SourceRef;
use crate::sealed::Sealed;

impl Tailer {
    /// Seals the current batch with the checkpoint updates it allows and sends it (blocking while
    /// the forwarder is busy). `false` when the forwarder is gone.
    pub(super) fn seal(&mut self) -> bool {
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
        let builder = &mut self.batcher.builder;
        if builder.is_empty() && updates.is_empty() && register.is_empty() {
            return true;
        }
        let batch = (!builder.is_empty()).then(|| match self.s.discard {
            true => builder.discard(),
            false => builder.finish(self.s.compression),
        });
        self.batcher.started = None;
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

    /// A closed file's source: kept as finished while the file is still on disk (so it is never
    /// read again; forgotten once listings of its siblings stop finding it), forgotten at once
    /// when it was deleted. Not decided by a listing: one made while a writer renames the
    /// siblings can miss the file.
    pub(super) fn retire(&mut self, f: TailedFile) {
        let Some(source) = f.source else { return };
        if f.deleted {
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
}

/// What [`establish`] made of a file.
pub(super) enum Established {
    /// It has no head yet: try again later.
    NoHead,
    /// Its source is set: read on.
    Ready,
    /// These checkpointed sources (fingerprint, entry) of its inode are no longer in it
    /// (truncated, or truncated and written again, their rest perhaps in a copy); the file is
    /// ready when it has a head, else it has none yet (looked at again).
    Replaced(Vec<(String, Entry)>),
}

/// Fingerprints a file once it has a head, resuming from its checkpoint entry when the file
/// still holds what the entry describes (same head, at least as long, the same bytes just before
/// the offset).
pub(super) fn establish(
    f: &mut TailedFile,
    host: &str,
    restored: &mut HashMap<FileKey, Vec<(String, Entry)>>,
) -> Established {
    let head = match Head::read(&f.file) {
        Ok(Some(head)) => head,
        // Every checkpointed source of this inode had a head: without one now, the file was
        // truncated while the agent was down, and their rest can only be in copies (read now,
        // not when the file is written again: it may never be).
        Ok(None) => match restored.remove(&f.key) {
            Some(entries) => {
                info!(path = %f.path.display(), "File truncated while the agent was down and empty since; looking for a copy");
                let last = entries.iter().map(|(_, e)| e.generation).max();
                f.generation = last.map_or(0, |g| g + 1);
                return Established::Replaced(entries);
            }
            None => return Established::NoHead,
        },
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
    info!(path = %f.path.display(), ino = f.key.ino, fingerprint = %fp, offset = start, "Tailing file");
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
