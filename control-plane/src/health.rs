//! The control plane's health endpoints for the kubelet (`--admin-addr`, port 9990 in
//! `deploy/`): `GET /live` answers 200 while the process runs, `GET /ready` 200 once the store is
//! open and the gRPC port bound, 503 before that, while a shared store (etcd) does not answer,
//! and again once shutdown begins. `GET /metrics` gives the same facts to Prometheus.
//!
//! Plain HTTP/1.1 on its own port: the kubelet's httpGet probes cannot present a client
//! certificate or an admin token, and must reach `/live` while the store is still opening.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// A probe that connects and never sends its request holds a task this long at most.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for health probes on {addr}: {source}")]
pub struct HealthError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Whether `/ready` answers 200; shared between the server and whoever knows.
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Whether the store answered its last check, and why not.
#[derive(Debug)]
pub struct StoreHealth {
    up: AtomicBool,
    failures: AtomicU64,
    last_error: Mutex<String>,
}

impl Default for StoreHealth {
    fn default() -> Self {
        StoreHealth {
            up: AtomicBool::new(true),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
        }
    }
}

impl StoreHealth {
    pub fn record(&self, check: Result<(), String>) {
        match check {
            Ok(()) => self.up.store(true, Ordering::Release),
            Err(err) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = err;
                self.up.store(false, Ordering::Release);
            }
        }
    }

    pub fn up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A bound health listener, not yet serving; starts not ready.
pub struct HealthServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    readiness: Arc<Readiness>,
    store: Arc<StoreHealth>,
}

/// Binds the health port. Bind it before opening the store, so `/live` answers during a slow
/// start and the kubelet's startup probe, not its liveness probe, governs that time.
pub async fn bind(addr: SocketAddr) -> Result<HealthServer, HealthError> {
    let err = |source| HealthError { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let local_addr = listener.local_addr().map_err(err)?;
    Ok(HealthServer {
        listener,
        local_addr,
        readiness: Arc::default(),
        store: Arc::default(),
    })
}

impl HealthServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn readiness(&self) -> Arc<Readiness> {
        self.readiness.clone()
    }

    /// What `/ready` and `/metrics` report of the store; see [`crate::Bound::watch_store`].
    pub fn store_health(&self) -> Arc<StoreHealth> {
        self.store.clone()
    }

    /// Serves until the task is dropped (with the runtime, when the process exits).
    pub async fn serve(self) {
        let HealthServer {
            listener,
            local_addr,
            readiness,
            store,
        } = self;
        // Tests that bind port 0 read the address from this line.
        tracing::info!("health endpoints on {local_addr}");
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %err, "health accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let readiness = readiness.clone();
            let store = store.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let response = respond(&request, readiness.get(), &store);
                    async move { Ok::<_, Infallible>(response) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(tcp), service);
                if let Err(err) = conn.await {
                    tracing::debug!(error = %err, "health connection failed");
                }
            });
        }
    }
}

fn respond(request: &Request<Incoming>, ready: bool, store: &StoreHealth) -> Response<Full<Bytes>> {
    let get = matches!(request.method(), &Method::GET | &Method::HEAD);
    let (status, body) = match (get, request.uri().path()) {
        (true, "/live") => (StatusCode::OK, "live\n".to_string()),
        (true, "/ready") if !store.up() => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", store.last_error()),
        ),
        (true, "/ready") if ready => (StatusCode::OK, "ready\n".to_string()),
        (true, "/ready") => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_string()),
        (true, "/metrics") => (
            StatusCode::OK,
            format!(
                "# HELP weir_control_ready Whether /ready answers 200.\n\
                 # TYPE weir_control_ready gauge\n\
                 weir_control_ready {}\n\
                 # HELP weir_control_store_up Whether the store answered its last check.\n\
                 # TYPE weir_control_store_up gauge\n\
                 weir_control_store_up {}\n\
                 # HELP weir_control_store_check_failures_total Store checks that failed.\n\
                 # TYPE weir_control_store_check_failures_total counter\n\
                 weir_control_store_check_failures_total {}\n",
                u8::from(ready && store.up()),
                u8::from(store.up()),
                store.failures.load(Ordering::Relaxed)
            ),
        ),
        (false, "/live" | "/ready" | "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "GET or HEAD only\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "not found: /live, /ready and /metrics only\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One request on its own connection; returns the status code.
    async fn status(addr: SocketAddr, method: &str, path: &str) -> u16 {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.expect("write");
        let mut reply = String::new();
        tcp.read_to_string(&mut reply).await.expect("read");
        reply
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP reply: {reply:?}"))
    }

    async fn body(addr: SocketAddr, path: &str) -> String {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.expect("write");
        let mut reply = String::new();
        tcp.read_to_string(&mut reply).await.expect("read");
        reply
    }

    #[tokio::test]
    async fn live_always_ready_only_when_set() {
        let server = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = server.local_addr();
        let readiness = server.readiness();
        let task = tokio::spawn(server.serve());

        assert_eq!(status(addr, "GET", "/live").await, 200);
        assert_eq!(status(addr, "GET", "/ready").await, 503);
        readiness.set(true);
        assert_eq!(status(addr, "GET", "/ready").await, 200);
        assert_eq!(status(addr, "HEAD", "/ready").await, 200);
        readiness.set(false);
        assert_eq!(status(addr, "GET", "/ready").await, 503);
        assert_eq!(status(addr, "GET", "/live").await, 200);
        assert_eq!(status(addr, "POST", "/ready").await, 405);
        assert_eq!(status(addr, "GET", "/metrics").await, 200);
        assert_eq!(status(addr, "GET", "/other").await, 404);
        task.abort();
    }

    #[tokio::test]
    async fn a_store_that_does_not_answer_makes_ready_fail_and_shows_in_metrics() {
        let server = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = server.local_addr();
        server.readiness().set(true);
        let store = server.store_health();
        let task = tokio::spawn(server.serve());
        assert_eq!(status(addr, "GET", "/ready").await, 200);
        store.record(Err("etcd store (http://127.0.0.1:1) is unavailable".into()));
        assert_eq!(status(addr, "GET", "/ready").await, 503);
        assert_eq!(status(addr, "GET", "/live").await, 200);
        let metrics = body(addr, "/metrics").await;
        assert!(metrics.contains("weir_control_store_up 0"), "{metrics}");
        assert!(
            metrics.contains("weir_control_store_check_failures_total 1"),
            "{metrics}"
        );
        assert!(body(addr, "/ready").await.contains("etcd store"));
        store.record(Ok(()));
        assert_eq!(status(addr, "GET", "/ready").await, 200);
        assert!(
            body(addr, "/metrics")
                .await
                .contains("weir_control_store_up 1")
        );
        task.abort();
    }

    #[tokio::test]
    async fn taken_port_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = bind(addr).await.err().expect("port is taken");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
