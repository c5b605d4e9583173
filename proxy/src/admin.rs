//! The admin listener: liveness, readiness, metrics, the effective config, and shutdown.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::body::ProxyBody;
use crate::config::ConfigStore;
use crate::drain::Drain;
use crate::metrics::Metrics;

pub struct Admin {
    pub config: Arc<ConfigStore>,
    pub metrics: Arc<Metrics>,
    /// Set once the listeners are bound and the config is loaded.
    pub ready: AtomicBool,
    /// With a control plane, config counts as loaded once a snapshot arrived (or came from the
    /// cache).
    pub needs_control_plane: bool,
    /// With --token-file, not ready until the first certificate arrived.
    pub needs_identity: bool,
    pub creds: Arc<crate::tls::CredStore>,
    pub drain: Drain,
}

impl Admin {
    /// Serves until the process exits: the admin port stays up during a drain so probes see
    /// `/ready` turn 503 and metrics stay scrapeable.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let this = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.handle(req, peer)) }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!(error = %e, "admin connection ended with an error");
                }
            });
        }
    }

    fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n".into()),
            (&Method::GET, "/ready") => {
                let config_loaded = (!self.needs_control_plane
                    || self.config.load().control_plane_version > 0)
                    && (!self.needs_identity || self.creds.is_present());
                if self.ready.load(Ordering::Acquire) && config_loaded && !self.drain.is_draining()
                {
                    text(StatusCode::OK, "ready\n".into())
                } else if self.drain.is_draining() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
                } else if !config_loaded {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "waiting for the first control-plane snapshot or the identity certificate\n".into(),
                    )
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into())
                }
            }
            (&Method::GET, "/metrics") => {
                let mut body = self.metrics.render();
                crate::config::report::render(&self.config.load(), &mut body);
                let mut rsp = text(StatusCode::OK, body);
                rsp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                rsp
            }
            (&Method::GET, "/config") => {
                let mut rsp = text(
                    StatusCode::OK,
                    self.config.load().to_json(self.config.local()),
                );
                rsp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                rsp
            }
            (&Method::POST, "/shutdown") => {
                // The admin port may be bound wide for scraping; shutting down stays local.
                if !peer.ip().is_loopback() {
                    return text(
                        StatusCode::FORBIDDEN,
                        "shutdown is only accepted from loopback\n".into(),
                    );
                }
                tracing::info!("shutdown requested through the admin endpoint");
                self.drain.start();
                text(StatusCode::OK, "draining\n".into())
            }
            (_, "/live" | "/ready" | "/metrics" | "/config" | "/shutdown") => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /live /ready /metrics /config or POST /shutdown\n".into(),
            ),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut rsp = Response::new(ProxyBody::Full(Some(Bytes::from(body))));
    *rsp.status_mut() = status;
    rsp
}
