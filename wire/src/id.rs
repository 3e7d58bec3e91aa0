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
    let hex = event_id_bytes(source, offset);
    String::from_utf8(hex.to_vec()).expect("hex digits are ASCII")
}

/// [`event_id`] without an allocation: its 32 ASCII bytes (the aggregator writes the id of every
/// record of a version 3 batch, which leaves it out).
pub fn event_id_bytes(source: &str, offset: u64) -> [u8; 32] {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(source.as_bytes());
    hasher.update(&offset.to_le_bytes());
    hex128(hasher.digest128())
}

/// `{:032x}` without the formatting machinery (this runs once per record).
fn hex128(n: u128) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 32];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[((n >> ((31 - i) * 4)) & 0xf) as usize];
    }
    digits
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

    #[test]
    fn event_ids_keep_their_definition() {
        // Ids must not change across versions: a replay after an upgrade would duplicate.
        for (source, offset) in [
            ("", 0),
            ("c7227d7c678ff0c698536ef595f3417b", 12_345_678_901),
        ] {
            let mut key = source.as_bytes().to_vec();
            key.extend_from_slice(&u64::to_le_bytes(offset));
            let expected = format!("{:032x}", xxh3_128(&key));
            assert_eq!(event_id(source, offset), expected);
        }
    }
}
