//! `Discovery.Delta`: one task per proxy that keeps what the proxy holds (resource name →
//! version) and, after each published change, sends only the resources its scope needs that
//! differ from that, plus the names it no longer needs.
//!
//! Each change wakes every stream, but a stream whose scope did not change does a few hash
//! lookups and sends nothing. At most one response is in flight per stream: the next waits
//! for the proxy's ACK and then carries everything that changed meanwhile, so a slow proxy
//! costs no queue.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::Stream;
use tokio::sync::watch;
use tonic::{Status, Streaming};
use weir_proto::discovery::v1::{
    DeltaAck, DeltaRequest, DeltaResponse, Resolution, Resource, Subscribe, delta_request,
};

use crate::discovery::{Registration, register};
use crate::hub::{Hub, Published};
use crate::registry::{ProxyState, ServiceKey};
use crate::world::World;

/// Subscriptions one proxy may hold: a transparent proxy subscribes to every new destination
/// address it sees, so a scanner in the pod must not grow the control plane without bound.
pub const MAX_SUBSCRIPTIONS: usize = 10_000;

pub type DeltaStream = Pin<Box<dyn Stream<Item = Result<DeltaResponse, Status>> + Send>>;

static NONCE: AtomicU64 = AtomicU64::new(0);

/// Reads the Hello, registers the proxy and starts its session.
pub async fn serve(
    hub: &Arc<Hub>,
    mut inbound: Streaming<DeltaRequest>,
) -> Result<DeltaStream, Status> {
    let hello = match inbound.message().await? {
        Some(DeltaRequest {
            kind: Some(delta_request::Kind::Hello(hello)),
        }) => hello,
        Some(_) => {
            return Err(Status::invalid_argument(
                "the first message on a delta stream must be DeltaHello",
            ));
        }
        None => {
            return Err(Status::invalid_argument(
                "stream closed before DeltaHello; the first message must be DeltaHello",
            ));
        }
    };
    let proxy = hello.hello.clone().unwrap_or_default();
    let (connected, guard) = register(hub, &proxy).await?;
    let mut session = Session::new((proxy.namespace.clone(), proxy.service.clone()));
    for known in hello.known {
        session.sent.insert(known.name.into(), known.version);
    }
    session.subscribe(&Subscribe {
        add: hello.subscribe,
        remove: Vec::new(),
    });
    let driver = Driver {
        session,
        inbound,
        published: hub.subscribe(),
        min_version: Some(connected.version),
        state: connected.state,
        _guard: guard,
    };
    Ok(Box::pin(futures_util::stream::unfold(driver, Driver::next)))
}

/// What the control plane knows of one proxy's scope and holdings.
#[derive(Debug, Default)]
pub struct Session {
    own: ServiceKey,
    /// Key → the services it resolved to at the last step.
    subscriptions: BTreeMap<String, Vec<ServiceKey>>,
    /// Keys to answer with a Resolution in the next response: new subscriptions, and keys
    /// whose answer changed (a name outside the mesh that a later apply brought in).
    unanswered: BTreeSet<String>,
    /// What the proxy holds (or was sent and has not refused).
    sent: HashMap<Arc<str>, u64>,
    /// The version of each resource the proxy refused, so it is not sent again.
    refused: HashMap<Arc<str>, u64>,
    trust_generation: Option<(u64, usize)>,
    in_flight: Option<(String, u64)>,
}

impl Session {
    pub fn new(own: ServiceKey) -> Session {
        Session {
            own,
            ..Session::default()
        }
    }

    pub fn subscribe(&mut self, change: &Subscribe) {
        for key in &change.remove {
            self.subscriptions.remove(key);
        }
        for key in &change.add {
            if self.subscriptions.len() >= MAX_SUBSCRIPTIONS
                && !self.subscriptions.contains_key(key)
            {
                tracing::debug!(key, "subscription limit reached; answering as unknown");
                self.unanswered.insert(key.clone());
                continue;
            }
            self.subscriptions.entry(key.clone()).or_default();
            self.unanswered.insert(key.clone());
        }
    }

    /// Records an ACK; returns the version the proxy is now at, when it answers the response
    /// in flight, and the refusals it carried.
    pub fn ack(&mut self, ack: &DeltaAck) -> Option<(u64, Vec<String>)> {
        let (_, version) = self.in_flight.take_if(|(n, _)| *n == ack.nonce)?;
        let mut errors = Vec::new();
        for nack in &ack.nacks {
            self.refused.insert(nack.name.as_str().into(), nack.version);
            // It keeps what it had; sending that again would not help, and the status says
            // why.
            errors.extend(nack.errors.iter().map(|e| format!("{}: {e}", nack.name)));
        }
        Some((version, errors))
    }

    pub fn waiting(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The response that brings the proxy to `published`, or `None` when it already is.
    pub fn step(&mut self, published: &Published) -> Option<DeltaResponse> {
        let world = &published.world;
        for (key, resolved) in &mut self.subscriptions {
            let now = world.resolve(key);
            if now.first() != resolved.first() {
                self.unanswered.insert(key.clone());
            }
            *resolved = now;
        }
        let needed = self.needed(world);
        let mut resources = Vec::new();
        for (name, res) in &needed {
            let held = self.sent.get(*name) == Some(&res.version);
            let refused = self.refused.get(*name) == Some(&res.version);
            if !held && !refused {
                resources.push(Resource {
                    name: res.name.to_string(),
                    version: res.version,
                    document: Some(res.document.clone()),
                });
            }
        }
        let mut removed: Vec<String> = self
            .sent
            .keys()
            .filter(|n| !needed.contains_key(&***n))
            .map(|n| n.to_string())
            .collect();
        removed.sort();
        let trust = (published.ca_generation, published.trust_bundle_pem.len());
        let trust_changed =
            !published.trust_bundle_pem.is_empty() && self.trust_generation != Some(trust);
        if resources.is_empty()
            && removed.is_empty()
            && self.unanswered.is_empty()
            && !trust_changed
        {
            return None;
        }
        for r in &resources {
            self.sent.insert(r.name.as_str().into(), r.version);
        }
        for n in &removed {
            self.sent.remove(n.as_str());
            self.refused.remove(n.as_str());
        }
        let resolutions = std::mem::take(&mut self.unanswered)
            .into_iter()
            .map(|key| {
                let service = self
                    .subscriptions
                    .get(&key)
                    .and_then(|r| r.first())
                    .map(|(ns, name)| format!("{name}.{ns}"))
                    .unwrap_or_default();
                Resolution { key, service }
            })
            .collect();
        let (trust_bundle_pem, ca_generation) = if trust_changed {
            self.trust_generation = Some(trust);
            (published.trust_bundle_pem.clone(), published.ca_generation)
        } else {
            (bytes::Bytes::new(), 0)
        };
        let nonce = NONCE.fetch_add(1, Ordering::Relaxed).to_string();
        self.in_flight = Some((nonce.clone(), published.version));
        Some(DeltaResponse {
            nonce,
            version: published.version,
            resources,
            removed,
            resolutions,
            trust_bundle_pem,
            ca_generation,
        })
    }

    /// Everything in this proxy's scope, by resource name.
    fn needed<'w>(&self, world: &'w World) -> HashMap<&'w str, &'w crate::world::Resource> {
        let mut out = HashMap::new();
        for r in &world.mesh {
            out.insert(&*r.name, &**r);
        }
        let own = world.services.get(&self.own);
        if let Some(p) = own.and_then(|s| s.policy.as_ref()) {
            out.insert(&*p.name, &**p);
        }
        let declared = own.map(|s| s.dependencies.as_slice()).unwrap_or_default();
        let called = self.subscriptions.values().flatten().chain(declared);
        for key in called {
            let Some(svc) = world.services.get(key) else {
                continue;
            };
            for r in [&svc.policy, &svc.endpoints].into_iter().flatten() {
                out.insert(&*r.name, &**r);
            }
            for backend in &svc.backends {
                if let Some(r) = world
                    .services
                    .get(backend)
                    .and_then(|b| b.endpoints.as_ref())
                {
                    out.insert(&*r.name, &**r);
                }
            }
        }
        out
    }
}

/// One proxy's session, driven by its response stream: hyper polls the stream whenever a
/// change is published or the proxy writes, so a stream needs no task or channel of its own
/// (at 10,000 streams, a task and a channel each cost more than the session).
struct Driver {
    session: Session,
    inbound: Streaming<DeltaRequest>,
    published: watch::Receiver<Arc<Published>>,
    /// Until the first response: the version that includes the proxy's registration.
    min_version: Option<u64>,
    state: Arc<ProxyState>,
    /// Starts the registration's lease when the stream ends, however it ends.
    _guard: Registration,
}

impl Driver {
    /// The next response; `None` ends the stream (proxy gone, or the control plane closing).
    async fn next(mut self) -> Option<(Result<DeltaResponse, Status>, Driver)> {
        if let Some(min_version) = self.min_version.take() {
            self.published
                .wait_for(|p| p.closing || p.version >= min_version)
                .await
                .ok()?;
        } else {
            self.wait().await?;
        }
        loop {
            let current = self.published.borrow_and_update().clone();
            if current.closing {
                return None;
            }
            if !self.session.waiting() {
                match self.session.step(&current) {
                    Some(response) => return Some((Ok(response), self)),
                    // Nothing in its scope changed: it is as current as this version.
                    None => self.state.ack(current.version),
                }
            }
            self.wait().await?;
        }
    }

    /// Until a change is published or the proxy says something; `None` when either side ends.
    async fn wait(&mut self) -> Option<()> {
        tokio::select! {
            changed = self.published.changed() => changed.ok(),
            message = self.inbound.message() => match message {
                Ok(Some(m)) => {
                    handle(&mut self.session, &self.state, m);
                    Some(())
                }
                Ok(None) => None,
                Err(status) => {
                    tracing::debug!(%status, "delta stream ended");
                    None
                }
            },
        }
    }
}

fn handle(session: &mut Session, state: &ProxyState, message: DeltaRequest) {
    match message.kind {
        Some(delta_request::Kind::Subscribe(change)) => session.subscribe(&change),
        Some(delta_request::Kind::Ack(ack)) => match session.ack(&ack) {
            Some((version, errors)) if errors.is_empty() => state.ack(version),
            Some((version, errors)) => {
                tracing::warn!(
                    service = state.service,
                    namespace = state.namespace,
                    version,
                    errors = errors.join("; "),
                    "proxy refused resources"
                );
                state.nack(version, &errors);
            }
            None => tracing::debug!(nonce = ack.nonce, "ACK for a response not in flight"),
        },
        Some(delta_request::Kind::Hello(_)) => {
            tracing::debug!("ignoring a second DeltaHello on a delta stream");
        }
        None => {}
    }
}
