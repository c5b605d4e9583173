//! Resilience primitives used by the proxy's request path. Each module owns one behaviour and
//! knows nothing about sockets: the proxy wires them into its layers.
//!
//! Shared rules: time comes from `tokio::time` (tests pause it), randomness comes from the
//! caller, and the hot paths are atomics only — no locks, no per-call allocation.

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod bulkhead;
pub mod deadline;
pub mod ewma;
pub mod p2c;
pub mod ratelimit;
mod window;

pub use backoff::Backoff;
pub use breaker::{
    Admit, BreakerConfig, BreakerView, EjectionGate, EndpointBreaker, FailureRate, State,
};
pub use budget::RetryBudget;
pub use bulkhead::{Bulkhead, BulkheadFull, BulkheadPermit};
pub use ewma::{InFlight, PeakEwma};
pub use p2c::p2c;
pub use ratelimit::{RateLimitError, RateLimiter, retry_after_secs};
