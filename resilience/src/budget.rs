//! Retry budget (`spec.retries.budget`): retries ≤ `percent`% of requests + `minPerSecond`/s.
//!
//! Why not `tower::retry::budget::TpsBudget` (tower 0.5.3)? It does use `tokio::time::Instant`,
//! so paused-time tests would work, but:
//! - every `deposit` and `withdraw` takes a `Mutex<Generation>`; one budget is shared by every
//!   request to a service on every worker thread, so that is a contended lock on the hot path;
//! - `withdraw` sums the balance and subtracts in two separate steps, so concurrent retries can
//!   both spend the last token;
//! - the percentage becomes an integer "withdraw cost" `(1.0 / ratio) as isize`, so 30% behaves
//!   as 33% and 40% as 50%;
//! - `min_per_sec` becomes a reserve of `min_per_sec × ttl` tokens that may all be spent in the
//!   first second after an idle period, while our contract says "per second".
//!
//! So this is a lock-free version: deposits and ratio-funded withdrawals live in 1 s slots of a
//! 10 s sliding window (see `window.rs`), and the per-second floor is a separate counter that
//! resets every second.

use std::time::Duration;

use tokio::time::Instant;

use crate::window::{Clock, EpochCount, SLOTS, Window};

/// Slot length: the window is `SLOTS` of these, i.e. 10 s, and the floor resets per slot.
const SLOT: Duration = Duration::from_secs(1);

/// Shared by all requests to one destination service.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    min_per_second: u64,
    clock: Clock,
    deposits: Window,
    /// Retries paid for by the percentage of recent requests.
    withdrawals: Window,
    /// Retries paid for by the per-second floor, in the current second only.
    floor_used: EpochCount,
}

impl RetryBudget {
    /// `percent` may exceed 100 (more retries than requests); validation of the policy range
    /// belongs to the policy crate.
    pub fn new(percent: u32, min_per_second: u32) -> Self {
        Self {
            percent: u64::from(percent),
            min_per_second: u64::from(min_per_second),
            clock: Clock::new(Instant::now(), SLOT),
            deposits: Window::default(),
            withdrawals: Window::default(),
            floor_used: EpochCount::default(),
        }
    }

    /// Length of the sliding window deposits count for.
    pub const WINDOW: Duration = Duration::from_secs(SLOTS as u64);

    /// Call once per original request (not per retry).
    pub fn deposit(&self) {
        self.deposits.add(self.clock.epoch(Instant::now()), 1);
    }

    /// Call before each retry; `false` means the budget is exhausted and the retry must not be
    /// sent. The percentage is spent first so the per-second floor stays available for
    /// services that see little traffic.
    pub fn withdraw(&self) -> bool {
        let epoch = self.clock.epoch(Instant::now());
        let allowed = self.deposits.sum(epoch).saturating_mul(self.percent) / 100;
        self.withdrawals.try_add_below(epoch, allowed)
            || self.floor_used.try_add_below(epoch, self.min_per_second)
    }

    /// Retries the percentage still allows right now (excluding the floor), for metrics.
    pub fn available(&self) -> u64 {
        let epoch = self.clock.epoch(Instant::now());
        let allowed = self.deposits.sum(epoch).saturating_mul(self.percent) / 100;
        allowed.saturating_sub(self.withdrawals.sum(epoch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::time::advance;

    fn count_allowed(b: &RetryBudget, attempts: usize) -> usize {
        (0..attempts).filter(|_| b.withdraw()).count()
    }

    #[tokio::test(start_paused = true)]
    async fn twenty_percent_of_a_thousand_requests() {
        let b = RetryBudget::new(20, 0);
        for _ in 0..1000 {
            b.deposit();
        }
        assert_eq!(b.available(), 200);
        assert_eq!(count_allowed(&b, 1000), 200);
        assert_eq!(b.available(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn percent_is_not_rounded_to_a_ratio() {
        let b = RetryBudget::new(30, 0);
        for _ in 0..1000 {
            b.deposit();
        }
        assert_eq!(count_allowed(&b, 1000), 300);
    }

    #[tokio::test(start_paused = true)]
    async fn floor_allows_min_per_second_without_requests() {
        let b = RetryBudget::new(20, 10);
        assert_eq!(count_allowed(&b, 100), 10);
        advance(Duration::from_millis(500)).await;
        assert_eq!(count_allowed(&b, 100), 0, "same second");
        advance(Duration::from_millis(500)).await;
        assert_eq!(count_allowed(&b, 100), 10, "next second");
        let mut total = 20;
        for _ in 0..8 {
            advance(SLOT).await;
            total += count_allowed(&b, 100);
        }
        assert_eq!(total, 100, "10/s over a 10 s window");
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_window() {
        let b = RetryBudget::new(50, 0);
        for _ in 0..10 {
            b.deposit();
        }
        advance(Duration::from_millis(8_900)).await;
        assert_eq!(b.available(), 5, "still inside the window");
        advance(Duration::from_millis(1_100)).await;
        assert_eq!(b.available(), 0);
        assert!(!b.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn spent_retries_slide_out_with_their_slot() {
        let b = RetryBudget::new(100, 0);
        for _ in 0..4 {
            b.deposit();
        }
        assert_eq!(count_allowed(&b, 4), 4);
        advance(Duration::from_secs(5)).await;
        for _ in 0..4 {
            b.deposit();
        }
        assert_eq!(count_allowed(&b, 10), 4, "8 deposits, 4 already spent");
        advance(Duration::from_secs(5)).await;
        // The first 4 deposits and the 4 retries they paid for left the window together.
        assert_eq!(count_allowed(&b, 10), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_everything_never_retries() {
        let b = RetryBudget::new(0, 0);
        for _ in 0..100 {
            b.deposit();
        }
        assert!(!b.withdraw());
    }

    #[test]
    fn concurrent_withdrawals_never_overspend() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        let b = rt.block_on(async {
            let b = Arc::new(RetryBudget::new(10, 0));
            for _ in 0..1000 {
                b.deposit();
            }
            b
        });
        let _guard = rt.enter();
        let allowed: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let b = &b;
                    let rt = &rt;
                    s.spawn(move || {
                        let _g = rt.enter();
                        count_allowed(b, 500)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).sum()
        });
        assert_eq!(allowed, 100);
    }
}
