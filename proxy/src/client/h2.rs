//! One multiplexed HTTP/2 connection per destination address, shared by every request to it.
//!
//! The handle is read through `ArcSwapOption`, so the request path takes no lock: it clones the
//! `SendRequest` (an atomic increment) and sends. Only (re)connecting serialises, on a per-slot
//! async mutex, so a burst of requests to a cold endpoint opens one connection, not hundreds.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Mutex;

use crate::body::ProxyBody;
use crate::client::peer::{self, PeerError, PeerIo};
use crate::tls::{ALPN_H2, CredStore};

/// Stream and connection flow-control windows. Large enough to keep a loopback or LAN pipe full
/// for one bulk stream; they are also the bound on what one stream can buffer in memory.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// How to reach another proxy: with this proxy's credentials (when it has any), expecting
/// the endpoint's identity (when the endpoint table names one).
pub struct PeerTls {
    pub creds: Arc<CredStore>,
    pub identity: Option<String>,
}

impl std::fmt::Debug for H2Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Slot")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

pub struct H2Slot {
    addr: SocketAddr,
    /// `None` for the local app, which speaks plaintext.
    peer: Option<PeerTls>,
    conn: ArcSwapOption<SendRequest<ProxyBody>>,
    connecting: Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum H2Error {
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP/2 connection to {addr} closed: {source}")]
    Closed {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("HTTP/2 handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
}

impl H2Slot {
    /// A slot for the local application (plaintext).
    pub fn app(addr: SocketAddr) -> Arc<Self> {
        Self::new(addr, None)
    }

    /// A slot for another proxy's inbound listener.
    pub fn peer(addr: SocketAddr, tls: PeerTls) -> Arc<Self> {
        Self::new(addr, Some(tls))
    }

    fn new(addr: SocketAddr, peer: Option<PeerTls>) -> Arc<Self> {
        Arc::new(H2Slot {
            addr,
            peer,
            conn: ArcSwapOption::empty(),
            connecting: Mutex::new(()),
        })
    }

    /// A sender ready for one more stream. A pooled connection can die between the liveness
    /// check and use (the peer restarted or sent GOAWAY); then one fresh connection is tried,
    /// which is safe because nothing of the request has been sent yet.
    pub async fn ready_sender(&self) -> Result<SendRequest<ProxyBody>, H2Error> {
        let mut send = self.sender().await?;
        if send.ready().await.is_ok() {
            return Ok(send);
        }
        let mut send = self.sender().await?;
        send.ready().await.map_err(|source| H2Error::Closed {
            addr: self.addr,
            source,
        })?;
        Ok(send)
    }

    /// A sender on a live connection, connecting if there is none.
    async fn sender(&self) -> Result<SendRequest<ProxyBody>, H2Error> {
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let _connecting = self.connecting.lock().await;
        // Someone else may have connected while we waited for the lock.
        if let Some(s) = self.live() {
            return Ok(s);
        }
        let stream = match &self.peer {
            None => PeerIo::Plain(super::connect(self.addr).await.map_err(|source| {
                H2Error::Connect {
                    addr: self.addr,
                    source,
                }
            })?),
            Some(p) => {
                let creds = p.creds.load();
                peer::connect(creds.as_deref(), self.addr, ALPN_H2, p.identity.as_deref()).await?
            }
        };
        let (send, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            // Detects a peer that vanished without a FIN (node died, network partition).
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| H2Error::Handshake {
                addr: self.addr,
                source,
            })?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "HTTP/2 client connection ended");
            }
        });
        self.conn.store(Some(Arc::new(send.clone())));
        Ok(send)
    }

    fn live(&self) -> Option<SendRequest<ProxyBody>> {
        let guard = self.conn.load();
        let s = guard.as_ref()?;
        if s.is_closed() {
            return None;
        }
        Some(SendRequest::clone(s))
    }
}
