//! Exponential backoff with full jitter between retries (`spec.retries.backoff`).
//!
//! Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter") spreads retries from
//! many callers over the whole interval instead of synchronising them at `base * 2^n`, which is
//! what turns a blip into a retry storm.

use std::time::Duration;

/// Retry delay policy: the n-th retry (0-based) waits a uniform random time in
/// `[0, min(max, base * 2^n)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// Upper bound of the jitter interval for `retry` (0 = first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        if self.base.is_zero() {
            return Duration::ZERO;
        }
        // `checked_shl` is None from 2^32 on, and `checked_mul` None when the product leaves
        // Duration's range: both mean "larger than any sane max", so saturate.
        let grown = 1u32
            .checked_shl(retry)
            .and_then(|factor| self.base.checked_mul(factor))
            .unwrap_or(Duration::MAX);
        grown.min(self.max)
    }

    /// Delay before retry number `retry` (0 = first retry). `rand` is the caller's jitter
    /// source in `[0, 1)`; values outside are clamped and NaN counts as 0 so a bad random
    /// source can never panic the request path.
    pub fn delay(&self, retry: u32, rand: f64) -> Duration {
        let ceiling = self.ceiling(retry);
        let rand = if rand.is_nan() {
            0.0
        } else {
            rand.clamp(0.0, 1.0)
        };
        // Integer nanoseconds keep results exact for realistic ceilings; `as u64` saturates.
        // Beyond u64 nanoseconds (centuries) `mul_f64` could panic on rounding, so the
        // fallible float form is used there. `min` keeps either inside the interval.
        let jittered = match u64::try_from(ceiling.as_nanos()) {
            Ok(nanos) => Duration::from_nanos((nanos as f64 * rand) as u64),
            Err(_) => Duration::try_from_secs_f64(ceiling.as_secs_f64() * rand).unwrap_or(ceiling),
        };
        jittered.min(ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> Backoff {
        Backoff::new(25 * MS, 250 * MS)
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = policy();
        assert_eq!(b.ceiling(0), 25 * MS);
        assert_eq!(b.ceiling(1), 50 * MS);
        assert_eq!(b.ceiling(2), 100 * MS);
        assert_eq!(b.ceiling(3), 200 * MS);
        assert_eq!(b.ceiling(4), 250 * MS);
    }

    #[test]
    fn huge_retry_numbers_saturate_at_max() {
        let b = policy();
        for retry in [31, 32, 33, 64, 1000, u32::MAX] {
            assert_eq!(b.ceiling(retry), 250 * MS, "retry {retry}");
        }
        let unbounded = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::MAX);
        assert_eq!(unbounded.ceiling(5), Duration::MAX);
        assert!(unbounded.delay(5, 0.999_999) <= Duration::MAX);
        assert_eq!(unbounded.delay(5, 1.0), Duration::MAX);
    }

    #[test]
    fn jitter_covers_the_whole_interval() {
        let b = policy();
        assert_eq!(b.delay(2, 0.0), Duration::ZERO);
        assert_eq!(b.delay(2, 0.5), 50 * MS);
        let top = b.delay(2, 0.999_999);
        assert!(top < 100 * MS && top > 99 * MS, "{top:?}");
    }

    #[test]
    fn bad_random_values_are_clamped() {
        let b = policy();
        assert_eq!(b.delay(0, f64::NAN), Duration::ZERO);
        assert_eq!(b.delay(0, -3.0), Duration::ZERO);
        assert_eq!(b.delay(0, 7.0), 25 * MS);
        assert_eq!(b.delay(0, f64::INFINITY), 25 * MS);
    }

    #[test]
    fn zero_base_never_waits() {
        let b = Backoff::new(Duration::ZERO, 250 * MS);
        assert_eq!(b.delay(40, 0.9), Duration::ZERO);
    }

    #[test]
    fn max_below_base_wins() {
        let b = Backoff::new(100 * MS, 10 * MS);
        assert_eq!(b.ceiling(0), 10 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn sleeping_the_delay_advances_paused_time_exactly() {
        let b = policy();
        let start = tokio::time::Instant::now();
        // 0.4 keeps every delay a whole millisecond: tokio timers round up to 1 ms.
        for retry in 0..6 {
            tokio::time::sleep(b.delay(retry, 0.4)).await;
        }
        // 10 + 20 + 40 + 80 + 100 + 100 ms
        assert_eq!(start.elapsed(), 350 * MS);
    }
}
