//! One open file's state: which file it is (device and inode, path, the log path it belongs to),
//! the source it is read as ([`Source`]: fingerprint, head, generation), where reading stands
//! and what was last read just before that position. Plain state and small helpers; what to do
//! with a file is decided in the sibling modules.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::decode::Decoder;
use crate::fingerprint::{hash_tail, tail_hash_at, FileKey, Head, TAIL_BYTES};
use crate::multiline::SourceRef;

/// Identity of one generation of a file.
#[derive(Debug, Clone)]
pub(super) struct Source {
    /// Fingerprint and path, as put on records (shared with the lines a joiner holds).
    pub(super) r: Arc<SourceRef>,
    pub(super) head_hash: String,
    pub(super) generation: u32,
}

/// One open file.
pub(super) struct TailedFile {
    pub(super) key: FileKey,
    pub(super) path: PathBuf,
    /// The live path whose rotated siblings this file is among (the path it was found at, or for
    /// a rotated copy read on purpose, the path it was rotated from): its checkpoint `path`.
    pub(super) home: PathBuf,
    pub(super) file: File,
    /// `None` until the file has a head to fingerprint (again, after a truncation).
    pub(super) source: Option<Source>,
    /// Generation the next [`Source`] gets.
    pub(super) generation: u32,
    /// `Some(size at discovery)` for a file found at the very first start with `read_from = end`.
    pub(super) start_at_end: Option<u64>,
    /// Next byte to read: the start of the next line, or while `skipping`, the scan position.
    pub(super) pos: u64,
    /// End of the last fully handled line (while skipping: the start of the truncated line).
    pub(super) consumed: u64,
    /// Skipping the rest of a line that was already emitted truncated.
    pub(super) skipping: bool,
    pub(super) decoder: Decoder,
    /// The key of its [`super::record::Group`] in [`super::Tailer::groups`]: the path it was first
    /// found at.
    pub(super) group: PathBuf,
    /// The last (offset, path) put into a checkpoint update.
    pub(super) reported: Option<(u64, String)>,
    /// Found by the last glob scan.
    pub(super) matched: bool,
    /// Link count dropped to zero.
    pub(super) deleted: bool,
    /// Since when every read found no new complete line.
    pub(super) eof_since: Option<Instant>,
    /// The (at most [`TAIL_BYTES`]) bytes just before `pos`, as read: a file that holds other
    /// bytes there now was truncated and written again.
    pub(super) tail: Vec<u8>,
    /// The size at the last look (what is known to have been there).
    pub(super) size_seen: u64,
    /// An older rotated file of the same log, read first: this one is not read until that one
    /// has been read to its end once.
    pub(super) after: Option<FileKey>,
    /// A new source not in the checkpoint yet: registered at this offset (where its reading
    /// started) with the next sealed batch.
    pub(super) register_at: Option<u64>,
}

impl TailedFile {
    pub(super) fn new(
        key: FileKey,
        path: PathBuf,
        file: File,
        home: PathBuf,
        decoder: Decoder,
    ) -> Self {
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
    pub(super) fn load_tail(&mut self) {
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

    /// Whether the file still holds its source where reading stands: the same first line, and
    /// the same bytes just before the read position. `false` once it was truncated (and perhaps
    /// written again); `true` without a source, and when the head cannot be read (an I/O error
    /// is not a truncation).
    pub(super) fn holds_source(&self) -> bool {
        let Some(source) = &self.source else {
            return true;
        };
        let head = match Head::read(&self.file) {
            Ok(Some(head)) => head.hash() == source.head_hash,
            Ok(None) => false,
            Err(_) => true,
        };
        head && (self.tail.is_empty()
            || tail_hash_at(&self.file, self.pos).as_deref() == Some(&hash_tail(&self.tail)))
    }

    /// Appends what was just consumed (`data`, ending at the new `pos`) to the remembered tail.
    pub(super) fn note_tail(&mut self, data: &[u8]) {
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
    pub(super) fn committable(&self, hold: Option<u64>) -> u64 {
        [self.decoder.pending_start(), hold]
            .into_iter()
            .flatten()
            .fold(self.consumed, u64::min)
    }
}
