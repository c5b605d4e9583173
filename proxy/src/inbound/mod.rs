//! The callee's side: connections from other proxies (or, in permissive mode, plain clients)
//! are delivered to the local application.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use weir_policy::MtlsMode;

mod probes;
mod request;
mod targets;

use crate::config::ConfigStore;
use crate::detect::{Detected, PREAMBLE_LEN, PREAMBLE_MAGIC};
use crate::drain::Drain;
use crate::metrics::{Direction, Metrics, Protocol, TrafficMetrics};
use crate::server::{DetectSettings, Servers};
use crate::tls::{self, ALPN_H2, ALPN_HTTP1, ALPN_OPAQUE, CredStore};
use crate::trace::Tracing;
pub use probes::Probes;
use request::Peer;
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
}
