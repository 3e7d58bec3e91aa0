//! Which files are sources, and where a source continues. The glob scan opens new files (and
//! notes a tailed file found under a new path); at the first scan, checkpointed sources whose
//! file left its path are finished in a rotated sibling ([`Tailer::follow`]); at every scan the
//! rotated siblings nobody read are read, oldest first ([`Tailer::catch_up`]). Before every
//! read a file is checked for truncation ([`Tailer::check_truncation`]): its source is finished
//! in a copy beside it, or its loss is counted, and the file is read again from 0. Drained files
//! that were deleted or rotated away are closed ([`Tailer::check_files`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::file::{Source, TailedFile};
use super::read::restart_truncated;
use super::record::Group;
use super::{read_time, Tailer};
use crate::checkpoint::Entry;
use crate::config::ReadFrom;
use crate::decode::Decoder;
use crate::enrich::format_for;
use crate::fingerprint::{fingerprint, hash_tail, holds, tail_hash_at, FileKey, Head};
use crate::metrics::LostReason;
use crate::multiline::SourceRef;
use crate::rotated::{siblings, Sibling};
use crate::watcher::discover;

impl Tailer {
    /// Expands the globs: opens new files, notes paths and which files are still matched.
    pub(super) fn scan(&mut self) {
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
            let g = match self.groups.entry(path.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => {
                    let g = e.into_mut();
                    g.record.container = found.container;
                    g.record.kubernetes = found.kubernetes;
                    if found.parser != g.parser {
                        let selection = self.rules.select(&self.rules.current(), &found.parser);
                        g.parser = found.parser;
                        g.reselect(selection, &mut self.batcher);
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
    pub(super) fn taken(&self, sibling: &Sibling) -> bool {
        if self.files.contains_key(&sibling.key) {
            return true;
        }
        self.finished.get(&sibling.key).is_some_and(|(_, e)| {
            sibling
                .open()
                .and_then(|f| Head::read(&f).ok().flatten())
                .is_some_and(|h| h.hash() == e.head_hash)
        })
    }

    /// Whether `sibling` is not to be read as a new source: [`Tailer::taken`], gone, without a
    /// head yet (looked at again next time), the rest of a checkpointed source not resumed yet
    /// (same inode, or the same head), or [`Claim::Pending`]: a copy of an open source, holding
    /// what was read of it, made before a truncation the agent has not seen yet.
    pub(super) fn claimed(&self, sibling: &Sibling) -> Claim {
        if self.taken(sibling) {
            return Claim::Taken;
        }
        if self.restored.contains_key(&sibling.key) {
            return Claim::Taken; // resumed in place by the scan
        }
        let Some(file) = sibling.open() else {
            return Claim::Taken; // gone or renamed meanwhile: the next listing sees it
        };
        let Ok(Some(head)) = Head::read(&file) else {
            return Claim::Taken; // no head yet: looked at again next time
        };
        let hash = head.hash();
        // The copy of a checkpointed source (or one still being made, shorter than the
        // checkpoint): the checkpoint is followed into it when its file is first read. Until
        // then a file that only shares the first line waits too, and is read once the
        // checkpoints are settled.
        let restored = self
            .restored
            .values()
            .flatten()
            .any(|(_, e)| e.head_hash == hash);
        if restored {
            return Claim::Taken;
        }
        // A copy of what was read, or a copy still being made (shorter than what was read, and
        // the same bytes as the open file up to its end): read on its own, it would repeat lines.
        let open = self.files.values().any(|f| {
            f.source.as_ref().is_some_and(|s| {
                s.head_hash == hash
                    && if sibling.len >= f.pos {
                        f.tail.is_empty()
                            || tail_hash_at(&file, f.pos).as_deref() == Some(&hash_tail(&f.tail))
                    } else {
                        tail_hash_at(&file, sibling.len) == tail_hash_at(&f.file, sibling.len)
                    }
            })
        });
        if open {
            Claim::Pending
        } else {
            Claim::Free
        }
    }

    /// The rotated siblings of `live` (the file `live_key`) nobody read are read (oldest first,
    /// each as its own source, the live file last), or with `adopt`, recorded as finished without
    /// reading them.
    pub(super) fn catch_up(&mut self, live: &Path, live_key: Option<FileKey>, adopt: bool) {
        let mut prev = None;
        let mut caught = false;
        for sibling in siblings(live, &self.s.rotated_suffixes) {
            if self.files.contains_key(&sibling.key) {
                prev = Some(sibling.key);
                continue;
            }
            if sibling.compressed {
                continue;
            }
            match self.claimed(&sibling) {
                Claim::Taken => continue,
                // An open source will move into this copy (its file was copied and truncated,
                // and the agent has not seen the truncation yet): the younger generations wait
                // until it has, so they are read after its rest.
                // (Read now, they overtook it: the writer's order broke across generations.)
                Claim::Pending => break,
                Claim::Free => {}
            }
            let Some(file) = sibling.open() else {
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
            info!(path = %sibling.path.display(), ino = sibling.key.ino, live = %live.display(), "Reading a rotated file the agent never read");
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
    pub(super) fn join_group(&mut self, group: &Path, live: &Path) -> bool {
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
    pub(super) fn follow(
        &mut self,
        fp: String,
        entry: Entry,
        key: Option<FileKey>,
        reason: LostReason,
    ) {
        let live = PathBuf::from(&entry.path);
        let tail = entry.tail_hash.as_deref();
        let mut all = Vec::new();
        let holder = relisting(|| {
            all = siblings(&live, &self.s.rotated_suffixes);
            all.iter()
                .filter(|s| !s.compressed && s.len >= entry.offset)
                .filter(|s| Some(s.key) == key || !self.taken(s))
                .find_map(|s| {
                    let file = s.open()?;
                    holds(&file, &entry.head_hash, entry.offset, tail).then(|| (s.clone(), file))
                })
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

    /// Forgets finished rotated files that are no longer on disk: missing from
    /// [`UNLISTED_SCANS`] listings of their siblings in a row (one listing made while a writer
    /// renames files can miss a file that is there; forgotten, it would be read again).
    pub(super) fn prune_finished(&mut self) {
        if self.finished.is_empty() {
            self.unlisted.clear();
            return;
        }
        let mut present: HashMap<String, HashSet<FileKey>> = HashMap::new();
        let suffixes = &self.s.rotated_suffixes;
        let mut gone = Vec::new();
        for (key, (_, e)) in &self.finished {
            let keys = present.entry(e.path.clone()).or_insert_with(|| {
                siblings(Path::new(&e.path), suffixes)
                    .into_iter()
                    .map(|s| s.key)
                    .collect()
            });
            if !keys.contains(key) {
                gone.push(*key);
            }
        }
        let mut misses = HashMap::with_capacity(gone.len());
        for key in &gone {
            misses.insert(*key, self.unlisted.get(key).map_or(1, |n| n + 1));
        }
        self.unlisted = misses;
        gone.retain(|key| self.unlisted[key] >= UNLISTED_SCANS);
        for key in gone {
            self.unlisted.remove(&key);
            if let Some((fp, _)) = self.finished.remove(&key) {
                debug!(fingerprint = %fp, "Finished rotated file is gone; forgetting it");
                self.removals.push(fp);
            }
        }
    }

    /// Looks at `key` before it is read: a file truncated (shorter than what was read, another
    /// head, or other bytes just before the read position) has its source finished in a copy
    /// beside it if there is one, and is read again from its start as the next generation.
    pub(super) fn check_truncation(&mut self, key: FileKey) {
        let Some(f) = self.files.get_mut(&key) else {
            return;
        };
        let Some(source) = &f.source else { return };
        let Ok(meta) = f.file.metadata() else { return };
        let len = meta.len();
        let known = f.size_seen.max(f.pos);
        f.size_seen = len;
        let head_hash = source.head_hash.clone();
        let truncated = len < f.pos || !f.holds_source();
        if !truncated {
            return;
        }
        let (pos, tail) = (f.pos, hash_tail(&f.tail));
        let tail = (!f.tail.is_empty()).then_some(tail);
        let home = f.home.clone();
        let copy = relisting(|| {
            siblings(&home, &self.s.rotated_suffixes)
                .into_iter()
                .filter(|s| !s.compressed && s.len >= pos && s.key != key)
                .filter(|s| !self.taken(s))
                .find_map(|s| {
                    let file = s.open()?;
                    holds(&file, &head_hash, pos, tail.as_deref()).then_some((s, file))
                })
        });
        let read_time = read_time();
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
                let removals = &mut self.removals;
                restart_truncated(f, g, &mut self.batcher, removals, len, &read_time);
            }
        }
        // Generations written, copied and truncated while the agent was not looking are in
        // copies nobody read: read them before the file's new contents.
        self.catch_up(&home, Some(key), false);
    }

    /// Checks every file for truncation, deletion and rotation; closes drained files.
    /// `false` when the forwarder is gone.
    pub(super) fn check_files(&mut self) -> bool {
        let read_time = read_time();
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
            let gone = f.deleted || !f.matched;
            // A deleted file waits too: its writer may still be finishing its last lines.
            if gone
                && f.eof_since
                    .is_some_and(|t| now.duration_since(t) >= self.s.rotate_wait)
            {
                // Whatever is left after the last newline is the file's last, unterminated line.
                if f.source.is_some() {
                    let out = &mut self.batcher;
                    self.reader.finish(f, g, out, meta.len(), &read_time);
                }
                close.push(f.key);
            }
        }
        for key in close {
            if let Some(f) = self.files.remove(&key) {
                info!(path = %f.path.display(), ino = f.key.ino, deleted = f.deleted, offset = f.pos, "Closed drained file");
                if let Some(g) = self.groups.get_mut(&f.group) {
                    g.files = g.files.saturating_sub(1);
                    // Without a successor at its path, nothing can continue its pending events.
                    if g.files == 0 {
                        g.flush(&mut self.batcher);
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
        if self.batcher.full() {
            return self.seal();
        }
        true
    }
}

fn points_to(path: &Path, key: FileKey) -> bool {
    std::fs::metadata(path).is_ok_and(|m| FileKey::of(&m) == key)
}

fn is_glob_parent(include: &[String], dir: &Path) -> bool {
    include
        .iter()
        .any(|p| crate::watcher::glob_parent(p) == dir)
}

/// Runs `find` (a search of a fresh listing of siblings) until it finds something: up to
/// [`LISTINGS`] times, 1, 2, 4, … ms apart. A listing made while a writer renames the siblings
/// (`name.1` to `name.2`, …) can miss the very file it looks for; one made a little later, when
/// the renames are done, does not. Only searches whose failure loses data (a source whose copy
/// is not found) list again; they run at a truncation or a restart, not on every read.
fn relisting<T>(mut find: impl FnMut() -> Option<T>) -> Option<T> {
    for attempt in 0..LISTINGS {
        if let Some(found) = find() {
            return Some(found);
        }
        if attempt + 1 < LISTINGS {
            std::thread::sleep(std::time::Duration::from_millis(1 << attempt));
        }
    }
    None
}

/// How many listings look for the copy holding a source before its rest is reported lost
/// (the waits between them add up to 63 ms).
const LISTINGS: u32 = 7;

/// How many scans in a row must miss a finished rotated file before it is forgotten.
const UNLISTED_SCANS: u32 = 3;

/// What [`Tailer::claimed`] found a rotated sibling to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claim {
    /// Read, being read, gone, or without a head yet: not a new source (now).
    Taken,
    /// The copy of an open source the agent has not finished: that source moves into it when
    /// the agent sees the truncation.
    Pending,
    /// Never read: a source of its own.
    Free,
}
