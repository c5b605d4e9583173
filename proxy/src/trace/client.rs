//! The caller side (`outbound/mesh.rs`): one CLIENT span per mesh call and one child CLIENT
//! span per try.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::uri::Authority;
use http::{HeaderMap, Request, Response};
use weir_trace::{SpanKind, SpanRecord};

use super::propagate::{random, write_denied};
use super::span::Info;
use super::{AttemptTrace, CallTrace, Hop, SpanBody, Tracing};
use crate::errors::{ProxyError, X_WEIR_ERROR};

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
pub(super) fn outcome<B>(
    result: &Result<Response<B>, ProxyError>,
) -> (Option<u16>, Option<&'static str>) {
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
