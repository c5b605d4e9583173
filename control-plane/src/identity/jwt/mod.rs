//! Kubernetes service-account tokens as the Certify credential: a pod's projected token
//! (audience `weir`) verified here against the cluster's issuer keys, so no per-workload
//! `weirctl token create` is needed in Kubernetes (deploy/README.md, `--kubernetes-issuer`).

pub mod fetch;
pub mod jwks;
pub mod keys;
pub mod verify;

#[cfg(test)]
pub(crate) mod test_keys;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::Uri;

pub use keys::{IssuerKeys, JwksError};
pub use verify::{JwtError, ServiceAccount, Verifier, looks_like_jwt};

/// The audience the injected pod spec's projected token carries.
pub const DEFAULT_AUDIENCE: &str = "weir";
/// Where a pod finds its own token and the cluster CA, for fetching a JWKS URL.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// `--kubernetes-jwks`: a file, or the API server's `https://…/openid/v1/jwks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksLocation {
    File(PathBuf),
    Url(Uri),
}

impl JwksLocation {
    pub fn parse(text: &str) -> Result<JwksLocation, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("give a JWKS file or an https:// URL".into());
        }
        if !text.contains("://") {
            return Ok(JwksLocation::File(PathBuf::from(text)));
        }
        let uri: Uri = text
            .parse()
            .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!(
                "{text:?}: only https:// URLs are fetched (these keys decide who gets a \
                 certificate), or give a file"
            ));
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("{text:?} has no host"));
        }
        Ok(JwksLocation::Url(uri))
    }
}

impl std::fmt::Display for JwksLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksLocation::File(path) => write!(f, "{}", path.display()),
            JwksLocation::Url(uri) => write!(f, "{uri}"),
        }
    }
}

/// `--kubernetes-issuer`, `--kubernetes-jwks`, `--kubernetes-audience`.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    pub issuer: String,
    pub jwks: JwksLocation,
    pub audience: String,
    /// `token` and `ca.crt` for a JWKS URL; [`SERVICE_ACCOUNT_DIR`] in a pod.
    pub service_account_dir: PathBuf,
}

impl KubernetesConfig {
    pub fn new(issuer: impl Into<String>, jwks: JwksLocation) -> KubernetesConfig {
        KubernetesConfig {
            issuer: issuer.into(),
            jwks,
            audience: DEFAULT_AUDIENCE.into(),
            service_account_dir: PathBuf::from(SERVICE_ACCOUNT_DIR),
        }
    }
}

/// The verifier and the keys it checks against.
#[derive(Debug)]
pub struct KubernetesTokens {
    verifier: Verifier,
    keys: Arc<IssuerKeys>,
}

impl KubernetesTokens {
    pub async fn open(config: &KubernetesConfig) -> Result<KubernetesTokens, JwksError> {
        let keys = IssuerKeys::open(&config.jwks, &config.service_account_dir).await?;
        Ok(KubernetesTokens {
            verifier: Verifier {
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
            },
            keys,
        })
    }

    pub fn keys(&self) -> &Arc<IssuerKeys> {
        &self.keys
    }

    /// The service account `token` proves now. A key the set lacks makes one reload (rate
    /// limited) before the token is refused: the issuer may have rotated its keys.
    pub async fn verify(&self, token: &str) -> Result<ServiceAccount, JwtError> {
        self.keys.reload_if_changed().await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Some(keys) = self.keys.current() {
            match self.verifier.verify(token, &keys, now) {
                Err(JwtError::UnknownKid(kid)) => self.keys.refresh_on_demand(&kid).await,
                other => return other,
            }
        } else {
            self.keys.refresh_on_demand("(keys not loaded)").await;
        }
        match self.keys.current() {
            Some(keys) => self.verifier.verify(token, &keys, now),
            None => Err(JwtError::KeysUnavailable(self.keys.last_error().await)),
        }
    }
}
