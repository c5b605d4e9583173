//! Destinations outside the mesh: forwarded untouched to where the app was headed.
use std::net::SocketAddr;
use std::time::Instant;

use http::uri::Authority;
use http::{Request, Response, Version};
use hyper::body::Incoming;

use super::Outbound;
use super::wire::{client_error, set_authority};
use crate::body::ProxyBody;
use crate::errors::ProxyError;
use crate::headers;

impl Outbound {
    pub(super) async fn to_passthrough(
        &self,
        req: Request<Incoming>,
        orig_dst: Option<SocketAddr>,
    ) -> Response<ProxyBody> {
        let m = &self.passthrough;
        m.request();
        let start = Instant::now();
        let rsp = self
            .passthrough_call(req, orig_dst)
            .await
            .unwrap_or_else(ProxyError::response);
        m.response(Some(rsp.status().as_u16()), start.elapsed());
        rsp
    }

    async fn passthrough_call(
        &self,
        mut req: Request<Incoming>,
        orig_dst: Option<SocketAddr>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // A redirected connection goes where the app connected (it already resolved the name);
        // an explicit one goes where the Host or absolute URI says.
        let authority = match orig_dst {
            Some(dst) => Authority::try_from(dst.to_string()).ok(),
            None => headers::authority(&req).and_then(|a| Authority::try_from(a).ok()),
        };
        if headers::is_upgrade(&req) {
            let authority = authority.ok_or(ProxyError::BadRequest)?;
            let addr = resolve(&authority).await?;
            return crate::upgrade::forward(addr, req, &self.drain).await;
        }
        set_authority(&mut req, authority)?;
        headers::strip_hop_by_hop(req.headers_mut());
        let client = if req.version() == Version::HTTP_2 {
            &self.direct_h2
        } else {
            &self.direct
        };
        let mut rsp = client
            .request(req.map(ProxyBody::Incoming))
            .await
            .map_err(client_error)?;
        headers::strip_hop_by_hop(rsp.headers_mut());
        Ok(rsp.map(ProxyBody::Incoming))
    }
}

async fn resolve(authority: &Authority) -> Result<SocketAddr, ProxyError> {
    let port = authority.port_u16().unwrap_or(80);
    let mut addrs = tokio::net::lookup_host((authority.host(), port))
        .await
        .map_err(|_| ProxyError::ConnectFailure)?;
    addrs.next().ok_or(ProxyError::ConnectFailure)
}
