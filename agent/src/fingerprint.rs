//! File identity: which bytes on disk a stream of records came from.
//!
//! A source is the node's host name, (device, inode), the first line of the file (at most
//! [`HEAD_BYTES`]) and a generation the tailer bumps when the same inode is truncated in place;
//! its fingerprint is a 128-bit hash of those ([`fingerprint`]). The host is part of it so that two
//! nodes cloned from one image (same device, inode and first line) never share a fingerprint, and
//! so never drop each other's records as replays. Files are never identified by name. The bytes
//! just before a position ([`tail_hash_at`]) tell a copy of a source, or the source truncated and
//! written again, from the bytes that were read. This module only reads files; it keeps no state.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

/// How many bytes of the first line identify a file.
pub(crate) const HEAD_BYTES: usize = 1024;
/// How many bytes just before a position are compared to tell whether a file still holds (or a
/// copy holds) what was read up to that position.
pub(crate) const TAIL_BYTES: usize = 64;

/// (device, inode) of an open or found file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct FileKey {
    pub dev: u64,
    pub ino: u64,
}

impl FileKey {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        FileKey {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// The head of a file: its first line including the `\n`, or its first [`HEAD_BYTES`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub bytes: Vec<u8>,
}

impl Head {
    /// Reads the head, or `None` while the file has neither a `\n` nor [`HEAD_BYTES`] bytes
    /// (a fingerprint of a half-written first line would change under our feet).
    pub fn read(file: &File) -> io::Result<Option<Head>> {
        let mut buf = [0u8; HEAD_BYTES];
        let mut len = 0;
        while len < HEAD_BYTES {
            let n = file.read_at(&mut buf[len..], len as u64)?;
            if n == 0 {
                break;
            }
            len += n;
        }
        let head = &buf[..len];
        Ok(match memchr::memchr(b'\n', head) {
            Some(i) => Some(Head {
                bytes: head[..=i].to_vec(),
            }),
            None if len == HEAD_BYTES => Some(Head {
                bytes: head.to_vec(),
            }),
            None => None,
        })
    }

    /// xxh3-64 of the head, as 16 hex digits (stored in checkpoints).
    pub fn hash(&self) -> String {
        format!("{:016x}", xxh3_64(&self.bytes))
    }
}

/// `log.file.fingerprint` of one generation of a file on the node `host`: 32 hex digits of
/// xxh3-128 over a version tag, the host name (length-prefixed), device, inode, generation and
/// head. Changing this changes every new source's `event.id`s: pinned by a test.
pub(crate) fn fingerprint(host: &str, key: FileKey, head: &Head, generation: u32) -> String {
    let mut bytes = Vec::with_capacity(40 + host.len() + head.bytes.len());
    bytes.extend_from_slice(b"ferry-source-2\0");
    bytes.extend_from_slice(&(host.len() as u64).to_le_bytes());
    bytes.extend_from_slice(host.as_bytes());
    bytes.extend_from_slice(&key.dev.to_le_bytes());
    bytes.extend_from_slice(&key.ino.to_le_bytes());
    bytes.extend_from_slice(&generation.to_le_bytes());
    bytes.extend_from_slice(&head.bytes);
    format!("{:032x}", xxh3_128(&bytes))
}

/// xxh3-64 of `bytes` (the bytes just before a position), as 16 hex digits.
pub(crate) fn hash_tail(bytes: &[u8]) -> String {
    format!("{:016x}", xxh3_64(bytes))
}

/// [`hash_tail`] of the (at most [`TAIL_BYTES`]) bytes of `file` just before `offset`; `None` at
/// offset 0 or when the file is shorter than `offset`.
pub(crate) fn tail_hash_at(file: &File, offset: u64) -> Option<String> {
    let len = offset.min(TAIL_BYTES as u64) as usize;
    if len == 0 {
        return None;
    }
    let mut buf = [0u8; TAIL_BYTES];
    file.read_exact_at(&mut buf[..len], offset - len as u64)
        .ok()?;
    Some(hash_tail(&buf[..len]))
}

/// Whether `file` holds `head_hash` as its head and, just before `offset`, the bytes hashed as
/// `tail_hash` (`None`: not checked): the same bytes as a source read up to `offset`.
pub(crate) fn holds(file: &File, head_hash: &str, offset: u64, tail_hash: Option<&str>) -> bool {
    let head_ok = matches!(Head::read(file), Ok(Some(h)) if h.hash() == head_hash);
    head_ok
        && file.metadata().is_ok_and(|m| m.len() >= offset)
        && tail_hash.is_none_or(|t| tail_hash_at(file, offset).as_deref() == Some(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn head_needs_a_newline_or_a_full_kilobyte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let mut f = File::create(&path).unwrap();
        f.write_all(b"no newline yet").unwrap();
        let r = File::open(&path).unwrap();
        assert_eq!(Head::read(&r).unwrap(), None);
        f.write_all(b" now\nsecond line\n").unwrap();
        let head = Head::read(&r).unwrap().unwrap();
        assert_eq!(head.bytes, b"no newline yet now\n");

        let long = dir.path().join("b.log");
        std::fs::write(&long, vec![b'x'; 3000]).unwrap();
        let head = Head::read(&File::open(&long).unwrap()).unwrap().unwrap();
        assert_eq!(head.bytes.len(), HEAD_BYTES);
    }

    #[test]
    fn fingerprint_depends_on_inode_head_and_generation() {
        let head = Head {
            bytes: b"x\n".to_vec(),
        };
        let k = FileKey { dev: 1, ino: 2 };
        let fp = fingerprint("h", k, &head, 0);
        assert_eq!(fp, fingerprint("h", k, &head, 0));
        assert_ne!(fp, fingerprint("h", k, &head, 1));
        assert_ne!(fp, fingerprint("h", FileKey { dev: 1, ino: 3 }, &head, 0));
        assert_ne!(fp, fingerprint("h2", k, &head, 0), "cloned nodes differ");
        assert_eq!(head.hash().len(), 16);
    }

    /// Regression (issue 10, finding 6): fingerprints and event ids are pinned to literal values,
    /// so a change of their definition (which would make every replay after an upgrade a new
    /// document) cannot pass unnoticed; and the host is part of them.
    #[test]
    fn fingerprints_and_event_ids_are_pinned_to_literal_values() {
        let head = Head {
            bytes: b"first line\n".to_vec(),
        };
        let key = FileKey {
            dev: 2049,
            ino: 1_234_567,
        };
        let a = fingerprint("node-a", key, &head, 0);
        let b = fingerprint("node-b", key, &head, 0);
        assert_eq!(a, "bfb66323c49d44304f1771be1eed47d9");
        assert_eq!(b, "9bdb34ac23b10b4c3dcfd184b9d16721");
        assert_eq!(
            fingerprint("node-a", key, &head, 1),
            "c7e882b03955a631804deca20aabdfc4"
        );
        assert_eq!(
            ferry_wire::event_id(&a, 0),
            "32de32626b72df50d077e950558c9033"
        );
        assert_eq!(
            ferry_wire::event_id(&a, 12_345_678_901),
            "2ec098f3d572fff79742450309ef5edb"
        );
        assert_eq!(
            ferry_wire::event_id(&b, 0),
            "58f6c5a2663e0ecc9156862b583260ad"
        );
        assert_eq!(hash_tail(b"end of a line\n"), "5a35a6bb7fb54bab");
    }

    #[test]
    fn holds_checks_head_length_and_the_bytes_before_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, b"head\nline one\nline two\n").unwrap();
        let f = File::open(&path).unwrap();
        let head = Head::read(&f).unwrap().unwrap().hash();
        let tail = tail_hash_at(&f, 14);
        assert!(holds(&f, &head, 14, tail.as_deref()));
        assert!(holds(&f, &head, 23, None));
        assert!(!holds(&f, &head, 24, None), "shorter than the offset");
        assert!(
            !holds(&f, &head, 13, tail.as_deref()),
            "other bytes before it"
        );
        std::fs::write(&path, b"head\nLINE ONE\nline two\n").unwrap();
        assert!(!holds(&f, &head, 14, tail.as_deref()), "rewritten");
        assert_eq!(tail_hash_at(&f, 0), None);
    }
}
