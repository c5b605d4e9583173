//! In-process test applications on real sockets, with counters the tests read.

pub mod chaos;
pub mod grpc;
pub mod http;
pub mod shop;
pub mod tcp;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::util::BoxError;

pub type RespBody = UnsyncBoxBody<Bytes, BoxError>;

/// What an HTTP or gRPC app has seen. Read by tests to prove where traffic went.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// TCP connections accepted.
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    /// Requests currently inside `/delay`.
    pub in_flight: AtomicI64,
    /// HTTP version of each request, in arrival order.
    pub versions: Mutex<Vec<::http::Version>>,
    /// `Host` header (or URI authority for HTTP/2) of each request.
    pub hosts: Mutex<Vec<String>>,
}

impl HttpStats {
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn versions(&self) -> Vec<::http::Version> {
        self.versions.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn hosts(&self) -> Vec<String> {
        self.hosts.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn record<B>(&self, req: &::http::Request<B>) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut v) = self.versions.lock() {
            v.push(req.version());
        }
        if let Ok(mut h) = self.hosts.lock() {
            h.push(host_of(req));
        }
    }
}

/// The `Host` header, else the URI authority (HTTP/2 carries `:authority`).
pub fn host_of<B>(req: &::http::Request<B>) -> String {
    req.headers()
        .get(::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

/// A running server; its accept loop and every connection task stop on drop.
pub struct Server {
    pub addr: SocketAddr,
    pub stats: Arc<HttpStats>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves HTTP/1.1 and HTTP/2 (prior knowledge) with upgrades on `listener`,
/// calling `handler` for every request.
pub fn serve_http<H, F>(listener: TcpListener, stats: Arc<HttpStats>, handler: H) -> Server
where
    H: Fn(::http::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ::http::Response<RespBody>> + Send + 'static,
{
    let addr = listener.local_addr().expect("listener address");
    let loop_stats = stats.clone();
    let task = tokio::spawn(async move {
        // Owning the connection tasks here means aborting this task ends them all.
        let mut conns = JoinSet::new();
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("test app {addr}: accept: {e}");
                    continue;
                }
            };
            while conns.try_join_next().is_some() {}
            loop_stats.connections.fetch_add(1, Ordering::SeqCst);
            let stats = loop_stats.clone();
            let handler = handler.clone();
            conns.spawn(async move {
                let svc = hyper::service::service_fn(move |req: ::http::Request<Incoming>| {
                    stats.record(&req);
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await
                {
                    // Peers (proxies) may reset idle connections; worth a line, not a panic.
                    eprintln!("test app {addr}: connection: {e}");
                }
            });
        }
    });
    Server { addr, stats, task }
}

/// Binds 127.0.0.1:0; test apps are only ever reached over loopback.
pub async fn bind_loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a test app on 127.0.0.1:0")
}
