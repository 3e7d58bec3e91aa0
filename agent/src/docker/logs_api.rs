//! Containers whose log driver writes no json-file (`local`, `journald`, …) are followed through
//! `GET /containers/<id>/logs?follow&stdout&stderr&timestamps`, one task per container, and their
//! records go through the same forwarder and checkpoint as the tailer's.
//!
//! Identity and replay: each such container is one source with fingerprint `logs-api:<id>`; a
//! record's `log.offset` is its Docker timestamp in nanoseconds, bumped by 1 ns when needed so it
//! strictly increases per source, and its `event.id` hashes container id, timestamp, stream and a
//! per-timestamp sequence. The checkpoint of such a source is the last acknowledged offset; after a
//! restart the follower asks Docker for everything since that second and drops what is at or below
//! it, so delivery stays at-least-once and replays are dropped downstream by id or high-water mark.
//! Docker cuts lines longer than 16 KiB into parts that share one timestamp and arrive without a
//! newline; [`Joiner`] puts them together again (per stream), cut at `max_line_bytes`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptions;
use bollard::Docker;
use chrono::{SecondsFormat, Utc};
use ferry_parsers::{Scratch, Selection};
use ferry_wire::{BatchBuilder, Compression, Flag, Host, LogFile, LogMeta, LogRecord, Stream};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use xxhash_rust::xxh3::xxh3_128;

use super::registry::Registry;
use crate::checkpoint::{Entry, Update};
use crate::metrics::Metrics;
use crate::rules::{parse, ParserKey, Rules, PARSER_LABEL};
use crate::sealed::Sealed;

/// Docker's copier cuts long lines into parts of this size; a part this long without a newline
/// is continued by the next part of the same stream.
const PARTIAL_BYTES: usize = 16 * 1024;
/// Prefix of a logs-API source's fingerprint.
pub(crate) const FINGERPRINT_PREFIX: &str = "logs-api:";

/// The fingerprint of a container's logs-API source.
pub(crate) fn fingerprint(id: &str) -> String {
    format!("{FINGERPRINT_PREFIX}{id}")
}

/// One complete record out of the logs API.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiLine {
    /// Docker's timestamp, as Docker wrote it (RFC 3339, nanoseconds, UTC).
    pub timestamp: String,
    pub stream: Stream,
    pub message: String,
    pub flags: Vec<Flag>,
    pub offset: u64,
    pub event_id: String,
}

#[derive(Debug)]
struct Pending {
    timestamp: String,
    nanos: u64,
    message: Vec<u8>,
    parts: u32,
    truncated: bool,
}

/// Turns the frames of one logs-API stream into records: re-joins parts of long lines, derives
/// offsets and ids. Pure, so it can be tested without Docker.
#[derive(Debug)]
pub(crate) struct Joiner {
    id: String,
    max_line_bytes: usize,
    pending: [Option<Pending>; 2],
    last_offset: u64,
    seq_timestamp: String,
    seq: u32,
}

impl Joiner {
    pub fn new(id: &str, max_line_bytes: usize) -> Self {
        Joiner {
            id: id.to_string(),
            max_line_bytes,
            pending: [None, None],
            last_offset: 0,
            seq_timestamp: String::new(),
            seq: 0,
        }
    }

    /// One frame `"<timestamp> <bytes>"` of `stream`.
    pub fn push(&mut self, stream: Stream, frame: &[u8], out: &mut impl FnMut(ApiLine)) {
        let idx = stream_index(stream);
        let (timestamp, nanos, mut rest) = split_timestamp(frame).unwrap_or_else(|| {
            let now = Utc::now();
            (
                now.to_rfc3339_opts(SecondsFormat::Nanos, true),
                now.timestamp_nanos_opt().unwrap_or(0).max(0) as u64,
                frame,
            )
        });
        if self.pending[idx]
            .as_ref()
            .is_some_and(|p| p.timestamp != timestamp)
        {
            // Parts of one line share a timestamp: a new one means the held line is complete.
            self.finish(idx, stream, out);
        }
        while let Some(i) = memchr::memchr(b'\n', rest) {
            self.append(idx, &timestamp, nanos, &rest[..i]);
            self.finish(idx, stream, out);
            rest = &rest[i + 1..];
        }
        if !rest.is_empty() {
            self.append(idx, &timestamp, nanos, rest);
            if rest.len() != PARTIAL_BYTES {
                // Docker's last part of a long line (or a final line without a newline).
                self.finish(idx, stream, out);
            }
        }
    }

    /// Emits the held parts of both streams (the stream ended).
    pub fn flush(&mut self, out: &mut impl FnMut(ApiLine)) {
        self.finish(0, Stream::Stdout, out);
        self.finish(1, Stream::Stderr, out);
    }

    fn append(&mut self, idx: usize, timestamp: &str, nanos: u64, bytes: &[u8]) {
        let p = self.pending[idx].get_or_insert_with(|| Pending {
            timestamp: timestamp.to_string(),
            nanos,
            message: Vec::new(),
            parts: 0,
            truncated: false,
        });
        p.parts += 1;
        let room = self.max_line_bytes.saturating_sub(p.message.len());
        if bytes.len() > room {
            let cut = crate::decode::utf8_cut(bytes, room);
            p.message.extend_from_slice(&bytes[..cut]);
            p.truncated = true;
        } else {
            p.message.extend_from_slice(bytes);
        }
    }

    fn finish(&mut self, idx: usize, stream: Stream, out: &mut impl FnMut(ApiLine)) {
        let Some(p) = self.pending[idx].take() else {
            return;
        };
        let offset = p.nanos.max(self.last_offset + 1);
        self.last_offset = offset;
        if p.timestamp == self.seq_timestamp {
            self.seq += 1;
        } else {
            self.seq_timestamp.clone_from(&p.timestamp);
            self.seq = 0;
        }
        let mut key = Vec::with_capacity(self.id.len() + p.timestamp.len() + 16);
        for part in [
            self.id.as_bytes(),
            p.timestamp.as_bytes(),
            stream.as_str().as_bytes(),
        ] {
            key.extend_from_slice(part);
            key.push(0);
        }
        key.extend_from_slice(&self.seq.to_le_bytes());
        let mut flags = Vec::new();
        if p.parts > 1 {
            flags.push(Flag::Joined);
        }
        if p.truncated {
            flags.push(Flag::Truncated);
        }
        let message = match String::from_utf8(p.message) {
            Ok(s) => s,
            Err(e) => {
                flags.push(Flag::InvalidUtf8);
                String::from_utf8_lossy(e.as_bytes()).into_owned()
            }
        };
        out(ApiLine {
            timestamp: p.timestamp,
            stream,
            message,
            flags,
            offset,
            event_id: format!("{:032x}", xxh3_128(&key)),
        });
    }
}

fn stream_index(s: Stream) -> usize {
    match s {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

/// `"<RFC 3339> <rest>"` → (timestamp, nanoseconds since the epoch, rest).
fn split_timestamp(frame: &[u8]) -> Option<(String, u64, &[u8])> {
    let space = memchr::memchr(b' ', &frame[..frame.len().min(64)])?;
    let ts = std::str::from_utf8(&frame[..space]).ok()?;
    let parsed = chrono::DateTime::parse_from_rfc3339(ts).ok()?;
    let nanos = u64::try_from(parsed.timestamp_nanos_opt()?).ok()?;
    Some((ts.to_string(), nanos, &frame[space + 1..]))
}

/// What followers hand to the batcher.
#[derive(Debug)]
pub(crate) enum ApiItem {
    Record(Box<LogRecord>),
    /// The container is gone: drop its checkpoint entry (after what came before is acked).
    Forget(String),
}

/// How the batcher seals batches.
#[derive(Debug, Clone)]
pub(crate) struct BatchSettings {
    pub host_name: String,
    pub max_bytes: usize,
    pub max_records: usize,
    pub max_age: Duration,
    pub compression: Compression,
}

/// Collects the followers' records into batches and hands them, with the checkpoint updates they
/// allow, to the forwarder. Ends when every follower is gone (sealing what it holds).
pub(crate) async fn run_batcher(
    s: BatchSettings,
    mut rx: mpsc::Receiver<ApiItem>,
    tx: mpsc::Sender<Sealed>,
) {
    let mut builder = BatchBuilder::new(s.host_name.clone());
    let mut offsets: BTreeMap<String, u64> = BTreeMap::new();
    let mut forget: Vec<String> = Vec::new();
    let mut started: Option<Instant> = None;
    loop {
        let due = started.map(|t| t + s.max_age);
        let item = tokio::select! {
            item = rx.recv() => item,
            _ = sleep_until_opt(due) => {
                if !seal(&s, &mut builder, &mut offsets, &mut forget, &tx).await {
                    return;
                }
                started = None;
                continue;
            }
        };
        match item {
            Some(ApiItem::Record(r)) => {
                builder.push_log(&r);
                offsets.insert(r.log.file.fingerprint.clone(), r.log.offset);
                started.get_or_insert_with(Instant::now);
                if builder.len() >= s.max_records || builder.bytes() >= s.max_bytes {
                    if !seal(&s, &mut builder, &mut offsets, &mut forget, &tx).await {
                        return;
                    }
                    started = None;
                }
            }
            Some(ApiItem::Forget(fp)) => {
                forget.push(fp);
                if !seal(&s, &mut builder, &mut offsets, &mut forget, &tx).await {
                    return;
                }
                started = None;
            }
            None => {
                seal(&s, &mut builder, &mut offsets, &mut forget, &tx).await;
                debug!("Logs-API batcher stopped");
                return;
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sends what is held; `false` when the forwarder is gone.
async fn seal(
    s: &BatchSettings,
    builder: &mut BatchBuilder,
    offsets: &mut BTreeMap<String, u64>,
    forget: &mut Vec<String>,
    tx: &mpsc::Sender<Sealed>,
) -> bool {
    if builder.is_empty() && offsets.is_empty() && forget.is_empty() {
        return true;
    }
    let mut updates: Vec<Update> = std::mem::take(offsets)
        .into_iter()
        .map(|(fp, offset)| {
            let entry = Entry {
                path: fp.clone(),
                dev: 0,
                ino: 0,
                head_hash: String::new(),
                generation: 0,
                offset,
                tail_hash: None,
                finished: false,
            };
            (fp, Some(entry))
        })
        .collect();
    updates.extend(forget.drain(..).map(|fp| (fp, None)));
    let batch = (!builder.is_empty()).then(|| builder.finish(s.compression));
    tx.send(Sealed {
        batch,
        updates,
        register: Vec::new(),
    })
    .await
    .is_ok()
}

/// What every follower shares.
#[derive(Clone)]
pub(crate) struct FollowerCtx {
    pub docker: Docker,
    pub registry: Arc<Registry>,
    pub rules: Arc<Rules>,
    pub tx: mpsc::Sender<ApiItem>,
    pub metrics: Arc<Metrics>,
    pub shutdown: watch::Receiver<bool>,
    pub host_name: String,
    pub max_line_bytes: usize,
    pub retry_max: Duration,
}

/// How a follower is told about its container.
#[derive(Debug, Default)]
pub(crate) struct FollowerSignals {
    /// The container (re)started, or the API came back: open the stream again.
    pub wake: Notify,
    /// The container was destroyed: finish what is readable, then forget the source.
    pub destroyed: AtomicBool,
}

/// Follows one container's logs until it is destroyed or the agent stops. `after` is the
/// checkpointed offset: records at or below it were delivered before.
pub(crate) async fn follow(
    mut ctx: FollowerCtx,
    id: String,
    mut after: u64,
    signals: Arc<FollowerSignals>,
) {
    let fp = fingerprint(&id);
    let mut retry = Duration::from_millis(100);
    let mut warned = false;
    info!(container = %id, resume_after = after, "Following container logs through the Docker API");
    loop {
        if *ctx.shutdown.borrow() {
            return;
        }
        let since = i32::try_from(after / 1_000_000_000).unwrap_or(0);
        let options = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            timestamps: true,
            since,
            ..Default::default()
        };
        let mut stream = ctx.docker.logs(&id, Some(options));
        let mut joiner = Joiner::new(&id, ctx.max_line_bytes);
        let mut template = Template::new(&ctx, &id, &fp);
        let mut scratch = Scratch::new();
        let mut lines = Vec::new();
        let ended: Result<(), bollard::errors::Error> = loop {
            let frame = tokio::select! {
                biased;
                _ = ctx.shutdown.changed() => return,
                frame = stream.next() => frame,
            };
            let (which, bytes) = match frame {
                None => break Ok(()),
                Some(Err(e)) => break Err(e),
                Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                    (Stream::Stdout, message)
                }
                Some(Ok(LogOutput::StdErr { message })) => (Stream::Stderr, message),
                Some(Ok(LogOutput::StdIn { .. })) => continue,
            };
            joiner.push(which, &bytes, &mut |l| lines.push(l));
            if !send_lines(&ctx, &mut template, &mut scratch, &mut lines, &mut after).await {
                return;
            }
        };
        joiner.flush(&mut |l| lines.push(l));
        if !send_lines(&ctx, &mut template, &mut scratch, &mut lines, &mut after).await {
            return;
        }
        let transient = match ended {
            Ok(()) => {
                retry = Duration::from_millis(100);
                warned = false;
                false
            }
            Err(error) => {
                let api_refused = matches!(
                    error,
                    bollard::errors::Error::DockerResponseServerError { .. }
                );
                if !warned {
                    warn!(container = %id, %error, "Reading container logs through the Docker API failed");
                    warned = true;
                }
                !api_refused
            }
        };
        if signals.destroyed.load(Relaxed) {
            break;
        }
        let wait = if transient {
            retry
        } else {
            Duration::from_secs(3600)
        };
        tokio::select! {
            _ = signals.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = ctx.shutdown.changed() => return,
        }
        if transient {
            retry = (retry * 2).min(ctx.retry_max);
        }
    }
    debug!(container = %id, "Container destroyed; its logs-API source is forgotten");
    let _ = ctx.tx.send(ApiItem::Forget(fp)).await;
}

/// The per-container part of every record and its parser rules, refreshed when the registry or
/// the rules change. (Multiline rules are not applied to logs-API sources: their lines are
/// parsed one by one.)
struct Template {
    record: LogRecord,
    version: u64,
    rules_version: u64,
    selection: Selection,
    id: String,
}

impl Template {
    fn new(ctx: &FollowerCtx, id: &str, fp: &str) -> Self {
        let mut t = Template {
            record: LogRecord {
                log: LogMeta {
                    file: LogFile {
                        path: fp.to_string(),
                        fingerprint: fp.to_string(),
                    },
                    ..Default::default()
                },
                host: Host {
                    name: ctx.host_name.clone(),
                },
                ..Default::default()
            },
            version: u64::MAX,
            rules_version: u64::MAX,
            selection: ctx
                .rules
                .select(&ctx.rules.current(), &ParserKey::default()),
            id: id.to_string(),
        };
        t.refresh(&ctx.registry, &ctx.rules);
        t
    }

    fn refresh(&mut self, registry: &Registry, rules: &Rules) {
        let (v, rv) = (registry.version(), rules.version());
        if v == self.version && rv == self.rules_version {
            return;
        }
        if v != self.version {
            self.version = v;
            self.record.container.id = Some(self.id.clone());
            registry.enrich(
                &self.id,
                &mut self.record.container,
                &mut self.record.kubernetes,
            );
        }
        self.rules_version = rv;
        let key = ParserKey {
            label: registry
                .get(&self.id)
                .and_then(|m| m.labels.get(PARSER_LABEL).cloned()),
            image: self.record.container.image.name.clone(),
        };
        self.selection = rules.select(&rules.current(), &key);
    }
}

/// Sends the lines above `after` as records; `false` when the batcher is gone.
async fn send_lines(
    ctx: &FollowerCtx,
    template: &mut Template,
    scratch: &mut Scratch,
    lines: &mut Vec<ApiLine>,
    after: &mut u64,
) -> bool {
    if lines.is_empty() {
        return true;
    }
    template.refresh(&ctx.registry, &ctx.rules);
    for line in lines.drain(..) {
        if line.offset <= *after {
            continue;
        }
        *after = line.offset;
        ctx.metrics.lines_read.fetch_add(1, Relaxed);
        ctx.metrics
            .bytes_read
            .fetch_add(line.message.len() as u64, Relaxed);
        if line.flags.contains(&Flag::Truncated) {
            ctx.metrics.lines_truncated.fetch_add(1, Relaxed);
        }
        let mut record = template.record.clone();
        record.event.id = line.event_id;
        record.timestamp = line.timestamp;
        record.message = line.message;
        record.stream = Some(line.stream);
        record.log.offset = line.offset;
        record.log.flags = line.flags;
        parse(&mut record, &template.selection, scratch);
        if ctx
            .tx
            .send(ApiItem::Record(Box::new(record)))
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(j: &mut Joiner, frames: &[(Stream, &str)]) -> Vec<ApiLine> {
        let mut out = Vec::new();
        for (s, f) in frames {
            j.push(*s, f.as_bytes(), &mut |l| out.push(l));
        }
        out
    }

    #[test]
    fn offsets_strictly_increase_and_ids_differ_for_equal_timestamps() {
        let mut j = Joiner::new("c1", 1 << 20);
        let ts = "2026-11-28T09:10:26.000000005Z";
        let out = run(
            &mut j,
            &[
                (Stream::Stdout, &format!("{ts} a\n")),
                (Stream::Stderr, &format!("{ts} b\n")),
                (Stream::Stdout, &format!("{ts} a\n")),
                (Stream::Stdout, "2026-11-28T09:10:26.000000006Z c\n"),
            ],
        );
        let offsets: Vec<u64> = out.iter().map(|l| l.offset).collect();
        let base = chrono::DateTime::parse_from_rfc3339(ts)
            .unwrap()
            .timestamp_nanos_opt()
            .unwrap() as u64;
        assert_eq!(offsets, [base, base + 1, base + 2, base + 3]);
        let mut ids: Vec<&str> = out.iter().map(|l| l.event_id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 4);
        assert_eq!(out[1].stream, Stream::Stderr);
        assert_eq!(out[3].message, "c");

        // The same frames again give the same ids and offsets (replays dedupe downstream).
        let mut again = Joiner::new("c1", 1 << 20);
        let out2 = run(
            &mut again,
            &[
                (Stream::Stdout, &format!("{ts} a\n")),
                (Stream::Stderr, &format!("{ts} b\n")),
                (Stream::Stdout, &format!("{ts} a\n")),
                (Stream::Stdout, "2026-11-28T09:10:26.000000006Z c\n"),
            ],
        );
        assert_eq!(out, out2);
    }

    #[test]
    fn long_lines_cut_by_docker_are_joined_per_stream_and_capped() {
        let ts = "2026-11-28T09:10:26.356459805Z";
        let part1 = "a".repeat(PARTIAL_BYTES);
        let part2 = "a".repeat(3616);
        let frames = [
            (Stream::Stdout, format!("{ts} {part1}")),
            (
                Stream::Stderr,
                "2026-11-28T09:10:26.356836034Z err\n".to_string(),
            ),
            // Docker 20.10's local driver: the last part has no newline either.
            (Stream::Stdout, format!("{ts} {part2}")),
            (Stream::Stdout, "2026-11-28T09:10:27Z next\n".to_string()),
        ];
        let frames: Vec<(Stream, &str)> = frames.iter().map(|(s, f)| (*s, f.as_str())).collect();
        let out = run(&mut Joiner::new("c", 1 << 20), &frames);
        let msgs: Vec<usize> = out.iter().map(|l| l.message.len()).collect();
        assert_eq!(msgs, [3, 20000, 4]);
        assert_eq!(out[1].flags, [Flag::Joined]);
        assert!(out[0].offset < out[1].offset && out[1].offset < out[2].offset);

        let out = run(&mut Joiner::new("c", 10_000), &frames);
        assert_eq!(out[1].message.len(), 10_000);
        assert_eq!(out[1].flags, [Flag::Joined, Flag::Truncated]);

        // A held part is emitted when the stream ends.
        let mut j = Joiner::new("c", 1 << 20);
        let out = run(&mut j, &frames[..1]);
        assert!(out.is_empty());
        let mut rest = Vec::new();
        j.flush(&mut |l| rest.push(l));
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].message.len(), PARTIAL_BYTES);
    }
}
