//! Pooled HTTP/1.1 (and h2c for pass-through) clients built on hyper-util's pooling client.
//! Connections are kept alive and reused per destination.
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::body::ProxyBody;

/// How long an idle pooled connection is kept; shorter than common app keep-alive timeouts
/// (60 s+) so the proxy closes first and never sends on a connection the app is closing.
const POOL_IDLE: Duration = Duration::from_secs(50);

pub type AppClient = Client<AppConnector, ProxyBody>;
pub type DirectClient = Client<HttpConnector, ProxyBody>;

/// Connects to the local application whatever the request URI says, so the request keeps its
/// original authority (and Host) while the bytes go to `--app-addr`.
#[derive(Debug, Clone, Copy)]
pub struct AppConnector {
    pub addr: SocketAddr,
}

/// A connection to the app. Unlike a bare `TcpStream` it reports no `HttpInfo`, which
/// hyper-util would otherwise copy into every response's extensions (three allocations
/// per request: the map, its table and the value) for nobody to read.
pub struct AppStream(TcpStream);

impl Connection for AppStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for AppStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for AppStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl tower::Service<Uri> for AppConnector {
    type Response = TokioIo<AppStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let addr = self.addr;
        Box::pin(async move {
            super::connect(addr)
                .await
                .map(|s| TokioIo::new(AppStream(s)))
        })
    }
}

pub fn app_client(addr: SocketAddr) -> AppClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(AppConnector { addr })
}

fn direct_connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(super::CONNECT_TIMEOUT));
    c
}

/// HTTP/1.1 to whatever address the URI names (pass-through, or peers in HTTP/1 mode).
pub fn direct_client() -> DirectClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(direct_connector())
}

/// h2c with prior knowledge to whatever address the URI names: for apps that spoke h2c to a
/// destination outside the mesh.
pub fn direct_h2_client() -> DirectClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .http2_only(true)
        .build(direct_connector())
}
