//! Exponential backoff, the one every wait that grows uses: the unbind and push workers'
//! retries, the breaker's open period, the audit writer's retries. `base * 2^n`, capped at `max`;
//! the jitter is the caller's choice: a retry is spread *down* (between half of the delay and
//! all of it, so a crowd of retries thins out without waiting longer than promised), an open
//! period is stretched *up* (never shorter than configured).

use std::time::Duration;

use rand::Rng;

/// `base`, doubled per step, capped at `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The delay after `n` doublings: `base * 2^n`, capped at `max` (also when that overflows).
    pub fn nth(&self, n: u32) -> Duration {
        2u32.checked_pow(n)
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.max, |delay| delay.min(self.max))
    }

    /// The delay before retry number `attempt` (1-based; 0 counts as 1), spread down when
    /// `jitter`.
    pub fn retry(&self, attempt: i64, jitter: bool) -> Duration {
        let n = u32::try_from(attempt.saturating_sub(1).max(0)).unwrap_or(u32::MAX);
        let delay = self.nth(n);
        if jitter { spread_down(delay) } else { delay }
    }
}

/// Uniformly between half of `delay` and all of it.
pub fn spread_down(delay: Duration) -> Duration {
    let half = delay / 2;
    let room = u64::try_from((delay - half).as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(rand::rng().random_range(0..=room))
}

/// Uniformly between `period` and `period * (1 + ratio)`; exactly `period` when `ratio` is 0.
pub fn stretch_up(period: Duration, ratio: f64) -> Duration {
    if ratio > 0.0 {
        let stretch = 1.0 + rand::random::<f64>() * ratio;
        Duration::try_from_secs_f64(period.as_secs_f64() * stretch).unwrap_or(period)
    } else {
        period
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let b = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        let d: Vec<_> = (1..=9).map(|a| b.retry(a, false).as_millis()).collect();
        assert_eq!(d, [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]);
        assert_eq!(b.retry(0, false), b.base);
        assert_eq!(b.retry(-3, false), b.base);
        assert_eq!(b.retry(1000, false), b.max);
        assert_eq!(b.retry(i64::MAX, false), b.max);
        assert_eq!(b.nth(0), b.base);
        assert_eq!(b.nth(3), Duration::from_secs(4));
        assert_eq!(b.nth(u32::MAX), b.max);
    }

    #[test]
    fn a_huge_base_is_capped_not_overflowed() {
        let b = Backoff::new(Duration::MAX / 2, Duration::from_secs(5));
        assert_eq!(b.nth(0), Duration::from_secs(5));
        assert_eq!(b.nth(2), Duration::from_secs(5));
    }

    #[test]
    fn retries_spread_between_half_and_all() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut below_full = false;
        for a in 1..10 {
            let full = b.retry(a, false);
            for _ in 0..20 {
                let j = b.retry(a, true);
                assert!(j >= full / 2 && j <= full, "{j:?} vs {full:?}");
                below_full |= j < full;
            }
        }
        assert!(below_full, "jitter never moved a delay");
        assert_eq!(spread_down(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn open_periods_stretch_up_within_the_ratio() {
        let p = Duration::from_secs(10);
        assert_eq!(stretch_up(p, 0.0), p);
        let mut stretched = false;
        for _ in 0..50 {
            let s = stretch_up(p, 0.5);
            assert!(s >= p && s <= p.mul_f64(1.5), "{s:?}");
            stretched |= s > p;
        }
        assert!(stretched, "the ratio never stretched a period");
    }
}
