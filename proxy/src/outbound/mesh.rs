//! Forwarding a request to a mesh service: pick an endpoint, carry the request to its proxy.
use std::sync::Arc;
use std::time::Instant;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version, header};
use hyper::body::Incoming;
use weir_policy::MtlsMode;

use super::{Outbound, PeerProtocol};
use crate::body::ProxyBody;
use crate::client::h2::H2Error;
use crate::client::peer::{self, PeerError, PeerIo};
use crate::config::{Service, Snapshot};
use crate::errors::ProxyError;
use crate::headers::{self, HTTP11, X_WEIR_ORIG_PROTO};
use crate::tls::ALPN_HTTP1;

impl Outbound {
    /// With credentials every peer connection is mTLS; without, plaintext is allowed only in a
    /// permissive mesh. Strict without an identity fails closed.
    pub(super) fn may_reach_mesh(&self, snapshot: &Snapshot) -> bool {
        may_reach_mesh(self.creds.is_present(), snapshot)
    }

    /// A fresh connection to one of a backend's endpoints, for upgrades and opaque streams.
    pub(super) async fn connect_peer(
        &self,
        addr: std::net::SocketAddr,
        identity: Option<&str>,
        alpn: &[u8],
    ) -> Result<PeerIo, ProxyError> {
        let creds = self.creds.load();
        peer::connect(creds.as_deref(), addr, alpn, identity)
            .await
            .map_err(peer_error)
    }

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
        let has_identity = self.creds.is_present();
        if !may_reach_mesh(has_identity, snapshot) {
            return Err(ProxyError::NoIdentity);
        }
        if headers::is_upgrade(&req) {
            let io = self
                .connect_peer(ep.addr, backend.identity.as_deref(), ALPN_HTTP1)
                .await?;
            return crate::upgrade::forward_on(io, req, &self.drain).await;
        }
        let from_http1 = req.version() < Version::HTTP_2;
        // The HTTP/1 comparison mode is plaintext only; with credentials everything rides h2.
        if from_http1 && self.peer_protocol == PeerProtocol::Http1 && !has_identity {
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
            match e {
                H2Error::Peer(p) => peer_error(p),
                _ => ProxyError::ConnectFailure,
            }
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

fn may_reach_mesh(has_identity: bool, snapshot: &Snapshot) -> bool {
    has_identity || snapshot.mtls == MtlsMode::Permissive
}

fn peer_error(e: PeerError) -> ProxyError {
    match e {
        PeerError::IdentityMismatch { .. } => {
            tracing::warn!(error = %e, "refused a peer presenting the wrong identity");
            ProxyError::IdentityMismatch
        }
        _ => {
            tracing::debug!(error = %e, "peer connection failed");
            ProxyError::ConnectFailure
        }
    }
}

pub(super) fn client_error(e: hyper_util::client::legacy::Error) -> ProxyError {
    tracing::debug!(error = %e, "upstream request failed");
    if e.is_connect() {
        ProxyError::ConnectFailure
    } else {
        ProxyError::Reset
    }
}
