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
    DeltaAck, DeltaHello, DeltaRequest, DeltaResponse, Hello, Resource, ResourceNack,
    ResourceVersion, Subscribe, delta_request, discovery_client::DiscoveryClient,
};

use std::collections::BTreeMap;

use crate::config::{ConfigStore, Pushed, PushedResource};
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
        let documents: Vec<Document> = pushed.documents().cloned().collect();
        let valid = documents
            .iter()
            .try_for_each(|d| weir_policy::validate(&source, d))
            .and_then(|()| weir_policy::validate_set(&documents));
        if let Err(e) = valid {
            tracing::warn!(path = %path.display(), errors = %e, "ignoring an invalid snapshot cache");
            return None;
        }
        let version = pushed.version;
        self.config
            .subscriptions
            .restore(pushed.subscriptions.iter().cloned());
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
        let known = self
            .config
            .pushed()
            .map(|p| {
                p.resources
                    .iter()
                    .map(|r| ResourceVersion {
                        name: r.name.clone(),
                        version: r.version,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut hello = self.hello.clone();
        hello.current_version = self.config.pushed_version();
        let subs = &self.config.subscriptions;
        let first = DeltaHello {
            hello: Some(hello),
            known,
            subscribe: subs.keys(),
        };
        let _ = tx.send(request(delta_request::Kind::Hello(first))).await;
        let mut responses = client
            .delta(ReceiverStream::new(rx))
            .await
            .map_err(SessionError::Refused)?
            .into_inner();
        *backoff = BACKOFF_MIN;
        *connected = true;
        tracing::info!(url = %self.dialer.url(), "connected to the control plane");
        loop {
            tokio::select! {
                response = responses.message() => {
                    let response = match response {
                        Ok(Some(r)) => r,
                        Ok(None) => return Ok(()),
                        Err(status) => return Err(SessionError::Ended(status)),
                    };
                    let ack = self.apply(response);
                    if tx.send(request(delta_request::Kind::Ack(ack))).await.is_err() {
                        return Ok(());
                    }
                }
                () = subs.wake.notified() => {
                    let (add, remove) = subs.take_changes();
                    if add.is_empty() && remove.is_empty() {
                        continue;
                    }
                    let change = Subscribe { add, remove };
                    if tx.send(request(delta_request::Kind::Subscribe(change))).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn learn_trust(&self, trust_bundle_pem: bytes::Bytes, ca_generation: u64) {
        if trust_bundle_pem.is_empty() {
            return;
        }
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

    /// Validates and installs the resources of one response, each on its own: a resource that
    /// does not validate is refused (the proxy keeps what it had for it) and the rest go in.
    /// Returns the ACK, naming every refused resource and why.
    fn apply(&self, response: DeltaResponse) -> DeltaAck {
        let DeltaResponse {
            nonce,
            version,
            resources,
            removed,
            resolutions,
            trust_bundle_pem,
            ca_generation,
        } = response;
        self.learn_trust(trust_bundle_pem, ca_generation);
        let before = self.config.pushed().unwrap_or_default();
        let mut held: BTreeMap<String, PushedResource> = before
            .resources
            .iter()
            .map(|r| (r.name.clone(), r.clone()))
            .collect();
        for name in &removed {
            held.remove(name);
        }
        let source = format!("control plane version {version}");
        let mut nacks = Vec::new();
        let mut changed = Vec::new();
        for r in resources {
            match decode(&source, &r) {
                Ok(document) => {
                    changed.push((r.name.clone(), r.version));
                    held.insert(
                        r.name.clone(),
                        PushedResource {
                            name: r.name,
                            version: r.version,
                            document,
                        },
                    );
                }
                Err(errors) => nacks.push(ResourceNack {
                    name: r.name,
                    version: r.version,
                    errors: errors.iter().map(ToString::to_string).collect(),
                }),
            }
        }
        let mut settled = before.settled.clone();
        let answered = !resolutions.is_empty();
        settled.extend(resolutions.into_iter().map(|r| r.key));
        let mut pushed = Pushed {
            version,
            resources: held.into_values().collect(),
            settled,
            subscriptions: self.config.subscriptions.keys_peek(),
            documents: Vec::new(),
        };
        if let Err(errors) = self.config.install_pushed(pushed.clone()) {
            // Some changed resources do not fit with the rest (or with --config): refuse the
            // ones the errors name (all changed ones if none is named) and keep what this
            // proxy had for each.
            let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
            let key_of = |name: &str| {
                pushed
                    .resources
                    .iter()
                    .find(|r| r.name == name)
                    .map(|r| r.document.key())
            };
            let named: Vec<(String, u64)> = changed
                .iter()
                .filter(|(n, _)| {
                    let key = key_of(n);
                    errors
                        .iter()
                        .any(|e| e.document.is_some() && e.document == key)
                })
                .cloned()
                .collect();
            let refused = if named.is_empty() { changed } else { named };
            let old: BTreeMap<&str, &PushedResource> = before
                .resources
                .iter()
                .map(|r| (r.name.as_str(), r))
                .collect();
            pushed
                .resources
                .retain(|r| !refused.iter().any(|(n, _)| *n == r.name));
            pushed.resources.extend(
                refused
                    .iter()
                    .filter_map(|(n, _)| old.get(n.as_str()).map(|r| (*r).clone())),
            );
            pushed.resources.sort_by(|a, b| a.name.cmp(&b.name));
            for (name, v) in refused {
                nacks.push(ResourceNack {
                    name,
                    version: v,
                    errors: reasons.clone(),
                });
            }
            if let Err(e) = self.config.install_pushed(pushed.clone()) {
                tracing::error!(version, errors = %e, "keeping the previous control-plane state");
                return DeltaAck { nonce, nacks };
            }
        }
        for n in &nacks {
            for e in &n.errors {
                tracing::error!(version, resource = n.name, error = %e, "control-plane resource rejected");
            }
        }
        tracing::debug!(
            version,
            refused = nacks.len(),
            "control-plane update applied"
        );
        // Only what was actually installed is cached: a restart must not bring back a
        // resource this proxy refused.
        self.write_cache(&pushed);
        if answered {
            self.config.subscriptions.answered();
        }
        DeltaAck { nonce, nacks }
    }

    fn write_cache(&self, pushed: &Pushed) {
        let Some(dir) = &self.cache_dir else { return };
        if let Err(e) = write_atomic(dir, pushed) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write the snapshot cache");
        }
    }
}

fn request(kind: delta_request::Kind) -> DeltaRequest {
    DeltaRequest { kind: Some(kind) }
}

/// Decodes and validates one resource's document.
fn decode(source: &str, resource: &Resource) -> Result<Document, Errors> {
    let name = &resource.name;
    let undecodable = |reason: String| {
        Errors(vec![weir_policy::PolicyError {
            source: source.to_string(),
            document: Some(name.clone()),
            path: String::new(),
            reason,
        }])
    };
    let Some(d) = &resource.document else {
        return Err(undecodable("the resource carries no document".into()));
    };
    let doc = serde_json::from_slice::<Document>(&d.json)
        .map_err(|e| undecodable(format!("undecodable document: {e}")))?;
    weir_policy::validate(source, &doc)?;
    Ok(doc)
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

    fn resource(json: &str) -> Resource {
        Resource {
            name: "Endpoints/default/a".into(),
            version: 1,
            document: Some(weir_proto::discovery::v1::Document {
                json: json.to_owned().into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn decode_names_the_resource_and_the_field() {
        let good = serde_json::to_string(
            &weir_policy::parse_str("t", "apiVersion: weir/v1\nkind: Endpoints\nmetadata: {name: a}\nspec: {addresses: [\"10.0.0.1:4143\"]}\n")
                .expect("valid")[0],
        )
        .expect("json");
        assert!(decode("v7", &resource(&good)).is_ok());
        let bad = good.replace("\"spec\":{", "\"spec\":{\"identity\":\"orders\",");
        let errors = decode("v7", &resource(&bad)).expect_err("invalid");
        assert!(errors.to_string().contains("spec.identity"), "{errors}");
        let errors = decode("v7", &resource("{not json")).expect_err("undecodable");
        assert!(
            errors.to_string().contains("Endpoints/default/a"),
            "{errors}"
        );
    }
}
