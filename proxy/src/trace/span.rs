//! A sampled span's attributes and how they become a `SpanRecord`: when the response ends,
//! or when the request's future is dropped half way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::uri::PathAndQuery;
use http::{Method, Request};
use weir_trace::{SpanKind, SpanRecord, TraceContext, Tracer};

use super::{AttemptTrace, CallTrace, Hop, ServerTrace};

/// `url.path` is cut to this many bytes: a queued span must not hold a huge path, and the
/// queue's memory bound is `queue size × (record + this)`.
pub(super) const MAX_PATH: usize = 512;

/// A sampled span's attributes, captured while the request is still at hand. Boxed so that
/// unsampled hops do not carry the whole struct through every request's future.
#[derive(Clone, Debug)]
pub(super) struct Info {
    /// Where the span goes, also when its request is dropped half way (see `Drop`).
    pub(super) tracer: Tracer,
    pub(super) start: SystemTime,
    pub(super) method: Method,
    pub(super) path: Option<PathAndQuery>,
    pub(super) route: Option<Arc<str>>,
    pub(super) server_address: Option<Arc<str>>,
    pub(super) server_port: Option<u16>,
    pub(super) peer_service: Option<Arc<str>>,
    pub(super) peer: Option<SocketAddr>,
}

// === unfinished spans ===

/// A request's future can be dropped half way: the caller hung up, or the call's deadline
/// fired while a try was in flight. Its span is still recorded, ended there with
/// `weir.error: cancelled`, so the trace shows where the time went.
const CANCELLED: &str = crate::body::CANCELLED;

impl Hop {
    /// The sampled span's parts, leaving nothing to record on drop.
    pub(super) fn take(&mut self) -> Option<(TraceContext, Box<Info>)> {
        match std::mem::replace(self, Hop::Off) {
            Hop::Sampled(ctx, info) => Some((ctx, info)),
            other => {
                *self = other;
                None
            }
        }
    }

    fn cancel(&mut self, kind: SpanKind) {
        if let Some((ctx, info)) = self.take() {
            let tracer = info.tracer.clone();
            tracer.record(info.record(&ctx, kind, None, Some(CANCELLED)));
        }
    }
}

impl Drop for CallTrace {
    fn drop(&mut self) {
        self.0.cancel(SpanKind::Client);
    }
}

impl Drop for AttemptTrace {
    fn drop(&mut self) {
        if let Some((ctx, info)) = self.hop.take() {
            let tracer = info.tracer.clone();
            let mut span = info.record(&ctx, SpanKind::Client, None, Some(CANCELLED));
            span.attempt = Some(self.n);
            span.breaker = self.breaker.map(Into::into);
            tracer.record(span);
        }
    }
}

impl Drop for ServerTrace {
    fn drop(&mut self) {
        self.0.cancel(SpanKind::Server);
    }
}

// === impl Info ===

impl Info {
    pub(super) fn new<B>(tracer: &Tracer, req: &Request<B>) -> Info {
        Info {
            tracer: tracer.clone(),
            start: SystemTime::now(),
            method: req.method().clone(),
            path: span_path(req.uri().path()),
            route: None,
            server_address: None,
            server_port: None,
            peer_service: None,
            peer: None,
        }
    }

    pub(super) fn record(
        self,
        ctx: &TraceContext,
        kind: SpanKind,
        status: Option<u16>,
        error: Option<&'static str>,
    ) -> SpanRecord {
        let mut span = SpanRecord::new(ctx, kind, self.method, self.start);
        span.path = self.path;
        span.route = self.route;
        span.server_address = self.server_address;
        span.server_port = self.server_port;
        span.peer_service = self.peer_service;
        span.peer = self.peer;
        span.status_code = status;
        span.error = error.map(Into::into);
        span.end = SystemTime::now();
        span
    }
}

/// A copy of the path alone: a slice of the request's `Uri` would keep hyper's whole read
/// buffer alive while the span waits in the export queue, and the query may hold secrets.
pub(super) fn span_path(path: &str) -> Option<PathAndQuery> {
    let mut end = path.len().min(MAX_PATH);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    PathAndQuery::try_from(&path[..end]).ok()
}
