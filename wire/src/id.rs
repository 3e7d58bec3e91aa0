//! Deterministic identities: a source (one file generation) and an event within it.
//!
//! `event.id` must be the same every time the same bytes of the same file are read again, so that
//! a replay after a crash is recognised downstream as a duplicate rather than a second document.

use xxhash_rust::xxh3::xxh3_128;

/// Identity of one log source: a file (device + inode), the hash of its first bytes, and a
/// generation that the agent bumps when the same file is truncated in place (copytruncate).
/// Returned as 32 lowercase hex characters; stored as `log.file.fingerprint`.
pub fn source_id(device: u64, inode: u64, head: &[u8], generation: u32) -> String {
    let mut key = Vec::with_capacity(20 + head.len());
    key.extend_from_slice(&device.to_le_bytes());
    key.extend_from_slice(&inode.to_le_bytes());
    key.extend_from_slice(&generation.to_le_bytes());
    key.extend_from_slice(head);
    format!("{:032x}", xxh3_128(&key))
}

/// `event.id` of the record that starts at (or, for joined records, is completed by the line at)
/// `offset` in `source`: 32 lowercase hex characters.
pub fn event_id(source: &str, offset: u64) -> String {
    let mut key = Vec::with_capacity(source.len() + 8);
    key.extend_from_slice(source.as_bytes());
    key.extend_from_slice(&offset.to_le_bytes());
    format!("{:032x}", xxh3_128(&key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let s = source_id(1, 2, b"first line\n", 0);
        assert_eq!(s, source_id(1, 2, b"first line\n", 0));
        assert_ne!(
            s,
            source_id(1, 2, b"first line\n", 1),
            "generation changes identity"
        );
        assert_ne!(s, source_id(1, 3, b"first line\n", 0));
        assert_eq!(s.len(), 32);
        assert_eq!(event_id(&s, 10), event_id(&s, 10));
        assert_ne!(event_id(&s, 10), event_id(&s, 11));
    }
}
