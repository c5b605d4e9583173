//! The proxy's side of `Discovery.Stream`: say hello, validate each pushed snapshot, swap it in
//! or NACK it, and keep the last good one on disk. Traffic never waits on any of this: the
//! listeners serve with whatever snapshot is in force, and a lost control plane only means
//! no updates until the stream comes back.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weir_policy::{Document, Errors};
use weir_proto::discovery::v1::{
    Ack, Hello, Nack, ProxyMessage, Snapshot, discovery_client::DiscoveryClient, proxy_message,
};

use crate::config::{ConfigStore, Pushed};
use crate::jitter::Jitter;
use crate::tls::certify::PushedTrust;
use crate::tls::dial::ControlDialer;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Before dialling the next replica after one failed.
const FAILOVER_JITTER: Duration = Duration::from_millis(100);
const CACHE_FILE: &str = "snapshot.json";

pub struct ControlClient {
    pub dialer: Arc<ControlDialer>,
    /// Where pushed roots go when this proxy's identity comes from the control plane.
    pub trust: Option<tokio::sync::watch::Sender<Option<PushedTrust>>>,
    pub hello: Hello,
    pub config: Arc<ConfigStore>,
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Dial(#[from] weir_proto::dial::DialError),
    #[error("stream refused: {0}")]
    Refused(#[source] tonic::Status),
    #[error("stream ended: {0}")]
    Ended(#[source] tonic::Status),
}

impl ControlClient {
    /// Loads the cached snapshot, if any, so a proxy restarted during a control-plane outage
    /// routes as before. Returns its control-plane version.
    pub fn load_cache(&self) -> Option<u64> {
        let path = self.cache_dir.as_ref()?.join(CACHE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the snapshot cache");
                return None;
            }
        };
        let pushed: Pushed = match serde_json::from_str(&text) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable snapshot cache");
                return None;
            }
        };
        let source = path.display().to_string();
        let valid = pushed
            .documents
            .iter()
            .try_for_each(|d| weir_policy::validate(&source, d))
            .and_then(|()| weir_policy::validate_set(&pushed.documents));
        if let Err(e) = valid {
            tracing::warn!(path = %path.display(), errors = %e, "ignoring an invalid snapshot cache");
            return None;
        }
        let version = pushed.version;
        if let Err(e) = self.config.install_pushed(pushed) {
            tracing::warn!(path = %path.display(), errors = %e, "ignoring a snapshot cache that conflicts with --config");
            return None;
        }
        tracing::info!(version, path = %path.display(), "serving from the cached control-plane snapshot");
        Some(version)
    }

    /// Runs forever: one session after another, with jittered exponential backoff between them.
    pub async fn run(self) {
        let mut backoff = BACKOFF_MIN;
        let mut rng = Jitter::seeded();
        // Replicas tried since the last session that connected.
        let mut tried = 0;
        loop {
            let url = self.dialer.url().to_owned();
            let mut connected = false;
            match self.session(&mut backoff, &mut connected).await {
                Ok(()) => tracing::info!(%url, "control-plane stream closed; reconnecting"),
                Err(e) => {
                    tracing::warn!(%url, error = %e, "control plane unavailable; serving the last good config")
                }
            }
            if connected {
                tried = 0;
            }
            self.dialer.next();
            tried += 1;
            // Another replica is tried at once; only a whole round of failures backs off.
            // Full jitter: a fleet of proxies that lost the same control plane does not come
            // back in lockstep.
            let wait = if tried % self.dialer.count() != 0 {
                rng.below(FAILOVER_JITTER)
            } else {
                let wait = rng.below(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                wait
            };
            tokio::time::sleep(wait).await;
        }
    }

    async fn session(
        &self,
        backoff: &mut Duration,
        connected: &mut bool,
    ) -> Result<(), SessionError> {
        let endpoint = self
            .dialer
            .endpoint()?
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10));
        let channel = self.dialer.connect(endpoint).await?;
        let mut client = DiscoveryClient::new(channel);
        let (tx, rx) = mpsc::channel(4);
        let mut hello = self.hello.clone();
        hello.current_version = self.config.pushed_version();
        let _ = tx
            .send(ProxyMessage {
                kind: Some(proxy_message::Kind::Hello(hello)),
            })
            .await;
        let mut snapshots = client
            .stream(ReceiverStream::new(rx))
            .await
            .map_err(SessionError::Refused)?
            .into_inner();
        *backoff = BACKOFF_MIN;
        *connected = true;
        tracing::info!(url = %self.dialer.url(), "connected to the control plane");
        loop {
            let snapshot = match snapshots.message().await {
                Ok(Some(s)) => s,
                Ok(None) => return Ok(()),
                Err(status) => return Err(SessionError::Ended(status)),
            };
            let reply = self.apply(snapshot);
            if tx.send(reply).await.is_err() {
                return Ok(());
            }
        }
    }

    /// Validates and installs one snapshot, returning the ACK or NACK to send.
    fn apply(&self, snapshot: Snapshot) -> ProxyMessage {
        let Snapshot {
            version,
            nonce,
            documents,
            trust_bundle_pem,
            ca_generation,
        } = snapshot;
        if !trust_bundle_pem.is_empty() {
            self.dialer.learn(&trust_bundle_pem);
            if let Some(trust) = &self.trust {
                let pushed = PushedTrust {
                    bundle_pem: trust_bundle_pem,
                    generation: ca_generation,
                };
                trust.send_if_modified(|current| {
                    let changed = current.as_ref() != Some(&pushed);
                    *current = Some(pushed);
                    changed
                });
            }
        }
        let installed = decode(version, &documents).and_then(|documents| {
            let pushed = Pushed { version, documents };
            let cache = self.cache_dir.is_some().then(|| pushed.clone());
            let local = self.config.install_pushed(pushed)?;
            // Only what was actually installed is cached: a restart must not bring back a
            // snapshot this proxy refused.
            if let Some(p) = cache {
                self.write_cache(&p);
            }
            Ok(local)
        });
        match installed {
            Ok(local) => {
                tracing::info!(
                    version,
                    local_version = local,
                    "control-plane snapshot applied"
                );
                ProxyMessage {
                    kind: Some(proxy_message::Kind::Ack(Ack { version, nonce })),
                }
            }
            Err(errors) => {
                for e in errors.iter() {
                    tracing::error!(version, error = %e, "control-plane snapshot rejected");
                }
                let errors = errors.iter().map(ToString::to_string).collect();
                ProxyMessage {
                    kind: Some(proxy_message::Kind::Nack(Nack {
                        version,
                        nonce,
                        errors,
                    })),
                }
            }
        }
    }

    fn write_cache(&self, pushed: &Pushed) {
        let Some(dir) = &self.cache_dir else { return };
        if let Err(e) = write_atomic(dir, pushed) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write the snapshot cache");
        }
    }
}

/// Decodes and validates every document, collecting every error.
fn decode(
    version: u64,
    documents: &[weir_proto::discovery::v1::Document],
) -> Result<Vec<Document>, Errors> {
    let source = format!("snapshot {version}");
    let mut errors = Vec::new();
    let mut docs = Vec::with_capacity(documents.len());
    for d in documents {
        match serde_json::from_slice::<Document>(&d.json) {
            Ok(doc) => match weir_policy::validate(&source, &doc) {
                Ok(()) => docs.push(doc),
                Err(e) => errors.extend(e.0),
            },
            Err(e) => errors.push(weir_policy::PolicyError {
                source: source.clone(),
                document: Some(format!("{} {}/{}", d.kind, d.namespace, d.name)),
                path: String::new(),
                reason: format!("undecodable document: {e}"),
            }),
        }
    }
    if errors.is_empty() {
        weir_policy::validate_set(&docs)?;
        Ok(docs)
    } else {
        Err(Errors(errors))
    }
}

fn write_atomic(dir: &Path, pushed: &Pushed) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{CACHE_FILE}.tmp"));
    let json = serde_json::to_vec(pushed).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, json)?;
    // rename is atomic: a crash leaves the old cache or the new one, never half of one.
    std::fs::rename(&tmp, dir.join(CACHE_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(json: &str) -> weir_proto::discovery::v1::Document {
        weir_proto::discovery::v1::Document {
            json: json.to_owned().into(),
            ..Default::default()
        }
    }

    #[test]
    fn decode_collects_every_error() {
        let good = serde_json::to_string(
            &weir_policy::parse_str("t", "apiVersion: weir/v1\nkind: Endpoints\nmetadata: {name: a}\nspec: {addresses: [\"10.0.0.1:4143\"]}\n")
                .expect("valid")[0],
        )
        .expect("json");
        assert_eq!(decode(7, &[doc(&good)]).expect("valid").len(), 1);
        let bad_percent = good.replace("10.0.0.1:4143", "nonsense");
        let errors = decode(7, &[doc(&bad_percent), doc("{not json")]).expect_err("invalid");
        assert_eq!(errors.0.len(), 2, "{errors}");
        assert!(errors.to_string().contains("snapshot 7"), "{errors}");
    }
}
