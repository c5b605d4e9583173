//! Spans for the proxy's two sides, on top of `weir-trace` (propagation, records, export).
//!
//! One [`Tracing`] per process, shared by `Inbound` and `Outbound` in an `Arc`. Per request
//! a side asks it for a decision, writes the decision into the forwarded request, and hands
//! the finished span back. What each decision costs on the hot path:
//!
//! - no span output (neither `OTEL_EXPORTER_OTLP_ENDPOINT` nor `--trace-file`): one branch;
//!   headers pass untouched.
//! - not sampled because the request already says so (`traceparent …-00`, `b3: 0`): the
//!   header look-ups of `weir_trace::extract`; headers pass untouched, since the decision
//!   they carry is already the right one for the next hop.
//! - not sampled, decided here (head sampling): the ids are still written, so the next hops
//!   agree instead of rolling their own dice (no half traces) and every hop sees one trace id
//!   (retry-amplification marks rely on it). The header value is carved out of a per-thread
//!   arena: one allocation per ~70 requests, not one each.
//! - sampled: the span's attributes are captured (a few small allocations) and a
//!   `SpanRecord` is queued without waiting (`Tracer::record`).
//!
//! No locks, no logging: randomness is a per-thread splitmix64 word.
//!
//! # Where the calls go
//! Inbound (`inbound/request.rs`): [`Tracing::server`] as a request arrives, [`Tracing::forward`]
//! before it goes to the app, [`Tracing::finish_server`] with the response sent back.
//!
//! A sampled span ends when its response body does (last frame, error or drop), not at the
//! head: the `finish_*` calls hand the record to the body ([`body`]).
//!
//! Outbound (`outbound/mesh.rs`), one CLIENT span per call and one child CLIENT span per try,
//! which is what the callee's SERVER span hangs under. A span whose future is dropped (caller
//! gone, call deadline fired mid-try) is still recorded, as `weir.error: cancelled`.
//! ```ignore
//! // to_mesh, around mesh_call (the span then also covers 503 circuit-open, bulkhead-full,
//! // fault aborts and timeouts):
//! let call = self.tracing.client_call(&req, &svc.name, snapshot.sampling);
//! let mut result = self.mesh_call(snapshot, svc, req, &call).await;
//! self.tracing.finish_call(call, &mut result);
//! let rsp = result.unwrap_or_else(ProxyError::response);
//!
//! // every try (also the single try of a call without retries, and an upgrade), on the
//! // try's own request right before it is sent; `n` counts from 1:
//! let span = self.tracing.attempt(call, n, attempt_req.headers_mut());
//! let (mut result, endpoint) = self.try_at(backend, attempt_req, …).await;
//! self.tracing.finish_attempt(span, &mut result, endpoint); // set_breaker(…) before: optional
//! ```
//!
//! # Where the code is
//! `server` and `client`: the two sides' calls above; `span`: what a sampled span records,
//! also for a dropped request; `propagate`: the allocation-free header values and ids;
//! [`body`]: spans that end with their response body.

mod body;
mod client;
mod propagate;
mod server;
mod span;

#[cfg(test)]
mod tests;

pub use body::SpanBody;

use std::sync::Arc;

use http::{HeaderMap, Response};
use weir_trace::{Sampling, SpanRecord, TraceContext, Tracer};

use propagate::random;
use span::Info;

pub struct Tracing {
    tracer: Tracer,
    /// This proxy's service: `server.address` of its SERVER spans.
    service: Arc<str>,
}

/// What one hop does with one request's trace context.
#[derive(Debug)]
enum Hop {
    /// No span output: nothing recorded, headers untouched.
    Off,
    /// Not sampled, and the request already carries that decision: headers untouched.
    Inherited,
    /// Not sampled by this hop's head sampling: the decision is written for the next hops.
    Denied(TraceContext),
    /// Recorded when finished.
    Sampled(TraceContext, Box<Info>),
}

/// The CLIENT span of one outbound mesh call (all its attempts). From [`Tracing::client_call`].
#[derive(Debug)]
pub struct CallTrace(Hop);

/// One try of a call: a CLIENT span under the call's, and the parent of the callee's SERVER
/// span. From [`Tracing::attempt`].
#[derive(Debug)]
pub struct AttemptTrace {
    hop: Hop,
    n: u32,
    breaker: Option<&'static str>,
}

/// The SERVER span of one inbound request. From [`Tracing::server`].
#[derive(Debug)]
pub struct ServerTrace(Hop);

/// The trace id a request carries (W3C or B3), whether or not it is sampled: what links a
/// request a proxy's inbound delivered to its app with the calls the app makes while serving
/// it (the app forwards the context).
pub fn trace_id(headers: &HeaderMap) -> Option<[u8; 16]> {
    let (trace, _) = weir_trace::extract(headers)?.parent?;
    Some(trace.0)
}

// === impl Tracing ===

impl Tracing {
    /// `service` is the proxied service (`server.address` of SERVER spans).
    pub fn new(tracer: Tracer, service: &str) -> Tracing {
        Tracing {
            tracer,
            service: Arc::from(service),
        }
    }

    #[cfg(test)]
    pub fn disabled() -> Tracing {
        Tracing::new(Tracer::disabled(), "test")
    }

    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    pub fn is_enabled(&self) -> bool {
        self.tracer.is_enabled()
    }

    /// Records `span` now, or when `rsp`'s body ends (`delivered`: the body is what the
    /// client gets; see [`SpanBody`]).
    fn end_with<B: SpanBody>(
        &self,
        span: SpanRecord,
        rsp: Option<&mut Response<B>>,
        delivered: bool,
    ) {
        let now = match rsp {
            Some(rsp) => rsp.body_mut().end_span_with(span, &self.tracer, delivered),
            None => Some(span),
        };
        if let Some(span) = now {
            self.tracer.record(span);
        }
    }

    fn decide(&self, headers: &HeaderMap, sampling: f64, info: impl FnOnce(&Self) -> Info) -> Hop {
        if !self.tracer.is_enabled() {
            return Hop::Off;
        }
        let incoming = weir_trace::extract(headers);
        let ctx = TraceContext::new(incoming, sampling, random());
        if ctx.sampled {
            Hop::Sampled(ctx, Box::new(info(self)))
        } else if incoming.is_some_and(|e| e.sampling == Sampling::Deny) {
            Hop::Inherited
        } else {
            Hop::Denied(ctx)
        }
    }
}
