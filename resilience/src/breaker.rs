//! Per-endpoint circuit breaking (`spec.circuitBreaker`): outlier ejection with exponential
//! ejection times, a single half-open probe, and a per-backend cap on how many endpoints may be
//! ejected at once.
//!
//! The whole state machine is one `AtomicU64` (`time << 2 | tag`) so that the transitions that
//! must be exclusive (open, grant the probe, close) are single CASes and the hot path (Closed,
//! success) is a load plus, at most, two relaxed counter updates.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::window::{Clock, SLOTS, Window};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailureRate {
    pub percent: u32,
    pub min_requests: u32,
    pub window: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Eject after this many failures in a row (0 behaves as 1).
    pub consecutive_failures: Option<u32>,
    /// Eject when at least `percent`% of at least `min_requests` requests in `window` failed.
    pub failure_rate: Option<FailureRate>,
    /// First ejection lasts `ejection_base`; each failed probe doubles it, up to `ejection_max`.
    pub ejection_base: Duration,
    pub ejection_max: Duration,
    /// Share of one backend's endpoints that may be ejected at once (see [`EjectionGate`]).
    pub max_percent: u32,
}

impl BreakerConfig {
    /// The gate for one backend with `endpoints` endpoints, using this config's `max_percent`.
    pub fn gate(&self, endpoints: usize) -> Arc<EjectionGate> {
        Arc::new(EjectionGate::new(endpoints, self.max_percent))
    }

    fn ejection(&self, consecutive_ejections: u32) -> Duration {
        Backoff::new(self.ejection_base, self.ejection_max).ceiling(consecutive_ejections)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// The ejection expired: the next caller gets (or already got) the single probe.
    HalfOpen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    No,
    /// Send this request as the half-open probe and `record` its outcome.
    Probe,
}

/// Read-only view for `/metrics` and `/config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerView {
    /// "closed" | "open" | "half-open"
    pub state: &'static str,
    /// Times this endpoint was ejected (including re-ejections after failed probes).
    pub ejections: u32,
    /// Ejections since the endpoint was last healthy; the current ejection lasts
    /// `base × 2^(consecutive_ejections - 1)`.
    pub consecutive_ejections: u32,
    pub consecutive_failures: u32,
}

/// Caps ejections across the endpoints of one backend: at most `max_percent`% of them, but
/// always at least one, so a single bad endpoint among few can still be ejected.
#[derive(Debug)]
pub struct EjectionGate {
    total: AtomicUsize,
    ejected: AtomicUsize,
    max_percent: u32,
}

impl EjectionGate {
    pub fn new(total: usize, max_percent: u32) -> Self {
        Self {
            total: AtomicUsize::new(total),
            ejected: AtomicUsize::new(0),
            max_percent: max_percent.min(100),
        }
    }

    /// Endpoints come and go while breakers live on; the limit follows the current count.
    pub fn set_total(&self, total: usize) {
        self.total.store(total, Ordering::Relaxed);
    }

    pub fn limit(&self) -> usize {
        let total = self.total.load(Ordering::Relaxed);
        (total.saturating_mul(self.max_percent as usize) / 100).max(1)
    }

    pub fn ejected(&self) -> usize {
        self.ejected.load(Ordering::Relaxed)
    }

    /// Reserves an ejection slot; `false` means the cap is reached.
    pub fn try_eject(&self) -> bool {
        let limit = self.limit();
        self.ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn release(&self) {
        let _ = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

const TAG_CLOSED: u64 = 0;
/// Payload: the instant the ejection ends.
const TAG_OPEN: u64 = 1;
/// Payload: the instant the probe was granted.
const TAG_PROBING: u64 = 2;
const TAG_MASK: u64 = 0b11;
/// 62 bits of nanoseconds is ~146 years of uptime.
const MAX_NANOS: u64 = u64::MAX >> 2;

fn encode(tag: u64, nanos: u64) -> u64 {
    (nanos.min(MAX_NANOS) << 2) | tag
}

fn decode(raw: u64) -> (u64, u64) {
    (raw & TAG_MASK, raw >> 2)
}

fn as_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One endpoint's breaker. Shares its config and its backend's gate through `Arc`s so a
/// snapshot swap can rebuild the endpoint list without touching live breakers.
#[derive(Debug)]
pub struct EndpointBreaker {
    config: Arc<BreakerConfig>,
    gate: Arc<EjectionGate>,
    base: Instant,
    state: AtomicU64,
    consecutive_failures: AtomicU32,
    consecutive_ejections: AtomicU32,
    ejections: AtomicU32,
    rate_clock: Clock,
    requests: Window,
    failures: Window,
}

impl EndpointBreaker {
    pub fn new(config: Arc<BreakerConfig>, gate: Arc<EjectionGate>) -> Self {
        let base = Instant::now();
        let slot = config
            .failure_rate
            .map_or(Duration::from_secs(1), |r| r.window / SLOTS as u32);
        Self {
            rate_clock: Clock::new(base, slot),
            config,
            gate,
            base,
            state: AtomicU64::new(TAG_CLOSED),
            consecutive_failures: AtomicU32::new(0),
            consecutive_ejections: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            requests: Window::default(),
            failures: Window::default(),
        }
    }

    fn nanos(&self, now: Instant) -> u64 {
        as_nanos(now.saturating_duration_since(self.base))
    }

    /// A probe that never reports (its request future was dropped) must not wedge the
    /// endpoint in half-open forever, so the probe is a lease: after `ejection_base` another
    /// caller may probe. Request timeouts are normally far shorter than ejection times.
    fn probe_lease(&self) -> u64 {
        as_nanos(self.config.ejection_base)
    }

    pub fn state(&self, now: Instant) -> State {
        let (tag, at) = decode(self.state.load(Ordering::Acquire));
        match tag {
            TAG_OPEN if self.nanos(now) < at => State::Open {
                until: self.base + Duration::from_nanos(at),
            },
            TAG_OPEN | TAG_PROBING => State::HalfOpen,
            _ => State::Closed,
        }
    }

    pub fn try_acquire(&self, now: Instant) -> Admit {
        let raw = self.state.load(Ordering::Acquire);
        let (tag, at) = decode(raw);
        let t = self.nanos(now);
        let probe_due = match tag {
            TAG_CLOSED => return Admit::Yes,
            TAG_OPEN => t >= at,
            _ => t >= at.saturating_add(self.probe_lease()),
        };
        if !probe_due {
            return Admit::No;
        }
        // Only the CAS winner probes; everyone who saw the same state gets No.
        match self.state.compare_exchange(
            raw,
            encode(TAG_PROBING, t),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Admit::Probe,
            Err(_) => Admit::No,
        }
    }

    /// Reports a finished request. While half-open the report is taken as the probe's (the
    /// breaker cannot tell requests apart; ones admitted before the ejection finished long
    /// before it expired). Reports while open are late and ignored.
    pub fn record(&self, success: bool, now: Instant) {
        let raw = self.state.load(Ordering::Acquire);
        match decode(raw).0 {
            TAG_CLOSED => self.record_closed(success, now),
            TAG_PROBING if success => self.close(raw),
            TAG_PROBING => self.reopen(raw, now),
            _ => {}
        }
    }

    fn close(&self, probing: u64) {
        let closed = self
            .state
            .compare_exchange(probing, TAG_CLOSED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if closed {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.consecutive_ejections.store(0, Ordering::Relaxed);
            // Failures from before the ejection must not re-trip the fresh endpoint.
            self.requests.reset();
            self.failures.reset();
            self.gate.release();
        }
    }

    fn reopen(&self, probing: u64, now: Instant) {
        // Still holds its gate slot from the first ejection, so no new gate check.
        let level = self.consecutive_ejections.load(Ordering::Relaxed);
        let until = self
            .nanos(now)
            .saturating_add(as_nanos(self.config.ejection(level)));
        let reopened = self
            .state
            .compare_exchange(
                probing,
                encode(TAG_OPEN, until),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if reopened {
            self.note_ejection();
        }
    }

    fn record_closed(&self, success: bool, now: Instant) {
        let rate = self.config.failure_rate;
        let epoch = self.rate_clock.epoch(now);
        if rate.is_some() {
            self.requests.add(epoch, 1);
        }
        if success {
            // Skip the store when already zero: a shared cache line written by every
            // successful request would be contended for nothing.
            if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                self.consecutive_failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let failures = self
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let by_count = self
            .config
            .consecutive_failures
            .is_some_and(|n| failures >= n.max(1));
        let mut by_rate = false;
        if let Some(r) = rate {
            self.failures.add(epoch, 1);
            let total = self.requests.sum(epoch);
            let failed = self.failures.sum(epoch);
            by_rate = total >= u64::from(r.min_requests.max(1))
                && failed.saturating_mul(100) >= total.saturating_mul(u64::from(r.percent));
        }
        if by_count || by_rate {
            self.try_open(now);
        }
    }

    fn try_open(&self, now: Instant) {
        if !self.gate.try_eject() {
            // Refused: the failures stay counted, so the next failure asks again.
            return;
        }
        let level = self.consecutive_ejections.load(Ordering::Relaxed);
        let until = self
            .nanos(now)
            .saturating_add(as_nanos(self.config.ejection(level)));
        match self.state.compare_exchange(
            TAG_CLOSED,
            encode(TAG_OPEN, until),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => self.note_ejection(),
            // Another failing request opened it first and holds the slot.
            Err(_) => self.gate.release(),
        }
    }

    fn note_ejection(&self) {
        self.consecutive_ejections.fetch_add(1, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self, now: Instant) -> BreakerView {
        BreakerView {
            state: match self.state(now) {
                State::Closed => "closed",
                State::Open { .. } => "open",
                State::HalfOpen => "half-open",
            },
            ejections: self.ejections.load(Ordering::Relaxed),
            consecutive_ejections: self.consecutive_ejections.load(Ordering::Relaxed),
            consecutive_failures: self.consecutive_failures.load(Ordering::Relaxed),
        }
    }
}

impl Drop for EndpointBreaker {
    /// A removed endpoint must give back its ejection slot or the backend's cap shrinks.
    fn drop(&mut self) {
        if decode(*self.state.get_mut()).0 != TAG_CLOSED {
            self.gate.release();
        }
    }
}

#[cfg(test)]
#[path = "breaker_tests.rs"]
mod tests;
