//! The inbound's HTTP/1.1 connections to its app: one address, so a stack of idle keep-alive
//! connections replaces a general pooling client. hyper-util's keyed pool (a hashed
//! `(scheme, authority)` lookup, a boxed future, a oneshot and a spawned task per request to
//! return the connection) was 11 % of the inbound's instructions per request in the profile.
//!
//! A connection goes back on the stack when the response body it carries has ended (or was
//! empty); a body dropped half-read takes its connection with it, since hyper cannot reuse an
//! HTTP/1 connection with unread bytes in flight.
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::POOL_IDLE;
use crate::body::{AppBody, ProxyBody, PutBack};

/// Idle connections kept beyond this are closed: a burst's connections need not all stay.
const MAX_IDLE: usize = 256;

/// Why a request did not reach the app or its answer did not come back.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot connect to the app at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the app connection failed: {0}")]
    Send(#[source] hyper::Error),
}

pub struct AppPool {
    addr: SocketAddr,
    /// Most recently used on top: the warmest connection goes out first and the oldest ones
    /// age out at the bottom.
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    send: SendRequest<ProxyBody>,
    since: Instant,
}

impl AppPool {
    pub fn new(addr: SocketAddr) -> Arc<AppPool> {
        Arc::new(AppPool {
            addr,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends `req` (origin-form URI, `Host` set) on an idle connection or a new one. A request
    /// an idle connection never took (the app closed it meanwhile) goes out again on a new
    /// connection; once written, it is never sent twice.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, AppError> {
        loop {
            let (mut send, fresh) = match self.take_idle() {
                Some(s) => (s, false),
                None => (self.connect().await?, true),
            };
            // A connection whose last body just ended becomes ready on its task's next turn.
            if let Err(e) = send.ready().await {
                if fresh {
                    return Err(AppError::Send(e));
                }
                continue;
            }
            match send.try_send_request(req).await {
                Ok(rsp) => return Ok(self.wrap(rsp, send)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => req = unsent,
                    _ => return Err(AppError::Send(e.into_error())),
                },
            }
        }
    }

    fn take_idle(&self) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.pop() {
            if !c.send.is_closed() && c.since.elapsed() < POOL_IDLE {
                return Some(c.send);
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<ProxyBody>, AppError> {
        let addr = self.addr;
        let fail =
            |source: Box<dyn std::error::Error + Send + Sync>| AppError::Connect { addr, source };
        let stream = super::connect(addr).await.map_err(|e| fail(e.into()))?;
        let (send, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "app connection closed with an error");
            }
        });
        Ok(send)
    }

    fn wrap(
        self: &Arc<Self>,
        rsp: Response<Incoming>,
        send: SendRequest<ProxyBody>,
    ) -> Response<ProxyBody> {
        if rsp.body().is_end_stream() {
            self.put_back(send);
            return rsp.map(ProxyBody::Incoming);
        }
        rsp.map(|body| ProxyBody::App(AppBody::new(body, send, self.clone())))
    }
}

impl std::fmt::Debug for AppPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppPool").field("addr", &self.addr).finish()
    }
}

impl PutBack for AppPool {
    fn put_back(&self, send: SendRequest<ProxyBody>) {
        if send.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // The bottom is the longest idle: age it out here, so a quiet pool does not keep
        // connections the app is closing (dropping the sender ends the connection).
        if idle
            .first()
            .is_some_and(|c| now.duration_since(c.since) >= POOL_IDLE)
        {
            idle.retain(|c| now.duration_since(c.since) < POOL_IDLE);
        }
        if idle.len() < MAX_IDLE {
            idle.push(Idle { send, since: now });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A real HTTP/1.1 app on loopback answering `body_len` bytes; counts its connections.
    async fn app(body_len: usize) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let svc = service_fn(move |_req: Request<Incoming>| async move {
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                        Bytes::from(vec![b'x'; body_len]),
                    )))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        (addr, conns)
    }

    fn get() -> Request<ProxyBody> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, "app")
            .body(ProxyBody::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn a_finished_response_hands_its_connection_to_the_next_request() {
        let (addr, conns) = app(1024).await;
        let pool = AppPool::new(addr);
        for _ in 0..5 {
            let rsp = pool.send(get()).await.unwrap();
            let body = rsp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), 1024);
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_connections_and_all_come_back() {
        let (addr, conns) = app(16).await;
        let pool = AppPool::new(addr);
        let held: Vec<_> = send_unread(&pool, 4).await;
        assert_eq!(conns.load(Ordering::SeqCst), 4);
        for rsp in held {
            rsp.into_body().collect().await.unwrap();
        }
        assert_eq!(pool.idle.lock().unwrap().len(), 4);
        send_unread(&pool, 4).await;
        assert_eq!(
            conns.load(Ordering::SeqCst),
            4,
            "the second wave reused them"
        );
    }

    async fn send_unread(pool: &Arc<AppPool>, n: usize) -> Vec<Response<ProxyBody>> {
        let mut out = Vec::new();
        // Responses held unread keep their connections busy, so each send needs a new one.
        for _ in 0..n {
            out.push(pool.send(get()).await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn a_body_dropped_half_read_does_not_return_its_connection() {
        let (addr, conns) = app(256 * 1024).await;
        let pool = AppPool::new(addr);
        let mut body = pool.send(get()).await.unwrap().into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert!(pool.idle.lock().unwrap().is_empty());
        let rsp = pool.send(get()).await.unwrap();
        assert_eq!(
            rsp.into_body().collect().await.unwrap().to_bytes().len(),
            256 * 1024
        );
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_idle_connection_the_app_closed_is_skipped() {
        // An app that answers one request per connection and then closes it without saying so
        // (no `Connection: close`), as an app's idle timeout would.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                });
            }
        });
        let pool = AppPool::new(addr);
        for _ in 0..3 {
            let rsp = pool.send(get()).await.unwrap();
            assert_eq!(
                &rsp.into_body().collect().await.unwrap().to_bytes()[..],
                b"ok"
            );
            // Wait for the app's close to reach the pooled connection (bounded), so the next
            // request meets a closed idle connection rather than racing the close.
            let closed = async {
                while !pool.idle.lock().unwrap().iter().all(|c| c.send.is_closed()) {
                    tokio::task::yield_now().await;
                }
            };
            tokio::time::timeout(std::time::Duration::from_secs(5), closed)
                .await
                .expect("the pooled connection never saw the app's close");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let err = AppPool::new(addr).send(get()).await.unwrap_err();
        assert!(matches!(err, AppError::Connect { .. }), "{err}");
    }
}
