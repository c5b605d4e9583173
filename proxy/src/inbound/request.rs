//! One request on an inbound connection: admitted (authorization, rate limit) or refused, then
//! delivered to the app with the caller's proven identity.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use weir_policy::MtlsMode;

use super::{Inbound, targets};
use crate::body::ProxyBody;
use crate::client::app::AppError;
use crate::errors::ProxyError;
use crate::headers::{self, X_WEIR_ORIG_PROTO};
use crate::resilience::amplification;

impl Inbound {
    /// `peer` is the caller's proven identity, `remote` its socket address, `conn_port` the
    /// port a redirected plaintext connection was headed to.
    pub(super) async fn proxy(
        &self,
        mut req: Request<Incoming>,
        peer: Option<&Peer>,
        tls: bool,
        remote: Option<SocketAddr>,
        conn_port: Option<u16>,
    ) -> Response<ProxyBody> {
        // The caller's proxy names the pod port it resolved the call to; the header never
        // reaches the app.
        let named_port = targets::take_dst_port(req.headers_mut());
        let probe = !tls && self.targets.probes.allows(conn_port, &req);
        // A probe goes to the port the kubelet dialled, whatever the request says.
        let port = if probe {
            conn_port
        } else {
            named_port.or(conn_port)
        };
        let traffic = if tls {
            &self.traffic_tls
        } else {
            &self.traffic_plain
        };
        traffic.request();
        let start = Instant::now();
        // Only read when a collector is configured: the common case skips the snapshot load.
        let sampling = if self.tracing.is_enabled() {
            self.config.peek(|s| s.sampling)
        } else {
            0.0
        };
        let span = self.tracing.server(&req, sampling, remote);
        let mut trace = None;
        // Plaintext: a declared kubelet probe needs no identity; anything else on a probe port
        // of a strict mesh is refused like a plaintext connection would have been.
        let admitted = if tls {
            self.admit(peer.map(|p| &*p.id))
        } else if probe {
            Ok(())
        } else if self.config.peek(|s| s.mtls == MtlsMode::Strict) {
            tracing::debug!(
                "plaintext request refused: mtls is strict and it is no declared probe"
            );
            Err(Refused::Error(ProxyError::Unauthorized))
        } else {
            self.admit(peer.map(|p| &*p.id))
        };
        let (mut rsp, error) = match admitted {
            Ok(()) => {
                set_client_id(req.headers_mut(), peer);
                self.tracing.forward(&span, req.headers_mut());
                // Read now, as the app will see it: the request is gone once it has answered,
                // and only then is it known whether its trace was marked exhausted meanwhile.
                trace = crate::trace::trace_id(req.headers());
                match self.to_app(req, port).await {
                    Ok(rsp) => (rsp, None),
                    Err(e) => (e.response(), Some(e.reason())),
                }
            }
            Err(Refused::Error(e)) => (e.response(), Some(e.reason())),
            Err(Refused::RateLimited(wait)) => {
                let retry_after = weir_resilience::ratelimit::retry_after_secs(wait);
                let reason = ProxyError::RateLimited.reason();
                (ProxyError::rate_limited_response(retry_after), Some(reason))
            }
        };
        let exhausted = amplification::table();
        if rsp.status().is_server_error() && exhausted.any(tokio::time::Instant::now()) {
            exhausted.label_response(trace.as_ref(), &mut rsp);
        }
        let status = rsp.status().as_u16();
        traffic.response(Some(status), start.elapsed());
        self.tracing.finish_server(span, &mut rsp, error);
        rsp
    }

    /// Who may call (authorization), then how often (the rate limit, so a refused caller
    /// spends no tokens), both from the snapshot in force for every request.
    fn admit(&self, peer: Option<&str>) -> Result<(), Refused> {
        self.authorize(peer).map_err(Refused::Error)?;
        let limited = self.config.peek(|s| {
            let limit = s.inbound_rate_limit.as_ref()?;
            limit.try_acquire(tokio::time::Instant::now()).err()
        });
        match limited {
            Some(wait) => {
                tracing::debug!(?wait, "request refused by the rate limit");
                Err(Refused::RateLimited(wait))
            }
            None => Ok(()),
        }
    }

    /// The service's authorization policy, read from the snapshot in force for every request,
    /// so a change applies at once, on connections already open too.
    fn authorize(&self, peer: Option<&str>) -> Result<(), ProxyError> {
        let allowed = self.config.peek(|snapshot| match &snapshot.inbound_authz {
            None => true,
            Some(authz) => peer.is_some_and(|p| authz.allows(p)),
        });
        if allowed {
            Ok(())
        } else {
            tracing::debug!(peer = ?peer, "request refused by the authorization policy");
            Err(ProxyError::Unauthorized)
        }
    }

    async fn to_app(
        &self,
        mut req: Request<Incoming>,
        port: Option<u16>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let target = self.targets.get(port);
        if headers::is_upgrade(&req) {
            return crate::upgrade::forward(target.addr, req, &self.drain).await;
        }
        let restore_http1 = req.headers_mut().remove(X_WEIR_ORIG_PROTO).is_some();
        headers::strip_hop_by_hop(req.headers_mut());
        let mut rsp = if restore_http1 || req.version() < Version::HTTP_2 {
            to_http1(&mut req);
            target
                .http1
                .send(req.map(ProxyBody::Incoming))
                .await
                .map_err(|e| {
                    tracing::debug!(error = %e, "request to the app failed");
                    match e {
                        AppError::Connect { .. } => ProxyError::ConnectFailure,
                        AppError::Send(_) => ProxyError::Reset,
                    }
                })?
        } else {
            let mut send = target.h2.ready_sender().await.map_err(|e| {
                tracing::debug!(error = %e, "h2 connection to the app failed");
                ProxyError::ConnectFailure
            })?;
            send.send_request(req.map(ProxyBody::Incoming))
                .await
                .map_err(|_| ProxyError::Reset)?
                .map(ProxyBody::Incoming)
        };
        headers::strip_hop_by_hop(rsp.headers_mut());
        // `date` changes every second. HPACK-indexed, each new value joins a chain of the
        // earlier ones that h2's encoder walks on every response (about 60 deep once the
        // 4 KiB table is full); sent as a never-indexed literal it costs one short string.
        if let Some(date) = rsp.headers_mut().get_mut(http::header::DATE) {
            date.set_sensitive(true);
        }
        Ok(rsp)
    }
}

/// Why the inbound answered a request itself.
enum Refused {
    Error(ProxyError),
    /// Over the service's `rateLimit`; a token comes back after this long (`Retry-After`).
    RateLimited(Duration),
}

/// The caller an mTLS handshake proved, made once per connection.
pub(super) struct Peer {
    /// Its SPIFFE id.
    id: Box<str>,
    /// The same as the `x-weir-client-id` value the app gets: built here, so each request
    /// costs a reference count instead of a copy and a validation.
    header: Option<http::HeaderValue>,
}

impl Peer {
    pub(super) fn new(id: String) -> Peer {
        let header = http::HeaderValue::from_maybe_shared(bytes::Bytes::from(id.clone())).ok();
        Peer {
            id: id.into_boxed_str(),
            header,
        }
    }
}

/// Tells the app who called: the SPIFFE id the mTLS handshake proved. Whatever a caller
/// wrote there itself is removed, so the header can be trusted.
fn set_client_id(headers: &mut http::HeaderMap, peer: Option<&Peer>) {
    match peer.and_then(|p| p.header.clone()) {
        Some(v) => {
            headers.insert(X_WEIR_CLIENT_ID, v);
        }
        None => {
            headers.remove(X_WEIR_CLIENT_ID);
        }
    }
}

const X_WEIR_CLIENT_ID: http::HeaderName = http::HeaderName::from_static("x-weir-client-id");

/// Shapes a request for the app's HTTP/1.1 connection: Host carries the original authority,
/// the request target is origin-form (`/path?query`).
fn to_http1<B>(req: &mut Request<B>) {
    headers::ensure_host(req);
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(pq);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_11;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_id_is_the_proven_peer_and_never_what_the_caller_wrote() {
        let spoofed = || {
            let mut h = http::HeaderMap::new();
            h.append(X_WEIR_CLIENT_ID, "spiffe://evil/ns/x/sa/a".parse().unwrap());
            h.append(X_WEIR_CLIENT_ID, "spiffe://evil/ns/x/sa/b".parse().unwrap());
            h
        };
        let mut h = spoofed();
        set_client_id(&mut h, None);
        assert!(h.get(X_WEIR_CLIENT_ID).is_none());

        let peer = Peer::new("spiffe://weir.local/ns/shop/sa/orders".to_owned());
        let mut h = spoofed();
        set_client_id(&mut h, Some(&peer));
        let ids: Vec<_> = h.get_all(X_WEIR_CLIENT_ID).iter().collect();
        assert_eq!(ids, ["spiffe://weir.local/ns/shop/sa/orders"]);
    }
}
