//! Peak-EWMA endpoint load, after Finagle's `PeakEwma` (also in tower and linkerd2-proxy):
//! `cost = ewma_rtt × (pending + 1)`.
//!
//! "Peak" means a sample above the estimate replaces it at once, while lower samples only pull
//! it down gradually (weight `1 - e^(-elapsed/τ)`), so one slow endpoint is avoided immediately
//! and trusted again only cautiously. With no samples the estimate decays toward zero, which
//! lets an endpoint that is being avoided become attractive again and get re-measured.

use std::ops::Deref;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// RTT assumed for an endpoint before its first response. linkerd2-proxy uses 30 ms too
/// (`EWMA_DEFAULT_RTT`). Too low (e.g. 1 ms) makes every new endpoint — often a cold process
/// that just started — win every comparison and take a burst of traffic before its first
/// sample lands; too high starves it until decay brings it down. 30 ms sits above typical
/// in-cluster RTTs (a few ms) so warm endpoints are preferred, while the decay toward zero
/// still brings the new one into rotation within seconds.
pub const DEFAULT_INITIAL_RTT: Duration = Duration::from_millis(30);
/// τ: how long history matters. Finagle and linkerd2-proxy both use 10 s.
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);

fn nanos_f64(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

/// One endpoint's latency estimate and in-flight count. The estimate is an f64 stored as bits
/// in an `AtomicU64` and updated with a CAS loop, so reads from the balancer never lock.
#[derive(Debug)]
pub struct PeakEwma {
    base: Instant,
    tau_nanos: f64,
    rtt_bits: AtomicU64,
    /// Nanoseconds since `base` of the last sample.
    updated_at: AtomicU64,
    pending: AtomicU32,
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self::new(DEFAULT_INITIAL_RTT, DEFAULT_DECAY)
    }
}

impl PeakEwma {
    pub fn new(initial_rtt: Duration, decay: Duration) -> Self {
        Self {
            base: Instant::now(),
            // A zero τ would make 0/0 = NaN on back-to-back samples.
            tau_nanos: nanos_f64(decay).max(1.0),
            rtt_bits: AtomicU64::new(nanos_f64(initial_rtt).to_bits()),
            updated_at: AtomicU64::new(0),
            pending: AtomicU32::new(0),
        }
    }

    fn since_base(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// `e^(-elapsed/τ)` for the time since the last sample.
    fn weight(&self, t: u64, last: u64) -> f64 {
        (-(t.saturating_sub(last) as f64) / self.tau_nanos).exp()
    }

    /// The RTT estimate at `now`, in nanoseconds, decayed for the time since the last sample.
    pub fn rtt_nanos(&self, now: Instant) -> f64 {
        let last = self.updated_at.load(Ordering::Acquire);
        let rtt = f64::from_bits(self.rtt_bits.load(Ordering::Acquire));
        rtt * self.weight(self.since_base(now), last)
    }

    /// Load for the balancer: lower is better.
    pub fn cost(&self, now: Instant) -> f64 {
        self.rtt_nanos(now) * f64::from(self.pending().saturating_add(1))
    }

    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Acquire)
    }

    /// Feeds one observed RTT. Two samples racing may lose the lower one (the second sees no
    /// elapsed time, so its weight is 0) — harmless for an estimate, and it avoids a lock.
    pub fn observe(&self, rtt: Duration, now: Instant) {
        let t = self.since_base(now);
        let last = self.updated_at.fetch_max(t, Ordering::AcqRel);
        let w = self.weight(t, last);
        let sample = nanos_f64(rtt);
        let _ = self
            .rtt_bits
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                let decayed = f64::from_bits(bits) * w;
                let next = if sample > decayed {
                    sample
                } else {
                    decayed + sample * (1.0 - w)
                };
                Some(next.to_bits())
            });
    }

    /// Marks a request as started. `this` is anything that derefs to the estimator (`&PeakEwma`,
    /// `Arc<PeakEwma>`), so a guard can be moved into a `'static` response future.
    pub fn start<P: Deref<Target = PeakEwma>>(this: P, now: Instant) -> InFlight<P> {
        this.pending.fetch_add(1, Ordering::AcqRel);
        InFlight {
            ewma: this,
            sent_at: now,
            completed: false,
        }
    }
}

/// Counts one pending request until dropped.
#[derive(Debug)]
pub struct InFlight<P: Deref<Target = PeakEwma>> {
    ewma: P,
    sent_at: Instant,
    completed: bool,
}

impl<P: Deref<Target = PeakEwma>> InFlight<P> {
    /// Records the RTT up to `now` (call when the response head arrives).
    pub fn complete(mut self, now: Instant) {
        self.ewma
            .observe(now.saturating_duration_since(self.sent_at), now);
        self.completed = true;
    }
}

impl<P: Deref<Target = PeakEwma>> Drop for InFlight<P> {
    /// A guard dropped without `complete` is usually a request cut off by a timeout. Its
    /// elapsed time is still a sample: skipping it would keep a hanging endpoint looking fast.
    fn drop(&mut self) {
        if !self.completed {
            let now = Instant::now();
            self.ewma
                .observe(now.saturating_duration_since(self.sent_at), now);
        }
        self.ewma.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::time::advance;

    const MS: f64 = 1e6;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b.abs() * 1e-9
    }

    #[tokio::test(start_paused = true)]
    async fn starts_at_initial_rtt_and_pending_multiplies() {
        let e = PeakEwma::default();
        assert!(close(e.cost(Instant::now()), 30.0 * MS));
        let a = PeakEwma::start(&e, Instant::now());
        let _b = PeakEwma::start(&e, Instant::now());
        assert_eq!(e.pending(), 2);
        assert!(close(e.cost(Instant::now()), 90.0 * MS));
        a.complete(Instant::now());
        assert_eq!(e.pending(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_higher_sample_is_taken_as_is() {
        let e = PeakEwma::new(Duration::from_millis(5), DEFAULT_DECAY);
        e.observe(Duration::from_millis(100), Instant::now());
        assert!(close(e.rtt_nanos(Instant::now()), 100.0 * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn estimate_decays_with_tau_when_idle() {
        let e = PeakEwma::new(Duration::from_millis(100), DEFAULT_DECAY);
        advance(DEFAULT_DECAY).await;
        let expected = 100.0 * MS * (-1.0f64).exp();
        assert!(close(e.rtt_nanos(Instant::now()), expected));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lower_sample_blends_by_elapsed_time() {
        let e = PeakEwma::new(Duration::from_millis(100), DEFAULT_DECAY);
        advance(Duration::from_secs(10)).await;
        e.observe(Duration::from_millis(10), Instant::now());
        let w = (-1.0f64).exp();
        let expected = 100.0 * MS * w + 10.0 * MS * (1.0 - w);
        assert!(close(e.rtt_nanos(Instant::now()), expected), "{expected}");
        // Back-to-back lower samples carry no weight: only time moves the estimate down.
        e.observe(Duration::from_millis(1), Instant::now());
        assert!(close(e.rtt_nanos(Instant::now()), expected));
    }

    #[tokio::test(start_paused = true)]
    async fn guard_records_elapsed_time_even_when_dropped() {
        let e = Arc::new(PeakEwma::new(Duration::from_millis(1), DEFAULT_DECAY));
        let g = PeakEwma::start(e.clone(), Instant::now());
        advance(Duration::from_millis(250)).await;
        drop(g);
        assert_eq!(e.pending(), 0);
        assert!(close(e.rtt_nanos(Instant::now()), 250.0 * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_decay_does_not_produce_nan() {
        let e = PeakEwma::new(Duration::from_millis(10), Duration::ZERO);
        e.observe(Duration::from_millis(1), Instant::now());
        assert!(e.cost(Instant::now()).is_finite());
    }
}
