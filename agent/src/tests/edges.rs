//! The file edges (issue 10): copytruncate on the writer's own schedule, rotation while the agent
//! is down, truncation while the agent is behind, rotated files already on disk when a file is
//! first met, and cloned nodes. Every assertion runs on everything the aggregator double accepted
//! (no deduplication): each line once, in order per source.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use ferry_wire::LogRecord;

use super::util::*;
use crate::metrics::LostReason;

/// Asserts every record was accepted once (no event id twice), offsets strictly increase per
/// fingerprint in acceptance order, and ids are derived from fingerprint and offset; returns the
/// messages per fingerprint.
fn exactly_once(records: &[LogRecord]) -> HashMap<String, Vec<String>> {
    let mut ids = std::collections::HashSet::new();
    let mut last: HashMap<&str, u64> = HashMap::new();
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for r in records {
        assert!(ids.insert(&r.event.id), "accepted twice: {r:?}");
        let fp = r.log.file.fingerprint.as_str();
        if let Some(prev) = last.insert(fp, r.log.offset) {
            assert!(prev < r.log.offset, "order broken: {prev} then {r:?}");
        }
        assert_eq!(r.event.id, ferry_wire::event_id(fp, r.log.offset));
        out.entry(fp.to_string())
            .or_default()
            .push(r.message.clone());
    }
    out
}

/// The messages, sorted (to compare sets of lines).
fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// logrotate's `copytruncate`: shift `name.N` to `name.N+1`, copy the file to `name.1`, truncate
/// it in place. The writer is paused meanwhile (it is the caller), so nothing falls between the
/// copy and the truncation.
fn copytruncate(log: &Path) {
    shift(log);
    std::fs::copy(log, rotated(log, 1)).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(log)
        .unwrap()
        .set_len(0)
        .unwrap();
}

/// Renames `name.N` to `name.N+1`, highest first.
fn shift(log: &Path) {
    let mut n = 1;
    while rotated(log, n).exists() {
        n += 1;
    }
    for i in (1..n).rev() {
        std::fs::rename(rotated(log, i), rotated(log, i + 1)).unwrap();
    }
}

fn rotated(log: &Path, n: u32) -> std::path::PathBuf {
    let mut name = log.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    name.into()
}

/// Regression (issue 10, finding 1): the writer copytruncates on its own schedule, never waiting
/// for the agent; the lines between the agent's position and the truncation are finished in the
/// copy, under the source's own identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_on_the_writers_schedule_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs/app.log");
    append(&log, &lines("w", 0..1));
    let agg = TestAggregator::start().await;
    let mut cfg = config(dir.path(), &agg.url());
    cfg.batch_max_records = 50;
    cfg.read_buffer_bytes = 4096;
    let agent = crate::start(cfg).await.unwrap();
    let writer_log = log.clone();
    let writer = std::thread::spawn(move || {
        let mut n = 1;
        for round in 0..12 {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&writer_log)
                .unwrap();
            for _ in 0..(200 + round * 37) {
                writeln!(f, "w line {n} {}", "x".repeat(n % 90)).unwrap();
                n += 1;
            }
            drop(f);
            copytruncate(&writer_log);
        }
        n
    });
    let written = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    let waited = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        wait_until("every line", || agg.stored().len() >= written),
    )
    .await;
    let stored = agg.stored();
    if waited.is_err() {
        let got: std::collections::HashSet<usize> = stored
            .iter()
            .map(|r| r.message.split(' ').nth(2).unwrap().parse().unwrap())
            .collect();
        let missing: Vec<usize> = (0..written).filter(|n| !got.contains(n)).collect();
        panic!(
            "{} of {written} missing, first {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
    }
    let got = exactly_once(&stored);
    let all: Vec<String> = got.values().flatten().cloned().collect();
    let expected: Vec<String> = (0..written)
        .map(|n| match n {
            0 => "w line 0".to_string(),
            n => format!("w line {n} {}", "x".repeat(n % 90)),
        })
        .collect();
    if sorted(all.clone()) != sorted(expected) {
        let mut seen: HashMap<usize, Vec<&str>> = HashMap::new();
        for (fp, msgs) in &got {
            for m in msgs {
                let n = m.split(' ').nth(2).unwrap().parse().unwrap();
                seen.entry(n).or_default().push(&fp[..8]);
            }
        }
        let twice: Vec<_> = seen.iter().filter(|(_, fps)| fps.len() > 1).collect();
        let missing: Vec<usize> = (0..written).filter(|n| !seen.contains_key(n)).collect();
        panic!(
            "{} lines under two sources (first {:?}), {} missing (first {:?})",
            twice.len(),
            &twice[..twice.len().min(5)],
            missing.len(),
            &missing[..missing.len().min(20)]
        );
    }
    // Each generation is one source, whole and in order.
    for msgs in got.values() {
        let nums: Vec<usize> = msgs
            .iter()
            .map(|m| m.split(' ').nth(2).unwrap().parse().unwrap())
            .collect();
        assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");
    }
    assert_eq!(
        agent.metrics.lost(LostReason::Truncated).0,
        0,
        "every truncation had its copy"
    );
    agent.shutdown().await;
}

/// A copy still being made (logrotate copies in chunks) is no source of its own: the agent meets
/// it shorter than what it read, with the same bytes, and finishes the source in it once the file
/// is truncated. (Found by the copytruncate test above failing 1 run in 10: a listing that met
/// the copy half-written read it again as a new source.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_still_being_made_is_not_read_as_a_source_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs/app.log");
    append(&log, &lines("a", 0..40));
    let agg = TestAggregator::start().await;
    let agent = crate::start(config(dir.path(), &agg.url())).await.unwrap();
    wait_until("first lines", || agg.stored().len() == 40).await;

    // logrotate's copy has reached half of the file.
    let whole = std::fs::read(&log).unwrap();
    std::fs::write(rotated(&log, 1), &whole[..whole.len() / 2]).unwrap();
    // A scan has looked at it: a new file's line is read only after the scan that found it,
    // and that scan lists the siblings of every log path.
    append(&dir.path().join("logs/other.log"), &lines("o", 0..1));
    wait_until("the other file's line", || agg.stored().len() >= 41).await;

    // The copy completes; the file is truncated and written again.
    std::fs::write(rotated(&log, 1), &whole).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&log, &lines("b", 0..5));
    wait_until("the new lines", || agg.stored().len() >= 46).await;
    let got = exactly_once(&agg.stored());
    let mut sources: Vec<Vec<String>> = got.into_values().collect();
    sources.sort();
    assert_eq!(
        sources,
        [lines("a", 0..40), lines("b", 0..5), lines("o", 0..1)]
    );
    assert_eq!(agent.metrics.lost(LostReason::Truncated).0, 0);
    agent.shutdown().await;
}

/// Regression (issue 10, finding 2): rename rotations while the agent is down. The rest of the
/// checkpointed file is read from `app.log.2` (two rotations later), the file rotated in between
/// (never seen) from `app.log.1`, then the live file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_rotations_while_down_are_finished_from_the_rotated_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs/app.log");
    append(&log, &lines("a", 0..10));
    let agg = TestAggregator::start().await;
    let cfg = config(dir.path(), &agg.url());
    let agent = crate::start(cfg.clone()).await.unwrap();
    wait_until("first lines", || agg.stored().len() == 10).await;
    agent.shutdown().await;

    append(&log, &lines("a", 10..25));
    shift(&log);
    std::fs::rename(&log, rotated(&log, 1)).unwrap();
    append(&log, &lines("b", 0..7));
    shift(&log);
    std::fs::rename(&log, rotated(&log, 1)).unwrap();
    append(&log, &lines("c", 0..3));

    let agent = crate::start(cfg).await.unwrap();
    wait_until("every line", || agg.stored().len() >= 35).await;
    let got = exactly_once(&agg.stored());
    let mut sources: Vec<Vec<String>> = got.into_values().collect();
    sources.sort();
    assert_eq!(
        sources,
        [lines("a", 0..25), lines("b", 0..7), lines("c", 0..3)]
    );
    // The sources after a restart are ordered oldest first... and nothing is lost.
    assert_eq!(agent.metrics.lost(LostReason::Gone).0, 0);
    agent.shutdown().await;
}

/// Regression (issue 10, finding 2): copytruncate while the agent is down: the rest is read from
/// the copy, the truncated file from its start as the next generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_while_down_is_finished_from_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs/app.log");
    append(&log, &lines("a", 0..10));
    let agg = TestAggregator::start().await;
    let cfg = config(dir.path(), &agg.url());
    let agent = crate::start(cfg.clone()).await.unwrap();
    wait_until("first lines", || agg.stored().len() == 10).await;
    agent.shutdown().await;

    append(&log, &lines("a", 10..20));
    copytruncate(&log);
    // Written again past the old position, with a first line like the old one's length.
    append(&log, &lines("b", 0..30));

    let agent = crate::start(cfg).await.unwrap();
    wait_until("every line", || agg.stored().len() >= 50).await;
    let got = exactly_once(&agg.stored());
    let mut sources: Vec<Vec<String>> = got.into_values().collect();
    sources.sort();
    assert_eq!(sources, [lines("a", 0..20), lines("b", 0..30)]);
    agent.shutdown().await;
}

/// Copytruncate while the agent is down, and nothing written since: the rest is read from the
/// copy at once. (Before, the copy waited for the empty file to be written again, and was never
/// read when it was deleted instead: found by the randomized tailer test timing out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_while_down_and_empty_since_is_finished_from_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs/app.log");
    append(&log, &lines("a", 0..10));
    let agg = TestAggregator::start().await;
    let cfg = config(dir.path(), &agg.url());
    let agent = crate::start(cfg.clone()).await.unwrap();
    wait_until("first lines", || agg.stored().len() == 10).await;
    agent.shutdown().await;

    append(&log, &lines("a", 10..20));
    copytruncate(&log);

    let agent = crate::start(cfg).await.unwrap();
    wait_until("every line", || agg.stored().len() >= 20).await;
    let got = exactly_once(&agg.stored());
    let sources: Vec<Vec<String>> = got.into_values().collect();
    assert_eq!(sources, [lines("a", 0..20)]);
    // Written again later: the next generation.
    append(&log, &lines("b", 0..3));
    wait_until("the new lines", || agg.stored().len() >= 23).await;
    let mut sources: Vec<Vec<String>> = exactly_once(&agg.stored()).into_values().collect();
    sources.sort();
    assert_eq!(sources, [lines("a", 0..20), lines("b", 0..3)]);
    assert_eq!(agent.metrics.lost(LostReason::Truncated).0, 0);
    agent.shutdown().await;
}

/// Regression (issue 10, finding 3): the agent is behind (the aggregator answers 503, the
/// channel is full, the tailer is blocked) when the file is copytruncated and written again past
/// the agent's position. Before, the agent read on from its old position: the start of the new
/// contents was lost and its first record was half a line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_while_behind_is_noticed_before_reading_on() {
    for keep_copy in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        let log = dir.path().join("logs/app.log");
        append(&log, &lines("a", 0..400));
        let agg = TestAggregator::start().await;
        let gate = agg.hold();
        let mut cfg = config(dir.path(), &agg.url());
        cfg.batch_max_records = 20;
        cfg.read_buffer_bytes = 1024;
        let agent = crate::start(cfg).await.unwrap();
        wait_until("the agent is sending", || !agg.requests().is_empty()).await;
        // The forwarder holds one batch, the channel one more, the tailer blocks on a third.
        copytruncate(&log);
        if !keep_copy {
            std::fs::remove_file(rotated(&log, 1)).unwrap();
        }
        append(&log, &lines("b", 0..600));
        drop(gate);
        let expected = if keep_copy { 1000 } else { 600 };
        wait_until("the new generation", || {
            agg.stored()
                .iter()
                .filter(|r| r.message.starts_with("b "))
                .count()
                == 600
        })
        .await;
        if keep_copy {
            wait_until("the copy", || agg.stored().len() >= expected).await;
        }
        let got = exactly_once(&agg.stored());
        let mut sources: Vec<Vec<String>> = got.into_values().collect();
        sources.sort();
        assert_eq!(sources[1], lines("b", 0..600), "keep_copy {keep_copy}");
        if keep_copy {
            assert_eq!(sources[0], lines("a", 0..400));
            // The writer's order: the copy's rest before the file's new contents.
            let first_b = agg
                .stored()
                .iter()
                .position(|r| r.message.starts_with("b "))
                .unwrap();
            assert_eq!(first_b, 400, "a new line accepted before the copy's rest");
            assert_eq!(agg.stored().len(), expected);
            assert_eq!(agent.metrics.lost(LostReason::Truncated), (0, 0));
        } else {
            // What was read is a prefix; the rest is reported, to the byte.
            let read = sources[0].len();
            assert!(read < 400, "the agent was behind: {read}");
            assert_eq!(sources[0], lines("a", 0..read));
            let unread: u64 = lines("a", read..400)
                .iter()
                .map(|l| l.len() as u64 + 1)
                .sum();
            assert_eq!(agent.metrics.lost(LostReason::Truncated), (1, unread));
            let page = agent.metrics.render();
            assert!(page.contains("ferry_agent_sources_lost_total{reason=\"truncated\"} 1"));
            assert!(page.contains(&format!(
                "ferry_agent_lost_bytes_total{{reason=\"truncated\"}} {unread}"
            )));
        }
        agent.shutdown().await;
    }
}

/// Regression (issue 10, finding 7): a file met for the first time with rotated siblings already
/// on disk (a container whose log Docker rotated before the agent looked): the siblings are read,
/// oldest first, then the live file; compressed ones are not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_files_on_disk_when_a_file_is_first_met_are_read() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let agg = TestAggregator::start().await;
    // At the first start.
    let first = dir.path().join("logs/first.log");
    append(&rotated(&first, 2), &lines("f2", 0..5));
    append(&rotated(&first, 1), &lines("f1", 0..5));
    append(&first, &lines("f0", 0..5));
    std::fs::write(dir.path().join("logs/first.log.3.gz"), b"\x1f\x8b not text").unwrap();
    let cfg = config(dir.path(), &agg.url());
    let agent = crate::start(cfg.clone()).await.unwrap();
    wait_until("first file and siblings", || agg.stored().len() >= 15).await;
    // A file that appears while the agent runs, already rotated twice.
    let later = dir.path().join("logs/later.log");
    append(&rotated(&later, 2), &lines("l2", 0..4));
    append(&rotated(&later, 1), &lines("l1", 0..4));
    append(&later, &lines("l0", 0..4));
    wait_until("later file and siblings", || agg.stored().len() >= 27).await;
    let stored = agg.stored();
    let got = exactly_once(&stored);
    let mut sources: Vec<Vec<String>> = got.into_values().collect();
    sources.sort();
    assert_eq!(
        sources,
        [
            lines("f0", 0..5),
            lines("f1", 0..5),
            lines("f2", 0..5),
            lines("l0", 0..4),
            lines("l1", 0..4),
            lines("l2", 0..4)
        ]
    );
    // Oldest first: every line of a sibling is accepted before the first of the next file.
    let at = |prefix: &str| -> Vec<usize> {
        stored
            .iter()
            .enumerate()
            .filter(|(_, r)| r.message.starts_with(prefix))
            .map(|(i, _)| i)
            .collect()
    };
    for [older, newer] in [["f2", "f1"], ["f1", "f0"], ["l2", "l1"], ["l1", "l0"]] {
        assert!(
            at(older).last() < at(newer).first(),
            "{older} before {newer}"
        );
    }
    let path_of = |prefix: &str| {
        stored
            .iter()
            .find(|r| r.message.starts_with(prefix))
            .map(|r| r.log.file.path.clone())
            .unwrap()
    };
    assert_eq!(
        path_of("f2"),
        first.to_string_lossy(),
        "records name the live path"
    );
    agent.shutdown().await;

    // A restart reads none of them again.
    let agent = crate::start(cfg).await.unwrap();
    append(&later, &lines("l0", 4..6));
    wait_until("after the restart", || agg.stored().len() >= 29).await;
    exactly_once(&agg.stored());
    assert_eq!(agg.stored().len(), 29);
    agent.shutdown().await;
}

/// A checkpointed source whose file and copies are all gone is reported lost, not silently
/// forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_gone_while_down_is_reported_lost() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs/app.log");
    append(&log, &lines("a", 0..3));
    let agg = TestAggregator::start().await;
    let cfg = config(dir.path(), &agg.url());
    let agent = crate::start(cfg.clone()).await.unwrap();
    wait_until("first lines", || agg.stored().len() == 3).await;
    agent.shutdown().await;
    let other = dir.path().join("logs/other.log");
    append(&other, &lines("o", 0..2));
    append(&log, &lines("a", 3..5));
    // Compressed by logrotate (the content does not matter: it is never read).
    std::fs::rename(&log, dir.path().join("logs/app.log.1.gz")).unwrap();
    let agent = crate::start(cfg).await.unwrap();
    wait_until("other file", || agg.stored().len() == 5).await;
    wait_until("loss reported", || {
        agent.metrics.lost(LostReason::Compressed).0 == 1
    })
    .await;
    assert!(agent
        .status()
        .last_error
        .is_some_and(|e| e.contains("lost: compressed")));
    wait_until("its entry forgotten", || {
        checkpoint_offsets(dir.path()).len() == 1
    })
    .await;
    agent.shutdown().await;
}

/// Regression (issue 10, finding 6): two nodes cloned from one image hold the same file (same
/// device, inode and first line); their records must not share fingerprints or ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloned_nodes_do_not_share_fingerprints() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    append(&dir.path().join("logs/app.log"), &lines("a", 0..3));
    let agg = TestAggregator::start().await;
    let mut fps = Vec::new();
    for (i, host) in ["node-a", "node-b"].into_iter().enumerate() {
        let mut cfg = config(dir.path(), &agg.url());
        cfg.host_name = host.into();
        cfg.data_dir = dir.path().join(format!("data-{host}"));
        let agent = crate::start(cfg).await.unwrap();
        wait_until("lines", || agg.stored().len() == 3 * (i + 1)).await;
        agent.shutdown().await;
        fps.push(agg.stored()[3 * i].log.file.fingerprint.clone());
    }
    assert_ne!(fps[0], fps[1]);
    exactly_once(&agg.stored());
}
