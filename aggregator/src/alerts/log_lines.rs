//! Series counted from the log records themselves at intake: lines per container, stream and
//! level (`ferry_container_log_lines_total`) and the time each agent's last batch arrived
//! (`ferry_agent_last_batch_timestamp_seconds`), so an error spike or a silent node can be
//! alerted on.
//!
//! Cardinality is bounded: levels are folded into a fixed set, at most [`MAX_SERIES`] line
//! series are kept (lines of further ones are counted in
//! `ferry_container_log_lines_overflow_total`), and a series without a line for
//! [`IDLE_EXPIRY`] is dropped; an agent silent for [`AGENT_EXPIRY`] is forgotten. This module only counts;
//! [`LogLines::observe`] is the one call intake makes, with the decoded batch.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use ferry_wire::DecodedBatch;
use serde::Deserialize;

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
    lines: HashMap<Key, (u64, Instant)>,
    agents: HashMap<String, (f64, Instant)>,
    overflow: u64,
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

impl LogLines {
    /// Counts the lines of one accepted batch and notes its agent as alive.
    pub(crate) fn observe(&self, batch: &DecodedBatch) {
        self.observe_at(batch, Instant::now(), SystemTime::now());
    }

    fn observe_at(&self, batch: &DecodedBatch, now: Instant, wall: SystemTime) {
        let mut counted: HashMap<Key, u64> = HashMap::new();
        for log in &batch.logs {
            let record = batch.record(log);
            let Ok(peek) = serde_json::from_slice::<Peek>(&record) else {
                continue;
            };
            let stream = match peek.stream {
                Some("stderr") => "stderr",
                Some("stdout") => "stdout",
                _ => "unknown",
            };
            let level = fold_level(peek.log.as_ref().and_then(|l| l.level.as_deref()));
            let kubernetes = peek.kubernetes.as_ref();
            let key = Key {
                host: batch.header.host.clone(),
                name: peek
                    .container
                    .and_then(|c| c.name)
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                namespace: kubernetes
                    .and_then(|k| k.namespace.as_deref())
                    .unwrap_or_default()
                    .to_string(),
                pod: kubernetes
                    .and_then(|k| k.pod.as_ref())
                    .and_then(|p| p.name.as_deref())
                    .unwrap_or_default()
                    .to_string(),
                stream,
                level,
            };
            *counted.entry(key).or_default() += 1;
        }
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let seconds = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        state
            .agents
            .insert(batch.header.host.clone(), (seconds, now));
        for (key, n) in counted {
            let full = state.lines.len() >= MAX_SERIES;
            match state.lines.get_mut(&key) {
                Some(entry) => {
                    entry.0 += n;
                    entry.1 = now;
                }
                None if full => state.overflow += n,
                None => {
                    state.lines.insert(key, (n, now));
                }
            }
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
        state
            .lines
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < IDLE_EXPIRY);
        state
            .agents
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < AGENT_EXPIRY);
        let _ = writeln!(out, "# HELP ferry_container_log_lines_total Log lines received, by container, stream and level (trace, debug, info, warn, error, fatal, other, unknown).");
        let _ = writeln!(out, "# TYPE ferry_container_log_lines_total counter");
        let mut lines: Vec<_> = state.lines.iter().collect();
        lines.sort_by(|a, b| {
            (
                &a.0.host,
                &a.0.name,
                &a.0.namespace,
                &a.0.pod,
                a.0.stream,
                a.0.level,
            )
                .cmp(&(
                    &b.0.host,
                    &b.0.name,
                    &b.0.namespace,
                    &b.0.pod,
                    b.0.stream,
                    b.0.level,
                ))
        });
        for (k, (n, _)) in lines {
            let _ = write!(out, "ferry_container_log_lines_total{{host=\"");
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
        let _ = writeln!(
            out,
            "ferry_container_log_lines_overflow_total {}",
            state.overflow
        );
        let _ = writeln!(out, "# HELP ferry_agent_last_batch_timestamp_seconds When the agent's last batch was accepted (Unix time), per agent host.");
        let _ = writeln!(out, "# TYPE ferry_agent_last_batch_timestamp_seconds gauge");
        let mut agents: Vec<_> = state.agents.iter().collect();
        agents.sort_by(|a, b| a.0.cmp(b.0));
        for (host, (t, _)) in agents {
            out.push_str("ferry_agent_last_batch_timestamp_seconds{host=\"");
            escape(out, host);
            let _ = writeln!(out, "\"}} {t:.3}");
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
