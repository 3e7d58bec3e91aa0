//! The store's commit record under crashes, torn and damaged journals, retirement, the source
//! cap and a long history: recovery always gives the committed state, and every record is
//! stored once.

use std::collections::BTreeMap;

use super::state::{parse_line, Record, Step};
use super::tests::{batch, record};
use super::*;
use chrono::TimeZone;
use ferry_wire::LogRecord;

fn at(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0).unwrap()
}

fn pos(offset: u64) -> Position {
    Position { segment: 1, offset }
}

/// A batch whose header retires `retired`.
fn retiring(records: &[LogRecord], retired: &[&str]) -> Vec<u8> {
    let body = batch(records);
    let nl = body.iter().position(|&b| b == b'\n').unwrap();
    let mut header: ferry_wire::BatchHeader = serde_json::from_slice(&body[..nl]).unwrap();
    header.retired = retired.iter().map(|s| s.to_string()).collect();
    let mut out = serde_json::to_vec(&header).unwrap();
    out.extend_from_slice(&body[nl..]);
    out
}

/// Every day file's bytes, by name.
fn day_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    day_files(dir)
        .unwrap()
        .into_iter()
        .map(|(name, path)| (name, fs::read(path).unwrap()))
        .collect()
}

/// (fingerprint, offset) of every stored line, in file order.
fn stored(dir: &Path) -> Vec<(String, u64)> {
    day_bytes(dir)
        .values()
        .flat_map(|bytes| {
            bytes
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_slice(l).unwrap();
                    (
                        v["log"]["file"]["fingerprint"]
                            .as_str()
                            .unwrap()
                            .to_string(),
                        v["log"]["offset"].as_u64().unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn journal_records(dir: &Path) -> Vec<Record> {
    fs::read(dir.join("state.journal"))
        .unwrap()
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| parse_line(l).unwrap())
        .collect()
}

#[test]
fn a_retired_source_is_forgotten_in_the_commit_of_the_batch_that_retires_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = LocalStore::open(tmp.path(), 7, 1000, at(28, 9)).unwrap();
    let first = batch(&[
        record("a", 0, "x"),
        record("a", 10, "y"),
        record("b", 5, "z"),
    ]);
    store.apply([&first[..]], pos(1), at(28, 9)).unwrap();
    assert_eq!(store.sources(), 2);

    let retire = retiring(&[record("b", 6, "w")], &["a"]);
    let applied = store.apply([&retire[..]], pos(2), at(28, 9)).unwrap();
    assert_eq!((applied.stored, applied.retired), (1, 1));
    assert_eq!(store.sources(), 1);
    // One record, one commit: the batch's mark, the retirement and the queue position.
    let last = journal_records(tmp.path()).pop().unwrap();
    assert_eq!(last.dropped, ["a"]);
    assert_eq!(last.marks.get("b"), Some(&6));
    assert_eq!(last.queue_position, pos(2));

    drop(store);
    let mut store = LocalStore::open(tmp.path(), 7, 1000, at(28, 10)).unwrap();
    assert_eq!(store.sources(), 1);
    // "a" has no state left: a record of it (which its agent will never send) would be new,
    // while "b" is still de-duplicated.
    let probe = batch(&[record("a", 0, "x"), record("b", 6, "w")]);
    let applied = store.apply([&probe[..]], pos(3), at(28, 10)).unwrap();
    assert_eq!((applied.stored, applied.duplicates), (1, 1));
    // Retiring a source the store never knew changes nothing.
    let unknown = retiring(&[], &["never-seen"]);
    let applied = store.apply([&unknown[..]], pos(4), at(28, 10)).unwrap();
    assert_eq!(applied.retired, 0);
    assert_eq!(store.sources(), 2);
}

#[test]
fn a_source_retired_and_sent_again_in_one_group_keeps_its_new_mark() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = LocalStore::open(tmp.path(), 7, 1000, at(28, 9)).unwrap();
    let first = batch(&[record("a", 10, "x")]);
    let retire = retiring(&[], &["a"]);
    let again = batch(&[record("a", 3, "new file, same identity")]);
    let applied = store
        .apply([&first[..], &retire[..], &again[..]], pos(1), at(28, 9))
        .unwrap();
    assert_eq!((applied.stored, applied.retired), (2, 1));
    drop(store);
    let mut store = LocalStore::open(tmp.path(), 7, 1000, at(28, 9)).unwrap();
    let applied = store.apply([&again[..]], pos(2), at(28, 9)).unwrap();
    assert_eq!(
        applied.duplicates, 1,
        "the mark set after the retirement holds"
    );
}

#[test]
fn past_max_sources_the_least_recently_stored_tenth_is_evicted_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = LocalStore::open(tmp.path(), 7, 10, at(28, 9)).unwrap();
    for i in 0..10u64 {
        let b = batch(&[record(&format!("s{i}"), 0, "m")]);
        let applied = store.apply([&b[..]], pos(i + 1), at(28, 9)).unwrap();
        assert_eq!(applied.evicted, 0);
    }
    // s0 stores again, so it is now the most recent.
    let b = batch(&[record("s0", 1, "m")]);
    store.apply([&b[..]], pos(11), at(28, 9)).unwrap();
    // An eleventh source: down to nine, the two least recently stored (s1, s2) go.
    let b = batch(&[record("s10", 0, "m")]);
    let applied = store.apply([&b[..]], pos(12), at(28, 9)).unwrap();
    assert_eq!(applied.evicted, 2);
    assert_eq!(store.sources(), 9);
    drop(store);
    let mut store = LocalStore::open(tmp.path(), 7, 10, at(28, 9)).unwrap();
    let replay = batch(&[
        record("s0", 1, "m"),
        record("s1", 0, "m"),
        record("s2", 0, "m"),
        record("s3", 0, "m"),
        record("s10", 0, "m"),
    ]);
    let applied = store.apply([&replay[..]], pos(13), at(28, 9)).unwrap();
    // The documented limit: replays of evicted sources are stored again.
    assert_eq!((applied.stored, applied.duplicates), (2, 3));
}

/// Regression (review of issue 10): every commit rewrote `state.json` with every source's
/// mark, so its cost grew with the store's history.
#[test]
fn a_commit_writes_what_it_changes_not_what_the_store_remembers() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let mut store = LocalStore::open(tmp.path(), 7, 1_000_000, at(28, 9)).unwrap();
    store.state.compact_min_bytes = 0;
    let many: Vec<LogRecord> = (0..5000)
        .map(|i| record(&format!("{i:032x}"), 7, "m"))
        .collect();
    store.apply([&batch(&many)[..]], pos(1), at(28, 9)).unwrap();
    // Compacted once (the first record is larger than the empty snapshot), the history is
    // now in the snapshot.
    let snapshot = fs::metadata(tmp.path().join("state.json")).unwrap();
    assert!(snapshot.len() > 5000 * 32, "{}", snapshot.len());
    let journal_before = fs::metadata(tmp.path().join("state.journal"))
        .unwrap()
        .len();
    for n in 0..100u64 {
        let one = batch(&[record(&format!("{:032x}", n), 8 + n, "m")]);
        store.apply([&one[..]], pos(2 + n), at(28, 9)).unwrap();
    }
    let journal_after = fs::metadata(tmp.path().join("state.journal"))
        .unwrap()
        .len();
    let per_commit = (journal_after - journal_before) / 100;
    assert!(per_commit < 256, "{per_commit} bytes of state per commit");
    let after = fs::metadata(tmp.path().join("state.json")).unwrap();
    assert_eq!(
        (after.ino(), after.len(), after.mtime_nsec()),
        (snapshot.ino(), snapshot.len(), snapshot.mtime_nsec()),
        "the snapshot was not rewritten"
    );
    assert_eq!(store.sources(), 5000);
}

#[test]
fn a_state_file_of_version_1_is_read_and_converted() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "ferry-2026-11-28.ndjson";
    let body = batch(&[record("s", 0, "a"), record("s", 10, "b")]);
    let decoded = decode_batch(&body, Compression::None, usize::MAX).unwrap();
    let mut lines = Vec::new();
    for log in &decoded.logs {
        decoded.write_record(
            log,
            Some(&ferry_wire::Ingested::new("2026-11-28T09:00:00.000Z")),
            &mut lines,
        );
        lines.push(b'\n');
    }
    fs::write(tmp.path().join(name), &lines).unwrap();
    let v1 = serde_json::json!({
        "version": 1,
        "queue_position": {"segment": 3, "offset": 77},
        "files": {name: lines.len()},
        "hwm": {"s": {"offset": 10, "seen": "2026-11-28"}, "t": {"offset": 4, "seen": "2026-11-20"}},
    });
    fs::write(tmp.path().join("state.json"), v1.to_string()).unwrap();

    let mut store = LocalStore::open(tmp.path(), 30, 1000, at(28, 9)).unwrap();
    assert_eq!(
        store.queue_position(),
        Position {
            segment: 3,
            offset: 77
        }
    );
    assert_eq!(store.sources(), 2);
    let snapshot: serde_json::Value =
        serde_json::from_slice(&fs::read(tmp.path().join("state.json")).unwrap()).unwrap();
    assert_eq!(snapshot["version"], 2);
    let next = batch(&[
        record("s", 10, "b"),
        record("s", 20, "c"),
        record("t", 4, "d"),
    ]);
    let applied = store.apply([&next[..]], pos(78), at(28, 9)).unwrap();
    assert_eq!((applied.stored, applied.duplicates), (1, 2));
}

/// Three commits; the journal is then cut at every byte of the last record (what a crash
/// during its append leaves): the store opens at the second commit, the day file is cut back,
/// and the third group, re-applied from the queue, is stored once.
#[test]
fn a_torn_journal_record_is_cut_wherever_it_was_torn() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ref");
    let groups = [
        batch(&[record("s", 0, "a"), record("t", 1, "b")]),
        batch(&[record("s", 10, "c")]),
        retiring(&[record("s", 20, "d"), record("u", 0, "e")], &["t"]),
    ];
    let mut store = LocalStore::open(&dir, 7, 1000, at(28, 9)).unwrap();
    let mut states = Vec::new();
    let mut marks = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        marks.push(fs::metadata(dir.join("state.journal")).unwrap().len());
        store.apply([&g[..]], pos(i as u64 + 1), at(28, 9)).unwrap();
        states.push(store.state.committed().clone());
    }
    drop(store);
    let reference = stored(&dir);
    assert_eq!(reference.len(), 5);
    let journal = fs::read(dir.join("state.journal")).unwrap();
    let last_start = marks[2] as usize;
    assert!(last_start > 0 && last_start < journal.len());
    for cut in last_start..=journal.len() {
        let trial = tmp.path().join(format!("cut-{cut}"));
        fs::create_dir(&trial).unwrap();
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), trial.join(entry.file_name())).unwrap();
        }
        fs::write(trial.join("state.journal"), &journal[..cut]).unwrap();
        let mut store = LocalStore::open(&trial, 7, 1000, at(28, 9)).unwrap();
        let whole = cut == journal.len();
        let want = if whole { &states[2] } else { &states[1] };
        assert_eq!(store.state.committed(), want, "cut at {cut}");
        for (name, bytes) in day_bytes(&trial) {
            assert_eq!(bytes.len() as u64, want.files[&name], "cut at {cut}");
        }
        if !whole {
            assert_eq!(store.queue_position(), pos(2));
            let applied = store.apply([&groups[2][..]], pos(3), at(28, 9)).unwrap();
            assert_eq!((applied.stored, applied.retired), (2, 1), "cut at {cut}");
        }
        assert_eq!(stored(&trial), reference, "cut at {cut}");
    }
}

#[test]
fn damage_inside_the_journal_is_refused_rather_than_guessed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = LocalStore::open(tmp.path(), 7, 1000, at(28, 9)).unwrap();
    for i in 0..3 {
        let b = batch(&[record("s", i, "m")]);
        store.apply([&b[..]], pos(i + 1), at(28, 9)).unwrap();
    }
    drop(store);
    let path = tmp.path().join("state.journal");
    let pristine = fs::read(&path).unwrap();
    let first_end = pristine.iter().position(|&b| b == b'\n').unwrap();
    let mut damaged = pristine.clone();
    damaged[first_end / 2] ^= 0x20;
    fs::write(&path, &damaged).unwrap();
    let err = LocalStore::open(tmp.path(), 7, 1000, at(28, 9)).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("state.journal"), "{text}");
    assert!(text.contains("at byte 0"), "{text}");
    assert!(text.contains("not a torn write"), "{text}");
    assert_eq!(fs::read(&path).unwrap(), damaged, "nothing was cut");
}

/// One operation of the crash scenario.
enum Op {
    /// A group of queue entries, committed at queue position `index + 1`.
    Group(Vec<Vec<u8>>, DateTime<Utc>),
    Retain(DateTime<Utc>),
}

fn scenario() -> Vec<Op> {
    vec![
        Op::Group(
            vec![batch(&[
                record("s", 0, "a"),
                record("s", 10, "b"),
                record("t", 5, "c"),
            ])],
            at(28, 9),
        ),
        Op::Group(
            vec![
                batch(&[record("s", 10, "b"), record("s", 20, "d")]),
                batch(&[record("u", 1, "e")]),
            ],
            at(28, 10),
        ),
        Op::Group(vec![retiring(&[record("u", 2, "f")], &["t"])], at(28, 11)),
        Op::Group(
            vec![batch(&[record("t", 5, "g"), record("s", 30, "h")])],
            at(29, 1),
        ),
        Op::Retain(at(30, 0)),
        Op::Group(
            vec![batch(&[record("s", 30, "h"), record("s", 40, "i")])],
            at(30, 1),
        ),
        Op::Group(vec![], at(30, 2)),
        Op::Group(vec![batch(&[record("v", 1, "j")])], at(30, 3)),
    ]
}

fn run(store: &mut LocalStore, ops: &[Op], i: usize) -> Result<(), StoreError> {
    match &ops[i] {
        Op::Group(entries, now) => store
            .apply(entries.iter().map(Vec::as_slice), pos(i as u64 + 1), *now)
            .map(drop),
        Op::Retain(now) => store.retain(*now),
    }
}

/// Opens the scenario's store: one day of retention, and compaction as often as it can be.
fn open_store(dir: &Path) -> LocalStore {
    let mut store = LocalStore::open(dir, 1, 1000, at(28, 0)).unwrap();
    store.state.compact_min_bytes = 0;
    store.state.faults.steps.set(0);
    store.state.faults.log.borrow_mut().clear();
    store
}

/// The operation to run after reopening: the one after the last committed group.
fn resume_at(store: &LocalStore) -> usize {
    store.queue_position().offset as usize
}

/// Whether a failure before `step` leaves the operation's commit done (its journal record is
/// written in full: the crash came at the fsync or later).
fn after_commit_point(step: Step) -> bool {
    !matches!(
        step,
        Step::DayWrite | Step::DaySync | Step::DayDirSync | Step::JournalWrite
    )
}

/// A crash before every disk step of a scenario of commits, compactions, retirements and a
/// retention pass, one step per trial: reopening gives exactly the last committed state (the
/// one before the operation, or after it when the crash came after its commit point) with the
/// day files cut to it, and resuming from its queue position ends with every record stored
/// once, as in a run without crashes. A failing journal write leaves half its record behind. A
/// second pass lets the same failures happen without a crash (the sink retries the operation)
/// and checks the same end.
#[test]
fn a_crash_at_every_step_recovers_the_committed_state() {
    let ops = scenario();
    let tmp = tempfile::tempdir().unwrap();
    // The reference run, without failures.
    let dir = tmp.path().join("reference");
    let mut store = open_store(&dir);
    let mut states = vec![(store.state.committed().clone(), day_bytes(&dir))];
    for i in 0..ops.len() {
        run(&mut store, &ops, i).unwrap();
        states.push((store.state.committed().clone(), day_bytes(&dir)));
    }
    let steps = store.state.faults.steps.get();
    let kinds = store.state.faults.log.borrow().clone();
    drop(store);
    let end = states.last().unwrap().clone();
    let stored_once = stored(&dir);
    assert_eq!(
        stored_once
            .iter()
            .map(|(f, o)| format!("{f}:{o}"))
            .collect::<Vec<_>>(),
        ["t:5", "s:30", "s:40", "v:1"],
        "day 28 went with retention; t stored again after its retirement"
    );
    for kind in [
        Step::DayDirSync,
        Step::SnapshotRename,
        Step::JournalTruncateSync,
        Step::FileDelete,
    ] {
        assert!(kinds.contains(&kind), "the scenario takes a {kind:?} step");
    }

    for fail_at in 0..steps {
        // With a crash right after the failure.
        let dir = tmp.path().join(format!("crash-{fail_at}"));
        let mut store = open_store(&dir);
        store.state.faults.fail_at = Some(fail_at);
        store.state.faults.tear = true;
        let mut i = 0;
        let mut crashed = false;
        while i < ops.len() {
            let result = run(&mut store, &ops, i);
            let fired = !crashed && store.state.faults.steps.get() > fail_at;
            if !fired {
                result.unwrap();
                i += 1;
                continue;
            }
            crashed = true;
            let failed = store.state.faults.log.borrow()[fail_at as usize];
            drop(store);
            store = open_store(&dir);
            let (want_state, want_files) =
                &states[if after_commit_point(failed) { i + 1 } else { i }];
            let name = format!("crash before step {fail_at} ({failed:?}) of operation {i}");
            assert_eq!(store.state.committed(), want_state, "{name}");
            assert_eq!(&day_bytes(&dir), want_files, "{name}");
            i = resume_at(&store);
        }
        assert!(crashed);
        assert_eq!(store.state.committed(), &end.0, "crash at {fail_at}");
        drop(store);
        let store = open_store(&dir);
        assert_eq!(
            store.state.committed(),
            &end.0,
            "crash at {fail_at}, reopened"
        );
        assert_eq!(stored(&dir), stored_once, "crash at {fail_at}");

        // Without a crash: the failed operation is retried.
        let dir = tmp.path().join(format!("retry-{fail_at}"));
        let mut store = open_store(&dir);
        store.state.faults.fail_at = Some(fail_at);
        store.state.faults.tear = true;
        for i in 0..ops.len() {
            if run(&mut store, &ops, i).is_err() {
                run(&mut store, &ops, i).unwrap();
            }
        }
        assert_eq!(store.state.committed(), &end.0, "failure at {fail_at}");
        drop(store);
        let store = open_store(&dir);
        assert_eq!(
            store.state.committed(),
            &end.0,
            "failure at {fail_at}, reopened"
        );
        assert_eq!(stored(&dir), stored_once, "failure at {fail_at}");
    }
}

/// Random groups over many sources (new records, replays of earlier batches, retirements),
/// frequent compaction, and crashes at random steps with the queue re-applied from the
/// committed position: every record is stored exactly once, in the order first sent.
#[test]
fn random_groups_and_crashes_store_every_record_once() {
    for seed in 0..20u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        // The queue: entries (batches) in order; the model of what must be stored.
        let mut entries: Vec<Vec<u8>> = Vec::new();
        let mut expected: Vec<(String, u64)> = Vec::new();
        let mut next_offset: BTreeMap<String, u64> = BTreeMap::new();
        let mut live: Vec<String> = (0..8).map(|i| format!("src{i}")).collect();
        let mut born = 8;
        let mut sent: Vec<Vec<u8>> = Vec::new();
        for _ in 0..120 {
            if let Some(last) = sent.last().filter(|_| rng.u8(..) < 40) {
                // The agent resends its last batch (the acknowledgement was lost).
                entries.push(last.clone());
                continue;
            }
            let mut retired = Vec::new();
            if rng.u8(..) < 25 {
                // A source whose file is gone, fully read and acknowledged, retires (it sends
                // nothing more); a new one appears.
                let gone = live.swap_remove(rng.usize(..live.len()));
                retired.push(gone);
                live.push(format!("src{born}"));
                born += 1;
            }
            let mut records = Vec::new();
            for _ in 0..rng.usize(1..6) {
                let source = live[rng.usize(..live.len())].clone();
                let offset = next_offset.entry(source.clone()).or_insert(0);
                *offset += rng.u64(1..100);
                records.push(record(&source, *offset, "m"));
                expected.push((source, *offset));
            }
            let refs: Vec<&str> = retired.iter().map(String::as_str).collect();
            let entry = retiring(&records, &refs);
            entries.push(entry.clone());
            sent.push(entry);
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut store = open_store(dir);
        store.state.compact_min_bytes = 256;
        let mut crashes = 0;
        let mut at_entry = 0;
        while at_entry < entries.len() {
            if rng.u8(..) < 30 {
                let base = store.state.faults.steps.get();
                store.state.faults.fail_at = Some(base + rng.u64(0..12));
                store.state.faults.tear = rng.bool();
            }
            let group = rng.usize(1..5).min(entries.len() - at_entry);
            let slice = &entries[at_entry..at_entry + group];
            let now = at(28 + (at_entry / 60) as u32, 9);
            let position = pos((at_entry + group) as u64);
            match store.apply(slice.iter().map(Vec::as_slice), position, now) {
                Ok(_)
                    if store
                        .state
                        .faults
                        .fail_at
                        .is_none_or(|f| store.state.faults.steps.get() <= f) =>
                {
                    at_entry += group;
                }
                _ => {
                    // The failure, wherever it came: crash, reopen, resume from the queue.
                    crashes += 1;
                    drop(store);
                    store = open_store(dir);
                    store.state.compact_min_bytes = 256;
                    at_entry = store.queue_position().offset as usize;
                }
            }
        }
        assert!(crashes > 0, "seed {seed} crashed at least once");
        assert_eq!(stored(dir), expected, "seed {seed}");
    }
}
