//! Joins the lines of one stack trace (or any multi-line message) into one event.
//!
//! A [`MultilineJoiner`] is plain state the agent drives: it holds no thread and no timer. The
//! caller keeps one joiner per (source, stream) so stdout and stderr never mix, pushes lines in
//! file order, asks [`MultilineJoiner::flush_expired`] when [`MultilineJoiner::next_deadline`]
//! passes, and calls [`MultilineJoiner::flush`] at shutdown. After a rotation the caller keeps
//! pushing into the same joiner, so a trace split across the two files is still one event.
//!
//! How a line is classified (documented defaults in [`MultilineConfig`]):
//! - while an event is pending, a line **continues** it when it matches `continuation` (inverted
//!   by `negate`); when only `start` is configured, every line that does not match `start`
//!   continues it. A line matching `end` is appended too, and completes the event at once;
//! - any other line completes the pending event and is looked at afresh: it may begin a new event
//!   when it matches `start` (or when there is no `start`); otherwise it is passed on alone at
//!   once, so ordinary lines of a container are not delayed;
//! - an event never holds more than `max_lines` lines or `max_bytes` bytes: at the limit it is
//!   passed on with [`Joined::split`] set and the next line begins the rest.
//!
//! Offsets, for checkpoints: [`MultilineJoiner::pending_start_offset`] is the offset of the first
//! line still held (nothing at or after it has been passed on), and a [`Joined`] carries the
//! offset of its first line and of the line that completed it (its identity offset).

use std::sync::Arc;
use std::time::{Duration, Instant};

use regex::Regex;
use serde::Deserialize;

/// A `[rule.multiline]` block (or an agent-level multiline setting), as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultilineConfig {
    /// Regex for the first line of an event (e.g. `^Traceback \(most recent call last\):`).
    /// Without it, any line may begin an event. Default: none.
    #[serde(default)]
    pub start: Option<String>,
    /// Regex for the lines that belong to the pending event (e.g. `^\s+at `). Default: none
    /// (then every line not matching `start` continues the event).
    #[serde(default)]
    pub continuation: Option<String>,
    /// Inverts `continuation`: lines that do NOT match it continue the event. Default: false.
    #[serde(default)]
    pub negate: bool,
    /// Regex for a line that completes the event at once (Python's final `ValueError: …` line).
    /// Default: none.
    #[serde(default)]
    pub end: Option<String>,
    /// Most lines in one event; at the limit the event is passed on, split. Default: 500.
    #[serde(default = "default_max_lines")]
    pub max_lines: usize,
    /// Most bytes in one event (lines plus the `\n` between them). Default: 1 MiB.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// A pending event is passed on this long after its last line arrived. Default: 1000 ms.
    #[serde(default = "default_flush_timeout_ms")]
    pub flush_timeout_ms: u64,
}

const fn default_max_lines() -> usize {
    500
}

const fn default_max_bytes() -> usize {
    1024 * 1024
}

const fn default_flush_timeout_ms() -> u64 {
    1000
}

impl Default for MultilineConfig {
    fn default() -> Self {
        MultilineConfig {
            start: None,
            continuation: None,
            negate: false,
            end: None,
            max_lines: default_max_lines(),
            max_bytes: default_max_bytes(),
            flush_timeout_ms: default_flush_timeout_ms(),
        }
    }
}

impl MultilineConfig {
    /// Compiles the patterns and checks the limits; the error names the offending setting.
    pub fn compile(&self) -> Result<Multiline, String> {
        let compile = |what: &str, p: &Option<String>| -> Result<Option<Regex>, String> {
            p.as_deref()
                .map(|p| Regex::new(p).map_err(|e| format!("`{what}` does not compile: {e}")))
                .transpose()
        };
        let start = compile("start", &self.start)?;
        let continuation = compile("continuation", &self.continuation)?;
        let end = compile("end", &self.end)?;
        if start.is_none() && continuation.is_none() {
            return Err("needs `start` or `continuation`".into());
        }
        if self.negate && continuation.is_none() {
            return Err("`negate` applies to `continuation`, which is not set".into());
        }
        if self.max_lines == 0 || self.max_bytes == 0 {
            return Err("`max_lines` and `max_bytes` must be at least 1".into());
        }
        Ok(Multiline(Arc::new(Compiled {
            start,
            continuation,
            negate: self.negate,
            end,
            max_lines: self.max_lines,
            max_bytes: self.max_bytes,
            flush_timeout: Duration::from_millis(self.flush_timeout_ms),
        })))
    }
}

#[derive(Debug)]
struct Compiled {
    start: Option<Regex>,
    continuation: Option<Regex>,
    negate: bool,
    end: Option<Regex>,
    max_lines: usize,
    max_bytes: usize,
    flush_timeout: Duration,
}

/// A compiled multiline setting: cheap to clone, makes joiners.
#[derive(Debug, Clone)]
pub struct Multiline(Arc<Compiled>);

impl Multiline {
    /// A fresh joiner (one per source and stream).
    pub fn joiner(&self) -> MultilineJoiner {
        MultilineJoiner {
            rules: Arc::clone(&self.0),
            pending: None,
        }
    }

    /// How long a pending event waits for its next line.
    pub fn flush_timeout(&self) -> Duration {
        self.0.flush_timeout
    }
}

/// One line handed to a joiner: its text without the line end, its byte offset in the source,
/// and when it was read.
#[derive(Debug, Clone)]
pub struct Line {
    pub text: String,
    pub offset: u64,
    pub at: Instant,
}

/// One event passed on by a joiner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The lines, separated by `\n`.
    pub text: String,
    /// Offset of the first line.
    pub first_offset: u64,
    /// Offset of the line that completed the event (its last line): the record's identity offset.
    pub last_offset: u64,
    /// How many lines were joined (1 for a line passed on alone).
    pub lines: usize,
    /// The event reached `max_lines` or `max_bytes`; its rest follows as the next event.
    pub split: bool,
}

impl Joined {
    /// Whether more than one line was joined (the agent's `log.flags: ["multiline"]`).
    pub fn is_multiline(&self) -> bool {
        self.lines > 1
    }
}

/// What one [`MultilineJoiner::push`] passed on: zero, one or two events, oldest first.
#[derive(Debug, Default)]
pub struct Pushed {
    events: [Option<Joined>; 2],
    next: usize,
}

impl Pushed {
    fn add(&mut self, joined: Option<Joined>) {
        // Two slots are always enough: a push completes at most the pending event and the line.
        if let Some(slot) = self.events.iter_mut().find(|e| e.is_none()) {
            *slot = joined;
        }
    }
}

impl Iterator for Pushed {
    type Item = Joined;

    fn next(&mut self) -> Option<Joined> {
        while self.next < self.events.len() {
            self.next += 1;
            if let Some(e) = self.events[self.next - 1].take() {
                return Some(e);
            }
        }
        None
    }
}

#[derive(Debug)]
struct Pending {
    text: String,
    first_offset: u64,
    last_offset: u64,
    lines: usize,
    last_at: Instant,
}

impl Pending {
    fn into_joined(self, split: bool) -> Joined {
        Joined {
            text: self.text,
            first_offset: self.first_offset,
            last_offset: self.last_offset,
            lines: self.lines,
            split,
        }
    }
}

/// Joins the lines of one (source, stream). See the module docs for the rules.
#[derive(Debug)]
pub struct MultilineJoiner {
    rules: Arc<Compiled>,
    pending: Option<Pending>,
}

impl MultilineJoiner {
    /// Takes the next line of this source and stream; returns the events it completed.
    pub fn push(&mut self, line: Line) -> Pushed {
        let mut out = Pushed::default();
        let rules = Arc::clone(&self.rules);
        let Some(pending) = self.pending.as_mut() else {
            self.begin(line, &mut out, false);
            return out;
        };
        let continues = match &rules.continuation {
            Some(c) => c.is_match(&line.text) != rules.negate,
            None => !rules.start.as_ref().is_some_and(|s| s.is_match(&line.text)),
        };
        let ends = rules.end.as_ref().is_some_and(|e| e.is_match(&line.text));
        if !continues && !ends {
            out.add(self.take(false));
            self.begin(line, &mut out, false);
            return out;
        }
        let fits = pending.lines < rules.max_lines
            && pending.text.len() + 1 + line.text.len() <= rules.max_bytes;
        if !fits {
            out.add(self.take(true));
            self.begin(line, &mut out, true);
            return out;
        }
        pending.text.push('\n');
        pending.text.push_str(&line.text);
        pending.lines += 1;
        pending.last_offset = line.offset;
        pending.last_at = line.at;
        if ends {
            out.add(self.take(false));
        }
        out
    }

    /// Looks at a line with nothing pending: hold it, or pass it on alone at once.
    /// `resumed` is set for the first line after a split (it continues an event, so `start`
    /// does not apply).
    fn begin(&mut self, line: Line, out: &mut Pushed, resumed: bool) {
        let rules = &self.rules;
        let can_start = resumed || rules.start.as_ref().is_none_or(|s| s.is_match(&line.text));
        let ends = rules.end.as_ref().is_some_and(|e| e.is_match(&line.text));
        let pending = Pending {
            first_offset: line.offset,
            last_offset: line.offset,
            lines: 1,
            last_at: line.at,
            text: line.text,
        };
        let hold =
            can_start && !ends && rules.max_lines > 1 && pending.text.len() < rules.max_bytes;
        if hold {
            self.pending = Some(pending);
        } else {
            out.add(Some(pending.into_joined(false)));
        }
    }

    fn take(&mut self, split: bool) -> Option<Joined> {
        self.pending.take().map(|p| p.into_joined(split))
    }

    /// Passes on the pending event if its last line arrived `flush_timeout` or more before `now`.
    pub fn flush_expired(&mut self, now: Instant) -> Option<Joined> {
        let deadline = self.next_deadline()?;
        if now >= deadline {
            self.take(false)
        } else {
            None
        }
    }

    /// When the pending event (if any) will be due for [`MultilineJoiner::flush_expired`].
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .as_ref()
            .map(|p| p.last_at + self.rules.flush_timeout)
    }

    /// Passes on the pending event whatever its age (shutdown, source gone for good).
    pub fn flush(&mut self) -> Option<Joined> {
        self.take(false)
    }

    /// Offset of the first line still held: a checkpoint must not move past it.
    pub fn pending_start_offset(&self) -> Option<u64> {
        self.pending.as_ref().map(|p| p.first_offset)
    }

    /// Lines held right now (never more than `max_lines`).
    pub fn pending_lines(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.lines)
    }

    /// Bytes held right now (never more than `max_bytes`).
    pub fn pending_bytes(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.text.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joiner(config: MultilineConfig) -> MultilineJoiner {
        config.compile().unwrap().joiner()
    }

    fn java() -> MultilineConfig {
        MultilineConfig {
            continuation: Some(r"^(?:\s+at |\s+\.\.\. \d+ more|Caused by: )".into()),
            ..Default::default()
        }
    }

    fn push_all(j: &mut MultilineJoiner, lines: &[&str], t0: Instant) -> Vec<Joined> {
        let mut out = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            out.extend(j.push(Line {
                text: (*l).into(),
                offset: i as u64 * 100,
                at: t0,
            }));
        }
        out
    }

    #[test]
    fn joins_continuations_and_reports_offsets() {
        let mut j = joiner(java());
        let t0 = Instant::now();
        let out = push_all(
            &mut j,
            &[
                "starting",
                "java.lang.IllegalStateException: boom",
                "\tat a.B.c(B.java:1)",
                "\tat a.B.d(B.java:2)",
                "next line",
            ],
            t0,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].text, "starting");
        assert_eq!(out[1].lines, 3);
        assert_eq!((out[1].first_offset, out[1].last_offset), (100, 300));
        assert_eq!(j.pending_start_offset(), Some(400));
        assert!(j.flush_expired(t0).is_none());
        let last = j.flush_expired(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(last.text, "next line");
        assert_eq!(j.pending_start_offset(), None);
    }

    #[test]
    fn lines_that_cannot_start_pass_straight_through() {
        let mut j = joiner(MultilineConfig {
            start: Some(r"^Traceback".into()),
            continuation: Some(r"^(?:\s|$)".into()),
            end: Some(r"^[A-Za-z_][\w.]*(?::|$)".into()),
            ..Default::default()
        });
        let out = push_all(
            &mut j,
            &[
                "plain",
                "Traceback (most recent call last):",
                "  File \"x.py\", line 1, in <module>",
                "ValueError: bad",
                "plain again",
            ],
            Instant::now(),
        );
        let texts: Vec<_> = out.iter().map(|j| j.lines).collect();
        assert_eq!(texts, [1, 3, 1]);
        assert_eq!(j.pending_lines(), 0, "nothing is held back");
    }

    #[test]
    fn limits_split_events() {
        let mut j = joiner(MultilineConfig {
            max_lines: 3,
            max_bytes: 20,
            ..java()
        });
        let out = push_all(
            &mut j,
            &["head", "  at 1", "  at 2", "  at 3", "  at 4567890123456"],
            Instant::now(),
        );
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].lines, out[0].split), (3, true));
        assert_eq!((out[1].text.as_str(), out[1].split), ("  at 3", true));
        assert!(j.pending_bytes() <= 20);
        let rest = j.flush().unwrap();
        assert_eq!(rest.text, "  at 4567890123456");
        assert!(!rest.split);
    }

    #[test]
    fn config_errors_name_the_setting() {
        let e = MultilineConfig::default().compile().unwrap_err();
        assert!(e.contains("start"), "{e}");
        let e = MultilineConfig {
            start: Some("(".into()),
            ..Default::default()
        }
        .compile()
        .unwrap_err();
        assert!(e.contains("`start`"), "{e}");
    }
}
