//! Record building: decoded lines become records in the open batch. A [`Group`] is what the files
//! of one log path share (the record template, the parser selection, the multiline joiners); the
//! [`Batcher`] owns the open batch and what filling it needs. A record's identity (`event.id`,
//! `log.offset`, `log.file.*`) is set here and nowhere else.
//!
//! The batcher is a field of the tailer of its own, not a bundle of borrows of the tailer's
//! fields: a method can lend it together with one file and one group (disjoint fields).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use ferry_parsers::{Scratch, Selection};
use ferry_wire::{BatchBuilder, Flag, Host, LogRecord};

use super::file::{Source, TailedFile};
use crate::decode::{Decoded, Flags};
use crate::enrich::Found;
use crate::metrics::{DecodeError, Metrics};
use crate::multiline::{Assembler, Event, Piece, SourceRef};
use crate::rules::{parse_into, ParserKey, Rules};

/// What the files found at one log path share (see the module docs). A file belongs to the group
/// of the path it was first found at, for as long as it is open.
pub(super) struct Group {
    /// Open files of this group.
    pub(super) files: usize,
    /// `container.*`, `kubernetes.*` and `host.*` of its records; reused for every record.
    pub(super) record: LogRecord,
    pub(super) parser: ParserKey,
    pub(super) selection: Selection,
    /// When the selection has a multiline rule.
    pub(super) assembler: Option<Assembler>,
}

impl Group {
    pub(super) fn new(found: Found, host_name: &str, rules: &Rules) -> Self {
        let selection = rules.select(&rules.current(), &found.parser);
        Group {
            files: 0,
            record: LogRecord {
                container: found.container,
                kubernetes: found.kubernetes,
                host: Host {
                    name: host_name.to_string(),
                },
                ..Default::default()
            },
            parser: found.parser,
            assembler: Assembler::new(&selection),
            selection,
        }
    }

    /// Passes on everything its joiners hold.
    pub(super) fn flush(&mut self, out: &mut Batcher) {
        let Group {
            record,
            selection,
            assembler,
            ..
        } = self;
        if let Some(a) = assembler {
            a.flush(&mut |e| out.push_event(record, selection, e));
        }
    }

    /// Switches to `selection`, passing on what the old joiners held first.
    pub(super) fn reselect(&mut self, selection: Selection, out: &mut Batcher) {
        self.flush(out);
        self.assembler = Assembler::new(&selection);
        self.selection = selection;
    }

    /// The first offset of `source` the joiners hold (see [`Assembler::hold`]).
    pub(super) fn hold(&self, source: &Source) -> Option<u64> {
        self.assembler
            .as_ref()
            .and_then(|a| a.hold(&source.r.fingerprint))
    }
}

/// The open batch and what filling it needs: records go in here, and the tailer seals it.
pub(super) struct Batcher {
    pub(super) builder: BatchBuilder,
    /// When the first record of the open batch went in.
    pub(super) started: Option<Instant>,
    scratch: Scratch,
    metrics: Arc<Metrics>,
    max_bytes: usize,
    max_records: usize,
}

impl Batcher {
    pub(super) fn new(
        host_name: String,
        max_bytes: usize,
        max_records: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Batcher {
            builder: BatchBuilder::new(host_name),
            started: None,
            scratch: Scratch::new(),
            metrics,
            max_bytes,
            max_records,
        }
    }

    /// The open batch reached `batch_max_bytes` or `batch_max_records`.
    pub(super) fn full(&self) -> bool {
        self.builder.bytes() >= self.max_bytes || self.builder.len() >= self.max_records
    }

    /// Takes one decoded record of `source` (a file of `g`): into the batch, or into the joiners.
    /// A record without a timestamp of its own gets `read_time`.
    pub(super) fn accept(
        &mut self,
        g: &mut Group,
        source: &Arc<SourceRef>,
        d: Decoded<'_>,
        read_time: &str,
    ) {
        for (flag, kind) in [
            (Flag::MalformedJson, DecodeError::MalformedJson),
            (Flag::MalformedCri, DecodeError::MalformedCri),
            (Flag::InvalidUtf8, DecodeError::InvalidUtf8),
        ] {
            if d.flags.contains(flag) {
                self.metrics.decode_error(kind);
            }
        }
        let timestamp = d.timestamp.as_deref().unwrap_or(read_time);
        let Group {
            record,
            selection,
            assembler,
            ..
        } = g;
        match assembler {
            None => {
                match d.message {
                    std::borrow::Cow::Owned(s) => record.message = s,
                    std::borrow::Cow::Borrowed(s) => {
                        record.message.clear();
                        record.message.push_str(s);
                    }
                }
                record.timestamp.clear();
                record.timestamp.push_str(timestamp);
                record.stream = d.stream;
                record.log.flags.clear();
                record.log.flags.extend(d.flags.iter());
                self.push(record, selection, source, d.offset);
            }
            Some(a) => {
                let piece = Piece {
                    source,
                    start: d.start,
                    offset: d.offset,
                    text: d.message.into_owned(),
                    timestamp,
                    stream: d.stream,
                    flags: d.flags,
                };
                a.push(piece, Instant::now(), &mut |e| {
                    self.push_event(record, selection, e);
                });
            }
        }
    }

    /// Puts an event passed on by the joiners into the batch.
    pub(super) fn push_event(&mut self, record: &mut LogRecord, selection: &Selection, e: Event) {
        record.message = e.text;
        record.timestamp = e.timestamp;
        record.stream = e.stream;
        record.log.flags.clear();
        record.log.flags.extend(e.flags.iter());
        self.push(record, selection, &e.source, e.offset);
    }

    /// Completes `record` (message, timestamp, stream and flags are set) with its identity,
    /// parses it and pushes it into the batch.
    fn push(
        &mut self,
        record: &mut LogRecord,
        selection: &Selection,
        source: &SourceRef,
        offset: u64,
    ) {
        // Empty: the id derived from fingerprint and offset, which a version 3 batch leaves out
        // (the aggregator derives it; written out for older versions).
        record.event.id.clear();
        self.scratch.unset_created(record);
        record.log.file.fingerprint.clone_from(&source.fingerprint);
        record.log.file.path.clone_from(&source.path);
        record.log.offset = offset;
        record.log.level = None;
        record.fields.clear();
        parse_into(&mut self.builder, record, selection, &mut self.scratch);
        if self.started.is_none() {
            self.started = Some(Instant::now());
        }
    }

    /// Counts and decodes one line of `f` (a file of `g`); what it completes goes on to
    /// [`Batcher::accept`].
    pub(super) fn line(
        &mut self,
        f: &mut TailedFile,
        g: &mut Group,
        line: &[u8],
        offset: u64,
        flags: Flags,
        read_time: &str,
    ) {
        self.metrics.lines_read.fetch_add(1, Relaxed);
        if flags.contains(Flag::Truncated) {
            self.metrics.lines_truncated.fetch_add(1, Relaxed);
        }
        let TailedFile {
            decoder, source, ..
        } = f;
        let Some(source) = source else { return };
        decoder.push_line(line, offset, flags, |d| {
            self.accept(g, &source.r, d, read_time)
        });
    }
}
