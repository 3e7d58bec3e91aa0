//! Capped exponential backoff with jitter, for whole requests (per node and for the sink) and
//! for items Elasticsearch rejected (per item, by its number of attempts).

use std::time::Duration;

/// Backoff settings: the first delay and the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// The delay before retry number `failures` (1 = after the first failure): half of
    /// `initial · 2^(failures-1)` (capped at `max`) plus a random part up to the other half
    /// ("equal jitter": delays grow, and many senders do not retry in step).
    pub(crate) fn delay(&self, failures: u32, rng: &mut fastrand::Rng) -> Duration {
        let shift = failures.saturating_sub(1).min(30);
        let cap = self
            .initial
            .saturating_mul(1u32 << shift)
            .min(self.max)
            .max(Duration::from_millis(1));
        let half = cap / 2;
        half + Duration::from_nanos(rng.u64(0..=(cap - half).as_nanos() as u64))
    }
}

/// A failure count with its backoff: for a node, or for the sink as a whole.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Failures {
    pub(crate) count: u32,
}

impl Failures {
    pub(crate) const NONE: Failures = Failures { count: 0 };

    /// Counts one more failure; returns how long to wait.
    pub(crate) fn fail(&mut self, backoff: &Backoff, rng: &mut fastrand::Rng) -> Duration {
        self.count = self.count.saturating_add(1);
        backoff.delay(self.count, rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_jitter_and_stop_at_the_cap() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..200 {
            let d1 = b.delay(1, &mut rng);
            assert!((50..=100).contains(&d1.as_millis()), "{d1:?}");
            let d3 = b.delay(3, &mut rng);
            assert!((200..=400).contains(&d3.as_millis()), "{d3:?}");
            let d20 = b.delay(20, &mut rng);
            assert!((1000..=2000).contains(&d20.as_millis()), "{d20:?}");
            assert!(b.delay(u32::MAX, &mut rng) <= b.max);
        }
        let mut f = Failures::NONE;
        f.fail(&b, &mut rng);
        f.fail(&b, &mut rng);
        assert_eq!(f.count, 2);
    }
}
