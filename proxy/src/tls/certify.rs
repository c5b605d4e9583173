//! Identity from the control plane: a key made here (it never leaves the process), a CSR for
//! this proxy's SPIFFE id, `Identity.Certify` with a token scoped to that id, and renewal at
//! ~70 % of each certificate's lifetime. Each new certificate becomes new rustls configs,
//! swapped into the `CredStore`; connections already open keep theirs.
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use tonic::transport::Endpoint;
use weir_proto::identity::v1::CertifyRequest;
use weir_proto::identity::v1::identity_client::IdentityClient;

use super::{CredStore, Credentials};
use crate::jitter::Jitter;
use crate::metrics::Metrics;

const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);

pub struct Certifier {
    pub url: String,
    pub token_file: PathBuf,
    pub spiffe_id: String,
    pub creds: Arc<CredStore>,
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
enum CertifyError {
    #[error("cannot read the token file {path}: {source}")]
    Token {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make a key or CSR: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("cannot reach the control plane: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("the control plane refused: {0}")]
    Refused(#[from] tonic::Status),
    #[error("unusable certificate from the control plane: {0}")]
    Certificate(#[from] super::TlsError),
}

impl Certifier {
    /// Runs forever: certify, sleep until ~70 % of the lifetime (jittered so a fleet does not
    /// renew in lockstep), renew; on failure retry with backoff while the current certificate
    /// keeps serving.
    pub async fn run(self) {
        let mut retry = RETRY_MIN;
        let mut jitter = Jitter::seeded();
        loop {
            match self.certify().await {
                Ok(not_after) => {
                    retry = RETRY_MIN;
                    let now = SystemTime::now();
                    let lifetime = not_after.duration_since(now).unwrap_or_default();
                    // 60–75 % of the remaining lifetime.
                    let frac = 0.60 + 0.15 * jitter.fraction();
                    let wait = lifetime.mul_f64(frac).max(Duration::from_millis(100));
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?retry, "cannot obtain a certificate; keeping the current one");
                    tokio::time::sleep(retry.mul_f64(0.5 + 0.5 * jitter.fraction())).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }

    async fn certify(&self) -> Result<SystemTime, CertifyError> {
        let token =
            std::fs::read_to_string(&self.token_file).map_err(|source| CertifyError::Token {
                path: self.token_file.display().to_string(),
                source,
            })?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(self.spiffe_id.as_str().try_into()?)];
        let csr_pem = params.serialize_request(&key)?.pem()?;
        let channel = Endpoint::from_shared(self.url.clone())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .connect()
            .await?;
        let rsp = IdentityClient::new(channel)
            .certify(CertifyRequest {
                token: token.trim().to_owned(),
                csr_pem,
            })
            .await?
            .into_inner();
        let creds = Credentials::from_pem(
            rsp.cert_chain_pem.as_bytes(),
            key.serialize_pem().as_bytes(),
            rsp.trust_bundle_pem.as_bytes(),
        )?;
        let not_after =
            UNIX_EPOCH + Duration::from_millis(u64::try_from(rsp.not_after_unix_ms).unwrap_or(0));
        tracing::info!(identity = %creds.spiffe_id, not_after_unix_ms = rsp.not_after_unix_ms, "certificate issued");
        self.creds.store(creds);
        self.metrics.identity_renewals.fetch_add(1, Relaxed);
        Ok(not_after)
    }
}
