//! Connections to other proxies: mTLS when this proxy has credentials (ALPN says what the
//! stream carries, the peer's SPIFFE id is checked before anything is sent), plaintext only
//! when it has none (permissive meshes).
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::tls::{self, Credentials};

/// A stream to a peer proxy, plain or TLS; an enum so the hot path needs no boxing.
pub enum PeerIo {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("TLS handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("{addr} presented identity {got:?}, expected {expected}")]
    IdentityMismatch {
        addr: SocketAddr,
        expected: String,
        got: Option<String>,
    },
}

/// Connects to a peer's inbound listener. With credentials the connection is mTLS offering
/// `alpn`; `expected` (the endpoint's identity, when the endpoint table names one) must match
/// the certificate the peer presents.
pub async fn connect(
    creds: Option<&Credentials>,
    addr: SocketAddr,
    alpn: &[u8],
    expected: Option<&str>,
) -> Result<PeerIo, PeerError> {
    let tcp = super::connect(addr)
        .await
        .map_err(|source| PeerError::Connect { addr, source })?;
    let Some(creds) = creds else {
        return Ok(PeerIo::Plain(tcp));
    };
    // The name is not checked (peers are named by SPIFFE ids); it only fills the SNI field.
    let name = ServerName::try_from("weir-mesh").map_err(|e| PeerError::Handshake {
        addr,
        source: io::Error::other(e),
    })?;
    let tls = TlsConnector::from(creds.client_for(alpn))
        .connect(name, tcp)
        .await
        .map_err(|source| PeerError::Handshake { addr, source })?;
    if let Some(expected) = expected {
        let got = tls::peer_id(tls.get_ref().1.peer_certificates());
        if got.as_deref() != Some(expected) {
            return Err(PeerError::IdentityMismatch {
                addr,
                expected: expected.to_owned(),
                got,
            });
        }
    }
    Ok(PeerIo::Tls(Box::new(tls)))
}

impl AsyncRead for PeerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PeerIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PeerIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerIo::Plain(s) => Pin::new(s).poll_flush(cx),
            PeerIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PeerIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
