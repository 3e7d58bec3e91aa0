//! Series counted from the log records themselves at intake: lines per container, stream and
//! level (`ferry_container_log_lines_total`) and the time each agent's last batch arrived
//! (`ferry_agent_last_batch_timestamp_seconds`), so an error spike or a silent node can be
//! alerted on.
//!
//! Cardinality is bounded: levels are folded into a fixed set, at most [`MAX_SERIES`] line
//! series are kept (lines of further ones are counted in
//! `ferry_container_log_lines_overflow_total`), and a series without a line for
//! [`IDLE_EXPIRY`] is dropped; an agent silent for [`AGENT_EXPIRY`] is forgotten. This module only counts;
//! [`LogLines::observe`] is the one call intake makes, with the decoded batch;
//! [`LogLines::sample`] gives the alert history the same series `/metrics` shows, without text
//! (each series keeps where it lives in the history).
//!
//! A version 2 batch is counted without parsing any record's JSON: the container, namespace and
//! pod come from its source lines, the stream and level from the record layout the wire format
//! fixes (see [`stream_and_level_around`]); a version 1 record, or one not in that layout, is parsed.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use ferry_wire::{DecodedBatch, DecodedLog};
use rustc_hash::FxHashMap;
use serde::Deserialize;

use super::history::{History, SlotRef};
use super::promql::make_labels;

const LINES_NAME: &str = "ferry_container_log_lines_total";
const OVERFLOW_NAME: &str = "ferry_container_log_lines_overflow_total";
const AGENT_NAME: &str = "ferry_agent_last_batch_timestamp_seconds";

/// Most line series kept.
pub(crate) const MAX_SERIES: usize = 10_000;
/// A series (or agent) with nothing new for this long is dropped.
pub(crate) const IDLE_EXPIRY: Duration = Duration::from_secs(3600);
/// An agent silent for this long is forgotten (until then `NodeStoppedSending` can fire).
pub(crate) const AGENT_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// The levels the `level` label takes.
fn fold_level(level: Option<&str>) -> &'static str {
    let Some(level) = level else { return "unknown" };
    match level.trim().to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" | "dbug" => "debug",
        "info" | "information" | "informational" | "notice" => "info",
        "warn" | "warning" => "warn",
        "error" | "err" | "eror" => "error",
        "fatal" | "critical" | "crit" | "panic" | "emerg" | "emergency" | "alert" => "fatal",
        _ => "other",
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    host: String,
    name: String,
    namespace: String,
    pod: String,
    stream: &'static str,
    level: &'static str,
}

#[derive(Debug, Default)]
struct State {
    /// Lines counted, when the last came, and where the series lives in the alert history.
    lines: HashMap<Key, (u64, Instant, SlotRef)>,
    /// The agent's last batch (Unix seconds), when it came, and its place in the history.
    agents: HashMap<String, (f64, Instant, SlotRef)>,
    overflow: u64,
    overflow_slot: SlotRef,
}

impl Key {
    /// The order the page lists the series in.
    fn order(&self) -> (&str, &str, &str, &str, &str, &str) {
        (
            &self.host,
            &self.name,
            &self.namespace,
            &self.pod,
            self.stream,
            self.level,
        )
    }
}

/// Drops the line series and agents past their expiry.
fn expire(state: &mut State, now: Instant) {
    state
        .lines
        .retain(|_, (_, seen, _)| now.saturating_duration_since(*seen) < IDLE_EXPIRY);
    state
        .agents
        .retain(|_, (_, seen, _)| now.saturating_duration_since(*seen) < AGENT_EXPIRY);
}

/// Notes the agent `host`'s batch at `seconds` (Unix time), arrived `now`.
fn note_agent(state: &mut State, host: &str, seconds: f64, now: Instant) {
    match state.agents.get_mut(host) {
        Some(agent) => (agent.0, agent.1) = (seconds, now),
        None => {
            state
                .agents
                .insert(host.to_string(), (seconds, now, SlotRef::default()));
        }
    }
}

/// An agent's time as the page prints it (to the millisecond) and a scrape reads it back.
fn agent_time(seconds: f64, buf: &mut String) -> f64 {
    buf.clear();
    let _ = write!(buf, "{seconds:.3}");
    buf.parse().unwrap_or(seconds)
}

/// The per-container line counters and per-agent liveness.
#[derive(Debug, Default)]
pub(crate) struct LogLines {
    state: Mutex<State>,
}

/// The few fields counted, borrowed from the record's JSON.
#[derive(Deserialize)]
struct Peek<'a> {
    #[serde(borrow, default)]
    stream: Option<&'a str>,
    #[serde(borrow, default)]
    log: Option<PeekLog<'a>>,
    #[serde(borrow, default)]
    container: Option<PeekName<'a>>,
    #[serde(borrow, default)]
    kubernetes: Option<PeekKubernetes<'a>>,
}

#[derive(Deserialize)]
struct PeekLog<'a> {
    #[serde(borrow, default)]
    level: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct PeekName<'a> {
    #[serde(borrow, default)]
    name: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct PeekKubernetes<'a> {
    #[serde(borrow, default)]
    namespace: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    pod: Option<PeekName<'a>>,
}

/// One batch's count key, borrowed from the batch where it can be.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Counted<'a> {
    name: Cow<'a, str>,
    namespace: Cow<'a, str>,
    pod: Cow<'a, str>,
    stream: &'static str,
    level: &'static str,
}

/// `,"log":{`: the start of a record's `log` object. It cannot occur inside a JSON string (a
/// quote there is always escaped), and in the wire format's record layout nothing before the
/// `log` object is an object with a `log` member, so its first occurrence is the record's own.
#[cfg(test)]
const LOG_OBJECT: &[u8] = b",\"log\":{";

/// Version 2: the container, pod and namespace of `log`'s source (from the batch's source
/// line); `None` for a version 1 record.
fn source_names<'b>(batch: &'b DecodedBatch, log: &DecodedLog) -> Option<Counted<'b>> {
    let name = batch.source_field(log, &["container", "name"])?;
    let namespace = batch
        .source_field(log, &["kubernetes", "namespace"])
        .flatten();
    let pod = batch
        .source_field(log, &["kubernetes", "pod", "name"])
        .flatten();
    Some(Counted {
        name: Cow::Borrowed(name.unwrap_or_default().trim_start_matches('/')),
        namespace: Cow::Borrowed(namespace.unwrap_or_default()),
        pod: Cow::Borrowed(pod.unwrap_or_default()),
        stream: "unknown",
        level: "unknown",
    })
}

/// The folded stream and level of a record written in the wire format's layout; `None` when
/// the bytes around its `log` object are not that layout.
#[cfg(test)]
fn stream_and_level(record: &[u8]) -> Option<(&'static str, &'static str)> {
    let at = memchr::memmem::find(record, LOG_OBJECT)?;
    stream_and_level_around(&record[..at], &record[at + LOG_OBJECT.len()..])
}

/// The folded stream and level from the bytes before a record's `,"log":{` (`"stream":"…"` is
/// the member just before it) and the `log` object's members (`"level":"…"` is the first, when
/// present), as the wire format lays a record out (see `ferry_wire`'s batch docs); `None` when
/// the bytes do not have that layout (the caller then parses the record).
fn stream_and_level_around(before: &[u8], members: &[u8]) -> Option<(&'static str, &'static str)> {
    let stream = if before.ends_with(b",\"stream\":\"stderr\"") {
        "stderr"
    } else if before.ends_with(b",\"stream\":\"stdout\"") {
        "stdout"
    } else {
        "unknown"
    };
    let Some(value) = members.strip_prefix(b"\"level\":") else {
        return Some((stream, fold_level(None)));
    };
    // The JSON string: up to the first quote not escaped by a backslash.
    if value.first() != Some(&b'"') {
        return None;
    }
    let mut end = 1;
    loop {
        match *value.get(end)? {
            b'\\' => end += 2,
            b'"' => break,
            _ => end += 1,
        }
    }
    let escaped = memchr::memchr(b'\\', &value[1..end]).is_some();
    if value.get(end + 1) != Some(&b',') && value.get(end + 1) != Some(&b'}') {
        return None;
    }
    let level = if escaped {
        let owned: String = serde_json::from_slice(&value[..=end]).ok()?;
        fold_level(Some(&owned))
    } else {
        fold_level(Some(std::str::from_utf8(&value[1..end]).ok()?))
    };
    Some((stream, level))
}

/// Version 1 (or an unexpected layout): the key from the record's parsed JSON.
fn peek_parsed(record: &[u8]) -> Option<Counted<'static>> {
    let peek = serde_json::from_slice::<Peek>(record).ok()?;
    let stream = match peek.stream {
        Some("stderr") => "stderr",
        Some("stdout") => "stdout",
        _ => "unknown",
    };
    let level = fold_level(peek.log.as_ref().and_then(|l| l.level.as_deref()));
    let kubernetes = peek.kubernetes.as_ref();
    let owned = |s: Option<&str>| Cow::Owned(s.unwrap_or_default().to_string());
    Some(Counted {
        name: owned(
            peek.container
                .as_ref()
                .and_then(|c| c.name.as_deref())
                .map(|n| n.trim_start_matches('/')),
        ),
        namespace: owned(kubernetes.and_then(|k| k.namespace.as_deref())),
        pod: owned(
            kubernetes
                .and_then(|k| k.pod.as_ref())
                .and_then(|p| p.name.as_deref()),
        ),
        stream,
        level,
    })
}

impl LogLines {
    /// Counts the lines of one accepted batch and notes its agent as alive.
    pub(crate) fn observe(&self, batch: &DecodedBatch) {
        self.observe_at(batch, Instant::now(), SystemTime::now());
    }

    fn observe_at(&self, batch: &DecodedBatch, now: Instant, wall: SystemTime) {
        let mut counted: FxHashMap<Counted<'_>, u64> = FxHashMap::default();
        // Version 2: counted by source, stream and level, the names looked up once a source.
        let mut by_source: FxHashMap<(usize, &str, &str), (u64, &DecodedLog)> =
            FxHashMap::default();
        for log in &batch.logs {
            let v2 = batch
                .log_object(log)
                .and_then(|(before, members)| stream_and_level_around(before, members));
            if let Some((stream, level)) = v2 {
                let key = (batch.source_index(log), stream, level);
                by_source.entry(key).or_insert((0, log)).0 += 1;
            } else if let Some(key) = peek_parsed(&batch.record(log)) {
                *counted.entry(key).or_default() += 1;
            }
        }
        for ((_, stream, level), (n, log)) in by_source {
            if let Some(names) = source_names(batch, log) {
                *counted
                    .entry(Counted {
                        stream,
                        level,
                        ..names
                    })
                    .or_default() += n;
            }
        }
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let seconds = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        note_agent(&mut state, &batch.header.host, seconds, now);
        for (counted, n) in counted {
            let key = Key {
                host: batch.header.host.clone(),
                name: counted.name.into_owned(),
                namespace: counted.namespace.into_owned(),
                pod: counted.pod.into_owned(),
                stream: counted.stream,
                level: counted.level,
            };
            let full = state.lines.len() >= MAX_SERIES;
            match state.lines.get_mut(&key) {
                Some(entry) => {
                    entry.0 += n;
                    entry.1 = now;
                }
                None if full => state.overflow += n,
                None => {
                    state.lines.insert(key, (n, now, SlotRef::default()));
                }
            }
        }
    }

    /// Notes a batch of the agent `host` at `seconds` (Unix time) without counting lines (the
    /// benchmark's stand-in for its agents).
    pub(crate) fn agent_seen(&self, host: &str, seconds: f64) {
        if let Ok(mut state) = self.state.lock() {
            note_agent(&mut state, host, seconds, Instant::now());
        }
    }

    /// Appends the families (the line counter only once a line was counted).
    pub(crate) fn render(&self, out: &mut String) {
        self.render_at(out, Instant::now());
    }

    fn render_at(&self, out: &mut String, now: Instant) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        expire(&mut state, now);
        let _ = writeln!(out, "# HELP ferry_container_log_lines_total Log lines received, by container, stream and level (trace, debug, info, warn, error, fatal, other, unknown).");
        let _ = writeln!(out, "# TYPE ferry_container_log_lines_total counter");
        let mut lines: Vec<_> = state.lines.iter().collect();
        lines.sort_by(|a, b| a.0.order().cmp(&b.0.order()));
        for (k, (n, _, _)) in lines {
            out.push_str(LINES_NAME);
            out.push_str("{host=\"");
            escape(out, &k.host);
            out.push_str("\",name=\"");
            escape(out, &k.name);
            out.push_str("\",namespace=\"");
            escape(out, &k.namespace);
            out.push_str("\",pod=\"");
            escape(out, &k.pod);
            let _ = writeln!(
                out,
                "\",stream=\"{}\",level=\"{}\"}} {n}",
                k.stream, k.level
            );
        }
        let _ = writeln!(out, "# HELP ferry_container_log_lines_overflow_total Log lines not counted per container because {MAX_SERIES} line series were already kept.");
        let _ = writeln!(
            out,
            "# TYPE ferry_container_log_lines_overflow_total counter"
        );
        let _ = writeln!(out, "{OVERFLOW_NAME} {}", state.overflow);
        let _ = writeln!(out, "# HELP ferry_agent_last_batch_timestamp_seconds When the agent's last batch was accepted (Unix time), per agent host.");
        let _ = writeln!(out, "# TYPE ferry_agent_last_batch_timestamp_seconds gauge");
        let mut agents: Vec<_> = state.agents.iter().collect();
        agents.sort_by(|a, b| a.0.cmp(b.0));
        for (host, (t, _, _)) in agents {
            out.push_str(AGENT_NAME);
            out.push_str("{host=\"");
            escape(out, host);
            let _ = writeln!(out, "\"}} {t:.3}");
        }
    }

    /// Gives the round in progress of `history` every series [`LogLines::render`] would show,
    /// with the same labels and values.
    pub(crate) fn sample(&self, history: &mut History) {
        self.sample_at(history, Instant::now());
    }

    fn sample_at(&self, history: &mut History, now: Instant) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let state = &mut *state;
        expire(state, now);
        let mut missed = Vec::new();
        for (key, (n, _, slot)) in state.lines.iter_mut() {
            if !history.push(*slot, *n as f64) {
                missed.push((key, *n, slot));
            }
        }
        // New series get their places in the order the page lists them.
        missed.sort_by(|a, b| a.0.order().cmp(&b.0.order()));
        for (k, n, slot) in missed {
            let labels = make_labels([
                ("__name__", LINES_NAME),
                ("host", k.host.as_str()),
                ("name", k.name.as_str()),
                ("namespace", k.namespace.as_str()),
                ("pod", k.pod.as_str()),
                ("stream", k.stream),
                ("level", k.level),
            ]);
            *slot = history.push_new(labels, n as f64);
        }
        let overflow = state.overflow as f64;
        if !history.push(state.overflow_slot, overflow) {
            let labels = make_labels([("__name__", OVERFLOW_NAME)]);
            state.overflow_slot = history.push_new(labels, overflow);
        }
        let mut buf = String::new();
        let mut missed = Vec::new();
        for (host, (t, _, slot)) in state.agents.iter_mut() {
            let t = agent_time(*t, &mut buf);
            if !history.push(*slot, t) {
                missed.push((host, t, slot));
            }
        }
        missed.sort_by(|a, b| a.0.cmp(b.0));
        for (host, t, slot) in missed {
            let labels = make_labels([("__name__", AGENT_NAME), ("host", host.as_str())]);
            *slot = history.push_new(labels, t);
        }
    }
}

fn escape(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_wire::{BatchBuilder, Compression, LogRecord, Stream};

    fn record(name: &str, stream: Stream, level: Option<&str>) -> LogRecord {
        let mut r = LogRecord {
            message: "m".into(),
            timestamp: "2024-05-01T12:00:00.000Z".into(),
            stream: Some(stream),
            ..Default::default()
        };
        r.log.level = level.map(str::to_string);
        r.log.file.path = "/x".into();
        r.log.file.fingerprint = "f".into();
        r.container.name = Some(name.into());
        r.kubernetes.namespace = Some("prod".into());
        r.host.name = "node-1".into();
        r
    }

    /// Renders the line counters of one batch of `records` written in format `version`.
    fn counted(records: &[LogRecord], version: u32) -> String {
        let mut b = BatchBuilder::with_version("node-1", version);
        for r in records {
            b.push_log(r);
        }
        let encoded = b.finish(Compression::None);
        assert_eq!(encoded.version, version);
        let batch = ferry_wire::decode_batch(&encoded.body, Compression::None, 1 << 20).unwrap();
        let lines = LogLines::default();
        let t0 = Instant::now();
        lines.observe_at(&batch, t0, SystemTime::UNIX_EPOCH);
        let mut out = String::new();
        lines.render_at(&mut out, t0);
        out
    }

    #[test]
    fn version_2_batches_count_like_version_1_without_parsing_records() {
        let mut records = Vec::new();
        // (container name, stream, level, pod)
        type Case = (
            &'static str,
            Option<Stream>,
            Option<&'static str>,
            Option<&'static str>,
        );
        let cases: [Case; 9] = [
            (
                "/web",
                Some(Stream::Stderr),
                Some("ERROR"),
                Some("web-7d9f"),
            ),
            ("web", Some(Stream::Stderr), Some("err"), Some("web-7d9f")),
            ("web", Some(Stream::Stdout), Some("info"), None),
            ("web", Some(Stream::Stdout), None, None),
            ("web", None, Some("warning"), None),
            // Escaped in JSON: the fast path must unescape before folding.
            ("db", Some(Stream::Stderr), Some("fatal\n"), None),
            ("db", Some(Stream::Stderr), Some("\"error\""), None),
            ("db", Some(Stream::Stdout), Some("caf\u{e9}"), None),
            // A message that looks like the layout the fast path reads.
            ("db", Some(Stream::Stdout), Some("debug"), None),
        ];
        for (i, (name, stream, level, pod)) in cases.into_iter().enumerate() {
            let mut r = record(name, Stream::Stdout, level);
            r.stream = stream;
            r.log.offset = i as u64;
            r.log.file.fingerprint = format!("f{}", i % 3);
            r.kubernetes.pod.name = pod.map(str::to_string);
            if i == 8 {
                r.message = ",\"stream\":\"stderr\",\"log\":{\"level\":\"error\",".into();
            }
            records.push(r);
        }
        let v1 = counted(&records, 1);
        let v2 = counted(&records, 2);
        assert_eq!(v1, v2);
        for want in [
            "{host=\"node-1\",name=\"web\",namespace=\"prod\",pod=\"web-7d9f\",stream=\"stderr\",level=\"error\"} 2\n",
            "{host=\"node-1\",name=\"web\",namespace=\"prod\",pod=\"\",stream=\"stdout\",level=\"info\"} 1\n",
            "{host=\"node-1\",name=\"web\",namespace=\"prod\",pod=\"\",stream=\"stdout\",level=\"unknown\"} 1\n",
            "{host=\"node-1\",name=\"web\",namespace=\"prod\",pod=\"\",stream=\"unknown\",level=\"warn\"} 1\n",
            "{host=\"node-1\",name=\"db\",namespace=\"prod\",pod=\"\",stream=\"stderr\",level=\"fatal\"} 1\n",
            "{host=\"node-1\",name=\"db\",namespace=\"prod\",pod=\"\",stream=\"stderr\",level=\"other\"} 1\n",
            "{host=\"node-1\",name=\"db\",namespace=\"prod\",pod=\"\",stream=\"stdout\",level=\"other\"} 1\n",
            "{host=\"node-1\",name=\"db\",namespace=\"prod\",pod=\"\",stream=\"stdout\",level=\"debug\"} 1\n",
        ] {
            assert!(v2.contains(want), "missing {want:?} in\n{v2}");
        }
    }

    #[test]
    fn reads_stream_and_level_from_the_record_layout() {
        let layout = |s: &str| stream_and_level(s.as_bytes());
        assert_eq!(
            layout(
                r#"{"event":{"id":"a"},"@timestamp":"t","message":"m","stream":"stderr","log":{"level":"WARN","offset":1}}"#
            ),
            Some(("stderr", "warn"))
        );
        assert_eq!(
            layout(r#"{"event":{"id":"a"},"@timestamp":"t","message":"m","log":{"offset":1}}"#),
            Some(("unknown", "unknown"))
        );
        assert_eq!(
            layout(
                r#"{"event":{"id":"a"},"message":"m","stream":"stdout","log":{"level":"E\"R","offset":1}}"#
            ),
            Some(("stdout", "other"))
        );
        // Not the layout: the caller parses the record.
        assert_eq!(
            layout(r#"{"message":"m","log":{"level":7,"offset":1}}"#),
            None
        );
        assert_eq!(layout(r#"{"message":"m","log":{"level":"err"#), None);
        assert_eq!(layout(r#"{"message":"m"}"#), None);
    }

    #[test]
    fn counts_lines_by_container_stream_and_folded_level() {
        let mut b = BatchBuilder::new("node-1");
        for (i, (stream, level)) in [
            (Stream::Stderr, Some("ERROR")),
            (Stream::Stderr, Some("err")),
            (Stream::Stdout, Some("info")),
            (Stream::Stdout, None),
            (Stream::Stdout, Some("verbose")),
        ]
        .into_iter()
        .enumerate()
        {
            let mut r = record("web", stream, level);
            r.log.offset = i as u64;
            b.push_log(&r);
        }
        let encoded = b.finish(Compression::None);
        let batch = ferry_wire::decode_batch(&encoded.body, Compression::None, 1 << 20).unwrap();
        let lines = LogLines::default();
        let t0 = Instant::now();
        lines.observe_at(
            &batch,
            t0,
            SystemTime::UNIX_EPOCH + Duration::from_secs(100),
        );
        let mut out = String::new();
        lines.render_at(&mut out, t0);
        for want in [
            "ferry_container_log_lines_total{host=\"node-1\",name=\"web\",namespace=\"prod\",pod=\"\",stream=\"stderr\",level=\"error\"} 2\n",
            "ferry_container_log_lines_total{host=\"node-1\",name=\"web\",namespace=\"prod\",pod=\"\",stream=\"stdout\",level=\"info\"} 1\n",
            "ferry_container_log_lines_total{host=\"node-1\",name=\"web\",namespace=\"prod\",pod=\"\",stream=\"stdout\",level=\"unknown\"} 1\n",
            "ferry_container_log_lines_total{host=\"node-1\",name=\"web\",namespace=\"prod\",pod=\"\",stream=\"stdout\",level=\"other\"} 1\n",
            "ferry_agent_last_batch_timestamp_seconds{host=\"node-1\"} 100.000\n",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
        if let Some((ok, report)) = crate::containers::server_tests::promtool_check(&out) {
            assert!(ok, "promtool: {report}\n{out}");
        }
        // Idle series go after the expiry; a silent agent stays visible much longer.
        let mut later = String::new();
        lines.render_at(&mut later, t0 + IDLE_EXPIRY);
        assert!(!later.contains("name=\"web\""), "{later}");
        assert!(later.contains("{host=\"node-1\"} 100.000"), "{later}");
        let mut much_later = String::new();
        lines.render_at(&mut much_later, t0 + AGENT_EXPIRY);
        assert!(!much_later.contains("node-1"), "{much_later}");
    }
}
