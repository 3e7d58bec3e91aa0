//! The local store's commit cost against how many sources it remembers.
//!
//! `commit/<sources>`: one commit (a batch of one record of an already known source: its line
//! written and fsynced, then the state committed) in a store that keeps marks for `<sources>`
//! sources. Before the state journal, every commit rewrote all marks, so this grew with the
//! store's history; now it should stay flat (compaction, paid once per journal-sized batch of
//! commits, is inside the measurement as it comes). Set `FERRY_BENCH_DIR` to measure on a
//! particular disk (default: the system's temporary folder); fsync dominates on real disks.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ferry_aggregator::bench_support::Store;
use ferry_wire::{BatchBuilder, Compression, LogFile, LogMeta, LogRecord};

fn record(source: &str, offset: u64) -> LogRecord {
    LogRecord {
        event: ferry_wire::Event {
            id: ferry_wire::event_id(source, offset),
            ..Default::default()
        },
        timestamp: "2026-11-28T08:40:00.123456789Z".into(),
        message: "GET /api/v1/orders/42 HTTP/1.1 200 512".into(),
        log: LogMeta {
            file: LogFile {
                path: format!("/var/lib/docker/containers/{source}/{source}-json.log"),
                fingerprint: source.into(),
            },
            offset,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn batch(records: impl IntoIterator<Item = LogRecord>) -> Vec<u8> {
    let mut b = BatchBuilder::new("node-1");
    for r in records {
        b.push_log(&r);
    }
    b.finish(Compression::None).body
}

fn fingerprint(i: usize) -> String {
    format!("{i:032x}")
}

fn commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("commit");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(10));
    for sources in [1_000usize, 100_000, 400_000] {
        let base = std::env::var_os("FERRY_BENCH_DIR").map(std::path::PathBuf::from);
        let tmp = match &base {
            Some(dir) => tempfile::tempdir_in(dir),
            None => tempfile::tempdir(),
        }
        .expect("a temporary folder");
        let mut store = Store::open(tmp.path(), sources + 1).expect("store opens");
        // The history: `sources` sources, stored in batches of 10,000 records.
        let mut position = 0;
        for chunk in (0..sources).collect::<Vec<_>>().chunks(10_000) {
            position += 1;
            let body = batch(chunk.iter().map(|&i| record(&fingerprint(i), 0)));
            store.apply(&body, position).expect("history stored");
        }
        assert_eq!(store.sources(), sources);
        let known = fingerprint(sources / 2);
        let mut offset = 0;
        group.bench_with_input(BenchmarkId::from_parameter(sources), &sources, |b, _| {
            b.iter(|| {
                offset += 1;
                position += 1;
                let body = batch([record(&known, offset)]);
                store.apply(&body, position).expect("commit");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
