//! The store that holds the snapshot in force, and the two sources it merges: `--config` files
//! underneath, the control plane's pushed snapshot on top.
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use weir_policy::{Document, MtlsMode};

use super::{LocalIdentity, Snapshot};
use crate::endpoint::Endpoint;
use crate::metrics::Metrics;
use crate::resilience::policy::PolicyCache;
use crate::tls::CredStore;

/// Files underneath, the pushed snapshot on top: an object with the same kind/namespace/name
/// is the pushed one, a pushed MeshConfig replaces any local one. The union must still be a
/// valid set (e.g. a local and a pushed ServicePolicy may not govern the same service).
fn merge(
    files: &[Document],
    pushed: Option<&Pushed>,
) -> Result<Vec<Document>, weir_policy::Errors> {
    let Some(p) = pushed else {
        return Ok(files.to_vec());
    };
    let pushed_mesh = p.documents().any(|d| matches!(d, Document::MeshConfig(_)));
    let mut docs: Vec<Document> = files
        .iter()
        .filter(|f| {
            let replaced = pushed_mesh && matches!(f, Document::MeshConfig(_));
            let overridden = p.documents().any(|d| same_object(d, f));
            !replaced && !overridden
        })
        .cloned()
        .collect();
    docs.extend(p.documents().cloned());
    weir_policy::validate_set(&docs)?;
    Ok(docs)
}

fn same_object(a: &Document, b: &Document) -> bool {
    a.kind() == b.kind() && a.namespace() == b.namespace() && a.name() == b.name()
}

/// An endpoint is its address plus the identity expected there.
pub(super) type EndpointKey = (SocketAddr, Option<String>);

/// Holds the snapshot in force and builds new ones.
pub struct ConfigStore {
    pub(super) current: ArcSwap<Snapshot>,
    pub(super) local: LocalIdentity,
    pub(super) metrics: Arc<Metrics>,
    /// Endpoints outlive snapshots while any snapshot references them, so a reload that keeps an
    /// address keeps its pooled connection.
    pub(super) endpoints: Mutex<HashMap<EndpointKey, Weak<Endpoint>>>,
    /// Bulkheads, retry budgets and ejection gates that outlive a snapshot.
    pub(super) policy_cache: PolicyCache,
    /// This proxy's credentials, used by every peer connection it opens.
    pub(super) creds: Arc<CredStore>,
    pub(super) next_version: AtomicU64,
    pub files: Vec<PathBuf>,
    /// The two sources, merged on every change: `--config` files underneath, the control
    /// plane's snapshot on top (same kind/namespace/name: the pushed one wins; a pushed
    /// MeshConfig replaces any local one).
    sources: Mutex<Sources>,
    /// Destinations asked of the control plane (scoped discovery).
    pub subscriptions: super::Subscriptions,
}

#[derive(Default)]
struct Sources {
    files: Vec<Document>,
    pushed: Option<Pushed>,
}

/// The last good state from the control plane: the resources in force and the subscription
/// keys it answered.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Pushed {
    pub version: u64,
    #[serde(default)]
    pub resources: Vec<PushedResource>,
    /// Keys the control plane answered; a miss on one of them is not the mesh's.
    #[serde(default)]
    pub settled: BTreeSet<String>,
    /// What this proxy was subscribed to, for the cache.
    #[serde(default)]
    pub subscriptions: Vec<String>,
    /// Whole-world snapshots (caches written before scoped discovery): read, never written.
    #[serde(default, skip_serializing)]
    pub documents: Vec<Document>,
}

/// One resource as the control plane named and versioned it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PushedResource {
    pub name: String,
    pub version: u64,
    pub document: Document,
}

impl Pushed {
    pub fn documents(&self) -> impl Iterator<Item = &Document> {
        self.documents
            .iter()
            .chain(self.resources.iter().map(|r| &r.document))
    }
}

impl ConfigStore {
    pub fn new(
        local: LocalIdentity,
        metrics: Arc<Metrics>,
        files: Vec<PathBuf>,
        creds: Arc<CredStore>,
    ) -> Self {
        let empty = Snapshot {
            version: 0,
            control_plane_version: 0,
            mtls: MtlsMode::Strict,
            sampling: weir_policy::TracingSpec::default().sampling,
            inbound_authz: None,
            inbound_rate_limit: None,
            documents: Vec::new(),
            by_authority: HashMap::new(),
            by_addr: HashMap::new(),
            by_ip: HashMap::new(),
            by_vip: HashMap::new(),
            by_vip_any: HashMap::new(),
            services: Vec::new(),
            settled: Default::default(),
        };
        ConfigStore {
            current: ArcSwap::from_pointee(empty),
            local,
            metrics,
            endpoints: Mutex::new(HashMap::new()),
            policy_cache: PolicyCache::default(),
            creds,
            next_version: AtomicU64::new(1),
            files,
            sources: Mutex::new(Sources::default()),
            subscriptions: super::Subscriptions::default(),
        }
    }

    pub fn local(&self) -> &LocalIdentity {
        &self.local
    }

    /// The snapshot in force; hold the `Arc` for the whole request.
    #[inline]
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Runs `f` on the snapshot in force without taking a reference count: for synchronous
    /// per-request checks that do not hold the snapshot across an await.
    #[inline]
    pub fn peek<R>(&self, f: impl FnOnce(&Snapshot) -> R) -> R {
        f(&self.current.load())
    }

    /// Reads the `--config` files and swaps in the result. On any error (in the files, or in
    /// how they combine with the pushed snapshot) the snapshot in force stays, and every error
    /// is returned.
    pub fn reload_files(&self) -> Result<u64, weir_policy::Errors> {
        let result = weir_policy::load_paths(&self.files).and_then(|docs| {
            let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
            let merged = merge(&docs, sources.pushed.as_ref())?;
            sources.files = docs;
            let (version, settled) = sources
                .pushed
                .as_ref()
                .map_or((0, BTreeSet::new()), |p| (p.version, p.settled.clone()));
            Ok(self.install(merged, version, settled))
        });
        let counter = if result.is_ok() {
            &self.metrics.reloads_ok
        } else {
            &self.metrics.reloads_error
        };
        counter.fetch_add(1, Relaxed);
        result
    }

    /// Swaps in a validated control-plane snapshot (merged over the files); returns the local
    /// snapshot version, or why the combination is invalid (nothing changes then).
    pub fn install_pushed(&self, pushed: Pushed) -> Result<u64, weir_policy::Errors> {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let merged = merge(&sources.files, Some(&pushed))?;
        let version = pushed.version;
        let settled = pushed.settled.clone();
        sources.pushed = Some(pushed);
        Ok(self.install(merged, version, settled))
    }

    /// Forgets the control plane's answers for dropped subscription keys, so the next
    /// request to one asks again instead of passing through.
    pub fn unsettle(&self, keys: &[String]) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let Some(pushed) = sources.pushed.as_mut() else {
            return;
        };
        let before = pushed.settled.len();
        for key in keys {
            pushed.settled.remove(key);
        }
        if pushed.settled.len() == before {
            return;
        }
        let pushed = pushed.clone();
        // The same documents as in force: the merge cannot fail where it passed before.
        if let Ok(merged) = merge(&sources.files, Some(&pushed)) {
            self.install(merged, pushed.version, pushed.settled);
        }
    }

    /// The control plane's state in force, if any.
    pub fn pushed(&self) -> Option<Pushed> {
        let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        sources.pushed.clone()
    }

    /// The control-plane version in force, 0 if none.
    pub fn pushed_version(&self) -> u64 {
        let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        sources.pushed.as_ref().map_or(0, |p| p.version)
    }

    /// A store for `service` in `namespace` with nothing loaded.
    #[cfg(test)]
    pub fn for_test(service: &str, namespace: &str) -> ConfigStore {
        let local = LocalIdentity {
            service: service.into(),
            namespace: namespace.into(),
            service_account: service.into(),
        };
        ConfigStore::new(local, Arc::default(), Vec::new(), Default::default())
    }

    /// Compiles validated documents and swaps them in; returns the new version.
    #[cfg(test)]
    pub fn install_for_test(&self, documents: Vec<Document>) -> u64 {
        self.install(documents, 0, BTreeSet::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures::store;

    #[test]
    fn pushed_snapshot_wins_over_files_for_the_same_object() {
        let s = store();
        let files = "apiVersion: weir/v1\nkind: MeshConfig\nmetadata: { name: local }\nspec: { mtls: permissive }\n---\napiVersion: weir/v1\nkind: Endpoints\nmetadata: { name: payments, namespace: shop }\nspec: { addresses: [\"10.0.0.1:4143\"] }\n---\napiVersion: weir/v1\nkind: Endpoints\nmetadata: { name: local-only, namespace: shop }\nspec: { addresses: [\"10.0.0.9:4143\"] }\n";
        s.sources.lock().expect("lock").files =
            weir_policy::parse_str("f.yaml", files).expect("valid");
        s.install_pushed(Pushed {
            version: 1,
            ..Pushed::default()
        })
        .expect("valid");
        assert_eq!(s.load().mtls, MtlsMode::Permissive);
        let pushed = weir_policy::parse_str("push", "apiVersion: weir/v1\nkind: MeshConfig\nmetadata: { name: default }\nspec: { mtls: strict }\n---\napiVersion: weir/v1\nkind: Endpoints\nmetadata: { name: payments, namespace: shop }\nspec: { addresses: [\"10.0.0.2:4143\"] }\n").expect("valid");
        s.install_pushed(Pushed {
            version: 42,
            documents: pushed,
            ..Pushed::default()
        })
        .expect("valid");
        let snap = s.load();
        assert_eq!(snap.control_plane_version, 42);
        assert_eq!(
            snap.mtls,
            MtlsMode::Strict,
            "a pushed MeshConfig replaces the local one"
        );
        let eps: Vec<_> = snap
            .service_for_authority("payments")
            .expect("svc")
            .own
            .endpoints
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        assert_eq!(eps, ["10.0.0.2:4143"], "the pushed Endpoints win");
        assert!(
            snap.service_for_authority("local-only").is_some(),
            "file-only objects stay"
        );

        // A pushed policy for a service a local file already governs is refused whole.
        s.sources.lock().expect("lock").files = weir_policy::parse_str("f.yaml", "apiVersion: weir/v1\nkind: ServicePolicy\nmetadata: { name: local, namespace: shop }\nspec: { service: payments }\n").expect("valid");
        let conflicting = weir_policy::parse_str("push", "apiVersion: weir/v1\nkind: ServicePolicy\nmetadata: { name: payments, namespace: shop }\nspec: { service: payments }\n").expect("valid");
        let err = s
            .install_pushed(Pushed {
                version: 43,
                documents: conflicting,
                ..Pushed::default()
            })
            .expect_err("conflict");
        assert!(err.to_string().contains("already governed"), "{err}");
        assert_eq!(
            s.load().control_plane_version,
            42,
            "the last good snapshot stays"
        );
    }
}
