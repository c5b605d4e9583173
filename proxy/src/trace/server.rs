//! The callee side (`inbound/request.rs`): the SERVER span of each request the proxy delivers
//! to its app.

use std::net::SocketAddr;

use http::{HeaderMap, Request, Response};
use weir_trace::SpanKind;

use super::propagate::write_denied;
use super::span::Info;
use super::{Hop, ServerTrace, SpanBody, Tracing};

impl Tracing {
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
    /// sampled span ends with the response body (see [`body`](super::body)).
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
}
