//! The control plane's own TLS: a serving certificate signed by the mesh CA (so proxies verify
//! it with the trust bundle they already hold), renewed before it expires and re-issued when
//! the root rotates, swapped in for new connections while open streams keep theirs.
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::identity::Authority;

/// A client that connects and never finishes its handshake holds a task this long at most.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Lifetime of the serving certificate; renewed at two thirds of it.
const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);

/// Names in the control plane's serving certificate when `--server-name` is not given: what
/// the manifests in `deploy/` and a local run dial.
pub const DEFAULT_SERVER_NAMES: &[&str] = &[
    "localhost",
    "127.0.0.1",
    "::1",
    "weir-control",
    "weir-control.weir-system",
    "weir-control.weir-system.svc",
    "weir-control.weir-system.svc.cluster.local",
];

#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("cannot issue the control plane's serving certificate: {0}")]
    Issue(String),
    #[error("serving TLS config: {0}")]
    Tls(String),
}

pub struct ServingTls {
    authority: Arc<Authority>,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    config: ArcSwap<rustls::ServerConfig>,
    not_after: ArcSwap<SystemTime>,
}

impl ServingTls {
    /// Issues the first serving certificate for `names` (DNS names or IP addresses).
    pub fn new(authority: Arc<Authority>, names: &[String]) -> Result<Arc<Self>, ServingError> {
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for name in names {
            let bare = name.trim_start_matches('[').trim_end_matches(']');
            match bare.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) => dns.push(bare.to_owned()),
            }
        }
        let (config, not_after) = issue(&authority, &dns, &ips)?;
        Ok(Arc::new(ServingTls {
            authority,
            dns,
            ips,
            config: ArcSwap::from_pointee(config),
            not_after: ArcSwap::from_pointee(not_after),
        }))
    }

    /// Issues a new serving certificate now (e.g. after the signing root changed).
    pub fn reissue(&self) -> Result<(), ServingError> {
        let (config, not_after) = issue(&self.authority, &self.dns, &self.ips)?;
        self.config.store(Arc::new(config));
        self.not_after.store(Arc::new(not_after));
        tracing::info!("issued a new serving certificate");
        Ok(())
    }

    /// Renews the serving certificate at two thirds of its lifetime, retrying every minute on
    /// failure while the current one serves.
    pub async fn renew(self: Arc<Self>) {
        loop {
            let left = self
                .not_after
                .load()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(left.mul_f64(2.0 / 3.0).max(Duration::from_secs(1))).await;
            while let Err(err) = self.reissue() {
                tracing::warn!(error = %err, "serving certificate renewal failed; retrying in 1m");
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    }

    /// TLS connections accepted on `listener`. Handshakes run in their own tasks so one slow
    /// client never holds up the accept loop. The loop ends when the stream is dropped.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> ReceiverStream<std::io::Result<ServingConn>> {
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let (tcp, remote) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(err) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %err, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    () = tx.closed() => return,
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(self.config.load_full());
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let local = tcp.local_addr().ok();
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let conn = ServingConn {
                                tls,
                                info: TcpConnectInfo {
                                    local_addr: local,
                                    remote_addr: Some(remote),
                                },
                            };
                            let _ = tx.send(Ok(conn)).await;
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(%remote, error = %err, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

fn issue(
    authority: &Authority,
    dns: &[String],
    ips: &[IpAddr],
) -> Result<(rustls::ServerConfig, SystemTime), ServingError> {
    let uri = format!(
        "spiffe://{}/ns/weir-system/sa/weir-control",
        authority.trust_domain()
    );
    let (issued, key_pem) = authority
        .ca()
        .sign_server(dns, ips, &uri, SERVING_TTL)
        .map_err(|e| ServingError::Issue(e.to_string()))?;
    let tls = |e: &dyn std::fmt::Display| ServingError::Tls(e.to_string());
    let chain = CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(&e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| tls(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls(&e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| tls(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, issued.not_after))
}

/// One accepted TLS connection, carrying its TCP addresses for `Request::remote_addr`.
pub struct ServingConn {
    tls: TlsStream<TcpStream>,
    info: TcpConnectInfo,
}

impl Connected for ServingConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for ServingConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServingConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}
