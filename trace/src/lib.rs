//! Trace context propagation (W3C Trace Context, B3 single and multi), span records and
//! their export for the proxy: OTLP/gRPC to a collector, OTLP/JSON lines to a file, or both.
//!
//! The hot path touches three things, none of which locks or formats strings:
//! - [`start_or_continue`] reads the request's headers and decides this hop's span
//!   ([`TraceContext`]): it continues the caller's trace and sampling decision, or starts
//!   a trace subject to head sampling.
//! - [`inject`] writes a span into the forwarded request as its parent, in the same
//!   format(s) the request came in (W3C for a new trace); `tracestate` is left untouched.
//! - [`Tracer::record`] queues a [`SpanRecord`] (build one only when `ctx.sampled`) with a
//!   non-blocking `try_send`; a full queue drops and counts ([`Tracer::dropped`]).
//!
//! A background task batches and exports (see [`export`] for the failure model).
//!
//! # Wiring into the proxy
//! Outbound (caller side), per request:
//! ```ignore
//! let ctx = weir_trace::start_or_continue(req.headers(), mesh.sampling, rng.next_u64());
//! // per attempt (1-based `n`):
//! let attempt = ctx.child(rng.next_u64());
//! weir_trace::inject(attempt_req.headers_mut(), &attempt);
//! if attempt.sampled { /* after the attempt */
//!     let mut s = SpanRecord::new(&attempt, SpanKind::Client, method.clone(), attempt_start);
//!     s.attempt = Some(n); s.status_code = …; s.error = …; s.breaker = …; s.peer = …;
//!     s.end = SystemTime::now();
//!     tracer.record(s);
//! }
//! // when the response (or the proxy's own error) is sent back:
//! if ctx.sampled { tracer.record(/* SpanRecord::new(&ctx, SpanKind::Client, …) */); }
//! ```
//! Inbound (callee side): `let ctx = start_or_continue(..)`, `inject(req.headers_mut(),
//! &ctx)` before handing the request to the app, and a `SpanKind::Server` record when the
//! response is sent (also for requests the inbound refuses: 403, 429, ...). With
//! [`Tracer::disabled`] (no endpoint) skip all of this and forward headers untouched.

pub mod export;
mod file;
mod id;
mod json;
mod propagation;
mod span;

pub use export::{ENDPOINT_ENV, ExportConfig, Outputs, Tracer};
pub use file::{FileConfig, MIN_FILE_BYTES};
pub use id::{SpanId, TraceId};
pub use propagation::{
    Extracted, Format, Sampling, TraceContext, extract, inject, start_or_continue,
};
pub use span::{Resource, SpanKind, SpanRecord};

/// Errors from starting the exporter; recording and exporting never return errors (they
/// count instead: see [`Tracer::dropped`] and [`Tracer::export_failed`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("OTLP endpoint {endpoint:?}: {reason}; give one like http://jaeger:4317")]
    Endpoint { endpoint: String, reason: String },
    #[error("trace export config: {0} must be at least 1")]
    Config(&'static str),
    #[error("the OTLP exporter must be started from inside a tokio runtime")]
    NoRuntime,
    #[error("no span output: give an OTLP endpoint, a trace file or both")]
    NoOutput,
    #[error("trace file {path}: {source}", path = path.display())]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}
