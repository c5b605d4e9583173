//! Workload credentials and the rustls configs built from them: TLS 1.3 only, client
//! certificates required, SPIFFE identities instead of host names.
//!
//! A proxy's peers are named by SPIFFE URI SANs, not DNS names, so the client side verifies the
//! chain against the trust bundle without a name check and the caller compares the peer's
//! SPIFFE id with the one the endpoint table expects right after the handshake, before any
//! request byte is sent.
pub mod certify;
pub mod dial;
mod verify;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// ALPN between proxies names what the stream carries, so nothing has to be guessed inside TLS.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
pub const ALPN_OPAQUE: &[u8] = b"weir-opaque";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate in the certificate chain PEM")]
    NoCertificate,
    #[error("no root in the trust bundle PEM")]
    NoRoots,
    #[error("the certificate has no spiffe:// URI SAN")]
    NoSpiffeId,
    #[error("unreadable PEM: {0}")]
    Pem(#[from] rustls::pki_types::pem::Error),
    #[error("unusable certificate or key: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("unusable trust bundle: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// This proxy's identity and everything needed to speak mTLS with it.
#[derive(Debug)]
pub struct Credentials {
    pub spiffe_id: String,
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
}

pub fn provider() -> Arc<CryptoProvider> {
    // Explicit, so a dependency enabling aws-lc-rs can never make rustls ask for a
    // process-wide default at runtime.
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Credentials {
    /// Builds credentials from PEM: the leaf (first) and intermediates, its private key, and
    /// every root the mesh trusts.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8], bundle_pem: &[u8]) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem).collect::<Result<Vec<_>, _>>()?;
        let leaf = chain.first().ok_or(TlsError::NoCertificate)?;
        let spiffe_id = spiffe_id(leaf).ok_or(TlsError::NoSpiffeId)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)?;
        let mut roots = RootCertStore::empty();
        for root in CertificateDer::pem_slice_iter(bundle_pem) {
            roots.add(root?)?;
        }
        if roots.is_empty() {
            return Err(TlsError::NoRoots);
        }
        let roots = Arc::new(roots);
        let provider = provider();

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec(), ALPN_OPAQUE.to_vec()];

        let server_verifier = Arc::new(verify::MeshServerVerifier::new(roots, provider.clone()));
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(server_verifier)
            .with_client_auth_cert(chain, key)?;

        Ok(Credentials {
            spiffe_id,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// A client config offering one ALPN protocol (what this connection will carry).
    pub fn client_for(&self, alpn: &[u8]) -> Arc<ClientConfig> {
        let mut c = (*self.client).clone();
        c.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(c)
    }
}

/// The credentials in force, swapped whole when they are renewed: connections already open
/// keep the config they were made with, new ones get the new one.
#[derive(Default)]
pub struct CredStore(ArcSwapOption<Credentials>);

impl CredStore {
    pub fn load(&self) -> Option<Arc<Credentials>> {
        self.0.load_full()
    }

    /// Whether an identity is in force; no reference count touched, for the request path.
    pub fn is_present(&self) -> bool {
        self.0.load().is_some()
    }

    pub fn store(&self, creds: Credentials) {
        self.0.store(Some(Arc::new(creds)));
    }
}

/// `--cert/--key/--trust-bundle`: files written by something else (cert-manager, SPIRE),
/// re-read whenever one of them changes.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
}

impl CertFiles {
    pub fn load(&self) -> Result<Credentials, String> {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        Credentials::from_pem(&read(&self.cert)?, &read(&self.key)?, &read(&self.bundle)?)
            .map_err(|e| format!("{}: {e}", self.cert.display()))
    }

    fn stamp(&self) -> Vec<Option<SystemTime>> {
        [&self.cert, &self.key, &self.bundle]
            .iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// Polls the files' modification times and reloads on change; a bad new set is logged
    /// and the credentials in force stay.
    pub async fn watch(self, store: Arc<CredStore>) {
        let mut last = self.stamp();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = self.stamp();
            if now == last {
                continue;
            }
            last = now;
            match self.load() {
                Ok(c) => {
                    tracing::info!(identity = %c.spiffe_id, "certificate files changed; credentials reloaded");
                    store.store(c);
                }
                Err(e) => {
                    tracing::error!(error = %e, "certificate files changed but cannot be used; keeping the previous ones")
                }
            }
        }
    }
}

/// The SPIFFE id in a certificate's URI SANs, if it has exactly one.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut ids = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
        _ => None,
    });
    let id = ids.next()?;
    ids.next().is_none().then(|| id.to_owned())
}

/// The peer's SPIFFE id from a finished handshake.
pub fn peer_id(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    certs.and_then(|c| c.first()).and_then(spiffe_id)
}

#[cfg(test)]
mod tests;
