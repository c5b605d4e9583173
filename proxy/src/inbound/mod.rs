//! The callee's side: connections from other proxies (or, in permissive mode, plain clients)
//! are delivered to the local application.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use weir_policy::MtlsMode;

use crate::body::ProxyBody;
use crate::client::h2::H2Slot;
use crate::client::http1::{AppClient, app_client};
use crate::config::ConfigStore;
use crate::detect::{Detected, PREAMBLE_LEN, PREAMBLE_MAGIC};
use crate::drain::Drain;
use crate::errors::ProxyError;
use crate::headers::{self, X_WEIR_ORIG_PROTO};
use crate::metrics::{Direction, Metrics, Protocol, TrafficMetrics};
use crate::server::{DetectSettings, Servers};

pub struct Inbound {
    config: Arc<ConfigStore>,
    metrics: Arc<Metrics>,
    traffic: Arc<TrafficMetrics>,
    app_addr: SocketAddr,
    app: AppClient,
    app_h2: Arc<H2Slot>,
    detect: DetectSettings,
    servers: Servers,
    drain: Drain,
}

impl Inbound {
    pub fn new(
        config: Arc<ConfigStore>,
        metrics: Arc<Metrics>,
        app_addr: SocketAddr,
        detect: DetectSettings,
        drain: Drain,
    ) -> Arc<Self> {
        let local = config.local().clone();
        Arc::new(Inbound {
            traffic: metrics.traffic(Direction::Inbound, &local.service, Some(&local.namespace)),
            config,
            metrics,
            app_addr,
            app: app_client(app_addr),
            app_h2: H2Slot::new(app_addr),
            detect,
            servers: Servers::new(),
            drain,
        })
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        crate::server::accept_loop(listener, &self.drain.clone(), move |stream| {
            let this = self.clone();
            async move { this.connection(stream).await }
        })
        .await
    }

    async fn connection(self: Arc<Self>, mut stream: TcpStream) {
        let _open = self.metrics.inbound_connections.open();
        if self.config.load().mtls == MtlsMode::Strict {
            // No identity yet means no TLS; strict mode must not accept plaintext.
            self.metrics.inbound_refused.fetch_add(1, Relaxed);
            tracing::debug!("inbound plaintext connection refused: mtls is strict");
            return;
        }
        let orig_dst = crate::orig_dst::original_dst(&stream);
        let Some(detected) =
            crate::server::detect(&stream, &self.detect, orig_dst, "inbound").await
        else {
            return;
        };
        let conns = &self.metrics.inbound_connections;
        match detected {
            Detected::Http1 | Detected::H2 => {
                let this = self.clone();
                let handle = move |req| {
                    let this = this.clone();
                    async move { this.proxy(req).await }
                };
                let h2 = detected == Detected::H2;
                self.servers
                    .serve_http(&self.drain, conns, stream, h2, handle)
                    .await;
            }
            Detected::Preamble => {
                conns.protocol(Protocol::Opaque);
                let mut preamble = [0u8; PREAMBLE_LEN];
                if stream.read_exact(&mut preamble).await.is_err() {
                    return;
                }
                let port = u16::from_be_bytes([
                    preamble[PREAMBLE_MAGIC.len()],
                    preamble[PREAMBLE_MAGIC.len() + 1],
                ]);
                self.opaque(stream, port).await;
            }
            Detected::Opaque => {
                conns.protocol(Protocol::Opaque);
                self.opaque(stream, orig_dst.map_or(0, |d| d.port())).await;
            }
            Detected::Closed => {}
        }
    }

    /// Delivers an opaque stream to the app: on the original port when one is known, else on
    /// `--app-addr`. Always on the app's own address, never anywhere else.
    async fn opaque(&self, mut stream: TcpStream, port: u16) {
        let target = if port == 0 {
            self.app_addr
        } else {
            SocketAddr::new(self.app_addr.ip(), port)
        };
        let result = match crate::client::connect(target).await {
            Ok(mut app) => crate::tcp::splice(&mut stream, &mut app).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::debug!(%target, error = %e, "inbound opaque connection ended with an error");
        }
    }

    async fn proxy(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        self.traffic.request();
        let start = Instant::now();
        let rsp = self.to_app(req).await.unwrap_or_else(ProxyError::response);
        self.traffic
            .response(Some(rsp.status().as_u16()), start.elapsed());
        rsp
    }

    async fn to_app(&self, mut req: Request<Incoming>) -> Result<Response<ProxyBody>, ProxyError> {
        if headers::is_upgrade(&req) {
            return crate::upgrade::forward(self.app_addr, req, &self.drain).await;
        }
        let restore_http1 = req.headers_mut().remove(X_WEIR_ORIG_PROTO).is_some();
        headers::strip_hop_by_hop(req.headers_mut());
        let mut rsp = if restore_http1 || req.version() < Version::HTTP_2 {
            to_http1(&mut req);
            self.app
                .request(req.map(ProxyBody::Incoming))
                .await
                .map_err(|e| {
                    tracing::debug!(error = %e, "request to the app failed");
                    if e.is_connect() {
                        ProxyError::ConnectFailure
                    } else {
                        ProxyError::Reset
                    }
                })?
        } else {
            let mut send = self.app_h2.ready_sender().await.map_err(|e| {
                tracing::debug!(error = %e, "h2 connection to the app failed");
                ProxyError::ConnectFailure
            })?;
            send.send_request(req.map(ProxyBody::Incoming))
                .await
                .map_err(|_| ProxyError::Reset)?
        };
        headers::strip_hop_by_hop(rsp.headers_mut());
        Ok(rsp.map(ProxyBody::Incoming))
    }
}

/// Shapes a request for the app's HTTP/1.1 connection pool: Host carries the original
/// authority; the URI's authority is only the pool key (the connector always dials the app).
fn to_http1<B>(req: &mut Request<B>) {
    headers::ensure_host(req);
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(Authority::from_static("app"));
    parts.path_and_query = Some(pq);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    *req.version_mut() = Version::HTTP_11;
}
