//! Harness functions for the fuzz targets (`fuzz/`) and for the corpus replay test: each takes
//! arbitrary bytes, drives one of the aggregator's input-facing parts as the server or
//! `ferry aggregator` does, and panics when an invariant breaks. Not an interface: nothing
//! outside the fuzzing and its replay calls these.

use std::time::Duration;

use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use crate::alerts::support::Evaluator;
use crate::metrics::Metrics;
use crate::server::{check_headers, decode_body, Reject, Tokens};
use crate::AggregatorConfig;

/// The token the ingest harness's aggregator expects.
const TOKEN: &str = "fuzz-token-3f9a";

/// One batch request without the socket and the queue: the input is `Name: value` header lines,
/// an empty line, then the body (as sent, compressed or not). The request goes through the
/// checks made before the body is read, then the decoding, then what the server does with an
/// accepted batch besides queueing it (log line counts and container stats into the metrics),
/// and the `/metrics` page is rendered.
///
/// Invariants: nothing panics; no refusal quotes the Authorization header; a request passes the token check only
/// when its `Authorization` header holds the token; a body larger than the limit is refused; the
/// `/metrics` page after any batch is one that Prometheus reads (every line readable by the alert
/// engine's exposition reader).
pub fn ingest(data: &[u8]) {
    const MAX_BODY: usize = 64 * 1024;
    const MAX_DECOMPRESSED: usize = 256 * 1024;
    let (head, body) = match memchr::memmem::find(data, b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (&data[..0], data),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    // A refusal may quote what the client sent elsewhere (an unsupported Content-Encoding),
    // never its Authorization header.
    let token_elsewhere = head
        .split(|b| *b == b'\n')
        .filter(|line| !line.to_ascii_lowercase().starts_with(b"authorization:"))
        .chain([body])
        .any(|part| memchr::memmem::find(part, TOKEN.as_bytes()).is_some());
    let refused = |reject: Reject| {
        let message = reject.message();
        assert!(
            token_elsewhere || !message.contains(TOKEN),
            "a refusal names the token: {message}"
        );
    };
    let compression = match check_headers(&Tokens::new(&[TOKEN.to_string()]), MAX_BODY, &headers) {
        Ok(compression) => compression,
        Err(reject) => return refused(reject),
    };
    let authorization = headers
        .get(hyper::header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    assert!(
        memchr::memmem::find(authorization, TOKEN.as_bytes()).is_some(),
        "the token check let {:?} in",
        String::from_utf8_lossy(authorization)
    );
    if body.len() > MAX_BODY {
        // The server reads at most this much: `Limited` refuses the rest.
        return;
    }
    let batch = match decode_body(body, compression, MAX_DECOMPRESSED) {
        Ok(batch) => batch,
        Err(reject) => return refused(reject),
    };
    let metrics = Metrics::default();
    metrics.log_lines.observe(&batch);
    metrics.containers.observe(&batch.stats);
    let page = metrics.render();
    let unreadable = Evaluator::unreadable_lines(&page);
    assert!(
        unreadable.is_empty(),
        "/metrics lines a scraper cannot read: {unreadable:?}"
    );
}

/// A configuration file as `ferry aggregator` reads it (its `[aggregator]` table), then checked
/// as `ferry check` does, without reading the secret files it names (the fuzzer must not read
/// the file system). Invariant besides not panicking: a table without problems serialises back
/// to TOML that reads as the same configuration.
pub fn aggregator_config(data: &[u8]) {
    #[derive(Deserialize)]
    struct File {
        aggregator: Option<AggregatorConfig>,
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(File {
        aggregator: Some(config),
    }) = toml::from_str::<File>(text)
    else {
        return;
    };
    let problems = config.problems();
    let _ = config.sink_list();
    if let Some(alerts) = &config.alerts {
        let _ = alerts.problems();
    }
    if problems.is_empty() {
        let text = toml::to_string(&config)
            .unwrap_or_else(|e| panic!("a valid configuration does not serialise: {e}"));
        let back: AggregatorConfig = toml::from_str(&text)
            .unwrap_or_else(|e| panic!("serialised configuration does not read back: {e}\n{text}"));
        assert_eq!(back, config, "round trip through\n{text}");
    }
}

/// A Prometheus rule file (YAML) loaded as the alert engine loads one, then, when it loads,
/// evaluated over a few rounds of a small `/metrics` page, 15 s apart and after a gap.
/// Invariant: nothing panics (a rule that cannot be evaluated is an evaluation error, reported).
pub fn alert_rules(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut evaluator) = Evaluator::from_text(text, Duration::from_secs(15)) else {
        return;
    };
    let page = "# TYPE ferry_ingest_records_total counter\n\
        ferry_ingest_records_total 10\n\
        ferry_queue_bytes 1024\n\
        container_memory_working_set_bytes{name=\"web\",namespace=\"shop\"} 5e8\n\
        container_spec_memory_limit_bytes{name=\"web\",namespace=\"shop\"} 1e9\n\
        up{job=\"ferry\"} 1\n";
    for (round, t_ms) in [0i64, 15_000, 30_000, 45_000, 600_000]
        .into_iter()
        .enumerate()
    {
        let page = page.replace(" 10\n", &format!(" {}\n", 10 + round * 7));
        evaluator.step(&page, t_ms);
    }
    let _ = evaluator.alerts();
    let _ = evaluator.errors();
}

#[cfg(test)]
mod tests {
    use ferry_wire::fuzz_support::replay_corpus as replay;

    #[test]
    fn corpus_ingest_replays() {
        replay("ingest", super::ingest);
    }

    #[test]
    fn corpus_aggregator_config_replays() {
        replay("aggregator_config", super::aggregator_config);
    }

    #[test]
    fn corpus_alert_rules_replays() {
        replay("alert_rules", super::alert_rules);
    }
}
