//! Identity from the control plane: a key made here (it never leaves the process), a CSR for
//! this proxy's SPIFFE id, `Identity.Certify` with a token scoped to that id, and renewal at
//! ~70 % of each certificate's lifetime. Each new certificate becomes new rustls configs,
//! swapped into the `CredStore`; connections already open keep theirs.
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use weir_proto::identity::v1::CertifyRequest;
use weir_proto::identity::v1::identity_client::IdentityClient;

use super::dial::ControlDialer;
use super::{CredStore, Credentials};
use crate::jitter::Jitter;
use crate::metrics::Metrics;

const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// After a new root starts signing, proxies renew at a random point within this window so the
/// fleet does not call Certify in the same second.
const ROTATION_RENEW_SPREAD: Duration = Duration::from_secs(5);

/// Roots the control plane pushed with a snapshot, and the generation of the signing root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedTrust {
    pub bundle_pem: bytes::Bytes,
    pub generation: u64,
}

/// The certificate in use, kept so new roots can be installed without a new key.
struct Held {
    chain_pem: String,
    key_pem: String,
    bundle_pem: Vec<u8>,
    generation: u64,
    not_after: SystemTime,
}

pub struct Certifier {
    pub dialer: Arc<ControlDialer>,
    pub token_file: PathBuf,
    pub spiffe_id: String,
    pub creds: Arc<CredStore>,
    pub metrics: Arc<Metrics>,
    pub trust: tokio::sync::watch::Receiver<Option<PushedTrust>>,
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
    #[error(transparent)]
    Connect(#[from] weir_proto::dial::DialError),
    #[error("{}", refusal(.0))]
    Refused(#[from] tonic::Status),
    #[error("unusable certificate from the control plane: {0}")]
    Certificate(#[from] super::TlsError),
}

/// The control plane's reason as it wrote it (tonic's `Display` quotes and escapes it), so an
/// operator reading the proxy's log sees the same sentence as in the control plane's.
fn refusal(status: &tonic::Status) -> String {
    let mut text = format!(
        "the control plane refused ({:?}): {}",
        status.code(),
        status.message()
    );
    if let Some(source) = std::error::Error::source(status) {
        text.push_str(&format!(" ({source})"));
    }
    text
}

impl Certifier {
    /// Runs forever: certify, sleep until ~70 % of the lifetime (jittered so a fleet does not
    /// renew in lockstep), renew; on failure retry with backoff while the current certificate
    /// keeps serving.
    pub async fn run(mut self) {
        let mut retry = RETRY_MIN;
        let mut jitter = Jitter::seeded();
        loop {
            match self.certify().await {
                Ok(mut held) => {
                    retry = RETRY_MIN;
                    let lifetime = held
                        .not_after
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    // 60–75 % of the remaining lifetime.
                    let frac = 0.60 + 0.15 * jitter.fraction();
                    let wait = lifetime.mul_f64(frac).max(Duration::from_millis(100));
                    let renew_at = tokio::time::Instant::now() + wait;
                    self.hold(&mut held, renew_at, &mut jitter).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?retry, "cannot obtain a certificate; keeping the current one");
                    tokio::time::sleep(retry.mul_f64(0.5 + 0.5 * jitter.fraction())).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Serves with `held` until `renew_at`, installing pushed roots as they come; returns early
    /// (after a jittered pause) when a newer root starts signing.
    async fn hold(&mut self, held: &mut Held, renew_at: tokio::time::Instant, jitter: &mut Jitter) {
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(renew_at) => return,
                changed = self.trust.changed() => {
                    if changed.is_err() {
                        // No control-plane stream any more: renew on schedule only.
                        tokio::time::sleep_until(renew_at).await;
                        return;
                    }
                    let Some(pushed) = self.trust.borrow_and_update().clone() else { continue };
                    if pushed.generation > held.generation {
                        let pause = ROTATION_RENEW_SPREAD.mul_f64(jitter.fraction());
                        tracing::info!(generation = pushed.generation, ?pause, "a new root signs; renewing the certificate");
                        tokio::time::sleep_until(renew_at.min(tokio::time::Instant::now() + pause)).await;
                        return;
                    }
                    if pushed.bundle_pem.as_ref() != held.bundle_pem.as_slice() {
                        self.install_roots(held, &pushed.bundle_pem);
                    }
                }
            }
        }
    }

    /// New roots for the same certificate and key: peers' certificates from a root just added
    /// to the bundle verify at once, and a root removed stops verifying.
    fn install_roots(&self, held: &mut Held, bundle_pem: &[u8]) {
        match Credentials::from_pem(
            held.chain_pem.as_bytes(),
            held.key_pem.as_bytes(),
            bundle_pem,
        ) {
            Ok(creds) => {
                self.creds.store(creds);
                held.bundle_pem = bundle_pem.to_vec();
                tracing::info!("installed the trust bundle pushed by the control plane");
            }
            Err(e) => tracing::warn!(error = %e, "ignoring an unusable pushed trust bundle"),
        }
    }

    async fn certify(&self) -> Result<Held, CertifyError> {
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
        let endpoint = self
            .dialer
            .endpoint()?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10));
        let channel = match self.dialer.connect(endpoint).await {
            Ok(channel) => channel,
            Err(err) => {
                // The next attempt goes to another replica, if there is one.
                self.dialer.next();
                return Err(err.into());
            }
        };
        let rsp = IdentityClient::new(channel)
            .certify(CertifyRequest {
                token: token.trim().to_owned(),
                csr_pem,
            })
            .await?
            .into_inner();
        let key_pem = key.serialize_pem();
        let creds = Credentials::from_pem(
            rsp.cert_chain_pem.as_bytes(),
            key_pem.as_bytes(),
            rsp.trust_bundle_pem.as_bytes(),
        )?;
        let not_after =
            UNIX_EPOCH + Duration::from_millis(u64::try_from(rsp.not_after_unix_ms).unwrap_or(0));
        self.dialer.learn(rsp.trust_bundle_pem.as_bytes());
        tracing::info!(identity = %creds.spiffe_id, not_after_unix_ms = rsp.not_after_unix_ms, "certificate issued");
        self.creds.store(creds);
        self.metrics.identity_renewals.fetch_add(1, Relaxed);
        Ok(Held {
            chain_pem: rsp.cert_chain_pem,
            key_pem,
            bundle_pem: rsp.trust_bundle_pem.into_bytes(),
            generation: rsp.ca_generation,
            not_after,
        })
    }
}
