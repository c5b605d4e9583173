//! The callee's side: connections from other proxies (or, in permissive mode, plain clients)
//! are delivered to the local application.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use weir_policy::MtlsMode;

mod probes;
mod targets;

use crate::body::ProxyBody;
use crate::client::app::AppError;
use crate::config::ConfigStore;
use crate::detect::{Detected, PREAMBLE_LEN, PREAMBLE_MAGIC};
use crate::drain::Drain;
use crate::errors::ProxyError;
use crate::headers::{self, X_WEIR_ORIG_PROTO};
use crate::metrics::{Direction, Metrics, Protocol, TrafficMetrics};
use crate::resilience::amplification;
use crate::server::{DetectSettings, Servers};
use crate::tls::{self, ALPN_H2, ALPN_HTTP1, ALPN_OPAQUE, CredStore};
use crate::trace::Tracing;
pub use probes::Probes;
pub use targets::{AppTargets, X_WEIR_DST_PORT};

pub struct Inbound {
    config: Arc<ConfigStore>,
    creds: Arc<CredStore>,
    metrics: Arc<Metrics>,
    /// Requests that came over mTLS, and plaintext ones (only a permissive mesh has those).
    traffic_tls: Arc<TrafficMetrics>,
    traffic_plain: Arc<TrafficMetrics>,
    /// `--app-addr` and the other ports of the app callers dial.
    targets: AppTargets,
    detect: DetectSettings,
    servers: Servers,
    drain: Drain,
    /// SERVER spans, one per request (refused ones too).
    tracing: Arc<Tracing>,
}

impl Inbound {
    pub fn new(
        config: Arc<ConfigStore>,
        creds: Arc<CredStore>,
        metrics: Arc<Metrics>,
        targets: AppTargets,
        detect: DetectSettings,
        drain: Drain,
        tracing: Arc<Tracing>,
    ) -> Arc<Self> {
        let local = config.local().clone();
        Arc::new(Inbound {
            traffic_tls: metrics.traffic_labeled(
                Direction::Inbound,
                &local.service,
                Some(&local.namespace),
                "tls=\"true\"",
            ),
            traffic_plain: metrics.traffic_labeled(
                Direction::Inbound,
                &local.service,
                Some(&local.namespace),
                "tls=\"false\"",
            ),
            config,
            creds,
            metrics,
            targets,
            detect,
            servers: Servers::new(),
            drain,
            tracing,
        })
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        crate::server::accept_loop(listener, &self.drain.clone(), move |stream| {
            let this = self.clone();
            async move { this.connection(stream).await }
        })
        .await
    }

    async fn connection(self: Arc<Self>, stream: TcpStream) {
        let _open = self.metrics.inbound_connections.open();
        let orig_dst = crate::orig_dst::original_dst(&stream);
        let remote = stream.peer_addr().ok();
        let Some(detected) =
            crate::server::detect(&stream, &self.detect, orig_dst, "inbound").await
        else {
            return;
        };
        if detected == Detected::Tls {
            return self.tls_connection(stream, remote).await;
        }
        let probe_port =
            detected == Detected::Http1 && self.targets.probes.has_port(orig_dst.map(|d| d.port()));
        if !probe_port && self.config.peek(|s| s.mtls == MtlsMode::Strict) {
            self.metrics.inbound_refused.fetch_add(1, Relaxed);
            tracing::debug!("inbound plaintext connection refused: mtls is strict");
            return;
        }
        let conns = &self.metrics.inbound_connections;
        match detected {
            Detected::Http1 | Detected::H2 => {
                let h2 = detected == Detected::H2;
                // Redirected by iptables: delivered to the port the client dialled.
                let port = orig_dst.map(|d| d.port());
                self.serve_http(stream, h2, None, false, remote, port).await;
            }
            Detected::Preamble => {
                conns.protocol(Protocol::Opaque);
                self.opaque_with_preamble(stream).await;
            }
            Detected::Opaque => {
                conns.protocol(Protocol::Opaque);
                self.opaque(stream, orig_dst.map_or(0, |d| d.port())).await;
            }
            Detected::Tls | Detected::Closed => {}
        }
    }

    /// mTLS from a peer proxy: the handshake proves the caller's identity (a client
    /// certificate from the mesh's roots is required) and ALPN says what the stream carries.
    async fn tls_connection(self: Arc<Self>, stream: TcpStream, remote: Option<SocketAddr>) {
        let Some(creds) = self.creds.load() else {
            self.metrics.inbound_refused.fetch_add(1, Relaxed);
            tracing::debug!("inbound TLS refused: this proxy has no identity");
            return;
        };
        let tls = match TlsAcceptor::from(creds.server.clone()).accept(stream).await {
            Ok(t) => t,
            Err(e) => {
                // No client certificate, an unknown root, an expired cert...
                self.metrics.inbound_refused.fetch_add(1, Relaxed);
                tracing::debug!(error = %e, "inbound TLS handshake failed");
                return;
            }
        };
        let (_, session) = tls.get_ref();
        let peer = tls::peer_id(session.peer_certificates()).map(|id| Arc::new(Peer::new(id)));
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        match alpn.as_deref() {
            Some(ALPN_H2) => self.serve_http(tls, true, peer, true, remote, None).await,
            Some(ALPN_HTTP1) => self.serve_http(tls, false, peer, true, remote, None).await,
            Some(ALPN_OPAQUE) => {
                self.metrics.inbound_connections.protocol(Protocol::Opaque);
                self.opaque_with_preamble(tls).await;
            }
            other => {
                tracing::debug!(alpn = ?other, "inbound TLS without a known ALPN protocol; closing")
            }
        }
    }

    async fn serve_http<I>(
        self: &Arc<Self>,
        io: I,
        h2: bool,
        peer: Option<Arc<Peer>>,
        tls: bool,
        remote: Option<SocketAddr>,
        port: Option<u16>,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        let handle = move |req| {
            let this = this.clone();
            let peer = peer.clone();
            async move { this.proxy(req, peer.as_deref(), tls, remote, port).await }
        };
        let conns = &self.metrics.inbound_connections;
        self.servers
            .serve_http(&self.drain, conns, io, h2, handle)
            .await;
    }

    async fn opaque_with_preamble<I>(&self, mut io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let mut preamble = [0u8; PREAMBLE_LEN];
        if io.read_exact(&mut preamble).await.is_err() || !preamble.starts_with(PREAMBLE_MAGIC) {
            return;
        }
        let port = u16::from_be_bytes([
            preamble[PREAMBLE_MAGIC.len()],
            preamble[PREAMBLE_MAGIC.len() + 1],
        ]);
        self.opaque(io, port).await;
    }

    /// Delivers an opaque stream to the app: on the original port when one is known, else on
    /// `--app-addr`. Always on the app's own IP, never anywhere else, and never on the
    /// proxy's own ports.
    async fn opaque<I>(&self, mut io: I, port: u16)
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let target = self.targets.get(Some(port)).addr;
        let result = match crate::client::connect(target).await {
            Ok(mut app) => crate::tcp::splice(&mut io, &mut app).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::debug!(%target, error = %e, "inbound opaque connection ended with an error");
        }
    }

    /// `peer` is the caller's proven identity, `remote` its socket address, `conn_port` the
    /// port a redirected plaintext connection was headed to.
    async fn proxy(
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
struct Peer {
    /// Its SPIFFE id.
    id: Box<str>,
    /// The same as the `x-weir-client-id` value the app gets: built here, so each request
    /// costs a reference count instead of a copy and a validation.
    header: Option<http::HeaderValue>,
}

impl Peer {
    fn new(id: String) -> Peer {
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
