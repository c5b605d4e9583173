//! Responses the proxy makes itself. Each carries `x-weir-error: <reason>` (design §7) so a
//! caller can tell a proxy decision from an application answer.
use http::{HeaderValue, Response, StatusCode};

use crate::body::ProxyBody;

pub const X_WEIR_ERROR: &str = "x-weir-error";

/// Why the proxy answered instead of the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// The destination is a mesh service with no endpoint to send to.
    NoEndpoints,
    /// The TCP (or TLS) connection to the next hop could not be made.
    ConnectFailure,
    /// The next hop closed or reset the stream before answering.
    Reset,
    /// The request names no destination the proxy can resolve.
    BadRequest,
    /// mTLS is required but this proxy has no identity to originate it with.
    NoIdentity,
    /// The peer's certificate names another identity than the endpoint table expects.
    IdentityMismatch,
    /// The callee's authorization policy does not allow the caller's identity.
    Unauthorized,
    /// The next hop refused the stream before processing it (HTTP/2 REFUSED_STREAM).
    RefusedStream,
    /// The call ran out of its time budget (request timeout or propagated deadline).
    Timeout,
    /// Every endpoint of the destination is ejected by its circuit breaker.
    CircuitOpen,
    /// The destination's bulkhead is full (concurrency and pending queue).
    BulkheadFull,
    /// The callee's rate limit refused the request.
    RateLimited,
    /// Fault injection aborted the call (the status is the policy's).
    FaultInjected,
    /// The control plane did not say in time what the destination is.
    DiscoveryTimeout,
}

impl ProxyError {
    pub fn reason(self) -> &'static str {
        match self {
            ProxyError::NoEndpoints => "no-endpoints",
            ProxyError::ConnectFailure => "connect-failure",
            ProxyError::Reset => "reset",
            ProxyError::BadRequest => "bad-request",
            ProxyError::NoIdentity => "no-identity",
            ProxyError::IdentityMismatch => "identity-mismatch",
            ProxyError::Unauthorized => "unauthorized",
            ProxyError::RefusedStream => "reset",
            ProxyError::Timeout => "timeout",
            ProxyError::CircuitOpen => "circuit-open",
            ProxyError::BulkheadFull => "bulkhead-full",
            ProxyError::RateLimited => "rate-limited",
            ProxyError::FaultInjected => "fault-injected",
            ProxyError::DiscoveryTimeout => "discovery-timeout",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoEndpoints | ProxyError::CircuitOpen | ProxyError::BulkheadFull => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::FaultInjected | ProxyError::DiscoveryTimeout => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::ConnectFailure
            | ProxyError::Reset
            | ProxyError::RefusedStream
            | ProxyError::NoIdentity
            | ProxyError::IdentityMismatch => StatusCode::BAD_GATEWAY,
            ProxyError::Unauthorized => StatusCode::FORBIDDEN,
            ProxyError::BadRequest => StatusCode::BAD_REQUEST,
        }
    }

    fn body(self) -> &'static str {
        match self {
            ProxyError::NoEndpoints => "weir: the destination service has no endpoints\n",
            ProxyError::ConnectFailure => "weir: could not connect to the destination\n",
            ProxyError::Reset => "weir: the destination closed the stream before answering\n",
            ProxyError::BadRequest => "weir: the request names no destination (Host header)\n",
            ProxyError::IdentityMismatch => {
                "weir: the destination presented another identity than the mesh expects for it\n"
            }
            ProxyError::Unauthorized => {
                "weir: the caller's identity is not allowed by this service's authorization policy\n"
            }
            ProxyError::NoIdentity => {
                "weir: mtls is strict but this proxy has no identity; set MeshConfig mtls: permissive or give the proxy an identity\n"
            }
            ProxyError::RefusedStream => "weir: the destination refused the stream\n",
            ProxyError::Timeout => {
                "weir: the call ran out of time (timeouts.request or the caller's deadline)\n"
            }
            ProxyError::CircuitOpen => {
                "weir: every endpoint of the destination is ejected by its circuit breaker\n"
            }
            ProxyError::BulkheadFull => {
                "weir: too many calls to the destination are in flight (bulkhead full)\n"
            }
            ProxyError::RateLimited => {
                "weir: rate limit exceeded; retry after the Retry-After delay\n"
            }
            ProxyError::FaultInjected => "weir: fault injected by policy\n",
            ProxyError::DiscoveryTimeout => {
                "weir: the control plane did not resolve this destination within --resolve-timeout; check `weirctl status` and the control plane\n"
            }
        }
    }

    /// An injected abort: the policy's status with `x-weir-error: fault-injected`.
    pub fn fault_response(status: u16) -> Response<ProxyBody> {
        let mut rsp = ProxyError::FaultInjected.response();
        if let Ok(s) = StatusCode::from_u16(status) {
            *rsp.status_mut() = s;
        }
        rsp
    }

    /// `429` with `Retry-After` in whole seconds.
    pub fn rate_limited_response(retry_after_secs: u64) -> Response<ProxyBody> {
        let mut rsp = ProxyError::RateLimited.response();
        rsp.headers_mut().insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(retry_after_secs),
        );
        rsp
    }

    pub fn response(self) -> Response<ProxyBody> {
        let mut rsp = Response::new(ProxyBody::text(self.body()));
        *rsp.status_mut() = self.status();
        let h = rsp.headers_mut();
        h.insert(X_WEIR_ERROR, HeaderValue::from_static(self.reason()));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        rsp
    }
}
