//! Per-destination concurrency limit with a short, bounded queue (`spec.bulkhead`).
//!
//! A bulkhead keeps one slow dependency from soaking up every connection and task in the
//! proxy: beyond `max_concurrent` in flight, up to `max_pending` callers wait at most
//! `pending_timeout`; everyone else is refused at once so the caller sees `503 bulkhead-full`
//! instead of queueing behind a dependency that is already saturated.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BulkheadFull {
    #[error(
        "bulkhead full: {max_concurrent} requests in flight and {max_pending} already waiting; raise spec.bulkhead.maxConcurrent/maxPending or shed load"
    )]
    QueueFull {
        max_concurrent: usize,
        max_pending: usize,
    },
    #[error(
        "bulkhead full: no slot freed within {timeout:?}; raise spec.bulkhead.pendingTimeout or maxConcurrent"
    )]
    PendingTimeout { timeout: Duration },
}

#[derive(Debug)]
pub struct Bulkhead {
    // The semaphore is behind its own Arc so permits can be owned ('static) and travel with a
    // response body, while the bulkhead itself can live inside a config snapshot.
    semaphore: Arc<Semaphore>,
    max_concurrent: usize,
    max_pending: usize,
    pending_timeout: Duration,
    pending: AtomicUsize,
}

/// Holds one concurrency slot until dropped.
#[derive(Debug)]
pub struct BulkheadPermit {
    _permit: OwnedSemaphorePermit,
}

/// Undoes the pending count however the wait ends, including the caller's future being dropped.
struct PendingSlot<'a>(&'a AtomicUsize);

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Bulkhead {
    pub fn new(max_concurrent: usize, max_pending: usize, pending_timeout: Duration) -> Self {
        // Semaphore::new panics above MAX_PERMITS; no real config gets near it.
        let max_concurrent = max_concurrent.min(Semaphore::MAX_PERMITS);
        Self {
            semaphore: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            max_pending,
            pending_timeout,
            pending: AtomicUsize::new(0),
        }
    }

    pub async fn acquire(&self) -> Result<BulkheadPermit, BulkheadFull> {
        // Tokio's semaphore hands freed permits to queued waiters first, so this fast path
        // cannot jump the queue.
        if let Ok(permit) = self.semaphore.clone().try_acquire_owned() {
            return Ok(BulkheadPermit { _permit: permit });
        }
        let max_pending = self.max_pending;
        if self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max_pending).then_some(n + 1)
            })
            .is_err()
        {
            return Err(BulkheadFull::QueueFull {
                max_concurrent: self.max_concurrent,
                max_pending,
            });
        }
        let _slot = PendingSlot(&self.pending);
        let wait = self.semaphore.clone().acquire_owned();
        match tokio::time::timeout(self.pending_timeout, wait).await {
            Ok(Ok(permit)) => Ok(BulkheadPermit { _permit: permit }),
            // The semaphore is never closed; treat it like a timeout rather than panic.
            Ok(Err(_)) | Err(_) => Err(BulkheadFull::PendingTimeout {
                timeout: self.pending_timeout,
            }),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.max_concurrent
            .saturating_sub(self.semaphore.available_permits())
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{Instant, advance};

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn third_waits_fourth_fails_at_once_third_times_out() {
        let b = Arc::new(Bulkhead::new(2, 1, 100 * MS));
        let _p1 = b.acquire().await.expect("first");
        let _p2 = b.acquire().await.expect("second");
        assert_eq!(b.in_flight(), 2);

        let start = Instant::now();
        let third = tokio::spawn({
            let b = b.clone();
            async move { (b.acquire().await.map(drop), Instant::now()) }
        });
        tokio::task::yield_now().await;
        assert_eq!(b.pending(), 1);

        let fourth_at = Instant::now();
        let fourth = b.acquire().await;
        assert!(
            matches!(fourth, Err(BulkheadFull::QueueFull { .. })),
            "{fourth:?}"
        );
        assert_eq!(Instant::now(), fourth_at, "overflow must not wait");

        let (third, done_at) = third.await.expect("task");
        assert_eq!(
            third,
            Err(BulkheadFull::PendingTimeout { timeout: 100 * MS })
        );
        assert_eq!(done_at - start, 100 * MS);
        assert_eq!(b.pending(), 0);
        assert_eq!(b.in_flight(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_the_freed_permit() {
        let b = Arc::new(Bulkhead::new(2, 1, 100 * MS));
        let p1 = b.acquire().await.expect("first");
        let _p2 = b.acquire().await.expect("second");
        let third = tokio::spawn({
            let b = b.clone();
            async move {
                let p = b.acquire().await;
                (p, Instant::now())
            }
        });
        tokio::task::yield_now().await;
        let start = Instant::now();
        advance(40 * MS).await;
        drop(p1);
        let (p3, at) = third.await.expect("task");
        assert!(p3.is_ok());
        assert_eq!(at - start, 40 * MS);
        assert_eq!(b.in_flight(), 2);
        assert_eq!(b.pending(), 0);
        drop(p3);
        assert_eq!(b.in_flight(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_frees_its_pending_slot() {
        let b = Bulkhead::new(1, 1, 100 * MS);
        let _p = b.acquire().await.expect("first");
        let wait = b.acquire();
        let timed = tokio::time::timeout(10 * MS, wait).await;
        assert!(timed.is_err(), "outer timeout fires first");
        assert_eq!(b.pending(), 0);
        let again = b.acquire();
        let timed = tokio::time::timeout(10 * MS, again).await;
        assert!(
            timed.is_err(),
            "the slot is usable again: it waited instead of overflowing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn zero_pending_refuses_immediately() {
        let b = Bulkhead::new(1, 0, 100 * MS);
        let _p = b.acquire().await.expect("first");
        let start = Instant::now();
        assert!(matches!(
            b.acquire().await,
            Err(BulkheadFull::QueueFull { .. })
        ));
        assert_eq!(Instant::now(), start);
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = BulkheadFull::QueueFull {
            max_concurrent: 2,
            max_pending: 1,
        };
        assert!(e.to_string().contains("maxPending"));
    }
}
