//! End-to-end tests of the running aggregator: real HTTP on 127.0.0.1, real files in temp
//! directories, waits on conditions with a deadline.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_wire::{BatchBuilder, Compression, LogRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::local::tests::record;
use crate::{start, AggregatorConfig, AggregatorHandle, SinkConfig};

const TOKEN: &str = "s3cret-token";

pub(crate) fn config(dir: &Path) -> AggregatorConfig {
    AggregatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: Some(TOKEN.into()),
        data_dir: dir.to_path_buf(),
        ..Default::default()
    }
}

pub(crate) fn gzip_batch(records: &[LogRecord]) -> Vec<u8> {
    let mut b = BatchBuilder::new("node-1");
    for r in records {
        b.push_log(r);
    }
    b.finish(Compression::Gzip { level: 1 }).body
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(9));
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

pub(crate) struct Reply {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// Sends one HTTP/1.1 request (`Connection: close`) and reads the whole reply.
pub(crate) async fn send(handle: &AggregatorHandle, head: &str, body: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(handle.local_addr()).await.unwrap();
    let mut request = format!("{head}\r\nHost: test\r\nConnection: close\r\n\r\n").into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

/// POSTs a batch body with the given extra header lines.
pub(crate) async fn post(handle: &AggregatorHandle, extra: &str, body: &[u8]) -> Reply {
    let mut head = format!(
        "POST /v1/batches HTTP/1.1\r\nContent-Length: {}",
        body.len()
    );
    if !extra.is_empty() {
        head.push_str("\r\n");
        head.push_str(extra);
    }
    send(handle, &head, body).await
}

pub(crate) fn auth_gzip() -> String {
    format!("Authorization: Bearer {TOKEN}\r\nContent-Encoding: gzip")
}

pub(crate) async fn get(handle: &AggregatorHandle, path: &str) -> Reply {
    send(handle, &format!("GET {path} HTTP/1.1"), b"").await
}

pub(crate) async fn wait_for(what: &str, done: impl FnMut() -> bool) {
    wait_within(what, Duration::from_secs(20), done).await
}

/// Polls `done` until it holds, failing the test after `timeout`.
pub(crate) async fn wait_within(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn stored(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let store = dir.join("store");
    let mut names: Vec<_> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".ndjson"))
        .collect();
    names.sort();
    for name in names {
        // Lenient: the sink may be writing while a test polls.
        let text = std::fs::read(store.join(name)).unwrap_or_default();
        for line in text.split(|&b| b == b'\n') {
            if let Ok(value) = serde_json::from_slice(line) {
                out.push(value);
            }
        }
    }
    out
}

fn stored_offsets(dir: &Path) -> Vec<(String, u64)> {
    stored(dir)
        .iter()
        .map(|v| {
            (
                v["log"]["file"]["fingerprint"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                v["log"]["offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_batch_is_stored_once_even_when_replayed_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let handle = start(config(tmp.path())).await.unwrap();
    assert_ne!(handle.local_addr().port(), 0);
    let records = [
        record("s", 0, "a"),
        record("s", 7, "b"),
        record("t", 3, "c"),
    ];
    let body = gzip_batch(&records);

    let reply = post(&handle, &auth_gzip(), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json(), serde_json::json!({"accepted": 3}));
    wait_for("3 stored", || handle.status().records_stored == 3).await;
    let lines = stored(tmp.path());
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1]["message"], "b");
    assert!(lines[0]["event"]["ingested"]
        .as_str()
        .unwrap()
        .ends_with('Z'));

    // The agent did not see the answer and sends the same batch again.
    assert_eq!(post(&handle, &auth_gzip(), &body).await.status, 200);
    wait_for("3 duplicates", || {
        handle.status().duplicates_suppressed == 3
    })
    .await;
    wait_for("queue drained", || handle.status().queue_bytes == 0).await;
    let status = handle.status();
    assert_eq!(status.records_received, 6);
    assert_eq!(status.records_stored, 3);
    assert_eq!(status.queue_records, 0);
    assert_eq!(status.errors, 0);
    let metrics = get(&handle, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    for expected in [
        "ferry_ingest_requests_total{code=\"200\"} 2\n",
        "ferry_ingest_records_total 6\n",
        "ferry_sink_records_total 3\n",
        "ferry_sink_duplicates_total 3\n",
        "ferry_queue_bytes 0\n",
    ] {
        assert!(
            metrics.body.contains(expected),
            "{expected} in\n{}",
            metrics.body
        );
    }
    handle.shutdown().await;

    // After a restart the high-water marks still hold: only the new record is stored.
    let handle = start(config(tmp.path())).await.unwrap();
    let more = gzip_batch(&[record("s", 7, "b"), record("s", 9, "d")]);
    assert_eq!(post(&handle, &auth_gzip(), &more).await.status, 200);
    wait_for("1 dup", || handle.status().duplicates_suppressed == 1).await;
    wait_for("1 stored", || handle.status().records_stored == 1).await;
    handle.shutdown().await;
    assert_eq!(
        stored_offsets(tmp.path()),
        [("s", 0), ("s", 7), ("t", 3), ("s", 9)].map(|(f, o)| (f.to_string(), o))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_of_every_batch_format_version_and_compression_are_stored_alike() {
    // Agents of before version 2 send version 1, later ones version 2 or 3, side by side.
    // Version 3 leaves out the ids derived from fingerprint and offset (all of these): the
    // aggregator derives them again. Each compression meets each version (12 chunks of 5).
    let tmp = tempfile::tempdir().unwrap();
    let handle = start(config(tmp.path())).await.unwrap();
    let records = crate::local::tests::varied_records();
    let mut sent = 0;
    for (i, chunk) in records.chunks(5).enumerate() {
        let version = [1, 2, 3][i % 3];
        let mut b = BatchBuilder::with_version("node-1", version);
        for r in chunk {
            assert_eq!(
                r.event.id,
                ferry_wire::event_id(&r.log.file.fingerprint, r.log.offset)
            );
            let mut r = r.clone();
            if version == 3 {
                r.event.id.clear();
            }
            b.push_log(&r);
        }
        let compression = [
            Compression::Gzip { level: 1 },
            Compression::Zstd { level: 1 },
            Compression::Lz4,
            Compression::None,
        ][i % 4];
        let head = format!(
            "Authorization: Bearer {TOKEN}\r\nContent-Encoding: {}",
            compression.content_encoding()
        );
        let reply = post(&handle, &head, &b.finish(compression).body).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        sent += chunk.len() as u64;
        wait_for("stored", || handle.status().records_stored == sent).await;
    }
    let stored: Vec<LogRecord> = stored(tmp.path())
        .into_iter()
        .map(|mut v| {
            assert!(v["event"]["ingested"].as_str().unwrap().ends_with('Z'));
            v["event"].as_object_mut().unwrap().remove("ingested");
            serde_json::from_value(v).unwrap()
        })
        .collect();
    assert_eq!(stored, records);
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_missing_and_wrong_tokens_without_echoing_them() {
    let tmp = tempfile::tempdir().unwrap();
    let handle = start(config(tmp.path())).await.unwrap();
    let body = gzip_batch(&[record("s", 0, "a")]);
    for (extra, says) in [
        ("Content-Encoding: gzip", "missing Authorization"),
        (
            "Authorization: Bearer wrong-token\r\nContent-Encoding: gzip",
            "invalid bearer token",
        ),
        (
            &format!("Authorization: Basic {TOKEN}\r\nContent-Encoding: gzip")[..],
            "not a Bearer token",
        ),
    ] {
        let reply = post(&handle, extra, &body).await;
        assert_eq!(reply.status, 401, "{extra}");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        let error = reply.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(says), "{error}");
        assert!(!reply.body.contains(TOKEN) && !reply.body.contains("wrong-token"));
    }
    let metrics = handle.render_metrics();
    assert!(metrics.contains("ferry_ingest_errors_total{error_type=\"unauthorized\"} 3\n"));
    assert!(metrics.contains("ferry_ingest_requests_total{code=\"401\"} 3\n"));
    assert_eq!(handle.status().records_received, 0);
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_oversized_bodies_and_decompression_bombs() {
    let tmp = tempfile::tempdir().unwrap();
    let handle = start(AggregatorConfig {
        max_body_bytes: 4096,
        max_decompressed_bytes: 64 << 10,
        ..config(tmp.path())
    })
    .await
    .unwrap();
    // Declared too large: refused before reading.
    let big = vec![b'x'; 5000];
    let reply = post(&handle, &auth_gzip(), &big).await;
    assert_eq!(reply.status, 413);
    assert!(reply.json()["error"].as_str().unwrap().contains("4096"));

    // Chunked, so only the limited read notices.
    let mut chunked = format!("{:x}\r\n", big.len()).into_bytes();
    chunked.extend_from_slice(&big);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let head = format!(
        "POST /v1/batches HTTP/1.1\r\nTransfer-Encoding: chunked\r\nAuthorization: Bearer {TOKEN}"
    );
    assert_eq!(send(&handle, &head, &chunked).await.status, 413);

    // 1 MiB of spaces is a ~1 KiB gzip body: small on the wire, too big unpacked.
    let bomb = gzip(&vec![b' '; 1 << 20]);
    assert!(bomb.len() < 4096);
    let reply = post(&handle, &auth_gzip(), &bomb).await;
    assert_eq!(reply.status, 413);
    assert!(reply.body.contains("decompressed"), "{}", reply.body);

    assert!(handle
        .render_metrics()
        .contains("ferry_ingest_errors_total{error_type=\"too_large\"} 3\n"));
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_bad_batches_and_encodings_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let handle = start(config(tmp.path())).await.unwrap();
    let auth = format!("Authorization: Bearer {TOKEN}");

    let body = gzip_batch(&(0..200).map(|i| record("s", i, "x")).collect::<Vec<_>>());
    let reply = post(&handle, &auth_gzip(), &body[..body.len() / 2]).await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["error"].as_str().unwrap().contains("gzip"),
        "{}",
        reply.body
    );

    let good = serde_json::to_string(&record("s", 0, "a")).unwrap();
    let plain = format!(
        "{{\"ferry\":1,\"host\":\"h\",\"logs\":2,\"stats\":0}}\n{good}\n{{\"event\":{{\"id\":\"x\"}}}}\n"
    );
    let reply = post(&handle, &auth, plain.as_bytes()).await;
    assert_eq!(reply.status, 400);
    let error = reply.json()["error"].as_str().unwrap().to_string();
    assert!(error.starts_with("line 3: bad log record"), "{error}");

    let reply = post(
        &handle,
        &format!("{auth}\r\nContent-Encoding: br"),
        plain.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 415);
    assert!(
        reply.json()["error"].as_str().unwrap().contains("\"br\""),
        "{}",
        reply.body
    );

    let reply = post(&handle, &auth, b"").await;
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("empty batch"), "{}", reply.body);

    assert_eq!(get(&handle, "/v1/batches").await.status, 405);
    assert_eq!(get(&handle, "/nope").await.status, 404);
    let metrics = handle.render_metrics();
    assert!(
        metrics.contains("ferry_ingest_errors_total{error_type=\"bad_batch\"} 3\n"),
        "{metrics}"
    );
    assert!(metrics.contains("ferry_ingest_errors_total{error_type=\"bad_encoding\"} 1\n"));
    assert_eq!(handle.status().queue_bytes, 0, "nothing was queued");
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_ok_until_the_sink_stops() {
    let tmp = tempfile::tempdir().unwrap();
    let handle = start(config(tmp.path())).await.unwrap();
    let reply = get(&handle, "/health").await;
    assert_eq!(
        (reply.status, reply.json()),
        (200, serde_json::json!({"status": "ok"}))
    );
    handle.metrics.sinks()[0]
        .alive
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let reply = get(&handle, "/health").await;
    assert_eq!(reply.status, 503);
    assert!(reply.body.contains("sink"), "{}", reply.body);
    handle.shutdown().await;
}

/// Blocks the local store's commits (its journal writes fail, after a group's lines were
/// written), so entries stay queued until the guard is dropped.
fn block_store_commits(dir: &Path) -> crate::local::faults::Blocked {
    crate::local::faults::block_commits(&dir.join("store"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_503_with_retry_after_and_appends_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let body = gzip_batch(&[record("s", 0, "a"), record("s", 1, "b")]);
    let raw_len = {
        let b = ferry_wire::decode_batch(&body, Compression::Gzip { level: 1 }, 1 << 20).unwrap();
        b.data.len() as u64
    };
    // Room for the first batch and 1000 bytes more; the second batch is a little bigger.
    let handle = start(AggregatorConfig {
        max_decompressed_bytes: raw_len as usize + 1000,
        queue_max_bytes: raw_len + 16 + 1000,
        retry_after_seconds: 3,
        ..config(tmp.path())
    })
    .await
    .unwrap();
    let blocker = block_store_commits(tmp.path());

    assert_eq!(post(&handle, &auth_gzip(), &body).await.status, 200);
    let mut builder = BatchBuilder::new("node-1");
    let mut total = 2;
    while builder.bytes() < 1000 {
        builder.push_log(&record("s", total, "x"));
        total += 1;
    }
    let next = builder.finish(Compression::Gzip { level: 1 });
    assert!(next.raw_bytes as u64 > 1000 && next.raw_bytes as u64 <= raw_len + 1000);
    let next = next.body;
    let reply = post(&handle, &auth_gzip(), &next).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.header("retry-after"), Some("3"));
    assert!(reply.json()["error"]
        .as_str()
        .unwrap()
        .contains("queue is full"));
    assert_eq!(
        handle.status().queue_bytes,
        raw_len + 16,
        "the refused batch was not queued"
    );
    wait_for("a sink error", || {
        handle
            .render_metrics()
            .contains("ferry_sink_errors_total{error_type=\"io\"} 1")
    })
    .await;
    assert!(handle
        .render_metrics()
        .contains("ferry_ingest_errors_total{error_type=\"queue_full\"} 1\n"));

    // Once the store takes writes again the queue drains and the retry is accepted.
    drop(blocker);
    wait_for("queue drained", || handle.status().queue_bytes == 0).await;
    assert_eq!(post(&handle, &auth_gzip(), &next).await.status, 200);
    wait_for("all stored", || handle.status().records_stored == total).await;
    handle.shutdown().await;
    let offsets: Vec<u64> = stored_offsets(tmp.path())
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    assert_eq!(offsets, (0..total).collect::<Vec<_>>());
}

/// The store writes a group's lines, then fails to commit (as a crash between the two would
/// leave it); after a restart those lines are cut and re-applied from the queue exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_written_but_not_committed_are_applied_once_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let handle = start(config(tmp.path())).await.unwrap();
    let first = gzip_batch(&[record("s", 0, "a"), record("s", 1, "b")]);
    assert_eq!(post(&handle, &auth_gzip(), &first).await.status, 200);
    wait_for("committed", || handle.status().queue_bytes == 0).await;

    let blocker = block_store_commits(tmp.path());
    let second = gzip_batch(&[record("s", 2, "c"), record("t", 0, "d")]);
    let third = gzip_batch(&[record("s", 3, "e")]);
    assert_eq!(post(&handle, &auth_gzip(), &second).await.status, 200);
    assert_eq!(post(&handle, &auth_gzip(), &third).await.status, 200);
    // The sink writes lines, fails the commit, and on its retry cuts them and writes again:
    // wait until the day file holds uncommitted lines.
    wait_for("uncommitted lines on disk", || stored(tmp.path()).len() > 2).await;
    handle.shutdown_within(Duration::from_millis(100)).await;
    drop(blocker);
    assert!(
        stored(tmp.path()).len() > 2,
        "the crash left uncommitted lines"
    );

    let handle = start(config(tmp.path())).await.unwrap();
    wait_for("re-applied", || handle.status().records_stored == 3).await;
    wait_for("drained", || handle.status().queue_bytes == 0).await;
    assert_eq!(handle.status().duplicates_suppressed, 0);
    handle.shutdown().await;
    assert_eq!(
        stored_offsets(tmp.path()),
        [("s", 0), ("s", 1), ("s", 2), ("t", 0), ("s", 3)].map(|(f, o)| (f.to_string(), o))
    );
}

/// Damage in the middle of the newest queue segment, found when the aggregator starts again:
/// the acknowledged entries after it are kept and stored, and the damage is reported and kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_queue_entry_costs_only_itself_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let handle = start(config(tmp.path())).await.unwrap();
    let blocker = block_store_commits(tmp.path());
    for offset in 0..4 {
        let body = gzip_batch(&[record("s", offset, "m")]);
        assert_eq!(post(&handle, &auth_gzip(), &body).await.status, 200);
    }
    handle.shutdown_within(Duration::from_millis(100)).await;
    drop(blocker);
    // All four entries are in segment 1: damage the second one's payload.
    let segment = tmp.path().join("queue").join(format!("{:020}.seg", 1));
    let mut bytes = std::fs::read(&segment).unwrap();
    let entry_len =
        |at: usize| 16 + u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
    let second = entry_len(0);
    let second_len = entry_len(second);
    bytes[second + 16 + 5] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();

    let handle = start(config(tmp.path())).await.unwrap();
    wait_for("the intact entries stored", || {
        handle.status().records_stored == 3
    })
    .await;
    wait_for("drained", || handle.status().queue_bytes == 0).await;
    let metrics = handle.render_metrics();
    assert!(
        metrics.contains("ferry_sink_errors_total{error_type=\"corrupt\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("ferry_queue_damaged_bytes_total {second_len}\n")),
        "{metrics}"
    );
    handle.shutdown().await;
    assert_eq!(
        stored_offsets(tmp.path()),
        [("s", 0), ("s", 2), ("s", 3)].map(|(f, o)| (f.to_string(), o))
    );
    let kept: Vec<_> = std::fs::read_dir(tmp.path().join("queue").join("damaged"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(kept, [bytes[second..second + second_len].to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_sink_counts_and_drops() {
    let tmp = tempfile::tempdir().unwrap();
    let handle = start(AggregatorConfig {
        token: None,
        sink: SinkConfig::Discard,
        queue_segment_bytes: 4096,
        ..config(tmp.path())
    })
    .await
    .unwrap();
    for i in 0..20 {
        let body = gzip_batch(
            &(0..10)
                .map(|j| record("s", i * 10 + j, "x"))
                .collect::<Vec<_>>(),
        );
        assert_eq!(
            post(&handle, "Content-Encoding: gzip", &body).await.status,
            200
        );
    }
    wait_for("counted", || handle.status().records_stored == 200).await;
    wait_for("drained", || handle.status().queue_bytes == 0).await;
    handle.shutdown().await;
    assert!(!tmp.path().join("store").exists());
    // Segment files only (the queue also keeps its reserve file there).
    let segments = std::fs::read_dir(tmp.path().join("queue"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .count();
    assert!(
        segments <= 2,
        "committed segments are trimmed ({segments} left)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_agents_are_all_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let handle = std::sync::Arc::new(start(config(tmp.path())).await.unwrap());
    let mut tasks = Vec::new();
    for agent in 0..4 {
        let handle = std::sync::Arc::clone(&handle);
        tasks.push(tokio::spawn(async move {
            let source = format!("agent-{agent}");
            for batch in 0..10u64 {
                let body = gzip_batch(
                    &(0..5)
                        .map(|i| record(&source, batch * 5 + i, "m"))
                        .collect::<Vec<_>>(),
                );
                assert_eq!(post(&handle, &auth_gzip(), &body).await.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_for("all stored", || handle.status().records_stored == 200).await;
    let handle = std::sync::Arc::try_unwrap(handle).unwrap();
    handle.shutdown().await;
    let mut per_source = std::collections::BTreeMap::<String, Vec<u64>>::new();
    for (source, offset) in stored_offsets(tmp.path()) {
        per_source.entry(source).or_default().push(offset);
    }
    assert_eq!(per_source.len(), 4);
    for offsets in per_source.values() {
        assert_eq!(offsets, &(0..50).collect::<Vec<_>>(), "in order, once each");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_reports_a_busy_port_and_a_bad_config() {
    let tmp = tempfile::tempdir().unwrap();
    let first = start(config(tmp.path())).await.unwrap();
    let err = start(AggregatorConfig {
        listen: first.local_addr(),
        ..config(&tmp.path().join("other"))
    })
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains(&first.local_addr().to_string()),
        "{err}"
    );
    let err = start(AggregatorConfig {
        retry_after_seconds: 0,
        ..config(tmp.path())
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("retry_after_seconds"), "{err}");
    first.shutdown().await;
}
