//! The bounded in-memory history the rules are evaluated over: per series, the samples of the
//! last [`Retention`] for its metric (the longest range plus offset the loaded rules read it
//! with, plus the lookback; a metric no rule reads keeps only its latest sample), taken from the
//! aggregator's own registry at each evaluation round.
//!
//! A series that is missing from a round gets a stale marker, as in a Prometheus scrape, so
//! it leaves instant vectors at once; a series with no sample left inside the retention is
//! forgotten. Series are identified by their label set and indexed by metric name. A round
//! is [`History::begin_round`], samples, [`History::end_round`]: the registry's big families
//! push their values straight into slots through a [`SlotRef`] each series keeps (checked
//! against the slot's generation, so a forgotten and reused slot is never written by its old
//! owner), and text lines (the small fixed families, tests, the differential harness) go
//! through a cache from their rendered `name{labels}` to a slot. A steady round allocates
//! nothing. This module decides nothing about rules.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use super::labels::{label, FastMap, Labels, METRIC_NAME};
use super::promql::{make_labels, parse_go_float};

/// Prometheus's stale marker: a NaN with this bit pattern.
const STALE_BITS: u64 = 0x7ff0_0000_0000_0002;

fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_BITS
}

/// Identifies each history, so a [`SlotRef`] taken from one is never used in another.
static NEXT_HISTORY_ID: AtomicU32 = AtomicU32::new(1);

/// Where a registry series' samples go in one history: resolved once from its labels, then
/// kept beside the series in the registry. Empty (the default) until resolved; a reference
/// whose slot was forgotten since (or that belongs to another history) is simply resolved
/// again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SlotRef {
    history: u32,
    slot: u32,
    generation: u32,
}

/// One series and its recent samples (oldest first).
#[derive(Debug)]
pub(crate) struct Series {
    pub(crate) labels: Labels,
    samples: VecDeque<(i64, f64)>,
    /// The round in which the series was last seen.
    seen: u64,
    /// Written by a recording rule (staleness is then the rule's business, not the round's).
    recorded: bool,
    /// How long its samples are kept.
    retention_ms: i64,
}

impl Series {
    /// The value an instant selector sees at `t`: the newest sample at or before `t`, not
    /// older than `lookback`, unless that sample is a stale marker.
    pub(crate) fn at(&self, t: i64, lookback: i64) -> Option<f64> {
        let &(ts, v) = match self.samples.back() {
            // The usual case: evaluating at the newest round.
            Some(last) if last.0 <= t => last,
            _ => {
                let end = self.samples.partition_point(|s| s.0 <= t);
                self.samples.get(end.checked_sub(1)?)?
            }
        };
        (t - ts <= lookback && !is_stale(v)).then_some(v)
    }

    /// Samples in `[start, end]` (stale markers left out): borrowed from the history unless
    /// a stale marker had to be left out (or the window wraps around the sample ring).
    pub(crate) fn range(&self, start: i64, end: i64) -> Cow<'_, [(i64, f64)]> {
        let from = self.samples.partition_point(|s| s.0 < start);
        let to = self.samples.partition_point(|s| s.0 <= end).max(from);
        let (front, back) = self.samples.as_slices();
        let points = if to <= front.len() {
            Cow::Borrowed(&front[from..to])
        } else if from >= front.len() {
            Cow::Borrowed(&back[from - front.len()..to - front.len()])
        } else {
            Cow::Owned(self.samples.range(from..to).copied().collect())
        };
        if points.iter().any(|s| is_stale(s.1)) {
            Cow::Owned(points.iter().filter(|s| !is_stale(s.1)).copied().collect())
        } else {
            points
        }
    }

    fn push(&mut self, t: i64, v: f64) {
        // Time only moves forward; a repeated timestamp replaces the sample.
        match self.samples.back_mut() {
            Some(last) if last.0 == t => last.1 = v,
            Some(last) if last.0 > t => {}
            _ => self.samples.push_back((t, v)),
        }
    }
}

/// How long samples are kept, per metric name.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Retention {
    pub(crate) by_name: HashMap<String, i64>,
    /// For metrics not named in `by_name`.
    pub(crate) other_ms: i64,
}

impl Retention {
    fn of(&self, name: &str) -> i64 {
        self.by_name.get(name).copied().unwrap_or(self.other_ms)
    }
}

/// Every series' recent samples.
#[derive(Debug)]
pub(crate) struct History {
    id: u32,
    retention: Retention,
    slots: Vec<Option<Series>>,
    /// Per slot, bumped each time the slot's series is forgotten.
    generations: Vec<u32>,
    free: Vec<usize>,
    by_name: HashMap<Arc<str>, Vec<usize>>,
    by_labels: FastMap<Labels, usize>,
    /// Text lines' `name{labels}` as rendered, to their slot (checked like any [`SlotRef`];
    /// entries whose slot was forgotten are dropped at the end of that round).
    by_text: FastMap<Box<str>, SlotRef>,
    round: u64,
    /// The time of the round in progress.
    t: i64,
}

/// Why an exposition line was not taken (the sampler skips it; counted, never fatal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable exposition line: {0}")]
pub(crate) struct BadLine(pub(crate) String);

impl History {
    pub(crate) fn new(retention: Retention) -> History {
        History {
            id: NEXT_HISTORY_ID.fetch_add(1, Ordering::Relaxed),
            retention,
            slots: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            by_name: HashMap::new(),
            by_labels: FastMap::default(),
            by_text: FastMap::default(),
            round: 0,
            t: 0,
        }
    }

    /// A history keeping every series for `ms` (tests).
    #[cfg(test)]
    pub(crate) fn keeping(ms: i64) -> History {
        History::new(Retention {
            by_name: HashMap::new(),
            other_ms: ms,
        })
    }

    pub(crate) fn set_retention(&mut self, retention: Retention) {
        for s in self.slots.iter_mut().flatten() {
            s.retention_ms = retention.of(label(&s.labels, METRIC_NAME));
        }
        self.retention = retention;
    }

    /// Series with that metric name, or every series when `name` is `None`.
    pub(crate) fn series<'a>(
        &'a self,
        name: Option<&str>,
    ) -> Box<dyn Iterator<Item = &'a Series> + 'a> {
        match name {
            Some(name) => Box::new(
                self.by_name
                    .get(name)
                    .into_iter()
                    .flatten()
                    .filter_map(|&i| self.slots[i].as_ref()),
            ),
            None => Box::new(self.slots.iter().flatten()),
        }
    }

    /// Number of series held.
    pub(crate) fn len(&self) -> usize {
        self.by_labels.len()
    }

    /// Samples held over all series.
    pub(crate) fn samples(&self) -> usize {
        self.slots.iter().flatten().map(|s| s.samples.len()).sum()
    }

    /// Approximate bytes held (samples, label sets, indexes), for the closing figures.
    pub(crate) fn approximate_bytes(&self) -> usize {
        let mut bytes = self.slots.capacity() * std::mem::size_of::<Option<Series>>()
            + self.generations.capacity() * 4;
        for s in self.slots.iter().flatten() {
            bytes += s.samples.capacity() * 16;
            bytes += s.labels.approximate_bytes();
        }
        bytes += self.by_labels.capacity() * (std::mem::size_of::<(Labels, usize)>() + 1);
        bytes += self.by_text.capacity() * (std::mem::size_of::<(Box<str>, SlotRef)>() + 1);
        bytes += self.by_text.keys().map(|k| k.len()).sum::<usize>();
        bytes += self
            .by_name
            .values()
            .map(|l| l.capacity() * 8)
            .sum::<usize>();
        bytes
    }

    /// The slot `r` points at, if it is still that series'.
    fn resolve(&self, r: SlotRef) -> Option<usize> {
        let i = r.slot as usize;
        (r.history == self.id
            && self.generations.get(i) == Some(&r.generation)
            && self.slots[i].is_some())
        .then_some(i)
    }

    fn slot_ref(&self, i: usize) -> SlotRef {
        SlotRef {
            history: self.id,
            slot: i as u32,
            generation: self.generations[i],
        }
    }

    /// The slot of the series with these labels (which include `__name__`), made if new.
    fn slot_of(&mut self, labels: Labels) -> usize {
        if let Some(&i) = self.by_labels.get(&labels) {
            return i;
        }
        let name: Arc<str> = labels
            .iter()
            .find(|(k, _)| &**k == METRIC_NAME)
            .map_or_else(|| Arc::from(""), |(_, v)| Arc::clone(v));
        let series = Series {
            retention_ms: self.retention.of(&name),
            labels: labels.clone(),
            samples: VecDeque::new(),
            seen: self.round,
            recorded: false,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(series);
                i
            }
            None => {
                self.slots.push(Some(series));
                self.generations.push(0);
                self.slots.len() - 1
            }
        };
        self.by_name.entry(name).or_default().push(i);
        self.by_labels.insert(labels, i);
        i
    }

    /// A sample of this round for the series in slot `i`.
    fn take(&mut self, i: usize, v: f64) {
        let (t, round) = (self.t, self.round);
        if let Some(s) = self.slots[i].as_mut() {
            s.push(t, v);
            s.seen = round;
        }
    }

    /// Starts a round at `t`: the samples given until [`History::end_round`] are its.
    pub(crate) fn begin_round(&mut self, t: i64) {
        self.round += 1;
        self.t = t;
    }

    /// A value of this round for the series `slot` points at; false (and nothing taken) when
    /// `slot` does not point at a live series of this history: then call
    /// [`History::push_new`] with the series' labels.
    pub(crate) fn push(&mut self, slot: SlotRef, v: f64) -> bool {
        match self.resolve(slot) {
            Some(i) => {
                self.take(i, v);
                true
            }
            None => false,
        }
    }

    /// A value of this round for the series with `labels` (`__name__` included), found or
    /// made; returns where it is, for [`History::push`] in later rounds.
    pub(crate) fn push_new(&mut self, labels: Labels, v: f64) -> SlotRef {
        let i = self.slot_of(labels);
        self.take(i, v);
        self.slot_ref(i)
    }

    /// Adds one sample to the series rendered as `key` (`name{labels}`).
    #[cfg(test)]
    pub(crate) fn push_key(&mut self, key: &str, t: i64, v: f64) {
        if let Ok(labels) = parse_key(key) {
            let i = self.slot_of(labels);
            let round = self.round;
            if let Some(s) = self.slots[i].as_mut() {
                s.push(t, v);
                s.seen = round;
            }
        }
    }

    /// Writes a recording rule's sample (its labels include `__name__`).
    pub(crate) fn push_recorded(&mut self, labels: &Labels, t: i64, v: f64) -> Box<str> {
        let i = self.slot_of(labels.clone());
        if let Some(s) = self.slots[i].as_mut() {
            s.recorded = true;
            s.push(t, v);
        }
        key_of(labels).into()
    }

    /// Ends the series `key` (as [`key_of`] writes it) at `t` (a recording rule's series that
    /// its rule no longer gives; rounds do it for sampled series).
    pub(crate) fn mark_stale_key(&mut self, key: &str, t: i64) {
        let Ok(labels) = parse_key(key) else { return };
        if let Some(&i) = self.by_labels.get(&labels) {
            if let Some(s) = self.slots[i].as_mut() {
                s.push(t, f64::from_bits(STALE_BITS));
            }
        }
    }

    /// Takes one round of samples at `t` from an exposition page (Prometheus text format,
    /// no timestamps): every series on it gets its value, every series missing from it a
    /// stale marker, and samples older than the retention go. Returns the lines it could not
    /// read.
    pub(crate) fn sample_exposition(&mut self, text: &str, t: i64) -> Vec<BadLine> {
        self.begin_round(t);
        let bad = self.sample_text(text);
        self.end_round();
        bad
    }

    /// Takes the sample lines of an exposition text into the round in progress; returns the
    /// lines it could not read.
    pub(crate) fn sample_text(&mut self, text: &str) -> Vec<BadLine> {
        let mut bad = Vec::new();
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', text.as_bytes()).chain([text.len()]) {
            let line = text[start..end].trim_end_matches('\r');
            start = end + 1;
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some(split) = memchr::memrchr(b' ', line.as_bytes()) else {
                bad.push(BadLine(line.to_string()));
                continue;
            };
            let (key, value) = (&line[..split], &line[split + 1..]);
            let Ok(value) = parse_go_float(value) else {
                bad.push(BadLine(line.to_string()));
                continue;
            };
            if let Some(&slot) = self.by_text.get(key) {
                if self.push(slot, value) {
                    continue;
                }
            }
            match parse_key(key) {
                Ok(labels) => {
                    let slot = self.push_new(labels, value);
                    self.by_text.insert(key.into(), slot);
                }
                Err(e) => bad.push(e),
            }
        }
        bad
    }

    /// Ends the round in progress: marks the series not seen in it stale and forgets what is
    /// past the retention.
    pub(crate) fn end_round(&mut self) {
        let (round, t) = (self.round, self.t);
        let mut gone = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(s) = slot else { continue };
            let oldest = t - s.retention_ms;
            if s.seen != round && !s.recorded && s.samples.back().is_some_and(|l| !is_stale(l.1)) {
                s.push(t, f64::from_bits(STALE_BITS));
            }
            // Keep one sample before the window: a range starting between two samples needs
            // nothing older, and an instant selector needs at most the lookback.
            while s.samples.len() > 1 && s.samples[1].0 <= oldest {
                s.samples.pop_front();
            }
            // One piece, so range selectors borrow their windows (a ring wraps once in a
            // while: the move is amortised over the rounds until it wraps again).
            s.samples.make_contiguous();
            let dead = s
                .samples
                .back()
                .is_none_or(|l| l.0 < oldest || (is_stale(l.1) && s.samples.len() == 1));
            if dead {
                gone.push(i);
            }
        }
        if gone.is_empty() {
            return;
        }
        for &i in &gone {
            let Some(s) = self.slots[i].take() else {
                continue;
            };
            self.generations[i] = self.generations[i].wrapping_add(1);
            let name = label(&s.labels, METRIC_NAME);
            if let Some(list) = self.by_name.get_mut(name) {
                list.retain(|&j| j != i);
                if list.is_empty() {
                    self.by_name.remove(name);
                }
            }
            self.by_labels.remove(&s.labels);
            self.free.push(i);
        }
        let (id, generations, slots) = (self.id, &self.generations, &self.slots);
        self.by_text.retain(|_, r| {
            let i = r.slot as usize;
            r.history == id && generations[i] == r.generation && slots[i].is_some()
        });
    }
}

/// The exposition key of `labels`: `name{a="1",b="x"}`, escaped as the exposition does.
pub(crate) fn key_of(labels: &Labels) -> String {
    let mut key = String::from(super::promql::label(labels, "__name__"));
    let mut first = true;
    for (k, v) in labels.iter().filter(|(k, _)| &**k != "__name__") {
        key.push(if first { '{' } else { ',' });
        first = false;
        key.push_str(k);
        key.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => key.push_str("\\\\"),
                '"' => key.push_str("\\\""),
                '\n' => key.push_str("\\n"),
                c => key.push(c),
            }
        }
        key.push('"');
    }
    if !first {
        key.push('}');
    }
    key
}

/// Parses `name{a="1",b="x\"y"}` (the exposition's escapes: `\\`, `\"`, `\n`).
fn parse_key(key: &str) -> Result<Labels, BadLine> {
    let bad = || BadLine(key.to_string());
    let (name, rest) = match key.find('{') {
        Some(i) => (&key[..i], Some(&key[i + 1..])),
        None => (key, None),
    };
    if name.is_empty() {
        return Err(bad());
    }
    let mut pairs = vec![("__name__".to_string(), name.to_string())];
    if let Some(rest) = rest {
        let rest = rest.strip_suffix('}').ok_or_else(bad)?;
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek() == Some(&',') || chars.peek() == Some(&' ') {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let mut label = String::new();
            for c in chars.by_ref() {
                if c == '=' {
                    break;
                }
                label.push(c);
            }
            if chars.next() != Some('"') {
                return Err(bad());
            }
            let mut value = String::new();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some(c) => value.push(c),
                        None => return Err(bad()),
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed || label.is_empty() {
                return Err(bad());
            }
            pairs.push((label.trim().to_string(), value));
        }
    }
    Ok(make_labels(pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_ref_never_writes_into_a_series_that_took_its_slot() {
        let mut h = History::keeping(10_000);
        let labels = |v: &str| make_labels([("__name__", "m"), ("x", v)]);
        h.begin_round(0);
        let a = h.push_new(labels("a"), 1.0);
        h.end_round();
        h.begin_round(1_000);
        assert!(
            h.push(a, 2.0),
            "a steady series is found through its reference"
        );
        assert!(
            !History::keeping(10_000).push(a, 2.0),
            "not another history's"
        );
        h.end_round();
        // `a` goes missing (stale), then is forgotten past the retention; `b` takes its slot.
        for t in [2_000, 20_000] {
            h.begin_round(t);
            h.end_round();
        }
        assert_eq!(h.len(), 0);
        h.begin_round(21_000);
        let b = h.push_new(labels("b"), 5.0);
        assert_eq!(b.slot, a.slot);
        assert!(!h.push(a, 9.0), "a's old reference is refused");
        h.end_round();
        let b_series: Vec<_> = h.series(Some("m")).collect();
        assert_eq!(b_series.len(), 1);
        assert_eq!(label(&b_series[0].labels, "x"), "b");
        assert_eq!(*b_series[0].range(0, 21_000), [(21_000, 5.0)]);
        // Looked up again by its labels, `a` is a new series.
        h.begin_round(22_000);
        let a2 = h.push_new(labels("a"), 3.0);
        assert!(h.push(b, 6.0));
        h.end_round();
        assert_ne!(a2, a);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn samples_a_page_and_marks_missing_series_stale() {
        let mut h = History::new(Retention {
            by_name: [("a".to_string(), 60_000), ("b".to_string(), 60_000)]
                .into_iter()
                .collect(),
            other_ms: 0,
        });
        let page = "# TYPE a gauge\na{x=\"1\",y=\"q\\\"z\"} 2\nb 3\nc{le=\"+Inf\"} +Inf\n";
        assert!(h.sample_exposition(page, 1_000).is_empty());
        assert_eq!(h.len(), 3);
        let a: Vec<_> = h.series(Some("a")).collect();
        assert_eq!(label(&a[0].labels, "y"), "q\"z");
        assert_eq!(a[0].at(1_000, 300_000), Some(2.0));
        h.sample_exposition("a{x=\"1\",y=\"q\\\"z\"} 4\n", 2_000);
        let b: Vec<_> = h.series(Some("b")).collect();
        assert_eq!(b[0].at(2_000, 300_000), None, "stale after missing a round");
        assert_eq!(b[0].at(1_500, 300_000), Some(3.0));
        // Past the retention, the stale series is forgotten; the live one keeps its window.
        for i in 3..100 {
            h.sample_exposition("a{x=\"1\",y=\"q\\\"z\"} 4\n", i * 1_000);
        }
        assert_eq!(h.len(), 1);
        assert!(h.samples() <= 62, "{}", h.samples());
        // A metric no rule reads keeps only its latest sample.
        h.sample_exposition("a{x=\"1\",y=\"q\\\"z\"} 4\nunread 1\n", 99_500);
        h.sample_exposition("a{x=\"1\",y=\"q\\\"z\"} 4\nunread 2\n", 99_700);
        let unread: Vec<_> = h.series(Some("unread")).collect();
        assert_eq!(*unread[0].range(0, 100_000), [(99_700, 2.0)]);
        assert_eq!(h.sample_exposition("bad{x=1} 2\n", 100_000).len(), 1);
    }
}
