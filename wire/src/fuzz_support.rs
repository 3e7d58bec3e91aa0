//! Harness functions for the fuzz targets (`fuzz/`) and for the corpus replay test: each takes
//! arbitrary bytes, drives the batch decoder the way the aggregator does, and panics when an
//! invariant breaks. Not an interface: nothing outside the fuzzing and its replay calls these.

use serde_json::Value;

use crate::{decode_batch, parse_batch, Compression, DecodedBatch};

/// The aggregator's default `max_decompressed_bytes` is far larger; a small limit lets the
/// fuzzer reach the limit checks.
const MAX_DECOMPRESSED: usize = 256 * 1024;

/// An uncompressed batch body (either version), as `decode_batch` with identity encoding and
/// then `parse_batch` (the queue's reader) see it; then every accessor of every record.
pub fn batch(data: &[u8]) {
    if let Ok(batch) = decode_batch(data, Compression::None, MAX_DECOMPRESSED) {
        check_decoded(&batch);
        // What `decode_batch` accepted, the queue's reader accepts too, with the same records.
        let again = parse_batch(batch.data.clone())
            .unwrap_or_else(|e| panic!("decode_batch accepted what parse_batch refuses: {e}"));
        assert_eq!(again.logs.len(), batch.logs.len());
        assert_eq!(again.stats, batch.stats);
        for (a, b) in batch.logs.iter().zip(&again.logs) {
            assert_eq!(batch.record(a), again.record(b));
        }
    }
    // The queue's reader gets bytes whose checksum held, but it must not panic on any of them.
    if let Ok(batch) = parse_batch(data.to_vec()) {
        check_accessors(&batch, false);
    }
}

/// A compressed body: the first byte picks gzip, zstd or lz4 (and a decompression limit), the
/// rest is the body as it arrived.
pub fn batch_compressed(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let compression = match (selector & 1, selector & 0x20) {
        (_, 0x20) => Compression::Lz4,
        (0, _) => Compression::Gzip { level: 1 },
        _ => Compression::Zstd { level: 1 },
    };
    // Limits from 64 bytes up, so that both sides of the limit are reached.
    let limit = 64usize << (selector >> 1 & 0x0f);
    match crate::decompress(body, compression, limit) {
        Ok(plain) => {
            assert!(
                plain.len() <= limit,
                "{} bytes decompressed past the limit of {limit}",
                plain.len()
            );
            let decoded = decode_batch(body, compression, limit);
            if let Ok(batch) = &decoded {
                assert_eq!(batch.data, plain, "decode_batch decompressed other bytes");
                check_decoded(batch);
            }
        }
        Err(_) => {
            assert!(
                decode_batch(body, compression, limit).is_err(),
                "decode_batch accepted a body decompress refused"
            );
        }
    }
}

/// Invariants of a batch `decode_batch` accepted.
fn check_decoded(batch: &DecodedBatch) {
    assert_eq!(batch.header.logs, batch.logs.len(), "log count");
    assert_eq!(batch.header.stats, batch.stats.len(), "stats count");
    assert!((1..=3).contains(&batch.header.ferry));
    check_accessors(batch, true);
}

/// Every accessor of every record: none panics; a record whose JSON is valid as sent comes back
/// whole as valid JSON whose keys are the ones the accessors give. `validated`: the batch came
/// through `decode_batch` (`parse_batch` trusts that its input was, and does not check UTF-8).
fn check_accessors(batch: &DecodedBatch, validated: bool) {
    for log in &batch.logs {
        let id = batch.id(log).into_owned();
        let timestamp = batch.timestamp(log).into_owned();
        let fingerprint = batch.fingerprint(log).to_owned();
        for path in [
            &["log", "file", "path"][..],
            &["container", "labels", "app"],
            &["kubernetes", "pod", "name"],
            &["message"],
        ] {
            let _ = batch.source_field(log, path);
        }
        let record = batch.record(log);
        assert_eq!(record.len(), batch.record_len(log), "record_len");
        let mut with_ingested = Vec::new();
        let spliced = batch.write_record(
            log,
            Some(&crate::Ingested::new("2026-11-29T12:00:00.000Z")),
            &mut with_ingested,
        );
        if let Some(len) = spliced {
            // Without the member spliced in, the record is the record as sent.
            let prefix = b"{\"event\":{".len();
            let mut without = with_ingested[..prefix].to_vec();
            without.extend_from_slice(&with_ingested[prefix + len..]);
            assert_eq!(without, &record[..], "write_record's spliced length");
        }
        let Ok(value) = serde_json::from_slice::<Value>(&record) else {
            // Versions 2 and 3: the frame is checked, not every byte (README, "The limit");
            // such a record is refused by Elasticsearch as a dead letter.
            assert!(
                batch.header.ferry >= 2 || !validated,
                "a version 1 record that is not JSON"
            );
            continue;
        };
        let ingested: Value = serde_json::from_slice(&with_ingested).unwrap_or_else(|e| {
            panic!(
                "event.ingested made a valid record invalid ({e}): {}",
                String::from_utf8_lossy(&with_ingested)
            )
        });
        assert_eq!(
            ingested.pointer("/event/ingested").and_then(Value::as_str),
            Some("2026-11-29T12:00:00.000Z"),
            "event.ingested of {}",
            String::from_utf8_lossy(&with_ingested)
        );
        if batch.header.ferry >= 2 {
            // The frame's keys are the record's keys (a version 3 id derived, written back).
            let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
            assert_eq!(text(value.pointer("/event/id")), Some(id), "event.id");
            assert_eq!(text(value.get("@timestamp")), Some(timestamp), "@timestamp");
            assert_eq!(
                text(value.pointer("/log/file/fingerprint")),
                Some(fingerprint),
                "log.file.fingerprint"
            );
            assert_eq!(
                value.pointer("/log/offset").and_then(Value::as_u64),
                Some(log.offset()),
                "log.offset"
            );
        }
    }
}

/// Replays every file of `fuzz/corpus/<target>/` (the seeds and every input a finding was
/// fixed for) through the harness the fuzz target calls, on the stable toolchain
/// (each crate's corpus tests call it).
pub fn replay_corpus(target: &str, harness: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries =
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
    let mut replayed = 0;
    for entry in entries {
        let path = entry.expect("corpus entry").path();
        let data = std::fs::read(&path).expect("corpus file");
        if std::panic::catch_unwind(|| harness(&data)).is_err() {
            panic!("{} fails the {target} harness", path.display());
        }
        replayed += 1;
    }
    assert!(replayed > 0, "corpus {} is empty", dir.display());
}

#[cfg(test)]
mod tests {
    use super::replay_corpus as replay;

    #[test]
    fn corpus_batch_replays() {
        replay("batch", super::batch);
    }

    #[test]
    fn corpus_batch_compressed_replays() {
        replay("batch_compressed", super::batch_compressed);
    }
}
