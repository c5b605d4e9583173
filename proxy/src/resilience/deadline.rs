//! The call's time budget: the policy's request timeout, capped by the deadline the caller
//! propagated, so no hop keeps working for a caller that has given up (design §7a).
use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;
use weir_resilience::deadline::{self, GRPC_TIMEOUT, WEIR_TIMEOUT_MS};

#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub at: Option<Instant>,
}

impl Deadline {
    pub fn new(start: Instant, request_timeout: Option<Duration>, headers: &HeaderMap) -> Self {
        let inherited = deadline::remaining_from_headers(headers);
        let budget = match (request_timeout, inherited) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Deadline {
            at: budget.map(|b| start + b),
        }
    }

    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.at.map(|at| at.saturating_duration_since(now))
    }

    /// Tells the next hop how long it has: always `x-weir-timeout-ms`, and `grpc-timeout` when
    /// the request is gRPC (its servers read that one).
    pub fn propagate(&self, headers: &mut HeaderMap, now: Instant) {
        let Some(left) = self.remaining(now) else {
            return;
        };
        headers.insert(WEIR_TIMEOUT_MS, deadline::write_timeout_ms(left));
        if headers.contains_key(GRPC_TIMEOUT) || is_grpc(headers) {
            headers.insert(GRPC_TIMEOUT, deadline::write_grpc_timeout(left));
        }
    }

    /// The per-try limit: `per_try` capped by what is left.
    pub fn try_limit(&self, per_try: Option<Duration>, now: Instant) -> Option<Duration> {
        match (per_try, self.remaining(now)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_smaller_budget_wins_and_travels() {
        let now = Instant::now();
        let mut h = HeaderMap::new();
        h.insert(WEIR_TIMEOUT_MS, "300".parse().expect("value"));
        let d = Deadline::new(now, Some(Duration::from_secs(2)), &h);
        assert_eq!(d.remaining(now), Some(Duration::from_millis(300)));
        let d2 = Deadline::new(now, Some(Duration::from_millis(100)), &h);
        assert_eq!(d2.remaining(now), Some(Duration::from_millis(100)));
        assert_eq!(
            Deadline::new(now, None, &HeaderMap::new()).remaining(now),
            None
        );

        let mut out = HeaderMap::new();
        out.insert(
            http::header::CONTENT_TYPE,
            "application/grpc".parse().expect("v"),
        );
        d.propagate(&mut out, now + Duration::from_millis(100));
        assert_eq!(out[WEIR_TIMEOUT_MS], "200");
        assert_eq!(out[GRPC_TIMEOUT], "200000u");
        assert_eq!(
            d.try_limit(Some(Duration::from_secs(1)), now),
            Some(Duration::from_millis(300))
        );
    }
}
