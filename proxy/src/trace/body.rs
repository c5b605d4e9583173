//! Spans that end with their response body, not its head: a streamed response's CLIENT and
//! SERVER spans cover the whole stream.
//!
//! Only a sampled response is wrapped (one `Box` next to the span records it already
//! allocated); every other one keeps its body as is, and `ProxyBody` only grows by the one
//! enum arm. The records wait here until the body's last frame, an error (the span becomes
//! an error: `weir.error: reset`), or the body's drop before its end: `cancelled` when the
//! client was being sent it (the peer went away), plain when the proxy itself threw it away
//! (a try whose answer a retry replaced ends there, as it did before).
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use weir_trace::{SpanRecord, Tracer};

use crate::body::ProxyBody;

/// `weir.error` of a span whose body failed half way: the peer (or app) broke the stream.
const BODY_FAILED: &str = "reset";
/// `weir.error` of a span whose body was dropped half way while the client was reading it.
const CANCELLED: &str = super::span::CANCELLED;

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
            traced.delivered |= delivered;
            return traced.keep(span);
        }
        if self.is_end_stream() {
            return Some(span);
        }
        let inner = std::mem::replace(self, ProxyBody::empty());
        *self = ProxyBody::Traced(Box::new(TracedBody {
            inner,
            tracer: tracer.clone(),
            spans: [Some(span), None],
            delivered,
            ended: false,
        }));
        None
    }
}

/// A body and the spans that end with it: a try's and its call's (outbound), or a SERVER
/// span (inbound).
#[derive(Debug)]
pub struct TracedBody {
    inner: ProxyBody,
    tracer: Tracer,
    spans: [Option<SpanRecord>; 2],
    delivered: bool,
    ended: bool,
}

impl TracedBody {
    fn keep(&mut self, span: SpanRecord) -> Option<SpanRecord> {
        if self.ended {
            return Some(span);
        }
        match self.spans.iter_mut().find(|s| s.is_none()) {
            Some(slot) => {
                *slot = Some(span);
                None
            }
            None => Some(span),
        }
    }

    fn end(&mut self, error: Option<&'static str>) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let now = SystemTime::now();
        for mut span in self.spans.iter_mut().filter_map(Option::take) {
            span.end = now;
            if span.error.is_none() {
                span.error = error.map(Into::into);
            }
            self.tracer.record(span);
        }
    }
}

impl Body for TracedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.end(None),
            Poll::Ready(Some(Err(_))) => this.end(Some(BODY_FAILED)),
            // hyper stops polling once the body says it has ended, and may drop it later.
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.end(None),
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TracedBody {
    fn drop(&mut self) {
        let cut_short = self.delivered && !self.inner.is_end_stream();
        self.end(cut_short.then_some(CANCELLED));
    }
}
