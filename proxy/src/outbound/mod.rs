//! The caller's side: the app's outbound calls arrive here (explicitly, or redirected by
//! iptables), get resolved to a mesh service or passed through, and are forwarded.
mod discover;
mod mesh;
mod passthrough;
mod resolve;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::body::ProxyBody;
use crate::client::http1::{DirectClient, direct_client, direct_h2_client};
use crate::client::peer::PeerIo;
use crate::config::ConfigStore;
use crate::detect::{self, Detected};
use crate::drain::Drain;
use crate::errors::ProxyError;
use crate::inbound::X_WEIR_DST_PORT;
use crate::metrics::{Direction, Metrics, Protocol, TrafficMetrics};
use crate::server::{DetectSettings, Servers};
use crate::tls::{ALPN_OPAQUE, CredStore};

/// How HTTP/1 requests travel between proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PeerProtocol {
    /// Multiplexed over one HTTP/2 connection per endpoint, restored to HTTP/1.1 at the far side.
    H2,
    /// Over pooled HTTP/1.1 connections, as the app sent them.
    Http1,
}

pub struct Outbound {
    config: Arc<ConfigStore>,
    creds: Arc<CredStore>,
    metrics: Arc<Metrics>,
    passthrough: Arc<TrafficMetrics>,
    direct: DirectClient,
    direct_h2: DirectClient,
    peer_protocol: PeerProtocol,
    detect: DetectSettings,
    servers: Servers,
    drain: Drain,
    /// Randomness for endpoint choice, backoff jitter and fault rolls.
    rng: crate::resilience::rand::SharedRng,
    /// CLIENT spans of mesh calls (`crate::trace` says where each of its calls goes).
    tracing: Arc<crate::trace::Tracing>,
}

impl Outbound {
    pub fn new(
        config: Arc<ConfigStore>,
        creds: Arc<CredStore>,
        metrics: Arc<Metrics>,
        peer_protocol: PeerProtocol,
        detect: DetectSettings,
        drain: Drain,
        tracing: Arc<crate::trace::Tracing>,
    ) -> Arc<Self> {
        Arc::new(Outbound {
            passthrough: metrics.traffic(Direction::Outbound, "passthrough", None),
            config,
            creds,
            metrics,
            direct: direct_client(),
            direct_h2: direct_h2_client(),
            peer_protocol,
            detect,
            servers: Servers::new(),
            drain,
            rng: crate::resilience::rand::SharedRng::seeded(),
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
        let _open = self.metrics.outbound_connections.open();
        let orig_dst = crate::orig_dst::original_dst(&stream);
        let Some(detected) =
            crate::server::detect(&stream, &self.detect, orig_dst, "outbound").await
        else {
            return;
        };
        let conns = &self.metrics.outbound_connections;
        match detected {
            Detected::Http1 | Detected::H2 => {
                let this = self.clone();
                let handle = move |req| {
                    let this = this.clone();
                    async move { this.proxy(req, orig_dst).await }
                };
                let h2 = detected == Detected::H2;
                self.servers
                    .serve_http(&self.drain, conns, stream, h2, handle)
                    .await;
            }
            // An app's own TLS is opaque to the proxy.
            Detected::Opaque | Detected::Preamble | Detected::Tls => {
                conns.protocol(Protocol::Opaque);
                self.opaque(stream, orig_dst).await;
            }
            Detected::Closed => {}
        }
    }

    async fn proxy(
        &self,
        mut req: Request<Incoming>,
        orig_dst: Option<SocketAddr>,
    ) -> Response<ProxyBody> {
        if req.method() == Method::CONNECT {
            return self.tunnel(req).await.unwrap_or_else(ProxyError::response);
        }
        let snapshot = match self.discovered(&req, orig_dst).await {
            Ok(s) => s,
            Err(e) => return e.response(),
        };
        // Only this proxy says which pod port a call is for; an app cannot pick one.
        req.headers_mut().remove(X_WEIR_DST_PORT);
        match resolve::resolve(&snapshot, &req, orig_dst) {
            Some((svc, port)) => {
                if let Some(port) = port {
                    req.headers_mut()
                        .insert(X_WEIR_DST_PORT, http::HeaderValue::from(port));
                }
                self.to_mesh(&snapshot, svc, req).await
            }
            None => self.to_passthrough(req, orig_dst).await,
        }
    }

    /// Non-HTTP traffic. Only iptables-redirected connections have a destination.
    async fn opaque(&self, mut stream: TcpStream, orig_dst: Option<SocketAddr>) {
        let Some(dst) = orig_dst else {
            tracing::debug!(
                "non-HTTP connection to the outbound port without an original destination; closing"
            );
            return;
        };
        let snapshot = match self.discovered_addr(dst).await {
            Ok(s) => s,
            Err(_) => self.config.load(),
        };
        let result = match snapshot.service_for_original_dst(dst) {
            Some((svc, port)) => {
                if !self.may_reach_mesh(&snapshot) {
                    tracing::debug!(%dst, "opaque connection to a mesh service refused: mtls is strict and this proxy has no identity");
                    return;
                }
                let _open = svc.metrics.tunnel();
                let Some(ep) = svc.own.pick() else { return };
                let identity = svc.own.identity.as_deref();
                match self.connect_peer(ep.addr, identity, ALPN_OPAQUE).await {
                    Ok(mut up) => {
                        // 0: the callee's `--app-addr`.
                        let preamble = detect::preamble(port.unwrap_or(0));
                        crate::tcp::splice_with_preamble(&mut stream, &mut up, &preamble).await
                    }
                    Err(e) => Err(std::io::Error::other(e.reason())),
                }
            }
            None => match crate::client::connect(dst).await {
                Ok(mut up) => crate::tcp::splice(&mut stream, &mut up).await,
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            tracing::debug!(%dst, error = %e, "opaque connection ended with an error");
        }
    }

    /// `CONNECT host:port`: an opaque tunnel, through the mesh when the host is a mesh service.
    async fn tunnel(&self, mut req: Request<Incoming>) -> Result<Response<ProxyBody>, ProxyError> {
        let authority = req
            .uri()
            .authority()
            .cloned()
            .ok_or(ProxyError::BadRequest)?;
        let snapshot = self.discovered_authority(authority.as_str()).await?;
        let (mut upstream, preamble, open) =
            match snapshot.service_for_authority(authority.as_str()) {
                Some(svc) => {
                    if !self.may_reach_mesh(&snapshot) {
                        return Err(ProxyError::NoIdentity);
                    }
                    let ep = svc.own.pick().ok_or(ProxyError::NoEndpoints)?;
                    let identity = svc.own.identity.as_deref();
                    let io = self.connect_peer(ep.addr, identity, ALPN_OPAQUE).await?;
                    (io, Some(detect::preamble(0)), Some(svc.metrics.tunnel()))
                }
                None => {
                    let mut addrs = tokio::net::lookup_host(authority.as_str())
                        .await
                        .map_err(|_| ProxyError::ConnectFailure)?;
                    let addr = addrs.next().ok_or(ProxyError::ConnectFailure)?;
                    let tcp = crate::client::connect(addr)
                        .await
                        .map_err(|_| ProxyError::ConnectFailure)?;
                    (PeerIo::Plain(tcp), None, None)
                }
            };
        let on_upgrade = hyper::upgrade::on(&mut req);
        self.drain.spawn(async move {
            let _open = open;
            let down = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "CONNECT upgrade failed");
                    return;
                }
            };
            let mut down = TokioIo::new(down);
            let r = match preamble {
                Some(p) => crate::tcp::splice_with_preamble(&mut down, &mut upstream, &p).await,
                None => crate::tcp::splice(&mut down, &mut upstream).await,
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "tunnel ended with an error");
            }
        });
        let mut rsp = Response::new(ProxyBody::empty());
        *rsp.status_mut() = StatusCode::OK;
        Ok(rsp)
    }
}
