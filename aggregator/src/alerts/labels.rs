//! Label sets as the evaluator passes them around: the sorted pairs behind one shared pointer
//! with their hash computed once, so cloning a set is a reference count, hashing it one word,
//! and comparing two sets a pointer or hash check before any string is read. A set also keeps
//! itself without `__name__` (what most PromQL operations return) once asked for it, so a
//! series whose labels stay the same from round to round builds that set once, not per round.
//!
//! This module only holds labels; what they mean is [`super::promql`]'s business.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use rustc_hash::FxHasher;

/// The metric name's label.
pub(crate) const METRIC_NAME: &str = "__name__";

/// One label: name and value.
pub(crate) type Pair = (Arc<str>, Arc<str>);

/// A series' labels, sorted by name (`__name__` included when the series has a name).
#[derive(Clone)]
pub(crate) struct Labels(Arc<Inner>);

struct Inner {
    hash: u64,
    /// Whether `pairs` has `__name__`.
    named: bool,
    pairs: Box<[Pair]>,
    /// The same set without `__name__`; only ever set on a set that has one (a set without
    /// a name is its own nameless set, and keeping it here would be a reference cycle).
    without_name: OnceLock<Labels>,
}

impl Labels {
    /// Labels from pairs already sorted by name, without duplicate names.
    pub(crate) fn from_sorted(pairs: Box<[Pair]>) -> Labels {
        debug_assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0), "unsorted labels");
        let mut hasher = FxHasher::default();
        for (k, v) in pairs.iter() {
            hasher.write(k.as_bytes());
            hasher.write_u8(0xff);
            hasher.write(v.as_bytes());
            hasher.write_u8(0xff);
        }
        Labels(Arc::new(Inner {
            hash: hasher.finish(),
            named: !label(&pairs, METRIC_NAME).is_empty(),
            pairs,
            without_name: OnceLock::new(),
        }))
    }

    /// The empty set.
    pub(crate) fn empty() -> Labels {
        Labels::from_sorted(Box::new([]))
    }

    /// The set without `__name__` (itself when it has none): built on first use, then shared.
    pub(crate) fn without_name(&self) -> Labels {
        if !self.0.named {
            return self.clone();
        }
        self.0
            .without_name
            .get_or_init(|| {
                self.iter()
                    .filter(|(k, _)| &**k != METRIC_NAME)
                    .cloned()
                    .collect()
            })
            .clone()
    }

    /// Bytes the set holds (its pairs and their strings, and its nameless twin's pairs, which
    /// share those strings), for the history's size figure.
    pub(crate) fn approximate_bytes(&self) -> usize {
        let set = |n: usize| std::mem::size_of::<Inner>() + 16 + n * std::mem::size_of::<Pair>();
        let strings: usize = self.iter().map(|(k, v)| k.len() + v.len() + 2 * 16).sum();
        let twin = self.0.without_name.get().map_or(0, |t| set(t.len()));
        set(self.len()) + strings + twin
    }
}

/// Label value by name ("" when absent).
pub(crate) fn label<'a>(labels: &'a [Pair], name: &str) -> &'a str {
    match labels.binary_search_by(|(k, _)| (**k).cmp(name)) {
        Ok(i) => &labels[i].1,
        Err(_) => "",
    }
}

impl Deref for Labels {
    type Target = [Pair];

    fn deref(&self) -> &[Pair] {
        &self.0.pairs
    }
}

impl PartialEq for Labels {
    fn eq(&self, other: &Labels) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.hash == other.0.hash && self.0.pairs == other.0.pairs)
    }
}

impl Eq for Labels {}

impl Hash for Labels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

/// Collects pairs that are already sorted by name (a filtered sorted set stays sorted).
impl FromIterator<Pair> for Labels {
    fn from_iter<I: IntoIterator<Item = Pair>>(iter: I) -> Labels {
        Labels::from_sorted(iter.into_iter().collect())
    }
}

/// A hasher for maps keyed by [`Labels`] (whose hash is one precomputed word) or by short
/// strings: FxHash, as the compiler uses; the keys are ferry's own series, not chosen by a
/// remote client.
pub(crate) type FastBuild = std::hash::BuildHasherDefault<FxHasher>;

/// A `HashMap` with [`FastBuild`].
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, FastBuild>;

/// A `HashSet` with [`FastBuild`].
pub(crate) type FastSet<K> = std::collections::HashSet<K, FastBuild>;

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (Arc::from(*k), Arc::from(*v)))
            .collect()
    }

    #[test]
    fn equal_sets_hash_alike_and_drop_their_name_once() {
        let a = set(&[("__name__", "m"), ("a", "1"), ("b", "2")]);
        let b = set(&[("__name__", "m"), ("a", "1"), ("b", "2")]);
        assert_eq!(a, b);
        assert_ne!(a, set(&[("__name__", "m"), ("a", "1"), ("b", "3")]));
        // Same strings, split differently: not the same set.
        assert_ne!(set(&[("a", "1b")]), set(&[("a1", "b")]));
        let hash = |l: &Labels| {
            let mut h = FxHasher::default();
            l.hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(&a), hash(&b));
        let unnamed = a.without_name();
        assert_eq!(unnamed, set(&[("a", "1"), ("b", "2")]));
        assert!(Arc::ptr_eq(&unnamed.0, &a.without_name().0), "built once");
        assert!(Arc::ptr_eq(&unnamed.0, &unnamed.without_name().0));
        assert_eq!(label(&a, "b"), "2");
        assert_eq!(label(&a, "c"), "");
    }
}
