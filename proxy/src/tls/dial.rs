//! How the proxy reaches its control plane: TLS verified against the mesh's roots. The roots
//! are the `--trust-bundle` file (re-read on every dial, so an updated ConfigMap is picked up)
//! plus the bundle the control plane last handed out, so a root rotation that the control plane
//! announces never strands a proxy whose file has not caught up yet.
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tonic::transport::{Channel, Endpoint};
use weir_proto::dial::{self, DialError};

pub struct ControlDialer {
    url: String,
    bundle_file: PathBuf,
    learned: ArcSwapOption<Vec<u8>>,
}

impl ControlDialer {
    /// Checks the URL and the bundle now, so a typo fails at start with its reason instead of
    /// as endless reconnect warnings.
    pub fn new(url: &str, bundle_file: PathBuf) -> Result<Arc<Self>, DialError> {
        dial::endpoint(url)?;
        let pem = std::fs::read(&bundle_file).map_err(|e| {
            DialError::Bundle(format!("cannot read {}: {e}", bundle_file.display()))
        })?;
        dial::roots_from_pem(&pem)
            .map_err(|e| DialError::Bundle(format!("{}: {e}", bundle_file.display())))?;
        Ok(Arc::new(ControlDialer {
            url: url.to_owned(),
            bundle_file,
            learned: ArcSwapOption::empty(),
        }))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Remembers roots the control plane handed out (with a certificate or a snapshot).
    pub fn learn(&self, bundle_pem: &[u8]) {
        if self.learned.load().as_deref().map(Vec::as_slice) != Some(bundle_pem) {
            self.learned.store(Some(Arc::new(bundle_pem.to_vec())));
        }
    }

    /// An endpoint to configure (timeouts, keep-alive) before [`ControlDialer::connect`].
    pub fn endpoint(&self) -> Result<Endpoint, DialError> {
        dial::endpoint(&self.url)
    }

    pub async fn connect(&self, endpoint: Endpoint) -> Result<Channel, DialError> {
        let mut pem = match std::fs::read(&self.bundle_file) {
            Ok(pem) => pem,
            Err(e) => {
                tracing::warn!(path = %self.bundle_file.display(), error = %e, "cannot read the trust bundle; using the roots the control plane gave");
                Vec::new()
            }
        };
        if let Some(learned) = self.learned.load().as_deref() {
            pem.push(b'\n');
            pem.extend_from_slice(learned);
        }
        let config = dial::client_config(dial::roots_from_pem(&pem)?)?;
        dial::connect(endpoint, config).await
    }
}
