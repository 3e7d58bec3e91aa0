//! Tailing: rotation, truncation, deletion, restarts, and a model-based sequence test.

use std::collections::HashMap;
use std::io::Write;

use ferry_wire::{Flag, LogRecord};

use super::util::*;

/// Records grouped by fingerprint, each group checked for strictly increasing offsets.
fn by_source(records: &[LogRecord]) -> HashMap<String, Vec<LogRecord>> {
    let mut map: HashMap<String, Vec<LogRecord>> = HashMap::new();
    for r in records {
        map.entry(r.log.file.fingerprint.clone())
            .or_default()
            .push(r.clone());
    }
    for group in map.values() {
        assert!(
            group.windows(2).all(|w| w[0].log.offset < w[1].log.offset),
            "offsets not increasing"
        );
        for r in group {
            assert_eq!(
                r.event.id,
                ferry_wire::event_id(&r.log.file.fingerprint, r.log.offset)
            );
        }
    }
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_lines_with_offsets_ids_and_enrichment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs/app.log");
    append(&log, &lines("a", 0..3));
    let agg = TestAggregator::start().await;
    let agent = crate::start(config(dir.path(), &agg.url())).await.unwrap();
    wait_until("3 stored", || agg.stored().len() == 3).await;
    append(&log, &lines("a", 3..5));
    wait_until("5 stored", || agg.stored().len() == 5).await;
    let stored = agg.stored();
    assert_eq!(agg.stored_messages(), lines("a", 0..5));
    let mut offset = 0;
    for r in &stored {
        assert_eq!(r.log.offset, offset);
        offset += r.message.len() as u64 + 1;
        assert_eq!(r.log.file.path, log.to_string_lossy());
        assert_eq!(r.host.name, "test-node");
        assert!(r.timestamp.ends_with('Z'));
    }
    by_source(&stored);
    assert_eq!(agent.status().lines_read, 5);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_rotation_drains_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs/app.log");
    let mut writer = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    for l in lines("old", 0..10) {
        writeln!(writer, "{l}").unwrap();
    }
    let agg = TestAggregator::start().await;
    let agent = crate::start(config(dir.path(), &agg.url())).await.unwrap();
    wait_until("first lines", || agg.stored().len() == 10).await;

    // Rotate by rename; the writer keeps writing to the old inode for a moment.
    std::fs::rename(&log, dir.path().join("logs/app.log.1")).unwrap();
    for l in lines("old", 10..15) {
        writeln!(writer, "{l}").unwrap();
    }
    append(&log, &lines("new", 0..5));
    for l in lines("old", 15..20) {
        writeln!(writer, "{l}").unwrap();
    }
    drop(writer);
    wait_until("all lines", || agg.stored().len() == 25).await;
    let groups = by_source(&agg.stored());
    assert_eq!(groups.len(), 2);
    let mut msgs: Vec<Vec<String>> = groups
        .values()
        .map(|g| g.iter().map(|r| r.message.clone()).collect())
        .collect();
    msgs.sort();
    assert_eq!(msgs[0], lines("new", 0..5));
    assert_eq!(msgs[1], lines("old", 0..20));
    wait_until("old file closed", || agent.status().files_tailed == 1).await;
    // Read to its end and still on disk: kept as finished, so it is never read again.
    wait_until("old checkpoint entry finished", || {
        checkpoint_finished(dir.path()).len() == 1
    })
    .await;
    std::fs::remove_file(dir.path().join("logs/app.log.1")).unwrap();
    wait_until("old checkpoint entry dropped once the file is gone", || {
        checkpoint_offsets(dir.path()).len() == 1 && checkpoint_finished(dir.path()).is_empty()
    })
    .await;
    assert_eq!(
        agg.state.accepted_raw.lock().unwrap().len(),
        25,
        "nothing read twice"
    );
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_restarts_at_zero_with_a_new_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs/app.log");
    append(&log, &lines("before", 0..10));
    let agg = TestAggregator::start().await;
    let agent = crate::start(config(dir.path(), &agg.url())).await.unwrap();
    wait_until("first lines", || agg.stored().len() == 10).await;
    let first_fp = agg.stored()[0].log.file.fingerprint.clone();

    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    wait_until("truncation noticed", || {
        !checkpoint_offsets(dir.path()).contains_key(&first_fp)
    })
    .await;
    append(&log, &lines("after", 0..3));
    wait_until("lines after truncation", || agg.stored().len() == 13).await;
    let stored = agg.stored();
    let after: Vec<_> = stored[10..].to_vec();
    assert_eq!(
        after.iter().map(|r| r.message.clone()).collect::<Vec<_>>(),
        lines("after", 0..3)
    );
    assert_ne!(after[0].log.file.fingerprint, first_fp);
    assert_eq!(after[0].log.offset, 0);
    by_source(&stored);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_file_is_drained_closed_and_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs/app.log");
    append(&log, &lines("a", 0..5));
    let agg = TestAggregator::start().await;
    let agent = crate::start(config(dir.path(), &agg.url())).await.unwrap();
    wait_until("first lines", || agg.stored().len() == 5).await;
    let mut writer = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::fs::remove_file(&log).unwrap();
    for l in lines("a", 5..8) {
        writeln!(writer, "{l}").unwrap();
    }
    write!(writer, "unterminated").unwrap();
    drop(writer);
    wait_until("drained", || agg.stored().len() == 9).await;
    let stored = agg.stored();
    assert_eq!(stored[8].message, "unterminated");
    assert_eq!(stored[8].log.flags, [Flag::Incomplete]);
    wait_until("closed", || agent.status().files_tailed == 0).await;
    wait_until("checkpoint entry dropped", || {
        checkpoint_offsets(dir.path()).is_empty()
    })
    .await;
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_the_checkpoint_and_reads_new_files_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs/app.log");
    append(&log, &lines("a", 0..10));
    let agg = TestAggregator::start().await;
    let mut cfg = config(dir.path(), &agg.url());
    cfg.read_from = crate::ReadFrom::End; // only matters at the very first start
    let agent = crate::start(cfg.clone()).await.unwrap();
    wait_until("file found", || agent.status().files_tailed == 1).await;
    append(&log, &lines("a", 10..12));
    wait_until("lines after start", || agg.stored().len() == 2).await;
    assert_eq!(
        agg.stored_messages(),
        lines("a", 10..12),
        "read_from = end skips what was there"
    );
    agent.shutdown().await;

    // While the agent is down: more lines, and a new file.
    append(&log, &lines("a", 12..15));
    append(&dir.path().join("logs/other.log"), &lines("b", 0..2));
    let agent = crate::start(cfg).await.unwrap();
    wait_until("resumed", || agg.stored().len() == 7).await;
    let raw = agg.state.accepted_raw.lock().unwrap().clone();
    assert_eq!(raw.len(), 7, "a clean restart replays nothing");
    let mut msgs = agg.stored_messages();
    msgs.sort();
    let mut expected = [lines("a", 10..15), lines("b", 0..2)].concat();
    expected.sort();
    assert_eq!(msgs, expected);
    by_source(&agg.stored());
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_and_cri_files_are_decoded_and_enriched() {
    let dir = tempfile::tempdir().unwrap();
    let cdir = dir.path().join("containers/abc");
    let pdir = dir.path().join("pods/shop_web-1_u-1/nginx");
    std::fs::create_dir_all(&cdir).unwrap();
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::write(
        cdir.join("config.v2.json"),
        r#"{"Name":"/web","Config":{"Image":"nginx:1"}}"#,
    )
    .unwrap();
    std::fs::write(
        cdir.join("abc-json.log"),
        "{\"log\":\"part \",\"stream\":\"stdout\",\"time\":\"2026-11-28T08:00:00.5Z\"}\n\
         {\"log\":\"end\\n\",\"stream\":\"stdout\",\"time\":\"2026-11-28T08:00:01Z\"}\n",
    )
    .unwrap();
    std::fs::write(
        pdir.join("0.log"),
        "2026-11-28T08:00:00Z stderr P x\n2026-11-28T08:00:00Z stderr F y\n",
    )
    .unwrap();
    let agg = TestAggregator::start().await;
    let mut cfg = config(dir.path(), &agg.url());
    cfg.include = vec![
        format!("{}/containers/*/*-json.log", dir.path().display()),
        format!("{}/pods/*/*/*.log", dir.path().display()),
    ];
    let agent = crate::start(cfg).await.unwrap();
    wait_until("2 records", || agg.stored().len() == 2).await;
    let stored = agg.stored();
    let docker = stored.iter().find(|r| r.container.id.is_some()).unwrap();
    assert_eq!(docker.message, "part end");
    assert_eq!(docker.timestamp, "2026-11-28T08:00:00.5Z");
    assert_eq!(docker.container.name.as_deref(), Some("web"));
    assert_eq!(docker.container.image.name.as_deref(), Some("nginx:1"));
    assert_eq!(docker.log.flags, [Flag::Joined]);
    let cri = stored
        .iter()
        .find(|r| r.kubernetes.namespace.is_some())
        .unwrap();
    assert_eq!(cri.message, "xy");
    assert_eq!(cri.kubernetes.pod.name.as_deref(), Some("web-1"));
    assert_eq!(cri.kubernetes.container.name.as_deref(), Some("nginx"));
    assert_eq!(cri.log.offset, 32);
    agent.shutdown().await;
}

/// Model-based: random appends, rename rotations, copytruncates (the copy kept as `app.log.c<N>`)
/// and delete+recreate on one path, with restarts. Rotations and truncations happen on the
/// writer's schedule, never waiting for the agent (what was not read yet is finished in the
/// rotated file or the copy); only a delete waits until the agent has read everything, because a
/// file deleted before the agent opened it cannot be read by anyone (the randomized end-to-end
/// test in `tests/integration/edges.rs` counts those cases instead). At the end every line comes
/// out exactly once, in order, per source, counted on every accepted record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_write_rotate_truncate_delete_sequences_deliver_every_line_once() {
    for seed in 1..=3u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("logs")).unwrap();
        let log = dir.path().join("logs/app.log");
        let agg = TestAggregator::start().await;
        let mut cfg = config(dir.path(), &agg.url());
        cfg.rotate_wait_ms = 100;
        cfg.batch_max_records = 7;
        let mut agent = Some(crate::start(cfg.clone()).await.unwrap());
        // Model: the expected message sequence of each generation of the file.
        let mut generations: Vec<Vec<String>> = vec![Vec::new()];
        let mut n = 0usize;
        let mut rotated = 0;
        for _step in 0..25 {
            let written: usize = generations.iter().map(Vec::len).sum();
            match rng.u8(0..10) {
                0 => {
                    rotated += 1;
                    let _ =
                        std::fs::rename(&log, dir.path().join(format!("logs/app.log.{rotated}")));
                    generations.push(Vec::new());
                }
                1 => {
                    if log.exists() && !generations.last().unwrap().is_empty() {
                        rotated += 1;
                        std::fs::copy(&log, dir.path().join(format!("logs/app.log.{rotated}")))
                            .unwrap();
                        std::fs::OpenOptions::new()
                            .write(true)
                            .open(&log)
                            .unwrap()
                            .set_len(0)
                            .unwrap();
                        generations.push(Vec::new());
                        // Appends may follow at once: the changed head gives the truncation away.
                    }
                }
                2 => {
                    wait_until("read all before deleting", || agg.stored().len() == written).await;
                    let _ = std::fs::remove_file(&log);
                    generations.push(Vec::new());
                }
                3 => {
                    // Restart the agent.
                    if let Some(a) = agent.take() {
                        a.shutdown().await;
                    }
                    agent = Some(crate::start(cfg.clone()).await.unwrap());
                }
                _ => {
                    let count = rng.usize(1..20);
                    let new: Vec<String> = (0..count)
                        .map(|_| {
                            n += 1;
                            format!("msg {n} {}", "x".repeat(rng.usize(0..200)))
                        })
                        .collect();
                    append(&log, &new);
                    generations.last_mut().unwrap().extend(new);
                }
            }
        }
        let total: usize = generations.iter().map(Vec::len).sum();
        wait_until("everything delivered", || agg.stored().len() == total).await;
        let groups = by_source(&agg.stored());
        let mut got: Vec<Vec<String>> = groups
            .into_values()
            .map(|g| g.into_iter().map(|r| r.message).collect())
            .collect();
        got.sort();
        let mut expected: Vec<Vec<String>> =
            generations.into_iter().filter(|g| !g.is_empty()).collect();
        expected.sort();
        assert_eq!(got, expected, "seed {seed}");
        agent.take().unwrap().shutdown().await;
    }
}
