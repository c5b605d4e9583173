//! No retry amplification down a chain (design §7b).
//!
//! In A → B → C with C failing, B's proxy retries C up to its policy. Without more, A's proxy
//! would then retry B, and each of its tries would make B's proxy retry C again:
//! `(1 + attempts)^depth` calls to C for one user request. The proxy next to B sees both sides
//! of B — the request B received (inbound) and the calls B makes while serving it (outbound) —
//! and the app forwards the trace context, so both carry the same trace id. So:
//!
//! 1. When B's outbound ends a call in failure after its retry layer ran (tries used up, budget
//!    empty, or deadline too close), it marks the call's trace id as *exhausted*.
//! 2. When B's inbound answers a request of an exhausted trace with a 5xx, it adds
//!    `x-weir-retries-exhausted: true` to the response.
//! 3. A's outbound never retries a response that carries that header. Its own failure then
//!    marks the trace in A's proxy in turn, so the rule holds at every depth.
//!
//! The user's one request then costs C at most `1 + attempts` calls. Without trace context
//! (an app that drops `traceparent`) the link is lost and each hop's retry budget is what caps
//! the extra load. The table is a fixed array of slots indexed by trace id, written only on
//! failures and read only for 5xx answers: no lock, no allocation, and a collision can only
//! cost a retry or let one through.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use http::HeaderName;
use tokio::time::Instant;

pub const RETRIES_EXHAUSTED: HeaderName = HeaderName::from_static("x-weir-retries-exhausted");

const SLOTS: usize = 4096;
/// How long a mark lasts: longer than any sane request through one hop.
const TTL: Duration = Duration::from_secs(30);

struct Slot {
    hi: AtomicU64,
    lo: AtomicU64,
    /// Milliseconds since `base` until which the mark holds; 0 = empty.
    until_ms: AtomicU64,
}

pub struct Exhausted {
    base: Instant,
    slots: Box<[Slot]>,
    /// Until when any mark may still hold (ms since `base`): while it is past, the inbound
    /// side skips even parsing the trace id — the healthy path costs one atomic load.
    live_until_ms: AtomicU64,
}

impl Default for Exhausted {
    fn default() -> Self {
        Exhausted {
            base: Instant::now(),
            slots: (0..SLOTS)
                .map(|_| Slot {
                    hi: AtomicU64::new(0),
                    lo: AtomicU64::new(0),
                    until_ms: AtomicU64::new(0),
                })
                .collect(),
            live_until_ms: AtomicU64::new(0),
        }
    }
}

/// One table per process: the inbound and outbound sides of a proxy must see the same marks.
pub fn table() -> &'static Exhausted {
    static TABLE: std::sync::LazyLock<Exhausted> = std::sync::LazyLock::new(Exhausted::default);
    &TABLE
}

impl Exhausted {
    fn split(trace: &[u8; 16]) -> (u64, u64) {
        let mut hi = [0u8; 8];
        let mut lo = [0u8; 8];
        hi.copy_from_slice(&trace[..8]);
        lo.copy_from_slice(&trace[8..]);
        (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
    }

    fn slot(&self, lo: u64) -> &Slot {
        &self.slots[(lo as usize) % SLOTS]
    }

    fn ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    pub fn mark(&self, trace: &[u8; 16], now: Instant) {
        let (hi, lo) = Self::split(trace);
        let slot = self.slot(lo);
        slot.hi.store(hi, Relaxed);
        slot.lo.store(lo, Relaxed);
        let until = self.ms(now + TTL).max(1);
        slot.until_ms.store(until, Relaxed);
        self.live_until_ms.fetch_max(until, Relaxed);
    }

    /// Whether any mark may be live; false means no request can be marked.
    pub fn any(&self, now: Instant) -> bool {
        self.live_until_ms.load(Relaxed) > self.ms(now)
    }

    /// The inbound side's half: a 5xx answer to a request whose trace this proxy's outbound
    /// gave up on tells the caller's proxy not to retry it. Read the trace id from the request
    /// only when [`Exhausted::any`] said so.
    pub fn label_response(
        &self,
        trace: Option<&[u8; 16]>,
        rsp: &mut http::Response<crate::body::ProxyBody>,
    ) {
        if rsp.status().is_server_error()
            && let Some(trace) = trace
            && self.is_marked(trace, Instant::now())
        {
            rsp.headers_mut()
                .insert(RETRIES_EXHAUSTED, http::HeaderValue::from_static("true"));
        }
    }

    pub fn is_marked(&self, trace: &[u8; 16], now: Instant) -> bool {
        let (hi, lo) = Self::split(trace);
        let slot = self.slot(lo);
        slot.until_ms.load(Relaxed) > self.ms(now)
            && slot.hi.load(Relaxed) == hi
            && slot.lo.load(Relaxed) == lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn marks_expire_and_match_exactly() {
        let table = Exhausted::default();
        let a = [7u8; 16];
        let mut b = a;
        b[0] = 8;
        let now = Instant::now();
        assert!(!table.is_marked(&a, now));
        assert!(!table.any(now));
        table.mark(&a, now);
        assert!(table.any(now));
        assert!(table.is_marked(&a, now));
        assert!(!table.is_marked(&b, now), "same slot, other trace");
        tokio::time::advance(TTL + Duration::from_millis(1)).await;
        assert!(!table.is_marked(&a, Instant::now()));
        assert!(!table.any(Instant::now()));
    }
}
