//! Spans that end with their response body, not its head: a streamed response's CLIENT and
//! SERVER spans cover the whole stream.
//!
//! Only a sampled response is wrapped (one `Box` next to the span records it already
//! allocated); every other one keeps its body as is, and `ProxyBody` only grows by the one
//! enum arm. The records wait in that body until its last frame, an error (the span becomes
//! an error: `weir.error: reset`), or the body's drop before its end: `cancelled` when the
//! client was being sent it (the peer went away), plain when the proxy itself threw it away
//! (a try whose answer a retry replaced ends there, as it did before).
//!
//! The wrapper itself, `TracedBody`, lives next to `ProxyBody` in `crate::body` (each holds
//! the other), so `body` needs nothing from `trace`.
use http_body::Body;
use weir_trace::{SpanRecord, Tracer};

use crate::body::{ProxyBody, TracedBody};

/// A response body that can hold spans until it ends. `()` (unit tests) never can: its
/// spans are recorded at once.
pub trait SpanBody {
    /// Keeps `span` to record at the body's end, or gives it back to record now (the body
    /// has already ended). `delivered`: this body is what the client gets, so a drop before
    /// its end is a cancellation.
    fn end_span_with(
        &mut self,
        span: SpanRecord,
        tracer: &Tracer,
        delivered: bool,
    ) -> Option<SpanRecord>;
}

impl SpanBody for () {
    fn end_span_with(&mut self, span: SpanRecord, _: &Tracer, _: bool) -> Option<SpanRecord> {
        Some(span)
    }
}

impl SpanBody for ProxyBody {
    fn end_span_with(
        &mut self,
        span: SpanRecord,
        tracer: &Tracer,
        delivered: bool,
    ) -> Option<SpanRecord> {
        if let ProxyBody::Traced(traced) = self {
            return traced.keep(span, delivered);
        }
        if self.is_end_stream() {
            return Some(span);
        }
        let inner = std::mem::replace(self, ProxyBody::empty());
        *self = ProxyBody::Traced(Box::new(TracedBody::new(
            inner,
            tracer.clone(),
            span,
            delivered,
        )));
        None
    }
}
