//! What the inbound and outbound listeners share: hyper server settings and the accept loop.
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::body::ProxyBody;
use crate::detect::{self, Detected};
use crate::drain::Drain;
use crate::metrics::{ConnectionMetrics, Protocol};

/// Per-stream and per-connection HTTP/2 receive windows (see client::h2 for the reasoning).
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

pub struct Servers {
    pub http1: http1::Builder,
    pub h2: http2::Builder<TokioExecutor>,
}

impl Servers {
    pub fn new() -> Self {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            // Slow-loris guard: a client gets this long to send a request head.
            .header_read_timeout(Duration::from_secs(30))
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_streams(1024)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        Servers { http1: h1, h2 }
    }
}

impl Servers {
    /// Serves one HTTP connection (HTTP/1 with upgrades, or h2 with prior knowledge) with
    /// `handle` until it closes or the drain finishes it.
    pub async fn serve_http<I, F, Fut>(
        &self,
        drain: &Drain,
        conns: &ConnectionMetrics,
        stream: I,
        h2: bool,
        handle: F,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
    {
        conns.protocol(if h2 { Protocol::H2 } else { Protocol::Http1 });
        let svc = service_fn(move |req| {
            let handle = handle.clone();
            async move { Ok::<_, Infallible>(handle(req).await) }
        });
        let io = TokioIo::new(stream);
        if h2 {
            drain.serve(self.h2.serve_connection(io, svc)).await;
        } else {
            drain
                .serve(self.http1.serve_connection(io, svc).with_upgrades())
                .await;
        }
    }
}

/// How the listeners tell protocols apart.
#[derive(Debug, Clone)]
pub struct DetectSettings {
    /// How long to wait for a client's first bytes before treating it as opaque.
    pub timeout: Duration,
    /// Original destination ports that are opaque without looking: server-speaks-first
    /// protocols (SMTP, MySQL, ...) would otherwise wait out the timeout on every connection.
    pub opaque_ports: Vec<u16>,
}

/// Peeks at the first bytes; `None` (logged) when the socket failed before saying anything.
pub async fn detect(
    stream: &TcpStream,
    settings: &DetectSettings,
    orig_dst: Option<std::net::SocketAddr>,
    side: &'static str,
) -> Option<Detected> {
    if orig_dst.is_some_and(|d| settings.opaque_ports.contains(&d.port())) {
        return Some(Detected::Opaque);
    }
    match detect::detect(stream, settings.timeout).await {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::debug!(side, error = %e, "protocol detection failed");
            None
        }
    }
}

impl Default for Servers {
    fn default() -> Self {
        Self::new()
    }
}

/// Accepts until the drain starts, running each connection as a drain-tracked task. The
/// listener is dropped on return, so new connections are refused while old ones finish.
pub async fn accept_loop<F, Fut>(listener: TcpListener, drain: &Drain, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        tokio::select! {
            biased;
            () = drain.signaled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "set TCP_NODELAY");
                    }
                    drain.spawn(handle(stream));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}
