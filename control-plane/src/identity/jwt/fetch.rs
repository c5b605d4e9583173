//! One HTTPS GET of the issuer's key set, the way a pod reaches its API server: the cluster CA
//! (`ca.crt`) as the only root and the pod's own service-account token as bearer (the
//! `system:service-account-issuer-discovery` role lets it read `/openid/v1/jwks`).
//!
//! Both files are read on every fetch: the kubelet rotates the token, and the CA may change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

const TIMEOUT: Duration = Duration::from_secs(10);
/// A key set is a few kB; this bounds what a wrong URL can make us hold.
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot read the service-account token {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the cluster CA {path}: {source}")]
    Ca {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unusable cluster CA {path}: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("the URL has no host")]
    NoHost,
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("TLS with {authority} failed: {source}")]
    Tls {
        authority: String,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("HTTP: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("the server answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("the response is larger than {MAX_BODY} bytes or broke off: {0}")]
    Body(String),
    #[error("no answer within {TIMEOUT:?}")]
    Timeout,
}

/// Where the URL's credentials are: `token` and `ca.crt` of a service-account directory.
#[derive(Debug, Clone)]
pub struct Fetcher {
    pub uri: Uri,
    pub token: PathBuf,
    pub ca: PathBuf,
}

impl Fetcher {
    pub async fn get(&self) -> Result<Vec<u8>, FetchError> {
        tokio::time::timeout(TIMEOUT, self.get_inner())
            .await
            .map_err(|_| FetchError::Timeout)?
    }

    async fn get_inner(&self) -> Result<Vec<u8>, FetchError> {
        let token = tokio::fs::read_to_string(&self.token)
            .await
            .map_err(|source| FetchError::Token {
                path: self.token.clone(),
                source,
            })?;
        let tls = client_config(&self.ca).await?;
        let host = self.uri.host().ok_or(FetchError::NoHost)?;
        // `Uri::host` keeps an IPv6 literal's brackets; name and socket address want it bare.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let port = self.uri.port_u16().unwrap_or(443);
        let authority = format!("{host}:{port}");
        let name = ServerName::try_from(bare.to_owned()).map_err(|_| FetchError::NoHost)?;
        let tcp = TcpStream::connect((bare, port))
            .await
            .map_err(|source| FetchError::Connect {
                authority: authority.clone(),
                source,
            })?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|source| FetchError::Tls {
                authority: authority.clone(),
                source,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(conn);
        let path = self
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let request = hyper::Request::get(path)
            .header(header::HOST, authority)
            .header(header::ACCEPT, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {}", token.trim()))
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| FetchError::Body(e.to_string()))?
            .to_bytes();
        conn.abort();
        if status != StatusCode::OK {
            let text = String::from_utf8_lossy(&body);
            return Err(FetchError::Status {
                status,
                body: text.chars().take(200).collect(),
            });
        }
        Ok(body.to_vec())
    }
}

async fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, FetchError> {
    let pem = tokio::fs::read(ca).await.map_err(|source| FetchError::Ca {
        path: ca.to_owned(),
        source,
    })?;
    let bad = |reason: String| FetchError::BadCa {
        path: ca.to_owned(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    // Explicit provider, so nothing can make rustls look for a process-wide default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
