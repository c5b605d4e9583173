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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::config::fixtures::store;
    use crate::config::{ConfigStore, Service, Snapshot};

    fn endpoints(name: &str, addr: &str) -> String {
        format!(
            "apiVersion: weir/v1\nkind: Endpoints\nmetadata: {{ name: {name}, namespace: shop }}\nspec: {{ addresses: [\"{addr}\"] }}\n---\n"
        )
    }

    fn policy(name: &str, spec: &str) -> String {
        format!(
            "apiVersion: weir/v1\nkind: ServicePolicy\nmetadata: {{ name: {name}, namespace: shop }}\nspec:\n  service: {name}\n{spec}---\n"
        )
    }

    /// `a` routes to `b`; `c` stands alone; `mtls` is the MeshConfig's mode.
    fn mesh(b_addr: &str, c_timeout: &str, mtls: &str) -> String {
        let routes = "  routes:\n    - name: all\n      backends: [ { service: b, weight: 1 } ]\n";
        [
            endpoints("a", "10.0.0.1:4143"),
            endpoints("b", b_addr),
            endpoints("c", "10.0.0.3:4143"),
            policy("a", routes),
            policy("b", "  timeouts: { request: 1s }\n"),
            policy("c", &format!("  timeouts: {{ request: {c_timeout} }}\n")),
            format!(
                "apiVersion: weir/v1\nkind: MeshConfig\nmetadata: {{ name: default }}\nspec: {{ mtls: {mtls} }}\n"
            ),
        ]
        .concat()
    }

    fn install(s: &ConfigStore, yaml: &str) -> Arc<Snapshot> {
        s.install_for_test(weir_policy::parse_str("t.yaml", yaml).expect("valid"));
        s.load()
    }

    fn svc(snap: &Snapshot, name: &str) -> Arc<Service> {
        snap.service_for_authority(name).expect(name).clone()
    }

    fn same(before: &Snapshot, after: &Snapshot, name: &str) -> bool {
        Arc::ptr_eq(&svc(before, name), &svc(after, name))
    }

    #[test]
    fn a_policy_change_recompiles_only_its_service() {
        let s = store();
        let before = install(&s, &mesh("10.0.0.2:4143", "1s", "strict"));
        let after = install(&s, &mesh("10.0.0.2:4143", "2s", "strict"));
        assert!(!same(&before, &after, "c"), "the changed service is new");
        assert_eq!(
            svc(&after, "c").policy.request_timeout,
            Some(std::time::Duration::from_secs(2))
        );
        assert!(
            Arc::ptr_eq(&svc(&before, "c").own, &svc(&after, "c").own),
            "its Endpoints did not change: same backend"
        );
        assert!(same(&before, &after, "a") && same(&before, &after, "b"));
        // The kept service is the one every lookup table hands out.
        let by_addr = after
            .service_for_authority("10.0.0.2:4143")
            .expect("by addr");
        assert!(Arc::ptr_eq(by_addr, &svc(&before, "b")));
    }

    #[test]
    fn an_endpoints_change_recompiles_the_service_and_its_callers_by_route() {
        let s = store();
        let before = install(&s, &mesh("10.0.0.2:4143", "1s", "strict"));
        let after = install(&s, &mesh("10.0.0.9:4143", "1s", "strict"));
        assert!(!same(&before, &after, "b"));
        assert!(!same(&before, &after, "a"), "a routes to b");
        assert!(same(&before, &after, "c"));
        let (a, b) = (svc(&after, "a"), svc(&after, "b"));
        let routed: Vec<_> = a.routes[0].backends().collect();
        assert!(
            Arc::ptr_eq(routed[0], &b.own),
            "the route and the service share one backend"
        );
        assert_eq!(b.own.endpoints[0].addr.to_string(), "10.0.0.9:4143");
        assert!(after.service_for_authority("10.0.0.2:4143").is_none());
        assert!(Arc::ptr_eq(
            after.service_for_authority("10.0.0.9:4143").expect("b"),
            &b
        ));
    }

    #[test]
    fn a_mesh_config_change_keeps_every_service() {
        let s = store();
        let before = install(&s, &mesh("10.0.0.2:4143", "1s", "strict"));
        let after = install(&s, &mesh("10.0.0.2:4143", "1s", "permissive"));
        assert_eq!(after.mtls, weir_policy::MtlsMode::Permissive);
        for name in ["a", "b", "c"] {
            assert!(same(&before, &after, name), "{name}");
        }
    }

    #[test]
    fn a_removed_service_leaves_every_lookup() {
        let s = store();
        let before = install(&s, &mesh("10.0.0.2:4143", "1s", "strict"));
        let without_c = mesh("10.0.0.2:4143", "1s", "strict")
            .split("---\n")
            .filter(|d| !d.contains("name: c,"))
            .collect::<Vec<_>>()
            .join("---\n");
        let after = install(&s, &without_c);
        for host in ["c", "c.shop", "c.shop.svc.cluster.local", "10.0.0.3:4143"] {
            assert!(after.service_for_authority(host).is_none(), "{host}");
        }
        let dst = "10.0.0.3:80".parse().expect("addr");
        assert!(after.service_for_original_dst(dst).is_none());
        assert_eq!(after.services().len(), 2);
        assert!(same(&before, &after, "a") && same(&before, &after, "b"));
    }

    #[test]
    fn a_kept_service_keeps_its_breaker_state_holders() {
        let s = store();
        let breaker = "  circuitBreaker: { consecutiveFailures: 1 }\n";
        let yaml = |timeout: &str| {
            [
                endpoints("a", "10.0.0.1:4143"),
                endpoints("b", "10.0.0.2:4143"),
                policy("a", breaker),
                policy("b", &format!("  timeouts: {{ request: {timeout} }}\n")),
            ]
            .concat()
        };
        let before = install(&s, &yaml("1s"));
        let breaker_of = |snap: &Snapshot| {
            svc(snap, "a").own.endpoints[0]
                .breaker
                .load_full()
                .expect("breaker")
        };
        let held = breaker_of(&before);
        let after = install(&s, &yaml("2s"));
        assert!(same(&before, &after, "a"));
        assert!(Arc::ptr_eq(&held, &breaker_of(&after)));
    }
}
