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
//! Inbound (`inbound/mod.rs`): [`Tracing::server`] as a request arrives, [`Tracing::forward`]
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
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::BytesMut;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use weir_trace::{Format, Sampling, SpanKind, SpanRecord, TraceContext, Tracer};

use crate::errors::{ProxyError, X_WEIR_ERROR};

/// `url.path` is cut to this many bytes: a queued span must not hold a huge path, and the
/// queue's memory bound is `queue size × (record + this)`.
const MAX_PATH: usize = 512;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

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

/// A sampled span's attributes, captured while the request is still at hand. Boxed so that
/// unsampled hops do not carry the whole struct through every request's future.
#[derive(Clone, Debug)]
struct Info {
    /// Where the span goes, also when its request is dropped half way (see `Drop`).
    tracer: Tracer,
    start: SystemTime,
    method: Method,
    path: Option<PathAndQuery>,
    route: Option<Arc<str>>,
    server_address: Option<Arc<str>>,
    server_port: Option<u16>,
    peer_service: Option<Arc<str>>,
    peer: Option<SocketAddr>,
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

    /// Inbound, once per request as it arrives (refused ones too): `peer` is the caller's
    /// socket address.
    pub fn server<B>(
        &self,
        req: &Request<B>,
        sampling: f64,
        peer: Option<SocketAddr>,
    ) -> ServerTrace {
        ServerTrace(self.decide(req.headers(), sampling, |this| Info {
            server_address: Some(this.service.clone()),
            peer,
            ..Info::new(&this.tracer, req)
        }))
    }

    /// Inbound, right before the request goes to the app: the SERVER span becomes the parent
    /// of whatever the app does next.
    pub fn forward(&self, server: &ServerTrace, headers: &mut HeaderMap) {
        match &server.0 {
            Hop::Off | Hop::Inherited => {}
            Hop::Denied(ctx) => write_denied(headers, ctx),
            Hop::Sampled(ctx, _) => weir_trace::inject(headers, ctx),
        }
    }

    /// Inbound, when the response head goes back to the caller; `error` is the proxy's reason
    /// when it answered itself (`unauthorized`, `rate-limited`, `connect-failure`, ...). A
    /// sampled span ends with the response body (see [`body`]).
    pub fn finish_server<B: SpanBody>(
        &self,
        mut server: ServerTrace,
        rsp: &mut Response<B>,
        error: Option<&'static str>,
    ) {
        if let Some((ctx, info)) = server.0.take() {
            let status = Some(rsp.status().as_u16());
            let span = info.record(&ctx, SpanKind::Server, status, error);
            self.end_with(span, Some(rsp), true);
        }
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

// === the caller side (outbound/mesh.rs) ===

impl Tracing {
    /// Outbound, once per mesh call, before anything that can fail (so a `503 circuit-open`
    /// still gets a span): in `to_mesh`, with the request as the app sent it, the callee's
    /// service name and `snapshot.sampling`. Continues the app's trace context, or starts one.
    pub fn client_call<B>(&self, req: &Request<B>, service: &str, sampling: f64) -> CallTrace {
        let hop = self.decide(req.headers(), sampling, |this| {
            let authority = crate::headers::authority(req).and_then(|a| a.parse().ok());
            Info {
                server_address: authority.as_ref().map(|a: &Authority| Arc::from(a.host())),
                server_port: authority.as_ref().and_then(Authority::port_u16),
                peer_service: Some(Arc::from(service)),
                ..Info::new(&this.tracer, req)
            }
        });
        CallTrace(hop)
    }

    /// Outbound, per try (`n` = 1 for the first), right before the try's request is sent:
    /// writes the try's span into `headers` as the callee's parent. Every try gets one, also
    /// a lone first try, so traces have one shape whether or not a call was retried.
    pub fn attempt(&self, call: &CallTrace, n: u32, headers: &mut HeaderMap) -> AttemptTrace {
        let hop = match &call.0 {
            Hop::Off => Hop::Off,
            Hop::Inherited => Hop::Inherited,
            Hop::Denied(ctx) => {
                write_denied(headers, ctx);
                Hop::Denied(*ctx)
            }
            Hop::Sampled(ctx, info) => {
                let child = ctx.child(random());
                weir_trace::inject(headers, &child);
                let info = Box::new(Info {
                    start: SystemTime::now(),
                    ..Info::clone(info)
                });
                Hop::Sampled(child, info)
            }
        };
        AttemptTrace {
            hop,
            n,
            breaker: None,
        }
    }

    /// Outbound, when a try's response head (or error) came back: its result (see
    /// [`outcome`]) and the endpoint it went to. Only a sampled try reads the result: most
    /// are not, and the read is a header lookup. A sampled try's span ends with its response
    /// body, or where the proxy drops that (a retry replaced it).
    pub fn finish_attempt<B: SpanBody>(
        &self,
        mut attempt: AttemptTrace,
        result: &mut Result<Response<B>, ProxyError>,
        peer: Option<SocketAddr>,
    ) {
        if let Some(span) = attempt.take_record(result, peer) {
            self.end_with(span, result.as_mut().ok(), false);
        }
    }

    /// Outbound, when the call's response head (the app's, or the proxy's own error answer
    /// for an `Err`) goes back to the app. A sampled call's span ends with the body the app
    /// reads, together with the span of the try that answered.
    pub fn finish_call<B: SpanBody>(
        &self,
        mut call: CallTrace,
        result: &mut Result<Response<B>, ProxyError>,
    ) {
        if let Some((ctx, info)) = call.0.take() {
            let status = match &*result {
                Ok(rsp) => rsp.status(),
                Err(e) => e.status(),
            };
            let (_, error) = outcome(result);
            let span = info.record(&ctx, SpanKind::Client, Some(status.as_u16()), error);
            self.end_with(span, result.as_mut().ok(), true);
        }
    }
}

/// The response status and the proxy's reason of a try's (or call's) result: an error the
/// proxy answered for, or a response that a proxy made (`x-weir-error`: a fault abort here,
/// or a refusal by the callee's proxy).
fn outcome<B>(result: &Result<Response<B>, ProxyError>) -> (Option<u16>, Option<&'static str>) {
    match result {
        Ok(rsp) => {
            let made_by_proxy = rsp
                .headers()
                .get(X_WEIR_ERROR)
                .and_then(|v| REASONS.iter().find(|r| r.as_bytes() == v.as_bytes()));
            (Some(rsp.status().as_u16()), made_by_proxy.copied())
        }
        // No response came back; the call's span gets the status the proxy answered with.
        Err(e) => (None, Some(e.reason())),
    }
}

/// Every `ProxyError::reason`: `x-weir-error` values become static span attributes without
/// an allocation; an unknown one is simply not recorded.
const REASONS: [&str; 12] = [
    "no-endpoints",
    "connect-failure",
    "reset",
    "bad-request",
    "no-identity",
    "identity-mismatch",
    "unauthorized",
    "timeout",
    "circuit-open",
    "bulkhead-full",
    "rate-limited",
    "fault-injected",
];

// === impl CallTrace, AttemptTrace ===

impl CallTrace {
    /// The matched route's name, for the span name and `weir.route` (sampled calls only pay).
    #[allow(
        dead_code,
        reason = "for outbound/mesh.rs once `backend_for` tells which route matched"
    )]
    pub fn set_route(&mut self, route: &str) {
        if let Hop::Sampled(_, info) = &mut self.0 {
            info.route = Some(Arc::from(route));
        }
    }

    #[cfg(test)]
    pub fn is_sampled(&self) -> bool {
        matches!(self.0, Hop::Sampled(..))
    }
}

impl AttemptTrace {
    /// The sampled try's span, ended now, leaving nothing to record on drop.
    fn take_record<B>(
        &mut self,
        result: &Result<Response<B>, ProxyError>,
        peer: Option<SocketAddr>,
    ) -> Option<SpanRecord> {
        let (status, error) = match self.hop {
            Hop::Sampled(..) => outcome(result),
            _ => return None,
        };
        self.record(status, error, peer)
    }

    fn record(
        &mut self,
        status: Option<u16>,
        error: Option<&'static str>,
        peer: Option<SocketAddr>,
    ) -> Option<SpanRecord> {
        let (ctx, info) = self.hop.take()?;
        let mut span = info.record(&ctx, SpanKind::Client, status, error);
        span.attempt = Some(self.n);
        span.peer = peer;
        span.breaker = self.breaker.map(Into::into);
        Some(span)
    }

    /// `weir.breaker`: the endpoint's circuit-breaker state as the try saw it.
    #[allow(
        dead_code,
        reason = "for outbound/mesh.rs once `balance::pick` reports the breaker state"
    )]
    pub fn set_breaker(&mut self, state: &'static str) {
        self.breaker = Some(state);
    }

    /// The span id written into the try's request.
    #[cfg(test)]
    pub fn span_id(&self) -> Option<weir_trace::SpanId> {
        match &self.hop {
            Hop::Sampled(ctx, _) | Hop::Denied(ctx) => Some(ctx.span_id),
            Hop::Off | Hop::Inherited => None,
        }
    }
}

// === unfinished spans ===

/// A request's future can be dropped half way: the caller hung up, or the call's deadline
/// fired while a try was in flight. Its span is still recorded, ended there with
/// `weir.error: cancelled`, so the trace shows where the time went.
const CANCELLED: &str = "cancelled";

impl Hop {
    /// The sampled span's parts, leaving nothing to record on drop.
    fn take(&mut self) -> Option<(TraceContext, Box<Info>)> {
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
    fn new<B>(tracer: &Tracer, req: &Request<B>) -> Info {
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

    fn record(
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
fn span_path(path: &str) -> Option<PathAndQuery> {
    let mut end = path.len().min(MAX_PATH);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    PathAndQuery::try_from(&path[..end]).ok()
}

// === header values without allocation ===

/// Writes `traceparent: 00-{trace}-{span}-00`, or the request's own formats when it came in
/// with B3 ids but no decision.
fn write_denied(headers: &mut HeaderMap, ctx: &TraceContext) {
    if ctx.format != Format::W3C {
        // B3 without a sampling field: rare enough to take the allocating path.
        weir_trace::inject(headers, ctx);
        return;
    }
    let mut buf = [b'-'; 55];
    buf[..2].copy_from_slice(b"00");
    buf[3..35].copy_from_slice(&ctx.trace_id.to_hex());
    buf[36..52].copy_from_slice(&ctx.span_id.to_hex());
    buf[53..].copy_from_slice(b"00");
    if let Some(value) = arena_value(&buf) {
        headers.insert(TRACEPARENT, value);
    }
}

/// Bytes for this many header values are allocated at once per thread.
const ARENA_BYTES: usize = 4096;

thread_local! {
    static ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
    static RNG: Cell<u64> = const { Cell::new(0) };
}

/// A header value sharing one per-thread block with its neighbours (reference counted, so
/// the block is freed when the last request using it is gone): one allocation per ~70
/// values instead of one each.
fn arena_value(bytes: &[u8]) -> Option<HeaderValue> {
    ARENA.with_borrow_mut(|arena| {
        if arena.capacity() < bytes.len() {
            *arena = BytesMut::with_capacity(ARENA_BYTES.max(bytes.len()));
        }
        arena.extend_from_slice(bytes);
        HeaderValue::from_maybe_shared(arena.split().freeze()).ok()
    })
}

/// splitmix64 over a per-thread counter: no atomics shared between threads. Seeded per
/// thread from the clock, the pid and the cell's address, so proxies started together and
/// threads of one proxy draw different ids.
fn random() -> u64 {
    RNG.with(|state| {
        let mut s = state.get();
        if s == 0 {
            let t = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let here = std::ptr::from_ref(state) as usize as u64;
            s = t ^ u64::from(std::process::id()).rotate_left(32) ^ here.rotate_left(17);
        }
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(s.max(1));
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

mod body;

pub use body::{SpanBody, TracedBody};

#[cfg(test)]
mod tests;
