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
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoEndpoints => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectFailure
            | ProxyError::Reset
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
        }
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
