//! Picking an endpoint for one try: power of two choices over peak-EWMA cost, among the
//! endpoints the circuit breaker admits.
use std::sync::Arc;

use tokio::time::Instant;
use weir_resilience::{Admit, State};

use crate::endpoint::Endpoint;
use crate::errors::ProxyError;

/// The latency a failed try is recorded with, whatever it took: a refused connection fails in
/// microseconds and must not make its endpoint look fast (Finagle's failure penalty).
pub const FAILURE_PENALTY: std::time::Duration = std::time::Duration::from_secs(1);

/// `avoid`: the endpoint the previous try of this call failed on, skipped when another one is
/// eligible (a retry should not go back to the same broken place).
pub fn pick(
    endpoints: &[Arc<Endpoint>],
    now: Instant,
    rand: u64,
    avoid: Option<std::net::SocketAddr>,
) -> Result<&Arc<Endpoint>, ProxyError> {
    match endpoints {
        [] => return Err(ProxyError::NoEndpoints),
        // Nothing to choose between (and nothing to avoid): skip the draws and the state
        // check; this admission is the one the general path ends with for one endpoint.
        [ep] => {
            return if admit(ep, now) {
                Ok(ep)
            } else {
                Err(ProxyError::CircuitOpen)
            };
        }
        _ => {}
    }
    let closed = |ep: &Arc<Endpoint>| {
        ep.breaker
            .load()
            .as_ref()
            .is_none_or(|b| !matches!(b.inner.state(now), State::Open { .. }))
    };
    let cost = |ep: &Arc<Endpoint>| ep.lb.cost(now);
    let chosen = avoid
        .filter(|_| endpoints.len() > 1)
        .and_then(|skip| {
            weir_resilience::p2c(endpoints, cost, |ep| ep.addr != skip && closed(ep), rand)
        })
        .or_else(|| weir_resilience::p2c(endpoints, cost, closed, rand));
    if let Some(ep) = chosen
        && admit(ep, now)
    {
        return Ok(ep);
    }
    // Lost a race for a probe, or nothing looked eligible: any endpoint that admits now.
    endpoints
        .iter()
        .find(|ep| admit(ep, now))
        .ok_or(ProxyError::CircuitOpen)
}

fn admit(ep: &Endpoint, now: Instant) -> bool {
    match ep.breaker.load().as_ref() {
        None => true,
        Some(b) => !matches!(b.inner.try_acquire(now), Admit::No),
    }
}

/// Tells the endpoint's breaker how the try went.
pub fn record(ep: &Endpoint, success: bool, now: Instant) {
    if let Some(b) = ep.breaker.load().as_ref() {
        b.inner.record(success, now);
    }
}
