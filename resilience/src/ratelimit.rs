//! Token-bucket rate limit on the callee's inbound side (`spec.rateLimit`).
//!
//! Implemented as GCRA (generic cell rate algorithm): the only state is the "theoretical
//! arrival time" (TAT) of the next request, in nanoseconds since the limiter was built. It is
//! equivalent to a token bucket of `burst` tokens refilled at `requests_per_second`, but one
//! `AtomicU64` is the whole state, so admission is a single CAS with no refill bookkeeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

const NANOS_PER_SEC: u64 = 1_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    #[error(
        "spec.rateLimit.requestsPerSecond must be at least 1 (remove rateLimit to disable limiting)"
    )]
    ZeroRate,
    #[error("spec.rateLimit.burst must be at least 1 (1 means no burst beyond the steady rate)")]
    ZeroBurst,
}

#[derive(Debug)]
pub struct RateLimiter {
    base: Instant,
    /// Nanoseconds between requests at the steady rate.
    interval: u64,
    /// How far the TAT may run ahead of now: `(burst - 1) × interval`.
    tolerance: u64,
    tat: AtomicU64,
}

impl RateLimiter {
    pub fn new(requests_per_second: u32, burst: u32) -> Result<Self, RateLimitError> {
        if requests_per_second == 0 {
            return Err(RateLimitError::ZeroRate);
        }
        if burst == 0 {
            return Err(RateLimitError::ZeroBurst);
        }
        // Rounded to the nearest nanosecond; above 1e9 rps the floor of 1 ns caps the rate,
        // which no proxy reaches anyway.
        let rps = u64::from(requests_per_second);
        let interval = ((NANOS_PER_SEC + rps / 2) / rps).max(1);
        Ok(Self {
            base: Instant::now(),
            interval,
            tolerance: interval.saturating_mul(u64::from(burst) - 1),
            tat: AtomicU64::new(0),
        })
    }

    /// Admits a request at `now`, or says how long until one would be admitted.
    pub fn try_acquire(&self, now: Instant) -> Result<(), Duration> {
        let t =
            u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX);
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let start = tat.max(t);
            let ahead = start - t;
            if ahead > self.tolerance {
                return Err(Duration::from_nanos(ahead - self.tolerance));
            }
            let next = start.saturating_add(self.interval);
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }
}

/// Value for a `Retry-After` header: whole seconds, rounded up, at least 1 (0 would invite an
/// immediate retry that is bound to be refused again).
pub fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const MS: Duration = Duration::from_millis(1);

    fn admitted(l: &RateLimiter, n: usize) -> usize {
        (0..n)
            .filter(|_| l.try_acquire(Instant::now()).is_ok())
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate() {
        let l = RateLimiter::new(10, 5).expect("valid");
        assert_eq!(admitted(&l, 100), 5, "the burst");
        let retry = l.try_acquire(Instant::now()).expect_err("bucket empty");
        assert_eq!(retry, 100 * MS);

        advance(99 * MS).await;
        assert_eq!(admitted(&l, 10), 0);
        advance(MS).await;
        assert_eq!(admitted(&l, 10), 1);

        let mut total = 0;
        for _ in 0..100 {
            advance(10 * MS).await;
            total += admitted(&l, 10);
        }
        assert_eq!(total, 10, "10/s once the burst is spent");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_refills_only_up_to_burst() {
        let l = RateLimiter::new(100, 20).expect("valid");
        assert_eq!(admitted(&l, 50), 20);
        advance(Duration::from_secs(60)).await;
        assert_eq!(admitted(&l, 50), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn partial_refill_is_proportional() {
        let l = RateLimiter::new(100, 20).expect("valid");
        assert_eq!(admitted(&l, 50), 20);
        advance(55 * MS).await;
        assert_eq!(admitted(&l, 50), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_sensible_for_slow_rates() {
        let l = RateLimiter::new(1, 1).expect("valid");
        assert!(l.try_acquire(Instant::now()).is_ok());
        let retry = l.try_acquire(Instant::now()).expect_err("limited");
        assert_eq!(retry, Duration::from_secs(1));
        advance(400 * MS).await;
        let retry = l.try_acquire(Instant::now()).expect_err("limited");
        assert_eq!(retry, 600 * MS);
        assert_eq!(retry_after_secs(retry), 1);
    }

    #[test]
    fn retry_after_rounds_up_with_a_floor_of_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(7)), 7);
        assert_eq!(retry_after_secs(Duration::MAX), u64::MAX);
    }

    #[test]
    fn zero_rate_or_burst_is_a_config_error() {
        assert_eq!(RateLimiter::new(0, 5).err(), Some(RateLimitError::ZeroRate));
        assert_eq!(
            RateLimiter::new(5, 0).err(),
            Some(RateLimitError::ZeroBurst)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_never_exceed_the_burst() {
        let l = RateLimiter::new(1, 50).expect("valid");
        let now = Instant::now();
        let ok: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let l = &l;
                    s.spawn(move || (0..100).filter(|_| l.try_acquire(now).is_ok()).count())
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).sum()
        });
        assert_eq!(ok, 50);
    }
}
