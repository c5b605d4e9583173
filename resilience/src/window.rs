//! A lock-free sliding-window counter shared by the retry budget and the breaker's failure rate.
//!
//! Each slot is one `AtomicU64` holding `epoch << 32 | count`. Tagging a slot with the epoch it
//! counts for means nobody has to "rotate" the window: a writer that finds an older tag simply
//! overwrites it, and a reader ignores slots whose tag is outside the window. That removes the
//! generation lock a rotating design needs and keeps every update a single CAS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Slots per window: 10 gives a window that slides in 10% steps, which is what Finagle and
/// tower use and is plenty for budgets and failure rates.
pub(crate) const SLOTS: usize = 10;

/// How many epochs behind a writer may be and still be recognised as stale.
const STALE_SLACK: usize = 4 * SLOTS;

fn pack(tag: u32, count: u32) -> u64 {
    (u64::from(tag) << 32) | u64::from(count)
}

fn unpack(raw: u64) -> (u32, u32) {
    ((raw >> 32) as u32, raw as u32)
}

/// Maps instants to slot epochs. Tags are the low 32 bits of the epoch and are compared with
/// wrapping arithmetic, so a long-lived process never overflows them.
#[derive(Debug)]
pub(crate) struct Clock {
    base: Instant,
    slot_nanos: u64,
}

impl Clock {
    pub(crate) fn new(base: Instant, slot: Duration) -> Self {
        // A zero-length window from config must not divide by zero.
        let slot_nanos = u64::try_from(slot.as_nanos()).unwrap_or(u64::MAX).max(1);
        Self { base, slot_nanos }
    }

    pub(crate) fn epoch(&self, now: Instant) -> u32 {
        let nanos =
            u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX);
        (nanos / self.slot_nanos) as u32
    }
}

/// A counter for a single epoch (e.g. "reserve retries used this second").
#[derive(Debug, Default)]
pub(crate) struct EpochCount(AtomicU64);

impl EpochCount {
    fn count_at(raw: u64, epoch: u32) -> u32 {
        let (tag, count) = unpack(raw);
        if tag == epoch { count } else { 0 }
    }

    /// Increments unless the count for `epoch` already reached `limit`.
    pub(crate) fn try_add_below(&self, epoch: u32, limit: u64) -> bool {
        let mut raw = self.0.load(Ordering::Acquire);
        loop {
            let count = Self::count_at(raw, epoch);
            if u64::from(count) >= limit {
                return false;
            }
            let next = pack(epoch, count.saturating_add(1));
            match self
                .0
                .compare_exchange_weak(raw, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(seen) => raw = seen,
            }
        }
    }
}

/// `SLOTS` epoch-tagged counters; the window is the current epoch and the `SLOTS - 1` before it.
#[derive(Debug, Default)]
pub(crate) struct Window {
    slots: [AtomicU64; SLOTS],
}

impl Window {
    fn index(epoch: u32) -> usize {
        epoch as usize % SLOTS
    }

    /// Count a slot contributes to the window ending at `epoch`.
    fn live(raw: u64, epoch: u32) -> u64 {
        let (tag, count) = unpack(raw);
        // A tag newer than `epoch` (a caller holding a slightly stale `now`) wraps to a huge
        // age and is skipped: it is at most one slot of undercount for that caller.
        if (epoch.wrapping_sub(tag) as usize) < SLOTS {
            u64::from(count)
        } else {
            0
        }
    }

    /// Value to store in the current slot after adding `n`, given what is there now.
    fn bumped(raw: u64, epoch: u32, n: u32) -> u64 {
        let (tag, count) = unpack(raw);
        if tag == epoch {
            pack(tag, count.saturating_add(n))
        } else if count != 0 && (tag.wrapping_sub(epoch) as usize) <= STALE_SLACK {
            // The slot already belongs to a later epoch: this caller held a stale `now` and
            // its own epoch left the window. Counting into the newer slot (slightly
            // conservative for budgets) beats wiping newer data. The bound keeps a slot idle
            // for ages, whose tag has wrapped around to look "ahead", from being mistaken
            // for a newer one.
            pack(tag, count.saturating_add(n))
        } else {
            pack(epoch, n)
        }
    }

    pub(crate) fn add(&self, epoch: u32, n: u32) {
        let slot = &self.slots[Self::index(epoch)];
        let mut raw = slot.load(Ordering::Acquire);
        loop {
            let next = Self::bumped(raw, epoch, n);
            match slot.compare_exchange_weak(raw, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(seen) => raw = seen,
            }
        }
    }

    pub(crate) fn sum(&self, epoch: u32) -> u64 {
        self.slots
            .iter()
            .map(|s| Self::live(s.load(Ordering::Acquire), epoch))
            .sum()
    }

    /// Adds one unless the window total already reached `limit`. The CAS is on the current
    /// slot, which is the only one concurrent callers write, so two callers cannot both take
    /// the last unit.
    pub(crate) fn try_add_below(&self, epoch: u32, limit: u64) -> bool {
        let idx = Self::index(epoch);
        let slot = &self.slots[idx];
        let mut raw = slot.load(Ordering::Acquire);
        loop {
            let others: u64 = self
                .slots
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != idx)
                .map(|(_, s)| Self::live(s.load(Ordering::Acquire), epoch))
                .sum();
            if others + Self::live(raw, epoch) >= limit {
                return false;
            }
            let next = Self::bumped(raw, epoch, 1);
            match slot.compare_exchange_weak(raw, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(seen) => raw = seen,
            }
        }
    }

    pub(crate) fn reset(&self) {
        for s in &self.slots {
            s.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_expire_after_the_window() {
        let w = Window::default();
        w.add(5, 3);
        w.add(6, 4);
        assert_eq!(w.sum(6), 7);
        assert_eq!(w.sum(14), 7);
        assert_eq!(w.sum(15), 4, "epoch 5 is 10 slots old at 15");
        assert_eq!(w.sum(16), 0);
    }

    #[test]
    fn a_reused_slot_starts_from_zero() {
        let w = Window::default();
        w.add(1, 9);
        w.add(11, 1);
        assert_eq!(w.sum(11), 1);
    }

    #[test]
    fn stale_writer_does_not_wipe_newer_slot() {
        let w = Window::default();
        w.add(12, 5);
        w.add(2, 1);
        assert_eq!(w.sum(12), 6);
    }

    #[test]
    fn a_slot_idle_for_more_than_half_the_tag_range_is_still_old() {
        let w = Window::default();
        let far = 3_000_000_000u32;
        w.add(far, 1);
        assert_eq!(w.sum(far), 1, "an empty slot with tag 0 is taken over");
        let w = Window::default();
        w.add(5, 3);
        let later = 5 + 3_000_000_000u32;
        w.add(later, 1);
        assert_eq!(
            w.sum(later),
            1,
            "a used slot idle for 3e9 epochs is replaced"
        );
    }

    #[test]
    fn try_add_below_stops_at_limit_and_tags_wrap() {
        let w = Window::default();
        let e = u32::MAX - 1;
        assert!(w.try_add_below(e, 2));
        assert!(w.try_add_below(e.wrapping_add(2), 2));
        assert!(!w.try_add_below(e.wrapping_add(3), 2));
        assert_eq!(w.sum(e.wrapping_add(3)), 2);
    }

    #[test]
    fn epoch_count_resets_each_epoch() {
        let c = EpochCount::default();
        assert!(c.try_add_below(7, 1));
        assert!(!c.try_add_below(7, 1));
        assert!(c.try_add_below(8, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn clock_maps_time_to_epochs() {
        let clock = Clock::new(Instant::now(), Duration::from_millis(100));
        assert_eq!(clock.epoch(Instant::now()), 0);
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(clock.epoch(Instant::now()), 2);
        let zero = Clock::new(Instant::now(), Duration::ZERO);
        tokio::time::advance(Duration::from_nanos(5)).await;
        assert_eq!(zero.epoch(Instant::now()), 5);
    }
}
