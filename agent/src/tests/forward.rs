//! Forwarding: retries, backoff, Retry-After, dead letters, 413 splits, credentials.

use std::time::Duration;

use super::util::*;
use crate::metrics::SendError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_moves_only_after_the_aggregator_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs/app.log");
    append(&log, &lines("a", 0..20));
    let size = std::fs::metadata(&log).unwrap().len();
    let agg = TestAggregator::start().await;
    agg.script(&[(500, None), (500, None), (502, None)]);
    let agent = crate::start(config(dir.path(), &agg.url())).await.unwrap();

    wait_until("three failed attempts", || agg.requests().len() >= 3).await;
    // Nothing acknowledged yet: the checkpoint must not have moved.
    assert!(
        checkpoint_offsets(dir.path()).values().all(|o| *o == 0),
        "{:?}",
        checkpoint_offsets(dir.path())
    );

    wait_until("all lines stored", || agg.stored().len() == 20).await;
    assert_eq!(agg.stored_messages(), lines("a", 0..20));
    wait_until("checkpoint at end of file", || {
        checkpoint_offsets(dir.path()).values().any(|o| *o == size)
    })
    .await;
    let status = agent.status();
    assert_eq!(status.records_acked, 20);
    assert!(status.errors >= 3);
    assert!(status.last_error.is_some());
    assert_eq!(agent.metrics.send_errors_of(SendError::ServerError), 3);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honours_retry_after_on_503() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    append(&dir.path().join("logs/app.log"), &lines("a", 0..3));
    let agg = TestAggregator::start().await;
    agg.script(&[(503, Some(1))]);
    let mut cfg = config(dir.path(), &agg.url());
    cfg.backoff_max_ms = 5000;
    let agent = crate::start(cfg).await.unwrap();
    wait_until("stored after the 503", || agg.stored().len() == 3).await;
    let reqs = agg.requests();
    assert_eq!(reqs[0].status, 503);
    let gap = reqs[1].at.duration_since(reqs[0].at);
    assert!(
        gap >= Duration::from_millis(950),
        "retried after {gap:?}, Retry-After said 1 s"
    );
    assert_eq!(agent.metrics.send_errors_of(SendError::Unavailable), 1);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_dead_letter_directory_holds_the_checkpoint_until_it_can_be_written() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs/app.log");
    append(&log, &lines("bad", 0..3));
    // A plain file where the dead-letter directory should be: every write fails.
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let dl = dir.path().join("data/dead-letter");
    std::fs::write(&dl, b"in the way").unwrap();
    let agg = TestAggregator::start().await;
    agg.script(&[(400, None)]);
    let agent = crate::start(config(dir.path(), &agg.url())).await.unwrap();
    wait_until("a failed dead-letter write", || {
        agent
            .status()
            .last_error
            .is_some_and(|e| e.contains("dead letter"))
    })
    .await;
    append(&log, &lines("good", 0..2));
    // Nothing after the refused batch moves while its dead letter cannot be written.
    assert!(agg.stored().is_empty());
    std::fs::remove_file(&dl).unwrap();
    wait_until("later lines delivered", || agg.stored().len() == 2).await;
    assert_eq!(agg.stored_messages(), lines("good", 0..2));
    assert_eq!(
        std::fs::read_dir(&dl).unwrap().count(),
        2,
        "data and reason files"
    );
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_request_goes_to_the_dead_letter_directory_and_delivery_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs/app.log");
    append(&log, &lines("bad", 0..5));
    let agg = TestAggregator::start().await;
    agg.script(&[(400, None)]);
    let agent = crate::start(config(dir.path(), &agg.url())).await.unwrap();
    let dl = dir.path().join("data/dead-letter");
    wait_until("dead-letter files", || {
        std::fs::read_dir(&dl)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".reason.txt"))
            })
            .unwrap_or(false)
    })
    .await;
    let mut names: Vec<String> = std::fs::read_dir(&dl)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names[0].ends_with(".ndjson.gz") && names[1].ends_with(".reason.txt"),
        "{names:?}"
    );
    let reason = std::fs::read_to_string(dl.join(&names[1])).unwrap();
    assert!(
        reason.contains("400") && reason.contains("answer 400"),
        "{reason}"
    );
    let gz = std::fs::read(dl.join(&names[0])).unwrap();
    let batch =
        ferry_wire::decode_batch(&gz, ferry_wire::Compression::Gzip { level: 1 }, 1 << 20).unwrap();
    assert_eq!(batch.logs.len(), 5);

    append(&log, &lines("good", 0..2));
    wait_until("later lines delivered", || agg.stored().len() == 2).await;
    assert_eq!(agg.stored_messages(), lines("good", 0..2));
    assert_eq!(
        agent
            .metrics
            .dead_letter_batches
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_too_large_splits_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    append(&dir.path().join("logs/app.log"), &lines("a", 0..50));
    let agg = TestAggregator::start().await;
    *agg.state.max_records.lock().unwrap() = Some(7);
    let mut cfg = config(dir.path(), &agg.url());
    cfg.batch_max_age_ms = 500; // all 50 lines in one batch
    let agent = crate::start(cfg).await.unwrap();
    wait_until("all stored", || agg.stored().len() == 50).await;
    assert_eq!(agg.stored_messages(), lines("a", 0..50));
    assert!(agg.requests().iter().any(|r| r.status == 413));
    assert!(agg
        .requests()
        .iter()
        .filter(|r| r.status == 200)
        .all(|r| r.records.len() <= 7));
    assert_eq!(
        agg.state.accepted_raw.lock().unwrap().len(),
        50,
        "no record sent twice"
    );
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_is_logged_and_retried_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    append(&dir.path().join("logs/app.log"), &lines("a", 0..4));
    let agg = TestAggregator::start().await;
    agg.script(&[(401, None), (403, None)]);
    let mut cfg = config(dir.path(), &agg.url());
    cfg.token = Some("s3cret".into());
    let agent = crate::start(cfg).await.unwrap();
    wait_until("stored after 401/403", || agg.stored().len() == 4).await;
    let reqs = agg.requests();
    assert_eq!(reqs[0].auth.as_deref(), Some("Bearer s3cret"));
    assert_eq!(agent.metrics.send_errors_of(SendError::Unauthorized), 2);
    assert!(agent.status().last_error.unwrap().contains("token"));
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_aggregator_blocks_reading_and_shutdown_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    append(&dir.path().join("logs/app.log"), &lines("a", 0..10));
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = config(dir.path(), &format!("http://127.0.0.1:{port}"));
    cfg.shutdown_timeout_ms = 300;
    let agent = crate::start(cfg).await.unwrap();
    wait_until("connect errors", || {
        agent.metrics.send_errors_of(SendError::Connect) >= 2
    })
    .await;
    let started = std::time::Instant::now();
    agent.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(checkpoint_offsets(dir.path()).values().all(|o| *o == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_are_served() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    append(&dir.path().join("logs/app.log"), &lines("a", 0..3));
    let agg = TestAggregator::start().await;
    let agent = crate::start(config(dir.path(), &agg.url())).await.unwrap();
    wait_until("stored", || agg.stored().len() == 3).await;
    let get = |path: &'static str| {
        let addr = agent.metrics_addr();
        async move {
            tokio::task::spawn_blocking(move || {
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.write_all(
                    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                out
            })
            .await
            .unwrap()
        }
    };
    let health = get("/health").await;
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("{\"status\":\"ok\"}"),
        "{health}"
    );
    let metrics = get("/metrics").await;
    assert!(
        metrics.contains("ferry_agent_records_sent_total 3"),
        "{metrics}"
    );
    assert!(metrics.contains("ferry_agent_files_tailed 1"), "{metrics}");
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_discard_builds_every_record_sends_nothing_and_moves_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs/app.log");
    append(&log, &lines("a", 0..500));
    let size = std::fs::metadata(&log).unwrap().len();
    let agg = TestAggregator::start().await;
    let mut c = config(dir.path(), &agg.url());
    c.output = crate::config::OutputConfig::Discard;
    let agent = crate::start(c).await.unwrap();
    wait_until("checkpoint at end of file", || {
        checkpoint_offsets(dir.path()).values().any(|o| *o == size)
    })
    .await;
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(agent.metrics.records_discarded.load(Relaxed), 500);
    assert!(agent.metrics.batches_discarded.load(Relaxed) >= 1);
    assert_eq!(agent.metrics.records_sent.load(Relaxed), 0);
    assert!(agg.requests().is_empty(), "{:?}", agg.requests().len());
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_carry_each_sources_fields_once_and_arrive_whole() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    append(&dir.path().join("logs/a.log"), &lines("a", 0..30));
    append(&dir.path().join("logs/b.log"), &lines("b", 0..30));
    let agg = TestAggregator::start().await;
    let agent = crate::start(config(dir.path(), &agg.url())).await.unwrap();
    wait_until("all lines stored", || agg.stored().len() == 60).await;
    let reqs = agg.requests();
    assert!(
        reqs.iter().all(|r| r.version == ferry_wire::WIRE_VERSION),
        "{:?}",
        reqs.iter().map(|r| r.version).collect::<Vec<_>>()
    );
    for name in ["a", "b"] {
        let path = dir.path().join(format!("logs/{name}.log"));
        let got: Vec<_> = agg
            .stored()
            .into_iter()
            .filter(|r| r.log.file.path == path.display().to_string())
            .collect();
        assert_eq!(
            got.iter().map(|r| r.message.clone()).collect::<Vec<_>>(),
            lines(name, 0..30)
        );
        assert!(got.iter().all(|r| r.host.name == "test-node"
            && r.log.file.fingerprint == got[0].log.file.fingerprint
            && r.event.id == ferry_wire::event_id(&r.log.file.fingerprint, r.log.offset)));
    }
    agent.shutdown().await;
}

/// Starts an agent on `logs/app.log` with 20 lines written before and 10 after, and checks that
/// `agg` stored all 30 in order.
async fn twenty_then_ten_lines(
    dir: &tempfile::TempDir,
    agg: &TestAggregator,
    cfg: crate::config::AgentConfig,
) -> crate::AgentHandle {
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs/app.log");
    append(&log, &lines("a", 0..20));
    let agent = crate::start(cfg).await.unwrap();
    wait_until("all lines stored", || agg.stored().len() == 20).await;
    append(&log, &lines("b", 0..10));
    wait_until("later lines stored", || agg.stored().len() == 30).await;
    let mut expected = lines("a", 0..20);
    expected.extend(lines("b", 0..10));
    assert_eq!(agg.stored_messages(), expected);
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregator_that_predates_version_2_gets_version_1_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let agg = TestAggregator::start().await;
    agg.state
        .reads_only_version_1
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let agent = twenty_then_ten_lines(&dir, &agg, config(dir.path(), &agg.url())).await;
    let reqs = agg.requests();
    // One refusal of this build's version, then version 1 only (within the fallback's time).
    assert_eq!(
        reqs.iter()
            .map(|r| (r.version, r.status))
            .filter(|r| r.1 != 200)
            .collect::<Vec<_>>(),
        [(ferry_wire::WIRE_VERSION, 400)]
    );
    assert!(reqs
        .iter()
        .filter(|r| r.status == 200)
        .all(|r| r.version == 1));
    // Not a refused batch: nothing dead-lettered, no error counted.
    assert!(!dir.path().join("data/dead-letter").exists());
    assert_eq!(agent.metrics.send_errors_of(SendError::Rejected), 0);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregator_that_predates_lz4_gets_zstd_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let agg = TestAggregator::start().await;
    agg.state
        .reads_no_lz4
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut cfg = config(dir.path(), &agg.url());
    cfg.compression = crate::config::CompressionConfig::Lz4;
    let agent = twenty_then_ten_lines(&dir, &agg, cfg).await;
    let reqs = agg.requests();
    // One refusal of lz4, then zstd only (within the fallback's time), in this build's version.
    assert_eq!(
        reqs.iter()
            .filter(|r| r.status != 200)
            .map(|r| (r.encoding, r.status))
            .collect::<Vec<_>>(),
        [(ferry_wire::Compression::Lz4, 415)]
    );
    assert!(reqs
        .iter()
        .filter(|r| r.status == 200)
        .all(|r| r.encoding == ferry_wire::Compression::Zstd { level: 1 }
            && r.version == ferry_wire::WIRE_VERSION));
    assert!(!dir.path().join("data/dead-letter").exists());
    assert_eq!(agent.metrics.send_errors_of(SendError::Rejected), 0);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lz4_batches_arrive_whole() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs/app.log");
    append(&log, &lines("a", 0..50));
    let agg = TestAggregator::start().await;
    let mut cfg = config(dir.path(), &agg.url());
    cfg.compression = crate::config::CompressionConfig::Lz4;
    let agent = crate::start(cfg).await.unwrap();
    wait_until("all lines stored", || agg.stored().len() == 50).await;
    assert_eq!(agg.stored_messages(), lines("a", 0..50));
    assert!(agg
        .requests()
        .iter()
        .all(|r| r.encoding == ferry_wire::Compression::Lz4 && r.status == 200));
    agent.shutdown().await;
}

/// Regression (issue 10, finding 4): a 413 split down to single records dead-letters each of
/// them within the same second; none may replace another (`Path::with_extension` cut the names
/// at the stamp's milliseconds, so they all had one name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_records_dead_lettered_in_one_second_keep_one_file_each() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let log = dir.path().join("logs/app.log");
    append(&log, &lines("big", 0..8));
    let agg = TestAggregator::start().await;
    *agg.state.max_records.lock().unwrap() = Some(0);
    let mut cfg = config(dir.path(), &agg.url());
    cfg.batch_max_age_ms = 300; // the 8 lines in one batch
    let agent = crate::start(cfg).await.unwrap();
    let dl = dir.path().join("data/dead-letter");
    let files = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&dl)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    wait_until("8 dead letters counted", || {
        agent
            .metrics
            .dead_letter_batches
            .load(std::sync::atomic::Ordering::Relaxed)
            == 8
    })
    .await;
    let names = files();
    assert_eq!(
        names.len(),
        16,
        "one data and one reason file each: {names:?}"
    );
    let mut messages = Vec::new();
    for name in names.iter().filter(|n| n.ends_with(".ndjson.gz")) {
        let gz = std::fs::read(dl.join(name)).unwrap();
        let batch =
            ferry_wire::decode_batch(&gz, ferry_wire::Compression::Gzip { level: 1 }, 1 << 20)
                .unwrap();
        assert_eq!(batch.logs.len(), 1);
        let r: ferry_wire::LogRecord =
            serde_json::from_slice(&batch.record(&batch.logs[0])).unwrap();
        messages.push(r.message);
        let reason = name.replace(".ndjson.gz", ".reason.txt");
        let text = std::fs::read_to_string(dl.join(reason)).unwrap();
        assert!(
            text.contains("413 Payload Too Large for a single record"),
            "{text}"
        );
    }
    messages.sort();
    assert_eq!(messages, lines("big", 0..8));
    agent.shutdown().await;
}
