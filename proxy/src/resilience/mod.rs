//! The caller's resilience, compiled from the callee's ServicePolicy (design §6, §7).
//!
//! The layers of one outbound mesh call, outermost first. The order is deliberate and lives
//! only here; `outbound/mesh.rs` runs them in this order:
//!
//! 1. **deadline** (`deadline`): the budget of the whole call is the smaller of
//!    `timeouts.request` and what the caller has left (`x-weir-timeout-ms` / `grpc-timeout` on
//!    the incoming request). Everything below runs inside it; running out is `504 timeout`.
//! 2. **fault** (`fault`): injected delay, then injected abort, before any real work, so a
//!    chaos drill costs the callee nothing.
//! 3. **bulkhead** (`policy::CallPolicy::bulkhead`): at most `maxConcurrent` calls to this
//!    service from this proxy, `maxPending` waiting up to `pendingTimeout`; overflow is
//!    `503 bulkhead-full` at once. Above the retries, so one call holds one slot for all its
//!    tries and a slow dependency cannot take more than its share of the proxy.
//! 4. **retry** (`retry`): tries while the outcome is on the `on` list, the method may be
//!    replayed, the body was small enough to buffer (64 KiB), attempts and the retry budget
//!    allow, and the deadline leaves room for the backoff. A response is judged by its head:
//!    once it streams back it is the answer. Retries stop early when the callee says it already
//!    retried to exhaustion (`amplification`).
//! 5. **balance + breaker** (`balance`): per try, P2C over peak-EWMA latency among endpoints
//!    the circuit breaker admits; none admitted is `503 circuit-open`.
//! 6. **per-try timeout**: `timeouts.perTry` (and `timeouts.idle`, the wait for the response
//!    head), capped by the deadline; a try that runs out is a failure the retry layer may
//!    retry, and counts against the endpoint's breaker. `timeouts.connect` bounds getting a
//!    connection to the endpoint's proxy.
//!
//! These are plain async functions, not boxed `tower::Service`s: each layer is one small module
//! with its own tests, and the compiler inlines the whole chain with no allocation per request.
//! The callee's side adds the rate limit (`inbound`).

pub mod amplification;
pub mod balance;
pub mod deadline;
pub mod fault;
pub mod policy;
pub mod rand;
pub mod retry;
