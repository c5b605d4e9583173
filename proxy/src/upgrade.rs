//! HTTP/1 upgrades (WebSocket and friends). They cannot ride the multiplexed HTTP/2 connection
//! between proxies, so each gets its own HTTP/1.1 connection to the next hop; after `101` the
//! two raw streams are spliced.
use std::net::SocketAddr;

use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::body::ProxyBody;
use crate::drain::Drain;
use crate::errors::ProxyError;

/// Forwards an upgrade over a fresh connection to `addr`.
pub async fn forward(
    addr: SocketAddr,
    req: Request<Incoming>,
    drain: &Drain,
) -> Result<Response<ProxyBody>, ProxyError> {
    let stream = crate::client::connect(addr).await.map_err(|e| {
        tracing::debug!(%addr, error = %e, "upgrade connect failed");
        ProxyError::ConnectFailure
    })?;
    forward_on(stream, req, drain).await
}

/// Forwards an upgrade over `stream`, already connected (and, to a peer, already mTLS).
pub async fn forward_on<S>(
    stream: S,
    mut req: Request<Incoming>,
    drain: &Drain,
) -> Result<Response<ProxyBody>, ProxyError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    to_origin_form(&mut req);
    let downstream = hyper::upgrade::on(&mut req);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ProxyError::ConnectFailure)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade client connection ended");
        }
    });
    let mut rsp = send
        .send_request(req.map(ProxyBody::Incoming))
        .await
        .map_err(|_| ProxyError::Reset)?;
    if rsp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut rsp);
        drain.spawn(crate::tcp::splice_upgrades(downstream, upstream));
    }
    Ok(rsp.map(ProxyBody::Incoming))
}

/// Request line in origin form (`GET /path`), with the authority moved to Host if needed:
/// what an HTTP/1 origin server expects.
pub fn to_origin_form<B>(req: &mut Request<B>) {
    if req.uri().authority().is_none() {
        return;
    }
    crate::headers::ensure_host(req);
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
}
