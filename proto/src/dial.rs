//! Dialling the control plane: gRPC over TLS 1.3 verified against the mesh's trust bundle
//! (the control plane's serving certificate comes from the same CA as every workload's), so
//! the tokens proxies and weirctl send are never readable on the wire.
//!
//! tonic's own TLS feature is not used: it would pick its crypto provider and roots itself,
//! while here the roots are the mesh's bundle, which changes during a root rotation.
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error(
        "invalid control plane URL {url:?}: expected https://HOST:PORT, e.g. https://127.0.0.1:8090"
    )]
    Url { url: String },
    #[error("control plane URL {url:?} is plaintext: the control plane serves TLS; use https://")]
    Plaintext { url: String },
    #[error("trust bundle holds no certificates")]
    EmptyBundle,
    #[error("trust bundle: {0}")]
    Bundle(String),
    #[error("cannot reach the control plane at {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
}

/// Roots from PEM text (a bundle may hold the old and the new root during a rotation).
pub fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, DialError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| DialError::Bundle(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| DialError::Bundle(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(DialError::EmptyBundle);
    }
    Ok(roots)
}

/// A TLS client config for the control plane: TLS 1.3, ALPN h2, the server's name checked
/// against the URL's host (DNS name or IP address) as browsers do.
pub fn client_config(roots: RootCertStore) -> Result<Arc<rustls::ClientConfig>, DialError> {
    // Explicit provider, so a dependency enabling aws-lc-rs cannot make rustls ask for a
    // process-wide default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| DialError::Bundle(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A tonic endpoint for `url` that must be `https://`.
pub fn endpoint(url: &str) -> Result<Endpoint, DialError> {
    if url.starts_with("http://") {
        return Err(DialError::Plaintext { url: url.into() });
    }
    if !url.starts_with("https://") {
        return Err(DialError::Url { url: url.into() });
    }
    let endpoint =
        Endpoint::from_shared(url.to_string()).map_err(|_| DialError::Url { url: url.into() })?;
    if endpoint.uri().host().is_none() {
        return Err(DialError::Url { url: url.into() });
    }
    Ok(endpoint)
}

/// Connects `endpoint` over TLS with `config`.
pub async fn connect(
    endpoint: Endpoint,
    config: Arc<rustls::ClientConfig>,
) -> Result<Channel, DialError> {
    let uri = endpoint.uri();
    let url = match uri.authority() {
        Some(authority) => format!("https://{authority}"),
        None => uri.to_string(),
    };
    endpoint
        .connect_with_connector(connector(config))
        .await
        .map_err(|source| DialError::Connect { url, source })
}

/// Like [`connect`], but the connection is made on first use and remade after failures.
pub fn connect_lazy(endpoint: Endpoint, config: Arc<rustls::ClientConfig>) -> Channel {
    endpoint.connect_with_connector_lazy(connector(config))
}

fn connector(
    config: Arc<rustls::ClientConfig>,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>>
             + Send,
> + Send
+ Clone
+ 'static {
    let tls = TlsConnector::from(config);
    tower::service_fn(move |uri: Uri| {
        let tls = tls.clone();
        async move {
            let invalid = |what: &str| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string())
            };
            let host = uri.host().ok_or_else(|| invalid("URL without a host"))?;
            let port = uri.port_u16().unwrap_or(443);
            // `[::1]` in a URI is `::1` as a name.
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let name = ServerName::try_from(bare.to_string())
                .map_err(|_| invalid("URL host is not a DNS name or IP address"))?;
            let tcp = connect_any(bare, port).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(name, tcp).await?;
            Ok(TokioIo::new(stream))
        }
    })
}

/// How long one address of a name with several may take to accept, so a dead replica's address
/// (often silent in a cluster) leaves time to try the next within [`CONNECT_TIMEOUT`].
pub const ADDRESS_TIMEOUT: Duration = Duration::from_millis(1500);

/// Connects to `host` (a name or an address): a name with several addresses (a headless
/// Service over the control-plane replicas) is tried from a random one onwards, so clients
/// spread over the replicas and pass over a dead one.
async fn connect_any(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    connect_first(&addrs, random()).await.map_err(|err| {
        err.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host} resolves to no address"),
            )
        })
    })
}

/// The first of `addrs`, from `start` on, that accepts; else the last error (`None`: no
/// address at all).
async fn connect_first(
    addrs: &[std::net::SocketAddr],
    start: u64,
) -> Result<TcpStream, Option<std::io::Error>> {
    let mut last = None;
    for i in spread(addrs.len(), start) {
        let attempt = TcpStream::connect(addrs[i]);
        let result = if addrs.len() > 1 {
            tokio::time::timeout(ADDRESS_TIMEOUT, attempt)
                .await
                .unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("{} did not accept within {ADDRESS_TIMEOUT:?}", addrs[i]),
                    ))
                })
        } else {
            attempt.await
        };
        match result {
            Ok(tcp) => return Ok(tcp),
            Err(err) => last = Some(err),
        }
    }
    Err(last)
}

/// Indices `0..n` starting at `start % n` and wrapping around.
fn spread(n: usize, start: u64) -> impl Iterator<Item = usize> {
    let first = usize::try_from(start).unwrap_or(0) % n.max(1);
    (0..n).map(move |i| (first + i) % n)
}

/// Differs on every call (std seeds each `RandomState` afresh), which is all a spread needs.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// How long a dial waits for TCP and TLS before reporting the control plane unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_visits_every_address_once_from_any_start() {
        for start in 0..7 {
            let mut seen: Vec<usize> = spread(3, start).collect();
            assert_eq!(seen[0], usize::try_from(start).unwrap_or(0) % 3);
            seen.sort_unstable();
            assert_eq!(seen, [0, 1, 2]);
        }
        assert_eq!(spread(0, 5).count(), 0);
    }

    #[test]
    fn starts_differ_between_calls() {
        let starts: std::collections::BTreeSet<usize> = (0..64)
            .map(|_| spread(3, random()).next().unwrap_or(0))
            .collect();
        assert_eq!(
            starts.len(),
            3,
            "64 dials should start at each of 3 addresses"
        );
    }

    /// A replica that is gone (its port refuses) is passed over, whichever address a dial
    /// starts at.
    #[tokio::test]
    async fn a_dead_address_is_passed_over() {
        // Bound but never listening: the port refuses connections, and holding it keeps the
        // kernel from handing it to the live listener or another test (a dropped listener's
        // port can be reused at once, which made this test flaky).
        let dead = tokio::net::TcpSocket::new_v4().expect("socket");
        dead.bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let dead_addr = dead.local_addr().expect("addr");
        let live = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let live_addr = live.local_addr().expect("addr");
        let accept = tokio::spawn(async move {
            loop {
                let _ = live.accept().await;
            }
        });
        for start in 0..4 {
            let tcp = connect_first(&[dead_addr, live_addr, dead_addr], start)
                .await
                .expect("connects");
            assert_eq!(tcp.peer_addr().expect("peer"), live_addr);
        }
        match connect_first(&[dead_addr], 0).await {
            Err(Some(err)) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused),
            other => panic!("a lone dead address: {:?}", other.map(|_| ())),
        }
        assert!(matches!(connect_first(&[], 0).await, Err(None)));
        accept.abort();
        drop(dead);
    }
}
