//! How the proxy reaches its control plane: TLS verified against the mesh's roots. The roots
//! are the `--trust-bundle` file (re-read on every dial, so an updated ConfigMap is picked up)
//! plus the bundle the control plane last handed out, so a root rotation that the control plane
//! announces never strands a proxy whose file has not caught up yet.
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tonic::transport::{Channel, Endpoint};
use weir_proto::dial::{self, DialError};

use crate::jitter::Jitter;

/// One or several control-plane replicas (`--control-plane https://a:8090,https://b:8090`): the
/// proxy starts at a random one so a fleet spreads over them, and moves to the next when one
/// fails. A DNS name with several addresses works too: the dial tries each address it resolves.
pub struct ControlDialer {
    urls: Vec<String>,
    current: AtomicUsize,
    bundle_file: PathBuf,
    learned: ArcSwapOption<Vec<u8>>,
}

impl ControlDialer {
    /// Checks the URL and the bundle now, so a typo fails at start with its reason instead of
    /// as endless reconnect warnings.
    pub fn new(spec: &str, bundle_file: PathBuf) -> Result<Arc<Self>, DialError> {
        let urls: Vec<String> = spec
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        if urls.is_empty() {
            return Err(DialError::Url { url: spec.into() });
        }
        for url in &urls {
            dial::endpoint(url)?;
        }
        let n = urls.len() as u64;
        let first = Jitter::seeded().below(Duration::from_nanos(n)).as_nanos() as usize;
        let pem = std::fs::read(&bundle_file).map_err(|e| {
            DialError::Bundle(format!("cannot read {}: {e}", bundle_file.display()))
        })?;
        dial::roots_from_pem(&pem)
            .map_err(|e| DialError::Bundle(format!("{}: {e}", bundle_file.display())))?;
        Ok(Arc::new(ControlDialer {
            urls,
            current: AtomicUsize::new(first),
            bundle_file,
            learned: ArcSwapOption::empty(),
        }))
    }

    /// The replica dialled now.
    pub fn url(&self) -> &str {
        &self.urls[self.current.load(Ordering::Relaxed) % self.urls.len()]
    }

    /// How many replicas there are to go round.
    pub fn count(&self) -> usize {
        self.urls.len()
    }

    /// The current replica failed (or its stream ended): the next dial goes to the next one.
    pub fn next(&self) {
        if self.urls.len() > 1 {
            self.current.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Remembers roots the control plane handed out (with a certificate or a snapshot).
    pub fn learn(&self, bundle_pem: &[u8]) {
        if self.learned.load().as_deref().map(Vec::as_slice) != Some(bundle_pem) {
            self.learned.store(Some(Arc::new(bundle_pem.to_vec())));
        }
    }

    /// An endpoint to configure (timeouts, keep-alive) before [`ControlDialer::connect`].
    pub fn endpoint(&self) -> Result<Endpoint, DialError> {
        dial::endpoint(self.url())
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
