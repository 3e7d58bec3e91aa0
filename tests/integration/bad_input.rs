//! Bad input gets a clear error or a flag, the processes keep running (or refuse to start, for
//! configuration), and nothing already accepted is lost.

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};

use crate::util::*;

#[test]
fn bad_lines_are_kept_and_flagged_and_the_agent_keeps_going() {
    let w = World::new();
    let config = w.config("", "");
    let plain = w.path("logs/plain");
    std::fs::create_dir_all(&plain).unwrap();
    let id = "bad0".to_string() + &"0".repeat(60);
    let docker_dir = w.path(&format!("logs/containers/{id}"));
    std::fs::create_dir_all(&docker_dir).unwrap();

    let mut p = Vec::new();
    p.extend_from_slice(b"before\n");
    p.extend_from_slice(b"bad utf8 \xff\xfe here\n");
    p.extend_from_slice(b"nul \0 inside\n");
    p.extend_from_slice(b"huge ");
    p.extend(std::iter::repeat_n(b'x', 10 << 20));
    p.extend_from_slice(b"\nafter\n");
    std::fs::write(plain.join("app.log"), &p).unwrap();

    let mut d = Vec::new();
    d.extend_from_slice(br#"{"log":"good one\n","stream":"stdout","time":"2026-11-28T08:00:00Z"}"#);
    d.extend_from_slice(b"\n{\"log\":\"cut off in the mid\n");
    d.extend_from_slice(b"not json at all\n");
    d.extend_from_slice(br#"{"log":"good two\n","stream":"stderr","time":"2026-11-28T08:00:01Z"}"#);
    d.push(b'\n');
    std::fs::write(docker_dir.join(format!("{id}-json.log")), &d).unwrap();

    let _aggregator = w.start_aggregator(&config);
    let mut agent = w.start_agent(&config);
    let records = wait_for("9 records", Duration::from_secs(60), || {
        let r = w.stored();
        (r.len() >= 9).then_some(r)
    });
    assert_eq!(records.len(), 9, "{records:#?}");
    let find = |prefix: &str| -> &Value {
        records
            .iter()
            .find(|r| r["message"].as_str().unwrap_or("").starts_with(prefix))
            .unwrap_or_else(|| panic!("no record starting with {prefix:?}"))
    };
    let flags = |r: &Value| r["log"]["flags"].as_array().cloned().unwrap_or_default();
    assert_eq!(find("before")["message"], "before");
    let bad = find("bad utf8");
    assert_eq!(bad["message"], "bad utf8 \u{fffd}\u{fffd} here");
    assert!(flags(bad).contains(&json!("invalid_utf8")));
    assert_eq!(find("nul")["message"], "nul \u{0} inside");
    let huge = find("huge");
    assert!(flags(huge).contains(&json!("truncated")));
    let len = huge["message"].as_str().unwrap().len();
    assert!(
        (200_000..=262_144).contains(&len),
        "truncated to {len} bytes"
    );
    assert_eq!(find("after")["message"], "after");
    assert_eq!(find("good one")["stream"], "stdout");
    assert_eq!(find("good two")["stream"], "stderr");
    assert!(flags(find("{\"log\":\"cut off")).contains(&json!("malformed_json")));
    assert!(flags(find("not json")).contains(&json!("malformed_json")));
    assert!(agent.alive());
}

/// A valid gzip batch with `n` records, as the agent would send it.
fn batch(n: usize, tag: &str) -> Vec<u8> {
    let mut body = format!("{{\"ferry\":1,\"host\":\"h\",\"logs\":{n},\"stats\":0}}\n");
    for i in 0..n {
        let r = json!({
            "event": {"id": format!("{tag}-{i}")},
            "@timestamp": "2026-11-28T08:00:00Z",
            "message": format!("{tag} record {i}"),
            "log": {"file": {"path": "/x.log", "fingerprint": tag}, "offset": i},
            "host": {"name": "h"}
        });
        body.push_str(&r.to_string());
        body.push('\n');
    }
    gzip(body.as_bytes())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[test]
fn aggregator_refuses_bad_batches_with_a_reason_and_keeps_what_it_accepted() {
    let w = World::new();
    let config = w.config("", "max_body_bytes = 1048576\n");
    let mut aggregator = w.start_aggregator(&config);
    let addr = w.agg_addr();
    let auth = format!("Bearer {}", w.token);
    let post = |body: &[u8], token: Option<&str>| {
        let mut h = vec![
            ("Content-Encoding", "gzip"),
            ("Content-Type", "application/x-ndjson"),
        ];
        if let Some(t) = token {
            h.push(("Authorization", t));
        }
        http(addr, "POST", "/v1/batches", &h, body).unwrap()
    };

    let ok = post(&batch(100, "good"), Some(&auth));
    assert_eq!(ok.status, 200, "{}", ok.body);

    let wrong = post(&batch(1, "x"), Some("Bearer nope"));
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("token"), "{}", wrong.body);
    assert!(!wrong.body.contains("nope"), "the token is not echoed");
    assert!(
        wrong
            .headers
            .to_lowercase()
            .contains("www-authenticate: bearer"),
        "{}",
        wrong.headers
    );
    assert_eq!(post(&batch(1, "x"), None).status, 401);

    let full = batch(100, "cut");
    let cut = post(&full[..full.len() / 2], Some(&auth));
    assert_eq!(cut.status, 400);
    assert!(cut.body.to_lowercase().contains("gzip"), "{}", cut.body);

    let mut body = String::from("{\"ferry\":1,\"host\":\"h\",\"logs\":2,\"stats\":0}\n");
    body.push_str(r#"{"event":{"id":"a"},"@timestamp":"2026-11-28T08:00:00Z","message":"m","log":{"file":{"path":"/x","fingerprint":"f"},"offset":1},"host":{"name":"h"}}"#);
    body.push_str("\n{\"event\":{\"id\":\"b\"},\"message\":\"no timestamp\"}\n");
    let malformed = post(&gzip(body.as_bytes()), Some(&auth));
    assert_eq!(malformed.status, 400);
    assert!(malformed.body.contains("line 3"), "{}", malformed.body);

    // Incompressible bytes so the compressed body itself is over the 1 MiB limit.
    let mut rng = fastrand::Rng::with_seed(3);
    let noise: Vec<u8> = (0..2 << 20).map(|_| rng.u8(..)).collect();
    let big = post(&noise, Some(&auth));
    assert_eq!(big.status, 413);

    assert!(aggregator.alive(), "{}", aggregator.log_text());
    let health = http(addr, "GET", "/health", &[], b"").unwrap();
    assert_eq!(health.status, 200);
    let stored = wait_for(
        "the good batch in the store",
        Duration::from_secs(30),
        || {
            let s = w.stored();
            (s.len() >= 100).then_some(s)
        },
    );
    assert_eq!(stored.len(), 100);
    assert!(stored
        .iter()
        .all(|r| r["message"].as_str().unwrap().starts_with("good record")));
    let page = http(addr, "GET", "/metrics", &[], b"").unwrap().body;
    assert!(metric(&page, "ferry_ingest_errors_total") >= 5.0, "{page}");
    assert_eq!(
        post(&batch(10, "later"), Some(&auth)).status,
        200,
        "still accepting"
    );
}

#[test]
fn a_config_with_an_unknown_key_is_refused_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[agent]\nhost_name = \"n\"\ncolour = \"blue\"\n").unwrap();
    let check = std::process::Command::new(FERRY)
        .args(["check", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{text}");
    assert!(
        text.contains("bad.toml") && text.contains("colour"),
        "{text}"
    );

    let run = std::process::Command::new(FERRY)
        .args(["agent", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{text}");
    assert!(text.contains("colour"), "{text}");

    std::fs::write(&path, "[aggregator]\nlisten = \"not an address\"\n").unwrap();
    let check = std::process::Command::new(FERRY)
        .args(["check", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{text}");
    assert!(text.contains("listen"), "{text}");
}

/// `--since 30` used to mean 30 minutes without saying so; a number without a unit, or a
/// duration out of range, is refused naming the value and the forms that work.
#[test]
fn search_refuses_a_time_bound_without_a_unit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("store")).unwrap();
    let search = |flag: &str, value: &str| {
        std::process::Command::new(FERRY)
            .args([
                "search",
                "--data-dir",
                dir.path().to_str().unwrap(),
                flag,
                value,
            ])
            .output()
            .unwrap()
    };
    for (flag, value, says) in [
        ("--since", "30", "30m"),
        ("--until", "5", "5s"),
        ("--since", "100000000000000d", "out of range"),
        ("--since", "yesterday", "RFC 3339"),
    ] {
        let out = search(flag, value);
        let text = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {text}");
        assert!(
            text.contains(flag) && text.contains(value) && text.contains(says),
            "{text}"
        );
    }
    let out = search("--since", "30m");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
