//! File identity: which bytes on disk a stream of records came from.
//!
//! A source is (device, inode) plus the first line of the file (at most [`HEAD_BYTES`]) plus a
//! generation the tailer bumps when the same inode is truncated in place; its fingerprint is
//! [`ferry_wire::source_id`] of those. Files are never identified by name. This module only reads
//! the head of a file; it keeps no state.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

use xxhash_rust::xxh3::xxh3_64;

/// How many bytes of the first line identify a file.
pub(crate) const HEAD_BYTES: usize = 1024;

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

/// `log.file.fingerprint` of one generation of a file.
pub(crate) fn fingerprint(key: FileKey, head: &Head, generation: u32) -> String {
    ferry_wire::source_id(key.dev, key.ino, &head.bytes, generation)
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
        let fp = fingerprint(k, &head, 0);
        assert_eq!(fp, fingerprint(k, &head, 0));
        assert_ne!(fp, fingerprint(k, &head, 1));
        assert_ne!(fp, fingerprint(FileKey { dev: 1, ino: 3 }, &head, 0));
        assert_eq!(head.hash().len(), 16);
    }
}
