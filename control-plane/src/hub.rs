//! The shared state of one server: store, registry, and the published snapshot.
//!
//! One publisher task builds a snapshot per change and hands it to every stream as an
//! `Arc<Published>` through a watch channel. A watch keeps only the newest value, so a burst of
//! changes costs one build per publisher pass, and a slow proxy is sent the newest state
//! instead of a queue of stale ones.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use weir_policy::{Document, Endpoints, EndpointsSpec, Metadata};
use weir_proto::discovery::v1 as pb;

use crate::derived::{Derived, DerivedEndpoints};
use crate::registry::{Registry, ServiceKey, ServiceView};
use crate::store::{Object, Store, StoreError};
use crate::world::World;

/// Lower bound between two published snapshots; see [`Hub::publish`].
const MIN_PUBLISH_INTERVAL: Duration = Duration::from_millis(100);

/// One built snapshot, shared by every stream.
#[derive(Debug, Default)]
pub struct Published {
    pub version: u64,
    pub documents: Vec<pb::Document>,
    /// The same documents indexed for scoped streams.
    pub world: Arc<World>,
    pub trust_bundle_pem: bytes::Bytes,
    pub ca_generation: u64,
    /// The server is shutting down: streams end instead of sending this.
    pub closing: bool,
}

pub struct Hub {
    pub store: Store,
    pub registry: Registry,
    /// Endpoints learnt from the cluster (`--kubernetes`), memory only.
    pub derived: Derived,
    pub trust_domain: String,
    pub lease_grace: Duration,
    /// This replica's name (`weirctl status` shows it beside each of its proxies).
    pub replica: String,
    /// The mesh's roots and their generation, sent with every snapshot.
    trust: std::sync::Mutex<(bytes::Bytes, u64)>,
    changed: Notify,
    last_publish: std::sync::Mutex<Option<tokio::time::Instant>>,
    snapshots: watch::Sender<Arc<Published>>,
}

// === impl Hub ===

impl Hub {
    /// Builds the first snapshot right away so the first stream never waits for the publisher.
    /// `replica` names this replica unless the store claimed a name for it (etcd).
    pub fn new(
        store: Store,
        replica: String,
        trust_domain: String,
        lease_grace: Duration,
    ) -> Result<Arc<Hub>, StoreError> {
        let replica = store.replica().map_or(replica, str::to_string);
        let registry = Registry::default();
        let derived = Derived::default();
        let first = build(&store, &registry, &derived, (bytes::Bytes::new(), 0))?;
        let (snapshots, _) = watch::channel(Arc::new(first));
        Ok(Arc::new(Hub {
            store,
            registry,
            derived,
            trust_domain,
            lease_grace,
            replica,
            trust: std::sync::Mutex::new((bytes::Bytes::new(), 0)),
            changed: Notify::new(),
            last_publish: std::sync::Mutex::new(None),
            snapshots,
        }))
    }

    /// New roots (a rotation step, or the CA opening): published as a new snapshot version, and
    /// installed at once in the current snapshot when nothing was published yet, so the first
    /// proxy to connect already gets them.
    pub fn set_trust(&self, bundle_pem: &[u8], generation: u64) {
        let bundle = bytes::Bytes::copy_from_slice(bundle_pem);
        *self.trust.lock().unwrap_or_else(|p| p.into_inner()) = (bundle.clone(), generation);
        self.snapshots.send_if_modified(|current| {
            if !current.trust_bundle_pem.is_empty() || current.closing {
                return false;
            }
            *current = Arc::new(Published {
                version: current.version,
                documents: current.documents.clone(),
                world: current.world.clone(),
                trust_bundle_pem: bundle,
                ca_generation: generation,
                closing: false,
            });
            true
        });
        if let Err(err) = self.store.bump_version() {
            tracing::error!(%err, "cannot bump the snapshot version for new roots");
        }
        self.changed();
    }

    fn trust(&self) -> (bytes::Bytes, u64) {
        self.trust.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Tells the publisher that the store or the registry changed.
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.snapshots.subscribe()
    }

    /// Ends every discovery stream (their proxies reconnect elsewhere or later) and stops the
    /// publisher.
    pub fn close(&self) {
        self.snapshots.send_modify(|current| {
            *current = Arc::new(Published {
                version: current.version,
                closing: true,
                ..Published::default()
            });
        });
        self.changed.notify_one();
    }

    /// Rebuilds the snapshot after each change until [`Hub::close`]. Building runs on the
    /// blocking pool: it reads the store and serialises every document.
    pub async fn publish(self: Arc<Self>) {
        loop {
            self.changed.notified().await;
            // Publishing wakes every stream, so under a storm of changes (thousands of proxies
            // connecting) publish at most every MIN_PUBLISH_INTERVAL; the changes that arrive
            // meanwhile ride along. A change after a quiet spell goes out at once.
            tokio::time::sleep_until(self.next_publish()).await;
            if self.snapshots.borrow().closing {
                return;
            }
            let hub = self.clone();
            let built = tokio::task::spawn_blocking(move || {
                build(&hub.store, &hub.registry, &hub.derived, hub.trust())
            })
            .await;
            match built {
                Ok(Ok(next)) => {
                    *self.last_publish.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(tokio::time::Instant::now());
                    self.snapshots.send_if_modified(|current| {
                        // Closing wins, and an older build never replaces a newer one.
                        if current.closing || next.version <= current.version {
                            return false;
                        }
                        *current = Arc::new(next);
                        true
                    });
                }
                Ok(Err(err)) => {
                    tracing::error!(%err, "cannot build snapshot; proxies keep the previous one")
                }
                Err(err) => tracing::error!(%err, "snapshot build task failed"),
            }
        }
    }

    fn next_publish(&self) -> tokio::time::Instant {
        let last = *self.last_publish.lock().unwrap_or_else(|p| p.into_inner());
        last.map_or_else(tokio::time::Instant::now, |t| t + MIN_PUBLISH_INTERVAL)
    }

    /// Unregisters a stream's endpoint after the lease grace, so a proxy that reconnects within
    /// it causes no change at all.
    pub fn disconnect(self: &Arc<Self>, stream: u64) {
        if !self.registry.disconnect(stream) {
            return;
        }
        let hub = Arc::downgrade(self);
        let grace = self.lease_grace;
        let expire = async move {
            tokio::time::sleep(grace).await;
            // A hub that is gone has no proxies left to tell.
            let Some(hub) = hub.upgrade() else { return };
            let expiring = hub.clone();
            // Waits on etcd with a shared store: off the runtime's workers.
            let expired = tokio::task::spawn_blocking(move || {
                expiring.registry.expire(stream, &expiring.store)
            })
            .await;
            match expired {
                Ok(Ok(Some(_))) => hub.changed(),
                Ok(Ok(None)) => {}
                Ok(Err(err)) => tracing::error!(%err, "cannot expire registration"),
                Err(err) => tracing::error!(%err, "registration expiry task failed"),
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(expire);
            }
            Err(_) => tracing::warn!(stream, "no runtime to expire a registration on"),
        }
    }
}

/// Reads the version first, then the state: every change bumps the version after it is made,
/// so the state read here holds at least everything up to that version.
pub fn build(
    store: &Store,
    registry: &Registry,
    derived: &Derived,
    (trust_bundle_pem, ca_generation): (bytes::Bytes, u64),
) -> Result<Published, StoreError> {
    let version = store.version();
    let objects = store.get(None, None, None)?;
    // Empty, without I/O, for the embedded store.
    let views = registry.views(&store.registrations()?);
    let documents = documents(objects, views, derived.all());
    Ok(Published {
        version,
        world: Arc::new(World::index(&documents)),
        documents,
        trust_bundle_pem,
        ca_generation,
        closing: false,
    })
}

/// MeshConfig first, then ServicePolicies, then Endpoints, each by namespace and name. A
/// service's stored Endpoints, derived Endpoints and registrations become one document.
fn documents(
    objects: Vec<Object>,
    views: Vec<(ServiceKey, ServiceView)>,
    mut derived: BTreeMap<ServiceKey, DerivedEndpoints>,
) -> Vec<pb::Document> {
    let rank = |kind: &str| match kind {
        "MeshConfig" => 0,
        "ServicePolicy" => 1,
        _ => 2,
    };
    let mut registered: BTreeMap<ServiceKey, ServiceView> = views.into_iter().collect();
    let mut out: Vec<pb::Document> =
        Vec::with_capacity(objects.len() + registered.len() + derived.len());
    for obj in objects {
        let key = (obj.namespace.clone(), obj.name.clone());
        if obj.kind == "Endpoints" && (registered.contains_key(&key) || derived.contains_key(&key))
        {
            let view = registered.remove(&key);
            let from_cluster = derived.remove(&key).map(|d| d.spec);
            let stored = match serde_json::from_str::<Document>(&obj.json) {
                Ok(Document::Endpoints(e)) => Some(e.spec),
                _ => {
                    tracing::error!(
                        namespace = obj.namespace,
                        name = obj.name,
                        "stored Endpoints document does not parse; using registrations only"
                    );
                    None
                }
            };
            out.extend(synthesise(
                &obj.namespace,
                &obj.name,
                stored,
                from_cluster,
                view,
            ));
            continue;
        }
        out.push(pb::Document {
            kind: obj.kind,
            namespace: obj.namespace,
            name: obj.name,
            revision: obj.revision,
            json: obj.json.into(),
        });
    }
    for ((ns, service), d) in derived {
        let view = registered.remove(&(ns.clone(), service.clone()));
        out.extend(synthesise(&ns, &service, None, Some(d.spec), view));
    }
    for ((ns, service), view) in registered {
        out.extend(synthesise(&ns, &service, None, None, Some(view)));
    }
    out.sort_by(|a, b| {
        (rank(&a.kind), &a.namespace, &a.name).cmp(&(rank(&b.kind), &b.namespace, &b.name))
    });
    out
}

/// One Endpoints document from what is known of a service. Field by field the stored document
/// (what an operator applied) wins over the derived one (what the cluster says), which wins
/// over the registrations; addresses are the stored ones plus the registered ones. A service
/// with neither addresses nor cluster IPs (a headless Service no meshed pod serves yet) has no
/// document.
fn synthesise(
    ns: &str,
    service: &str,
    stored: Option<EndpointsSpec>,
    derived: Option<EndpointsSpec>,
    view: Option<ServiceView>,
) -> Option<pb::Document> {
    let stored = stored.unwrap_or_else(empty_spec);
    let derived = derived.unwrap_or_else(empty_spec);
    let view = view.unwrap_or(ServiceView {
        addresses: Vec::new(),
        identity: None,
    });
    let mut addresses = stored.addresses;
    addresses.extend(derived.addresses);
    addresses.extend(view.addresses);
    addresses.sort();
    addresses.dedup();
    let cluster_ips = either(stored.cluster_ips, derived.cluster_ips);
    if addresses.is_empty() && cluster_ips.is_empty() {
        return None;
    }
    let doc = Document::Endpoints(Endpoints {
        metadata: Metadata {
            name: service.to_string(),
            namespace: ns.to_string(),
        },
        spec: EndpointsSpec {
            addresses,
            identity: stored.identity.or(derived.identity).or(view.identity),
            cluster_ips,
            ports: either(stored.ports, derived.ports),
        },
    });
    // Hellos are checked before they register, so this only guards against a rule change.
    if let Err(errors) = weir_policy::validate("registrations", &doc) {
        tracing::error!(%errors, "synthesised Endpoints document is invalid; leaving it out");
        return None;
    }
    match serde_json::to_string(&doc) {
        Ok(json) => Some(pb::Document {
            kind: "Endpoints".into(),
            namespace: ns.to_string(),
            name: service.to_string(),
            revision: 0,
            json: json.into(),
        }),
        Err(err) => {
            tracing::error!(%err, "cannot serialise synthesised Endpoints document");
            None
        }
    }
}

/// The first list unless it is empty: a field an operator left out is the cluster's.
fn either<T>(first: Vec<T>, second: Vec<T>) -> Vec<T> {
    if first.is_empty() { second } else { first }
}

fn empty_spec() -> EndpointsSpec {
    EndpointsSpec {
        addresses: Vec::new(),
        identity: None,
        cluster_ips: Vec::new(),
        ports: Vec::new(),
    }
}
