//! What a compile keeps from the snapshot before it: a backend whose addresses and identity
//! are unchanged, and a service none of whose inputs changed, stay the same `Arc`.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use weir_policy::{Document, ServicePolicy};

use super::{Service, Snapshot};
use crate::endpoint::Backend;
use crate::routes::Route;

/// A service's name and namespace, borrowed from the documents being compiled.
pub(super) type Key<'a> = (&'a str, &'a str);

/// The snapshot in force, indexed by service, to compare a compile's inputs with.
pub(super) struct Previous<'a> {
    services: HashMap<Key<'a>, &'a Arc<Service>>,
    policies: HashMap<Key<'a>, &'a ServicePolicy>,
}

impl<'a> Previous<'a> {
    pub(super) fn new(snapshot: &'a Snapshot) -> Self {
        let services = snapshot
            .services
            .iter()
            .map(|s| ((s.name.as_str(), s.namespace.as_str()), s))
            .collect();
        let mut policies = HashMap::new();
        for doc in &snapshot.documents {
            if let Document::ServicePolicy(p) = doc {
                // The last one for a service wins, as it did when this snapshot was compiled.
                policies.insert((p.spec.service.as_str(), p.metadata.namespace.as_str()), p);
            }
        }
        Previous { services, policies }
    }

    /// The service's backend before, if it had the same addresses (in order) and identity.
    /// Keeping it keeps what hangs off it: the round-robin position, and the endpoints.
    pub(super) fn backend(
        &self,
        key: Key<'_>,
        addrs: &[SocketAddr],
        identity: Option<&str>,
    ) -> Option<Arc<Backend>> {
        let own = &self.services.get(&key)?.own;
        let same = own.identity.as_deref() == identity
            && own.endpoints.len() == addrs.len()
            && own.endpoints.iter().zip(addrs).all(|(e, a)| e.addr == *a);
        same.then(|| own.clone())
    }

    /// The service before, if everything it was compiled from is unchanged: its ServicePolicy,
    /// its ports, and the very backends (own and every route's) it points at. A backend is
    /// new exactly when its Endpoints changed, so this also covers the services routing to
    /// one whose Endpoints changed. (Nothing in a service depends on the MeshConfig.)
    pub(super) fn service(
        &self,
        key: Key<'_>,
        backends: &HashMap<Key<'_>, Arc<Backend>>,
        ports: &[(u16, u16)],
        policy: Option<&ServicePolicy>,
    ) -> Option<Arc<Service>> {
        let svc = *self.services.get(&key)?;
        let current = |b: &Arc<Backend>| {
            backends
                .get(&(b.name.as_str(), key.1))
                .is_some_and(|now| Arc::ptr_eq(now, b))
        };
        let same = current(&svc.own)
            && svc.ports == ports
            && self.policies.get(&key).copied() == policy
            && svc.routes.iter().flat_map(Route::backends).all(current);
        same.then(|| svc.clone())
    }
}
