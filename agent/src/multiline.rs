//! Multiline joining for one log path: a [`MultilineJoiner`] per stream (stdout, stderr, and one
//! for lines without a stream: plain files and malformed lines), the metadata of the lines they
//! hold, and a small reorder buffer that keeps the delivery promise.
//!
//! The promise: records of one fingerprint leave in strictly increasing `log.offset` order, and a
//! joined event's offset is the offset of its last line. The joiners of two streams release
//! independently, so an event can come out while another stream still holds an event that will
//! end *before* it. The rule: **an event leaves only when no joiner holds a pending event of the
//! same fingerprint whose last line is before the event's offset**; until then it waits here.
//! A pending event that is extended gets a later last line, so it stops blocking; one that is
//! released comes out first. Waiting is bounded by the joiners' `flush_timeout_ms` and, under a
//! flood, by [`READY_MAX_EVENTS`] / [`READY_MAX_BYTES`]: past those the blocking pending events
//! are passed on early (they may be cut).
//!
//! For checkpoints, [`Assembler::hold`] is the start of the first line of a fingerprint that is
//! held or waiting: a restart resumes there and rebuilds the same events with the same ids.
//! Lines may come from several files of one path (a trace split by a rename rotation): every
//! line remembers its source, an event takes the fingerprint of its last line. Nothing here
//! reads files or builds batches.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use ferry_parsers::{Joined, Line, MultilineJoiner, Selection};
use ferry_wire::{Flag, Stream};
use tracing::{debug, error};

use crate::decode::Flags;

/// Most events waiting in the reorder buffer of one path before blocking events are cut.
pub(crate) const READY_MAX_EVENTS: usize = 4096;
/// Most message bytes waiting in the reorder buffer of one path before blocking events are cut.
pub(crate) const READY_MAX_BYTES: usize = 16 << 20;

/// One generation of a file: what a record's `log.file.*` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceRef {
    pub fingerprint: String,
    pub path: String,
}

/// One decoded record handed to the joiners.
#[derive(Debug)]
pub(crate) struct Piece<'a> {
    pub source: &'a Arc<SourceRef>,
    /// Offset of its first line (of its first part for a joined partial message).
    pub start: u64,
    /// Its identity offset (the line that completed it).
    pub offset: u64,
    pub text: String,
    pub timestamp: &'a str,
    pub stream: Option<Stream>,
    pub flags: Flags,
}

/// The metadata of a line held by a joiner.
#[derive(Debug)]
struct Held {
    source: Arc<SourceRef>,
    start: u64,
    offset: u64,
    timestamp: String,
    stream: Option<Stream>,
    flags: Flags,
}

/// One record passed on: one line, or several joined.
#[derive(Debug)]
pub(crate) struct Event {
    /// The source of its last line (its identity).
    pub source: Arc<SourceRef>,
    /// Offset of its last line.
    pub offset: u64,
    pub text: String,
    /// Timestamp and stream of its first line.
    pub timestamp: String,
    pub stream: Option<Stream>,
    /// Every line's flags, plus `multiline` when lines were joined.
    pub flags: Flags,
    /// For each source it has lines of, the start of its first such line.
    holds: Vec<(Arc<SourceRef>, u64)>,
}

/// The joiners of one log path. See the module docs.
#[derive(Debug)]
pub(crate) struct Assembler {
    joiners: [MultilineJoiner; 3],
    held: [VecDeque<Held>; 3],
    ready: Vec<Event>,
    ready_bytes: usize,
}

fn slot(stream: Option<Stream>) -> usize {
    match stream {
        Some(Stream::Stdout) => 0,
        Some(Stream::Stderr) => 1,
        None => 2,
    }
}

impl Assembler {
    /// `None` when the selection has no multiline rule.
    pub fn new(selection: &Selection) -> Option<Self> {
        Some(Assembler {
            joiners: [
                selection.joiner()?,
                selection.joiner()?,
                selection.joiner()?,
            ],
            held: Default::default(),
            ready: Vec::new(),
            ready_bytes: 0,
        })
    }

    /// Takes the next record of its stream; passes on what may leave.
    pub fn push(&mut self, piece: Piece<'_>, now: Instant, out: &mut impl FnMut(Event)) {
        let slot = slot(piece.stream);
        self.held[slot].push_back(Held {
            source: Arc::clone(piece.source),
            start: piece.start,
            offset: piece.offset,
            timestamp: piece.timestamp.to_string(),
            stream: piece.stream,
            flags: piece.flags,
        });
        let line = Line {
            text: piece.text,
            offset: piece.offset,
            at: now,
        };
        for joined in self.joiners[slot].push(line) {
            self.release(slot, joined);
        }
        if self.ready.len() > READY_MAX_EVENTS || self.ready_bytes > READY_MAX_BYTES {
            debug!(
                events = self.ready.len(),
                bytes = self.ready_bytes,
                "Multiline reorder buffer full; passing on the pending events"
            );
            self.flush_joiners();
        }
        self.drain(out);
    }

    /// Passes on pending events whose flush timeout passed.
    pub fn flush_expired(&mut self, now: Instant, out: &mut impl FnMut(Event)) {
        for slot in 0..3 {
            if let Some(joined) = self.joiners[slot].flush_expired(now) {
                self.release(slot, joined);
            }
        }
        self.drain(out);
    }

    /// Passes on everything (the path's last file is gone, the rules changed).
    pub fn flush(&mut self, out: &mut impl FnMut(Event)) {
        self.flush_joiners();
        self.drain(out);
    }

    fn flush_joiners(&mut self) {
        for slot in 0..3 {
            if let Some(joined) = self.joiners[slot].flush() {
                self.release(slot, joined);
            }
        }
    }

    /// When the next pending event is due for [`Assembler::flush_expired`].
    pub fn next_deadline(&self) -> Option<Instant> {
        self.joiners.iter().filter_map(|j| j.next_deadline()).min()
    }

    /// The start of the first line of `fingerprint` held by a joiner or waiting to leave: a
    /// checkpoint of that source must not pass it.
    pub fn hold(&self, fingerprint: &str) -> Option<u64> {
        let held = self
            .held
            .iter()
            .filter_map(|h| h.iter().find(|h| h.source.fingerprint == fingerprint))
            .map(|h| h.start);
        let ready = self
            .ready
            .iter()
            .flat_map(|e| e.holds.iter())
            .filter(|(s, _)| s.fingerprint == fingerprint)
            .map(|(_, start)| *start);
        held.chain(ready).min()
    }

    /// Whether nothing is held or waiting.
    #[cfg(test)]
    pub fn is_idle(&self) -> bool {
        self.ready.is_empty() && self.held.iter().all(VecDeque::is_empty)
    }

    /// Turns a joiner's output into an event waiting in the reorder buffer.
    fn release(&mut self, slot: usize, joined: Joined) {
        let held = &mut self.held[slot];
        if held.len() < joined.lines {
            // The joiner passes on exactly the lines it was given, in order.
            error!(
                lines = joined.lines,
                held = held.len(),
                "Multiline bookkeeping lost track of lines"
            );
        }
        let Some(first) = held.pop_front() else {
            return;
        };
        let mut flags = first.flags;
        if joined.lines > 1 {
            flags.set(Flag::Multiline);
        }
        let mut holds = vec![(Arc::clone(&first.source), first.start)];
        let mut last_source = Arc::clone(&first.source);
        let mut last_offset = first.offset;
        for _ in 1..joined.lines {
            let Some(h) = held.pop_front() else { break };
            flags = flags.union(h.flags);
            if h.source.fingerprint != last_source.fingerprint {
                holds.push((Arc::clone(&h.source), h.start));
            }
            last_source = h.source;
            last_offset = h.offset;
        }
        debug_assert_eq!(last_offset, joined.last_offset);
        self.ready_bytes += joined.text.len();
        self.ready.push(Event {
            source: last_source,
            offset: last_offset,
            text: joined.text,
            timestamp: first.timestamp,
            stream: first.stream,
            flags,
            holds,
        });
    }

    /// Passes on, per fingerprint in offset order, every waiting event no pending event blocks.
    fn drain(&mut self, out: &mut impl FnMut(Event)) {
        if self.ready.is_empty() {
            return;
        }
        if self.ready.len() > 1 {
            self.ready.sort_by(|a, b| {
                (a.source.fingerprint.as_str(), a.offset)
                    .cmp(&(b.source.fingerprint.as_str(), b.offset))
            });
        }
        let held = &self.held;
        // The last line of each pending event: an event of that source after it must wait.
        let blocked = |e: &Event| {
            held.iter().filter_map(VecDeque::back).any(|last| {
                last.offset < e.offset && last.source.fingerprint == e.source.fingerprint
            })
        };
        let mut waiting = Vec::new();
        for e in std::mem::take(&mut self.ready) {
            if blocked(&e) {
                waiting.push(e);
            } else {
                self.ready_bytes -= e.text.len();
                out(e);
            }
        }
        self.ready = waiting;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_parsers::RuleSet;

    fn source(fp: &str) -> Arc<SourceRef> {
        Arc::new(SourceRef {
            fingerprint: fp.into(),
            path: "/logs/app.log".into(),
        })
    }

    fn java() -> Assembler {
        Assembler::new(&RuleSet::builtin().select(Some("java_exception"), None)).unwrap()
    }

    struct Feed {
        a: Assembler,
        offset: u64,
        out: Vec<Event>,
    }

    impl Feed {
        fn push(&mut self, src: &Arc<SourceRef>, stream: Stream, text: &str) -> u64 {
            let offset = self.offset;
            self.offset += text.len() as u64 + 1;
            let out = &mut self.out;
            self.a.push(
                Piece {
                    source: src,
                    start: offset,
                    offset,
                    text: text.into(),
                    timestamp: "2026-11-28T08:00:00Z",
                    stream: Some(stream),
                    flags: Flags::default(),
                },
                Instant::now(),
                &mut |e| out.push(e),
            );
            offset
        }
    }

    #[test]
    fn interleaved_streams_leave_in_offset_order_and_hold_the_checkpoint() {
        let src = source("fp");
        let mut f = Feed {
            a: java(),
            offset: 0,
            out: Vec::new(),
        };
        let (o, e) = (Stream::Stdout, Stream::Stderr);
        let t0 = f.push(&src, o, "java.lang.IllegalStateException: out");
        let last = f.push(&src, o, "\tat a.B.c(B.java:1)");
        f.push(&src, e, "plain err 1");
        f.push(&src, e, "plain err 2"); // releases err 1, which is after the trace's last line
        assert!(f.out.is_empty(), "err 1 waits for the pending trace");
        assert_eq!(f.a.hold("fp"), Some(t0));
        assert_eq!(f.a.hold("other"), None);
        f.push(&src, o, "after the trace"); // releases the trace, then err 1 may go
        let msgs: Vec<&str> = f.out.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(
            msgs,
            [
                "java.lang.IllegalStateException: out\n\tat a.B.c(B.java:1)",
                "plain err 1"
            ]
        );
        assert_eq!(f.out[0].offset, last);
        assert!(f.out[0].flags.contains(Flag::Multiline));
        assert!(!f.out[1].flags.contains(Flag::Multiline));
        assert_eq!(f.out[0].stream, Some(Stream::Stdout));
        f.a.flush(&mut |e| f.out.push(e));
        assert_eq!(f.out.len(), 4);
        assert!(f.out.windows(2).all(|w| w[0].offset < w[1].offset));
        assert!(f.a.is_idle());
        assert_eq!(f.a.hold("fp"), None);
    }

    #[test]
    fn an_event_spanning_two_files_takes_the_last_files_identity() {
        let (old, new) = (source("old"), source("new"));
        let mut f = Feed {
            a: java(),
            offset: 1000,
            out: Vec::new(),
        };
        let first = f.push(&old, Stream::Stdout, "java.lang.RuntimeException: x");
        f.push(&old, Stream::Stdout, "\tat a.B.c(B.java:1)");
        f.offset = 0;
        f.push(&new, Stream::Stdout, "\tat a.B.d(B.java:2)");
        assert_eq!(f.a.hold("old"), Some(first));
        assert_eq!(f.a.hold("new"), Some(0));
        f.a.flush(&mut |e| f.out.push(e));
        assert_eq!(f.out.len(), 1);
        assert_eq!(f.out[0].source.fingerprint, "new");
        assert_eq!(f.out[0].offset, 0);
        assert_eq!(f.out[0].text.lines().count(), 3);
    }
}
