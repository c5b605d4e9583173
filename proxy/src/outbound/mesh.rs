//! Forwarding a request to a mesh service: pick an endpoint, carry the request to its proxy.
use std::sync::Arc;
use std::time::Instant;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version, header};
use hyper::body::Incoming;
use weir_policy::MtlsMode;

use super::{Outbound, PeerProtocol};
use crate::body::ProxyBody;
use crate::config::{Service, Snapshot};
use crate::errors::ProxyError;
use crate::headers::{self, HTTP11, X_WEIR_ORIG_PROTO};

/// Until the identity work lands the proxy has no certificate, so it may only speak plaintext
/// to peers when the mesh is permissive. Strict fails closed.
pub(super) fn plaintext_allowed(snapshot: &Snapshot) -> bool {
    snapshot.mtls == MtlsMode::Permissive
}

impl Outbound {
    pub(super) async fn to_mesh(
        &self,
        snapshot: &Snapshot,
        svc: &Arc<Service>,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let m = &svc.metrics;
        m.request();
        let start = Instant::now();
        let rsp = self
            .mesh_call(snapshot, svc, req)
            .await
            .unwrap_or_else(ProxyError::response);
        m.response(Some(rsp.status().as_u16()), start.elapsed());
        rsp
    }

    async fn mesh_call(
        &self,
        snapshot: &Snapshot,
        svc: &Service,
        mut req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let backend = svc.backend_for(&req);
        let ep = backend.pick().ok_or(ProxyError::NoEndpoints)?;
        if !plaintext_allowed(snapshot) {
            return Err(ProxyError::NoIdentity);
        }
        if headers::is_upgrade(&req) {
            return crate::upgrade::forward(ep.addr, req, &self.drain).await;
        }
        let from_http1 = req.version() < Version::HTTP_2;
        if from_http1 && self.peer_protocol == PeerProtocol::Http1 {
            // Pooled HTTP/1.1 to the peer: the URI names the peer's address, Host keeps the
            // service name.
            headers::strip_hop_by_hop(req.headers_mut());
            set_authority(&mut req, Authority::try_from(ep.addr.to_string()).ok())?;
            let mut rsp = self
                .direct
                .request(req.map(ProxyBody::Incoming))
                .await
                .map_err(client_error)?;
            headers::strip_hop_by_hop(rsp.headers_mut());
            return Ok(rsp.map(ProxyBody::Incoming));
        }

        if from_http1 {
            let host = req
                .headers_mut()
                .remove(header::HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok());
            if req.uri().authority().is_none() {
                set_authority(&mut req, host)?;
            }
            req.headers_mut().insert(X_WEIR_ORIG_PROTO, HTTP11);
            *req.version_mut() = Version::HTTP_2;
        }
        headers::strip_hop_by_hop(req.headers_mut());
        let mut send = ep.h2.ready_sender().await.map_err(|e| {
            tracing::debug!(service = %svc.name, backend = %backend.name, error = %e, "peer connection failed");
            ProxyError::ConnectFailure
        })?;
        let mut rsp = send
            .send_request(req.map(ProxyBody::Incoming))
            .await
            .map_err(|e| {
                tracing::debug!(service = %svc.name, error = %e, "peer stream failed");
                ProxyError::Reset
            })?;
        headers::strip_hop_by_hop(rsp.headers_mut());
        Ok(rsp.map(ProxyBody::Incoming))
    }
}

/// Rewrites the request URI to absolute form with the given authority.
pub(super) fn set_authority<B>(
    req: &mut Request<B>,
    authority: Option<Authority>,
) -> Result<(), ProxyError> {
    let authority = authority.ok_or(ProxyError::BadRequest)?;
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    if parts.scheme.is_none() {
        parts.scheme = Some(Scheme::HTTP);
    }
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    parts.authority = Some(authority);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest)?;
    Ok(())
}

pub(super) fn client_error(e: hyper_util::client::legacy::Error) -> ProxyError {
    tracing::debug!(error = %e, "upstream request failed");
    if e.is_connect() {
        ProxyError::ConnectFailure
    } else {
        ProxyError::Reset
    }
}
