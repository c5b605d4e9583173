//! Carrying one try over the wire to an endpoint's proxy: the request readied for the peer,
//! the connection (h2 or pooled HTTP/1.1) and what its failures mean to the retry layer.
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version, header};
use hyper::body::Incoming;

use super::{Outbound, PeerProtocol};
use crate::body::ProxyBody;
use crate::client::h2::H2Error;
use crate::client::peer::{self, PeerError, PeerIo};
use crate::endpoint::{Backend, Endpoint};
use crate::errors::ProxyError;
use crate::headers::{self, HTTP11, X_WEIR_ORIG_PROTO};

impl Outbound {
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

    /// Readies a request for the peer once, whatever the number of tries: hop-by-hop headers
    /// out, and an HTTP/1 request turned into HTTP/2 (restored at the far side) unless the
    /// plaintext HTTP/1 comparison mode is on.
    pub(super) fn prepare(
        &self,
        mut req: Request<Incoming>,
    ) -> Result<Request<Incoming>, ProxyError> {
        if req.version() < Version::HTTP_2 && !self.http1_to_peers() {
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
        Ok(req)
    }

    /// The HTTP/1 comparison mode is plaintext only; with credentials everything rides h2.
    fn http1_to_peers(&self) -> bool {
        self.peer_protocol == PeerProtocol::Http1 && !self.creds.is_present()
    }

    /// Carries one prepared request to one endpoint's proxy.
    pub(super) async fn send(
        &self,
        ep: &Endpoint,
        backend: &Backend,
        mut req: Request<ProxyBody>,
        connect_timeout: Option<std::time::Duration>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if req.version() < Version::HTTP_2 {
            // Pooled HTTP/1.1 to the peer: the URI names the peer's address, Host keeps the
            // service name.
            set_authority(&mut req, Authority::try_from(ep.addr.to_string()).ok())?;
            let mut rsp = self.direct.request(req).await.map_err(client_error)?;
            headers::strip_hop_by_hop(rsp.headers_mut());
            return Ok(rsp.map(ProxyBody::Incoming));
        }
        let ready = ep.h2.ready_sender();
        let ready = match connect_timeout {
            Some(limit) => tokio::time::timeout(limit, ready)
                .await
                .map_err(|_| ProxyError::Timeout)?,
            None => ready.await,
        };
        let mut send = ready.map_err(|e| {
            tracing::debug!(backend = %backend.name, error = %e, "peer connection failed");
            match e {
                H2Error::Peer(p) => peer_error(p),
                _ => ProxyError::ConnectFailure,
            }
        })?;
        let mut rsp = send.send_request(req).await.map_err(|e| {
            tracing::debug!(backend = %backend.name, error = %e, "peer stream failed");
            if e.is_canceled() {
                return ProxyError::Reset;
            }
            match std::error::Error::source(&e).and_then(|s| s.downcast_ref::<h2::Error>()) {
                Some(h2e) if h2e.reason() == Some(h2::Reason::REFUSED_STREAM) => {
                    ProxyError::RefusedStream
                }
                _ => ProxyError::Reset,
            }
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
