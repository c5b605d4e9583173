//! Where calls land: a mesh service's endpoints (other proxies' inbound listeners) and the
//! per-endpoint state that outlives snapshots, below routes, policy layers and the snapshot.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use weir_resilience::{EjectionGate, EndpointBreaker};

use crate::client::h2::H2Slot;

/// One address of a mesh service: another proxy's inbound listener.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub h2: Arc<H2Slot>,
    /// Peak-EWMA latency and requests in flight, for load balancing.
    pub lb: weir_resilience::PeakEwma,
    /// Circuit breaker, when the service's policy has one.
    pub breaker: arc_swap::ArcSwapOption<Breaker>,
}

/// The endpoints of one service: what a route's backend points at.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Expected SPIFFE identity of the endpoints, checked once mTLS lands.
    pub identity: Option<String>,
    next: AtomicUsize,
}

impl Backend {
    pub fn empty(name: &str) -> Self {
        Backend {
            name: name.to_owned(),
            endpoints: Vec::new(),
            identity: None,
            next: AtomicUsize::new(0),
        }
    }

    /// A backend for `name` with these endpoints and the identity expected at them.
    pub fn new(name: &str, endpoints: Vec<Arc<Endpoint>>, identity: Option<String>) -> Self {
        Backend {
            endpoints,
            identity,
            ..Backend::empty(name)
        }
    }

    /// Round robin; the resilience work replaces this with P2C over peak EWMA.
    pub fn pick(&self) -> Option<&Arc<Endpoint>> {
        match self.endpoints.len() {
            0 => None,
            1 => self.endpoints.first(),
            n => self.endpoints.get(self.next.fetch_add(1, Relaxed) % n),
        }
    }
}

/// An endpoint's circuit breaker and the settings it was made with (kept across snapshots
/// while they do not change, so an ejection survives a config push).
pub struct Breaker {
    pub spec: weir_policy::CircuitBreaker,
    pub gate: Arc<EjectionGate>,
    pub inner: EndpointBreaker,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker").finish_non_exhaustive()
    }
}
