//! The bounded in-memory history the rules are evaluated over: per series, the samples of the
//! last [`Retention`] for its metric (the longest range plus offset the loaded rules read it
//! with, plus the lookback; a metric no rule reads keeps only its latest sample), taken from the
//! aggregator's own exposition at each evaluation round.
//!
//! A series that is missing from a round gets a stale marker, as in a Prometheus scrape, so
//! it leaves instant vectors at once; a series with no sample left inside the retention is
//! forgotten. Series are indexed by metric name and, for sampling, by their exposition key
//! (`name{labels}` as rendered), so a steady round costs one hash lookup and one float parse
//! per line and allocates nothing. This module decides nothing about rules.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::labels::{label, FastMap, Labels};
use super::promql::{make_labels, parse_go_float};

/// Prometheus's stale marker: a NaN with this bit pattern.
const STALE_BITS: u64 = 0x7ff0_0000_0000_0002;

fn is_stale(v: f64) -> bool {
    v.to_bits() == STALE_BITS
}

/// One series and its recent samples (oldest first).
#[derive(Debug)]
pub(crate) struct Series {
    pub(crate) labels: Labels,
    samples: VecDeque<(i64, f64)>,
    /// The round in which the series was last seen.
    seen: u64,
    /// Its exposition key (`name{labels}`), shared with the index.
    key: Arc<str>,
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
    retention: Retention,
    slots: Vec<Option<Series>>,
    free: Vec<usize>,
    by_name: HashMap<Arc<str>, Vec<usize>>,
    by_key: FastMap<Arc<str>, usize>,
    round: u64,
}

/// Why an exposition line was not taken (the sampler skips it; counted, never fatal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable exposition line: {0}")]
pub(crate) struct BadLine(pub(crate) String);

impl History {
    pub(crate) fn new(retention: Retention) -> History {
        History {
            retention,
            slots: Vec::new(),
            free: Vec::new(),
            by_name: HashMap::new(),
            by_key: FastMap::default(),
            round: 0,
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
            s.retention_ms = retention.of(label(&s.labels, "__name__"));
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
        self.by_key.len()
    }

    /// Samples held over all series.
    pub(crate) fn samples(&self) -> usize {
        self.slots.iter().flatten().map(|s| s.samples.len()).sum()
    }

    /// Approximate bytes held (samples, label strings, indexes), for the closing figures.
    pub(crate) fn approximate_bytes(&self) -> usize {
        let mut bytes = self.slots.capacity() * std::mem::size_of::<Option<Series>>();
        for s in self.slots.iter().flatten() {
            bytes += s.samples.capacity() * 16;
            bytes += s.labels.approximate_bytes() + s.key.len() + 16;
        }
        bytes += self.by_key.capacity() * (std::mem::size_of::<(Arc<str>, usize)>() + 1);
        bytes
    }

    fn slot_of(&mut self, key: &str) -> Result<usize, BadLine> {
        if let Some(&i) = self.by_key.get(key) {
            return Ok(i);
        }
        let labels = parse_key(key)?;
        let key: Arc<str> = Arc::from(key);
        let name: Arc<str> = Arc::from(label(&labels, "__name__"));
        let retention_ms = self.retention.of(&name);
        let series = Series {
            retention_ms,
            labels,
            samples: VecDeque::new(),
            seen: self.round,
            key: Arc::clone(&key),
            recorded: false,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(series);
                i
            }
            None => {
                self.slots.push(Some(series));
                self.slots.len() - 1
            }
        };
        self.by_name.entry(name).or_default().push(i);
        self.by_key.insert(key, i);
        Ok(i)
    }

    /// Adds one sample to the series rendered as `key` (`name{labels}`).
    #[cfg(test)]
    pub(crate) fn push_key(&mut self, key: &str, t: i64, v: f64) {
        if let Ok(i) = self.slot_of(key) {
            let round = self.round;
            if let Some(s) = self.slots[i].as_mut() {
                s.push(t, v);
                s.seen = round;
            }
        }
    }

    /// Writes a recording rule's sample (its labels include `__name__`).
    pub(crate) fn push_recorded(&mut self, labels: &Labels, t: i64, v: f64) -> Box<str> {
        let key = key_of(labels);
        if let Ok(i) = self.slot_of(&key) {
            if let Some(s) = self.slots[i].as_mut() {
                s.recorded = true;
                s.push(t, v);
            }
        }
        key.into()
    }

    /// Ends the series `key` at `t` (a recording rule's series that its rule no longer
    /// gives; rounds do it for scraped series).
    pub(crate) fn mark_stale_key(&mut self, key: &str, t: i64) {
        if let Some(&i) = self.by_key.get(key) {
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
        self.round += 1;
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
            match self.slot_of(key) {
                Ok(i) => {
                    let round = self.round;
                    if let Some(s) = self.slots[i].as_mut() {
                        s.push(t, value);
                        s.seen = round;
                    }
                }
                Err(e) => bad.push(e),
            }
        }
        self.end_round(t);
        bad
    }

    /// Marks the series not seen this round stale and forgets what is past the retention.
    fn end_round(&mut self, t: i64) {
        let round = self.round;
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
        for i in gone {
            let Some(s) = self.slots[i].take() else {
                continue;
            };
            let name = label(&s.labels, "__name__");
            if let Some(list) = self.by_name.get_mut(name) {
                list.retain(|&j| j != i);
                if list.is_empty() {
                    self.by_name.remove(name);
                }
            }
            self.by_key.remove(&*s.key);
            self.free.push(i);
        }
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
