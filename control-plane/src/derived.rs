//! Endpoints the control plane learns from its environment (today: Kubernetes Services and
//! EndpointSlices) rather than from `weirctl apply`. Held in memory only, never written to the
//! store: the cluster is their source of truth, and after a restart the watch lists it again.
//!
//! The hub merges them into what proxies see: a stored Endpoints of the same name wins field
//! by field, and registered proxies' addresses are added (see `hub::documents`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

use weir_policy::EndpointsSpec;

use crate::registry::ServiceKey;
use crate::store::{Store, StoreError};

/// One derived Endpoints document and what it was derived from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedEndpoints {
    pub spec: EndpointsSpec,
    /// Addresses behind the service as its source lists them (ready pods), for `weirctl
    /// endpoints`; not sent to proxies as addresses.
    pub pods: Vec<SocketAddr>,
    /// Where it came from, as `weirctl endpoints` shows it (`kubernetes`).
    pub source: &'static str,
}

#[derive(Default)]
pub struct Derived {
    inner: Mutex<BTreeMap<ServiceKey, DerivedEndpoints>>,
}

impl Derived {
    /// Replaces every derived document of `namespace` with `docs` (keyed by service name).
    /// Returns whether what proxies or `weirctl` see changed; the snapshot version is bumped
    /// then, under the lock, so a snapshot built from that version includes the change.
    pub fn replace_namespace(
        &self,
        namespace: &str,
        docs: BTreeMap<String, DerivedEndpoints>,
        store: &Store,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let current: BTreeMap<&String, &DerivedEndpoints> = inner
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .map(|((_, name), doc)| (name, doc))
            .collect();
        let same = current.len() == docs.len()
            && docs
                .iter()
                .all(|(name, doc)| current.get(name).is_some_and(|c| *c == doc));
        if same {
            return Ok(false);
        }
        inner.retain(|(ns, _), _| ns != namespace);
        for (name, doc) in docs {
            inner.insert((namespace.to_string(), name), doc);
        }
        store.bump_version()?;
        Ok(true)
    }

    pub fn get(&self, key: &ServiceKey) -> Option<DerivedEndpoints> {
        self.lock().get(key).cloned()
    }

    pub fn all(&self) -> BTreeMap<ServiceKey, DerivedEndpoints> {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<ServiceKey, DerivedEndpoints>> {
        // Replaced whole under the lock, so a poisoned map is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}
