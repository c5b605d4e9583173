//! The one body type the proxy sends and answers with. An enum instead of a boxed trait object,
//! so forwarding a request or a response costs no allocation.
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use weir_trace::{SpanRecord, Tracer};

#[derive(Debug)]
pub enum ProxyBody {
    /// A body streamed from the other side, frame by frame.
    Incoming(Incoming),
    /// A small body the proxy made itself (error text), or nothing.
    Full(Option<Bytes>),
    /// A request body buffered whole so a retry can send it again, with its trailers.
    Replay(Option<Bytes>, Option<http::HeaderMap>),
    /// A body too large to buffer: the part already read, then the rest as it streams.
    Prefixed(Option<Bytes>, Incoming),
    /// The app's response, which hands its connection back to the pool when it ends.
    App(AppBody),
    /// A sampled response whose spans end with it (boxed: only sampled requests pay).
    Traced(Box<TracedBody>),
}

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }

    pub fn text(s: &'static str) -> Self {
        ProxyBody::Full(Some(Bytes::from_static(s.as_bytes())))
    }
}

impl From<Incoming> for ProxyBody {
    fn from(b: Incoming) -> Self {
        ProxyBody::Incoming(b)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        // Every variant is Unpin, so no pin projection is needed.
        match self.get_mut() {
            ProxyBody::Incoming(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Replay(data, trailers) => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            ProxyBody::Prefixed(head, rest) => match head.take() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => Pin::new(rest).poll_frame(cx),
            },
            ProxyBody::App(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Traced(b) => Pin::new(&mut **b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Incoming(b) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Replay(d, t) => d.is_none() && t.is_none(),
            ProxyBody::Prefixed(h, rest) => h.is_none() && rest.is_end_stream(),
            ProxyBody::App(b) => b.is_end_stream(),
            ProxyBody::Traced(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Incoming(b) => b.size_hint(),
            ProxyBody::App(b) => b.size_hint(),
            ProxyBody::Traced(b) => b.size_hint(),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Replay(d, _) => {
                SizeHint::with_exact(d.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::Prefixed(h, rest) => {
                let head = h.as_ref().map_or(0, |b| b.len() as u64);
                let r = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(r.lower() + head);
                if let Some(upper) = r.upper() {
                    hint.set_upper(upper + head);
                }
                hint
            }
        }
    }
}

/// Where an app connection goes back when the response it carried has ended: the app pool
/// (`client::app`), seen through this trait so the body type does not depend on the pool.
pub trait PutBack: Send + Sync + std::fmt::Debug {
    fn put_back(&self, send: SendRequest<ProxyBody>);
}

/// A response body from the app that returns its connection to the pool when it ends.
#[derive(Debug)]
pub struct AppBody {
    body: Incoming,
    conn: Option<(SendRequest<ProxyBody>, Arc<dyn PutBack>)>,
}

impl AppBody {
    pub fn new(body: Incoming, send: SendRequest<ProxyBody>, pool: Arc<dyn PutBack>) -> Self {
        AppBody {
            body,
            conn: Some((send, pool)),
        }
    }

    fn release(&mut self) {
        if let Some((send, pool)) = self.conn.take() {
            pool.put_back(send);
        }
    }
}

impl Body for AppBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.release();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for AppBody {
    fn drop(&mut self) {
        // Never polled to its end but nothing left to read (a server that stops at the
        // declared length): the connection is still good.
        if self.body.is_end_stream() {
            self.release();
        }
    }
}

// === TracedBody ===
// Here rather than in `trace` because it and `ProxyBody` hold each other; `trace` only
// decides when a body gets wrapped (`SpanBody`).

/// `weir.error` of a span whose body failed half way: the peer (or app) broke the stream.
const BODY_FAILED: &str = "reset";
/// `weir.error` of a span whose body was dropped half way while the client was reading it
/// (also of a span whose request was dropped half way, in `trace`).
pub const CANCELLED: &str = "cancelled";

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
    /// `inner` with `span` to record when it ends; `delivered` as in `SpanBody::end_span_with`.
    pub fn new(inner: ProxyBody, tracer: Tracer, span: SpanRecord, delivered: bool) -> Self {
        TracedBody {
            inner,
            tracer,
            spans: [Some(span), None],
            delivered,
            ended: false,
        }
    }

    /// Keeps `span` to record at the body's end, or gives it back when there is no room or the
    /// body has ended already.
    pub fn keep(&mut self, span: SpanRecord, delivered: bool) -> Option<SpanRecord> {
        self.delivered |= delivered;
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
