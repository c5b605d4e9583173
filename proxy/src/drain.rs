//! One drain primitive for every component: a cancellation signal plus a tracker of the tasks
//! that must finish before the process exits.
use std::future::Future;
use std::time::Duration;

use std::pin::Pin;

use hyper::rt::{Read, Write};
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Drain {
    signal: CancellationToken,
    tasks: TaskTracker,
}

impl Drain {
    /// Runs a task the drain waits for (a connection, a request in flight).
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(fut);
    }

    pub fn is_draining(&self) -> bool {
        self.signal.is_cancelled()
    }

    /// Resolves once a drain has started.
    pub async fn signaled(&self) {
        self.signal.cancelled().await
    }

    pub fn start(&self) {
        self.signal.cancel();
    }

    /// Starts the drain and waits for every tracked task, at most `timeout`. Returns whether all
    /// of them finished in time.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.start();
        self.tasks.close();
        tokio::time::timeout(timeout, self.tasks.wait())
            .await
            .is_ok()
    }

    /// Drives a hyper server connection; when the drain starts, finishes the requests in flight
    /// (HTTP/1 closes after the current response, HTTP/2 sends GOAWAY) instead of cutting them.
    pub async fn serve<C>(&self, conn: C)
    where
        C: GracefulConnection,
    {
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            () = self.signaled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// A hyper server connection that can finish its requests in flight and then close. hyper-util's
/// own trait leaves out HTTP/1 connections with upgrades, which the proxy needs.
pub trait GracefulConnection: Future<Output = Result<(), hyper::Error>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S> GracefulConnection for http1::UpgradeableConnection<I, S>
where
    I: Read + Write + Unpin + Send + 'static,
    S: HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I, S, E> GracefulConnection for http2::Connection<I, S, E>
where
    I: Read + Write + Unpin + 'static,
    S: HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: http_body::Body + Send + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self)
    }
}
