//! The Elasticsearch sink end to end inside one process: a real aggregator (HTTP ingest, queue,
//! sink threads) against the Elasticsearch test double (`es-double/`, real HTTP on 127.0.0.1),
//! with scripted item and request outcomes, outages and restarts. Every test counts what the
//! double actually created, not what the sink says it did.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use ferry_es_double::{Behaviour, DoubleHandle, Options, Outage, Script};
use ferry_wire::LogRecord;

use super::ElasticsearchConfig;
use crate::local::tests::record;
use crate::tests::{auth_gzip, config, get, gzip_batch, post, wait_within};
use crate::{start, AggregatorConfig, AggregatorHandle, SinkConfig};

const WAIT: Duration = Duration::from_secs(30);

async fn double(options: Options) -> DoubleHandle {
    ferry_es_double::start(Options {
        keep_sources: true,
        ..options
    })
    .await
    .unwrap()
}

/// A sink on `double` with short timers, so tests move quickly.
fn es(double: &DoubleHandle) -> ElasticsearchConfig {
    ElasticsearchConfig {
        urls: vec![double.url()],
        flush_interval_ms: 10,
        backoff_initial_ms: 20,
        backoff_max_ms: 200,
        request_timeout_ms: 5_000,
        ..Default::default()
    }
}

fn with_sinks(dir: &Path, sinks: Vec<SinkConfig>) -> AggregatorConfig {
    AggregatorConfig {
        sinks,
        ..config(dir)
    }
}

fn es_sink(config: ElasticsearchConfig) -> SinkConfig {
    SinkConfig::Elasticsearch(Box::new(config))
}

fn records(source: &str, offsets: std::ops::Range<u64>) -> Vec<LogRecord> {
    offsets
        .map(|o| record(source, o, &format!("{source} line {o}")))
        .collect()
}

async fn ingest(handle: &AggregatorHandle, records: &[LogRecord]) {
    let reply = post(handle, &auth_gzip(), &gzip_batch(records)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

fn metric(handle: &AggregatorHandle, line: &str) -> u64 {
    let page = handle.render_metrics();
    page.lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {line} in\n{page}"))
}

fn items(handle: &AggregatorHandle, sink: &str, result: &str) -> u64 {
    metric(
        handle,
        &format!("ferry_sink_items_total{{sink=\"{sink}\",result=\"{result}\"}}"),
    )
}

/// Ids the double created, each checked to have been created exactly once.
fn created_once(double: &DoubleHandle) -> BTreeSet<String> {
    let docs = double.docs();
    for d in &docs {
        assert_eq!(d.creates, 1, "{} created {} times", d.id, d.creates);
    }
    docs.into_iter().map(|d| d.id).collect()
}

fn ids(records: &[LogRecord]) -> BTreeSet<String> {
    records.iter().map(|r| r.event.id.clone()).collect()
}

/// Every line of the sink's dead-letter files.
fn dead_letters(dir: &Path, sink: &str) -> Vec<serde_json::Value> {
    let folder = super::sink_dir(dir, sink).join("dead-letter");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(folder).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        out.extend(text.lines().map(|l| serde_json::from_str(l).unwrap()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexes_every_record_once_with_bootstrap_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let d = double(Options::default()).await;
    let handle = start(with_sinks(tmp.path(), vec![es_sink(es(&d))]))
        .await
        .unwrap();
    let sent: Vec<LogRecord> = records("a", 0..300)
        .into_iter()
        .chain(records("b", 0..200))
        .collect();
    for chunk in sent.chunks(70) {
        ingest(&handle, chunk).await;
    }
    wait_within("every record indexed", WAIT, || {
        items(&handle, "elasticsearch", "created") == 500
    })
    .await;
    wait_within("the queue committed", WAIT, || {
        handle.status().queue_bytes == 0
    })
    .await;
    assert_eq!(created_once(&d), ids(&sent));
    let docs = d.docs();
    let doc = docs.iter().find(|x| x.id == sent[7].event.id).unwrap();
    assert!(
        doc.index.starts_with(".ds-logs-ferry-default-"),
        "{}",
        doc.index
    );
    let source: serde_json::Value = serde_json::from_str(doc.source.as_ref().unwrap()).unwrap();
    assert_eq!(source["message"], "a line 7");
    assert!(source["event"]["ingested"].is_string(), "{source}");
    let stats = d.stats();
    assert_eq!(stats.templates, ["ferry-elasticsearch", "logs"]);
    assert_eq!(stats.policies, ["ferry-elasticsearch"]);
    assert_eq!(stats.data_streams, ["logs-ferry-default"]);
    assert_eq!(items(&handle, "elasticsearch", "duplicate"), 0);
    assert_eq!(handle.status().records_indexed, 500);
    let page = handle.render_metrics();
    assert!(
        page.contains("ferry_sink_queue_records{sink=\"elasticsearch\"} 0\n"),
        "{page}"
    );
    assert!(page.contains("ferry_sink_up{sink=\"elasticsearch\"} 1\n"));
    assert!(
        metric(
            &handle,
            "ferry_sink_bulk_requests_total{sink=\"elasticsearch\",outcome=\"ok\"}"
        ) >= 1
    );
    if let Some((ok, output)) = crate::containers::server_tests::promtool_check(&page) {
        assert!(ok, "promtool: {output}");
    }
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settles_a_mixed_response_item_by_item() {
    let tmp = tempfile::tempdir().unwrap();
    let d = double(Options::default()).await;
    let handle = start(with_sinks(tmp.path(), vec![es_sink(es(&d))]))
        .await
        .unwrap();
    // The first bulk request's items, in order: created, "already there", rejected,
    // mapping error, unavailable, created.
    d.script(Script {
        items: vec![201, 409, 429, 400, 503, 201],
        requests: vec![],
    });
    let sent = records("mix", 0..6);
    ingest(&handle, &sent).await;
    wait_within("every record settled", WAIT, || {
        handle.status().queue_bytes == 0
    })
    .await;
    assert_eq!(
        items(&handle, "elasticsearch", "created"),
        4,
        "201s, and the 429/503 retried alone"
    );
    assert_eq!(items(&handle, "elasticsearch", "duplicate"), 1);
    assert_eq!(items(&handle, "elasticsearch", "retried"), 2);
    assert_eq!(items(&handle, "elasticsearch", "dead_lettered"), 1);
    let created = created_once(&d);
    let expected: BTreeSet<String> = [0, 2, 4, 5]
        .iter()
        .map(|&i| sent[i].event.id.clone())
        .collect();
    assert_eq!(
        created, expected,
        "the 409 was not sent again, the 400 not indexed"
    );
    let letters = dead_letters(tmp.path(), "elasticsearch");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["_id"], sent[3].event.id.as_str());
    assert_eq!(letters[0]["status"], 400);
    assert_eq!(letters[0]["error"]["type"], "mapper_parsing_exception");
    assert_eq!(letters[0]["record"]["message"], "mix line 3");
    assert_eq!(letters[0]["_index"], "logs-ferry-default");
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_request_failures_are_retried_and_413_splits_the_request() {
    let tmp = tempfile::tempdir().unwrap();
    let d = double(Options::default()).await;
    d.script(Script {
        items: vec![],
        requests: vec![429, 503, 413, 413],
    });
    let handle = start(with_sinks(
        tmp.path(),
        vec![es_sink(ElasticsearchConfig {
            flush_interval_ms: 500,
            ..es(&d)
        })],
    ))
    .await
    .unwrap();
    let sent = records("w", 0..40);
    ingest(&handle, &sent).await;
    wait_within("every record indexed", WAIT, || {
        items(&handle, "elasticsearch", "created") == 40
    })
    .await;
    assert_eq!(created_once(&d), ids(&sent));
    let outcome = |o: &str| {
        metric(
            &handle,
            &format!("ferry_sink_bulk_requests_total{{sink=\"elasticsearch\",outcome=\"{o}\"}}"),
        )
    };
    assert_eq!(outcome("rejected"), 1);
    assert_eq!(outcome("unavailable"), 1);
    assert_eq!(outcome("too_large"), 2);
    // 40 → 20 + 20 → 10 + 10 + 20: three requests answered.
    assert_eq!(outcome("ok"), 3);
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_document_too_large_for_the_cluster_is_dead_lettered() {
    let tmp = tempfile::tempdir().unwrap();
    let d = double(Options {
        max_content_length: 4096,
        ..Default::default()
    })
    .await;
    let handle = start(with_sinks(tmp.path(), vec![es_sink(es(&d))]))
        .await
        .unwrap();
    let mut sent = records("big", 0..3);
    sent[1].message = "x".repeat(10_000);
    ingest(&handle, &sent).await;
    wait_within("every record settled", WAIT, || {
        handle.status().queue_bytes == 0
    })
    .await;
    let letters = dead_letters(tmp.path(), "elasticsearch");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["_id"], sent[1].event.id.as_str());
    assert_eq!(letters[0]["status"], 413);
    assert!(letters[0]["error"]
        .as_str()
        .unwrap()
        .contains("http.max_content_length"));
    assert_eq!(created_once(&d), ids(&[sent[0].clone(), sent[2].clone()]));
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_fills_the_queue_then_everything_drains_once() {
    let tmp = tempfile::tempdir().unwrap();
    let d = double(Options::default()).await;
    let raw = |b: u64| {
        let body = gzip_batch(&records("o", b * 50..b * 50 + 50));
        ferry_wire::decode_batch(&body, ferry_wire::Compression::Gzip { level: 1 }, 1 << 20)
            .unwrap()
            .data
            .len() as u64
    };
    // Room for the first five batches, not one byte more.
    let handle = start(AggregatorConfig {
        queue_max_bytes: (0..5)
            .map(|b| raw(b) + crate::queue::ENTRY_OVERHEAD_BYTES)
            .sum(),
        max_decompressed_bytes: raw(7) as usize,
        ..with_sinks(tmp.path(), vec![es_sink(es(&d))])
    })
    .await
    .unwrap();
    d.set_behaviour(Behaviour {
        outage: Outage::Refuse,
        ..Default::default()
    });
    let mut sent = Vec::new();
    let mut refused = 0;
    for b in 0..8u64 {
        let recs = records("o", b * 50..b * 50 + 50);
        let reply = post(&handle, &auth_gzip(), &gzip_batch(&recs)).await;
        match reply.status {
            200 => sent.extend(recs),
            503 => {
                assert_eq!(reply.header("retry-after"), Some("1"));
                refused += 1;
            }
            other => panic!("{other}: {}", reply.body),
        }
    }
    assert_eq!(sent.len(), 250, "five batches fit");
    assert_eq!(refused, 3, "then the full queue answers 503");
    wait_within("a bulk request meets the refused connection", WAIT, || {
        metric(
            &handle,
            "ferry_sink_bulk_requests_total{sink=\"elasticsearch\",outcome=\"connection\"}",
        ) >= 1
    })
    .await;
    assert!(d.docs().is_empty());
    d.set_behaviour(Behaviour::default());
    wait_within("the queue drained after the outage", WAIT, || {
        handle.status().queue_bytes == 0
    })
    .await;
    assert_eq!(created_once(&d), ids(&sent));
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_queue_adds_no_document_and_no_dead_letter() {
    let tmp = tempfile::tempdir().unwrap();
    // Mapping errors decided per id: a replayed record is refused again.
    let d = double(Options {
        behaviour: Behaviour {
            mapping_error_rate: 0.05,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let cfg = with_sinks(tmp.path(), vec![es_sink(es(&d))]);
    let handle = start(cfg.clone()).await.unwrap();
    let sent = records("r", 0..120);
    ingest(&handle, &sent).await;
    wait_within("indexed", WAIT, || handle.status().queue_bytes == 0).await;
    handle.shutdown().await;
    let indexed = created_once(&d);
    let letters = dead_letters(tmp.path(), "elasticsearch");
    assert!(!letters.is_empty(), "some records hit the mapping errors");
    assert_eq!(indexed.len() + letters.len(), 120);
    // Forget the sink's position: the whole (untrimmed) segment is sent again.
    std::fs::remove_file(super::sink_dir(tmp.path(), "elasticsearch").join("position.json"))
        .unwrap();
    let handle = start(cfg).await.unwrap();
    wait_within("replayed", WAIT, || {
        items(&handle, "elasticsearch", "duplicate") == 120
    })
    .await;
    assert_eq!(items(&handle, "elasticsearch", "created"), 0);
    assert_eq!(items(&handle, "elasticsearch", "dead_lettered"), 0);
    assert_eq!(created_once(&d), indexed, "no document added");
    assert_eq!(
        dead_letters(tmp.path(), "elasticsearch").len(),
        letters.len(),
        "no dead letter written twice"
    );
    assert_eq!(d.stats().items["conflict"], indexed.len() as u64);
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_is_idempotent_and_refuses_what_it_cannot_use() {
    let tmp = tempfile::tempdir().unwrap();
    let d = double(Options::default()).await;
    for _ in 0..2 {
        let handle = start(with_sinks(tmp.path(), vec![es_sink(es(&d))]))
            .await
            .unwrap();
        handle.shutdown().await;
    }
    let stats = d.stats();
    assert_eq!(
        (
            stats.template_puts,
            stats.policy_puts,
            stats.data_stream_puts
        ),
        (1, 1, 1),
        "a second start changes nothing"
    );
    // A changed setting replaces what changed, and only that.
    let changed = ElasticsearchConfig {
        ilm_delete_after_days: 7,
        ..es(&d)
    };
    let handle = start(with_sinks(tmp.path(), vec![es_sink(changed)]))
        .await
        .unwrap();
    handle.shutdown().await;
    let stats = d.stats();
    assert_eq!((stats.template_puts, stats.policy_puts), (1, 2));

    for (options, expected) in [
        (
            Options {
                distribution: "opensearch".into(),
                version: "2.11.0".into(),
                ..Default::default()
            },
            "OpenSearch 2.11.0",
        ),
        (
            Options {
                version: "7.17.9".into(),
                ..Default::default()
            },
            "\"7.17.9\" is not supported",
        ),
    ] {
        let other = double(options).await;
        let tmp = tempfile::tempdir().unwrap();
        let err = start(with_sinks(tmp.path(), vec![es_sink(es(&other))]))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_at_start_is_waited_for() {
    let tmp = tempfile::tempdir().unwrap();
    let d = double(Options::default()).await;
    d.set_behaviour(Behaviour {
        outage: Outage::Refuse,
        ..Default::default()
    });
    let handle = start(with_sinks(tmp.path(), vec![es_sink(es(&d))]))
        .await
        .expect("the aggregator starts and queues while Elasticsearch is away");
    let sent = records("late", 0..30);
    ingest(&handle, &sent).await;
    d.set_behaviour(Behaviour::default());
    wait_within("indexed after the cluster came", WAIT, || {
        handle.status().queue_bytes == 0
    })
    .await;
    assert_eq!(created_once(&d), ids(&sent));
    assert_eq!(d.stats().data_streams, ["logs-ferry-default"]);
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_labels_cannot_conflict_under_the_template() {
    let labelled = |source: &str| {
        let mut r = records(source, 0..2);
        for rec in &mut r {
            rec.container.labels = [
                ("app".to_string(), "web".to_string()),
                ("app.kubernetes.io/name".to_string(), "web".to_string()),
            ]
            .into_iter()
            .collect();
        }
        r
    };
    // With ferry's template: indexed.
    let tmp = tempfile::tempdir().unwrap();
    let d = double(Options::default()).await;
    let handle = start(with_sinks(tmp.path(), vec![es_sink(es(&d))]))
        .await
        .unwrap();
    let sent = labelled("l");
    ingest(&handle, &sent).await;
    wait_within("settled", WAIT, || handle.status().queue_bytes == 0).await;
    assert_eq!(created_once(&d), ids(&sent));
    handle.shutdown().await;
    // Without it (bootstrap off, built-in dynamic mappings): the mapping conflict is
    // dead-lettered with Elasticsearch's reason, not lost.
    let tmp = tempfile::tempdir().unwrap();
    let d = double(Options::default()).await;
    let handle = start(with_sinks(
        tmp.path(),
        vec![es_sink(ElasticsearchConfig {
            bootstrap: false,
            ..es(&d)
        })],
    ))
    .await
    .unwrap();
    ingest(&handle, &labelled("m")).await;
    wait_within("settled", WAIT, || handle.status().queue_bytes == 0).await;
    assert!(d.docs().is_empty());
    let letters = dead_letters(tmp.path(), "elasticsearch");
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["error"]["type"], "document_parsing_exception");
    assert!(
        d.stats().templates == ["logs"],
        "bootstrap = false installs nothing"
    );
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_route_records_and_dead_letters_reach_their_index() {
    let tmp = tempfile::tempdir().unwrap();
    let d = double(Options::default()).await;
    let handle = start(with_sinks(
        tmp.path(),
        vec![es_sink(ElasticsearchConfig {
            namespace_field: Some("kubernetes.namespace".into()),
            dead_letter_index: Some("ferry-dead-letter".into()),
            ..es(&d)
        })],
    ))
    .await
    .unwrap();
    let mut sent = records("n", 0..4);
    sent[0].kubernetes.namespace = Some("Kube-System".into());
    sent[1].kubernetes.namespace = Some("shop".into());
    d.script(Script {
        items: vec![201, 201, 201, 400],
        requests: vec![],
    });
    ingest(&handle, &sent).await;
    wait_within("settled", WAIT, || handle.status().queue_bytes == 0).await;
    let stats = d.stats();
    assert_eq!(
        stats.data_streams,
        [
            "logs-ferry-default",
            "logs-ferry-kube_system",
            "logs-ferry-shop"
        ]
    );
    let docs = d.docs();
    let dl = docs
        .iter()
        .find(|x| x.index == "ferry-dead-letter")
        .expect("a dead letter indexed");
    assert_eq!(dl.id, sent[3].event.id);
    let source: serde_json::Value = serde_json::from_str(dl.source.as_ref().unwrap()).unwrap();
    assert_eq!(source["error"]["status"], 400);
    assert!(source["record"].as_str().unwrap().contains("n line 3"));
    assert_eq!(
        metric(
            &handle,
            "ferry_sink_dead_letters_total{sink=\"elasticsearch\",destination=\"index\"}"
        ),
        1
    );
    assert_eq!(
        dead_letters(tmp.path(), "elasticsearch").len(),
        1,
        "and in the file"
    );
    assert!(stats
        .templates
        .contains(&"ferry-elasticsearch-dead-letter".to_string()));
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_next_url() {
    let tmp = tempfile::tempdir().unwrap();
    let d = double(Options::default()).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let handle = start(with_sinks(
        tmp.path(),
        vec![es_sink(ElasticsearchConfig {
            urls: vec![format!("http://{dead}"), d.url()],
            // A backoff longer than the test waits: only failover can deliver in time.
            backoff_initial_ms: 60_000,
            backoff_max_ms: 120_000,
            ..es(&d)
        })],
    ))
    .await
    .unwrap();
    let sent = records("f", 0..100);
    for chunk in sent.chunks(10) {
        ingest(&handle, chunk).await;
    }
    // The dead node is left out for seconds; the other takes everything at once.
    wait_within(
        "indexed through the live node",
        Duration::from_secs(4),
        || handle.status().queue_bytes == 0,
    )
    .await;
    assert_eq!(created_once(&d), ids(&sent));
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_and_elasticsearch_keep_their_own_positions_and_trim_waits_for_both() {
    let tmp = tempfile::tempdir().unwrap();
    let d = double(Options::default()).await;
    let cfg = AggregatorConfig {
        queue_segment_bytes: 4096,
        ..with_sinks(
            tmp.path(),
            vec![
                SinkConfig::Local {
                    retention_days: 7,
                    max_sources: 250_000,
                },
                es_sink(es(&d)),
            ],
        )
    };
    let handle = start(cfg.clone()).await.unwrap();
    d.set_behaviour(Behaviour {
        outage: Outage::Unavailable,
        ..Default::default()
    });
    let sent = records("s", 0..400);
    for chunk in sent.chunks(20) {
        ingest(&handle, chunk).await;
    }
    wait_within("the local store has everything, committed", WAIT, || {
        handle.status().records_stored == 400
            && metric(&handle, "ferry_sink_queue_records{sink=\"local\"}") == 0
    })
    .await;
    let segments = || {
        std::fs::read_dir(tmp.path().join("queue"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".seg")
            })
            .count()
    };
    assert!(
        segments() > 3,
        "segments stay while Elasticsearch is behind"
    );
    assert!(metric(&handle, "ferry_sink_queue_records{sink=\"elasticsearch\"}") > 0);
    assert_eq!(
        metric(&handle, "ferry_sink_queue_records{sink=\"local\"}"),
        0
    );
    assert!(
        handle.status().queue_bytes > 0,
        "the queue holds what the slowest sink needs"
    );
    // Both sinks survive a restart at their own positions.
    handle.shutdown().await;
    let handle = start(cfg).await.unwrap();
    d.set_behaviour(Behaviour::default());
    wait_within("Elasticsearch caught up", WAIT, || {
        handle.status().queue_bytes == 0
    })
    .await;
    assert_eq!(created_once(&d), ids(&sent));
    assert_eq!(
        handle.status().records_stored,
        0,
        "the local store had everything already"
    );
    wait_within("segments trimmed", WAIT, || segments() == 1).await;
    let reply = get(&handle, "/health").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dated_indices_and_gzip_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let d = double(Options::default()).await;
    let handle = start(with_sinks(
        tmp.path(),
        vec![es_sink(ElasticsearchConfig {
            index: Some("ferry-%Y.%m.%d".into()),
            request_compression: super::RequestCompression::Gzip,
            ..es(&d)
        })],
    ))
    .await
    .unwrap();
    let sent = records("g", 0..50);
    ingest(&handle, &sent).await;
    wait_within("settled", WAIT, || handle.status().queue_bytes == 0).await;
    assert_eq!(created_once(&d), ids(&sent));
    let stats = d.stats();
    assert_eq!(stats.indices, ["ferry-2026.11.28"]);
    assert!(stats.data_streams.is_empty());
    assert_eq!(stats.templates, ["ferry-elasticsearch", "logs"]);
    handle.shutdown().await;
}
