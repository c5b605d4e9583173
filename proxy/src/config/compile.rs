//! Compiling policy documents into a snapshot: services, their endpoints (kept across
//! snapshots), routes, call policies and the lookup tables.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::Ordering::Relaxed;

use weir_policy::{Document, MtlsMode, ServicePolicy};

use super::reuse::{Key, Previous};
use super::store::EndpointKey;
use super::{ConfigStore, Service, Snapshot};
use crate::client::h2::{H2Slot, PeerTls};
use crate::endpoint::{Backend, Breaker, Endpoint};
use crate::metrics::Direction;
use crate::routes::Route;

/// A service's virtual IPs and their `(port, targetPort)`s, while compiling.
type VirtualIps = (Vec<IpAddr>, Vec<(u16, u16)>);

impl ConfigStore {
    pub(super) fn install(
        &self,
        documents: Vec<Document>,
        control_plane_version: u64,
        settled: std::collections::BTreeSet<String>,
    ) -> u64 {
        let version = self.next_version.fetch_add(1, Relaxed);
        let mut snapshot = self.compile(version, documents, &self.current.load());
        snapshot.control_plane_version = control_plane_version;
        snapshot.settled = settled.into_iter().map(String::into_boxed_str).collect();
        self.current.store(Arc::new(snapshot));
        self.metrics.config_version.store(version, Relaxed);
        version
    }

    /// Builds the snapshot of `documents`, keeping from `previous` every backend and service
    /// whose inputs did not change (see [`Previous`]).
    fn compile(&self, version: u64, documents: Vec<Document>, previous: &Snapshot) -> Snapshot {
        let kept = Previous::new(previous);
        let mut mtls = MtlsMode::Strict;
        let mut sampling = weir_policy::TracingSpec::default().sampling;
        // Services come into being from Endpoints or ServicePolicy documents; a policy without
        // endpoints still makes the name a mesh service (answered with `no-endpoints`).
        let mut defs: HashMap<Key<'_>, (Vec<SocketAddr>, Option<&str>)> = HashMap::new();
        let mut policies: HashMap<Key<'_>, &ServicePolicy> = HashMap::new();
        let mut vips: HashMap<Key<'_>, VirtualIps> = HashMap::new();
        for doc in &documents {
            match doc {
                Document::MeshConfig(m) => {
                    mtls = m.spec.mtls;
                    sampling = m.spec.tracing.sampling;
                }
                Document::Endpoints(e) => {
                    let key = (e.metadata.name.as_str(), e.metadata.namespace.as_str());
                    let def = defs.entry(key).or_default();
                    def.0.extend(e.spec.addresses.iter().copied());
                    def.1 = e.spec.identity.as_deref();
                    if !e.spec.cluster_ips.is_empty() {
                        let ports = e.spec.ports.iter().map(|p| (p.port, p.target()));
                        let vip = vips.entry(key).or_default();
                        vip.0.extend(e.spec.cluster_ips.iter().copied());
                        vip.1.extend(ports);
                    }
                }
                Document::ServicePolicy(p) => {
                    let namespace = p.metadata.namespace.as_str();
                    let key = (p.spec.service.as_str(), namespace);
                    defs.entry(key).or_default();
                    for b in p.spec.routes.iter().flat_map(|r| &r.backends) {
                        defs.entry((b.service.as_str(), namespace)).or_default();
                    }
                    policies.insert(key, p);
                }
            }
        }

        let own_policy =
            policies.get(&(self.local.service.as_str(), self.local.namespace.as_str()));
        let inbound_authz = own_policy.and_then(|p| p.spec.authorization.clone());
        let inbound_rate_limit = own_policy
            .and_then(|p| p.spec.rate_limit.as_ref())
            .and_then(|r| {
                self.policy_cache
                    .rate_limit(&self.local.service, &self.local.namespace, r)
            });
        self.policy_cache.sweep_gates();
        let mut pool = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        pool.retain(|_, w| w.strong_count() > 0);
        let mut backends: HashMap<Key<'_>, Arc<Backend>> = HashMap::with_capacity(defs.len());
        for (&key, (addrs, identity)) in &defs {
            let backend = kept
                .backend(key, addrs, *identity)
                .unwrap_or_else(|| Arc::new(self.backend(key.0, addrs, *identity, &mut pool)));
            backends.insert(key, backend);
        }
        drop(pool);

        // Sized like the tables before: a change seldom moves them much, and growing a table
        // rehashes every entry already in it.
        let mut by_authority = HashMap::with_capacity(previous.by_authority.len());
        let mut by_addr = HashMap::with_capacity(previous.by_addr.len());
        let mut by_ip = HashMap::with_capacity(previous.by_ip.len());
        let mut by_vip = HashMap::with_capacity(previous.by_vip.len());
        let mut by_vip_any = HashMap::with_capacity(previous.by_vip_any.len());
        let mut services = Vec::with_capacity(backends.len());
        let mut keys: Vec<Key<'_>> = backends.keys().copied().collect();
        keys.sort_unstable();
        for key in keys {
            let (name, namespace) = key;
            let policy = policies.get(&key).copied();
            let (cluster_ips, ports) = vips.remove(&key).unwrap_or_default();
            let svc = match kept.service(key, &backends, &ports, policy) {
                Some(svc) => svc,
                None => Arc::new(self.service(key, &backends, ports, policy)),
            };
            // Every service, kept or not, in the same order as a full compile: endpoints may be
            // shared between backends, and the last policy to install on one decides.
            if let Some((spec, config)) = &svc.policy.breaker {
                let targets =
                    std::iter::once(&svc.own).chain(svc.routes.iter().flat_map(Route::backends));
                for backend in targets {
                    self.install_breakers(backend, namespace, spec, config);
                }
            }
            for &ip in &cluster_ips {
                if svc.ports.is_empty() {
                    by_vip_any.insert(ip, svc.clone());
                }
                for &(port, target) in &svc.ports {
                    by_vip.insert(SocketAddr::new(ip, port), (svc.clone(), target));
                }
            }
            for ep in &svc.own.endpoints {
                by_addr.insert(ep.addr, svc.clone());
                if !ep.addr.ip().is_loopback() {
                    by_ip.insert(ep.addr.ip(), svc.clone());
                }
            }
            if namespace == self.local.namespace {
                by_authority.insert(name.into(), svc.clone());
            }
            for suffix in ["", ".svc", ".svc.cluster.local"] {
                let alias = format!("{name}.{namespace}{suffix}");
                by_authority.insert(alias.into_boxed_str(), svc.clone());
            }
            services.push(svc);
        }

        Snapshot {
            version,
            control_plane_version: 0,
            mtls,
            sampling,
            inbound_authz,
            inbound_rate_limit,
            documents,
            by_authority,
            by_addr,
            by_ip,
            by_vip,
            by_vip_any,
            services,
            settled: Default::default(),
        }
    }

    /// A new backend for `name`, its endpoints from the pool where they already exist.
    fn backend(
        &self,
        name: &str,
        addrs: &[SocketAddr],
        identity: Option<&str>,
        pool: &mut HashMap<EndpointKey, Weak<Endpoint>>,
    ) -> Backend {
        let identity = identity.map(str::to_owned);
        let endpoints = addrs
            .iter()
            .map(|&addr| {
                // Keyed by the expected identity too: a changed identity needs new
                // connections, checked against the new name.
                let key = (addr, identity.clone());
                if let Some(ep) = pool.get(&key).and_then(Weak::upgrade) {
                    return ep;
                }
                let tls = PeerTls {
                    creds: self.creds.clone(),
                    identity: identity.clone(),
                };
                let ep = Arc::new(Endpoint {
                    addr,
                    h2: H2Slot::peer(addr, tls),
                    lb: weir_resilience::PeakEwma::default(),
                    breaker: arc_swap::ArcSwapOption::empty(),
                });
                pool.insert(key, Arc::downgrade(&ep));
                ep
            })
            .collect();
        Backend::new(name, endpoints, identity)
    }

    /// A service compiled afresh: its routes over `backends`, its call policy.
    fn service(
        &self,
        (name, namespace): Key<'_>,
        backends: &HashMap<Key<'_>, Arc<Backend>>,
        ports: Vec<(u16, u16)>,
        policy: Option<&ServicePolicy>,
    ) -> Service {
        let routes: Vec<Route> = policy
            .map(|p| {
                p.spec
                    .routes
                    .iter()
                    .map(|r| {
                        Route::compile(r, |backend| {
                            backends
                                .get(&(backend, namespace))
                                .cloned()
                                .unwrap_or_else(|| Arc::new(Backend::empty(backend)))
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let policy = policy
            .map(|p| self.policy_cache.compile(name, namespace, &p.spec))
            .unwrap_or_default();
        Service {
            ports,
            metrics: self
                .metrics
                .traffic(Direction::Outbound, name, Some(namespace)),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            own: backends[&(name, namespace)].clone(),
            routes,
            policy: Arc::new(policy),
        }
    }
}

impl ConfigStore {
    /// Gives each endpoint of `backend` a breaker with these settings, keeping one that already
    /// has them (and its state).
    fn install_breakers(
        &self,
        backend: &Backend,
        namespace: &str,
        spec: &weir_policy::CircuitBreaker,
        config: &Arc<weir_resilience::BreakerConfig>,
    ) {
        let gate = self.policy_cache.gate(
            &backend.name,
            namespace,
            config.max_percent,
            backend.endpoints.len(),
        );
        for ep in &backend.endpoints {
            let current = ep.breaker.load();
            let same = current
                .as_ref()
                .is_some_and(|b| &b.spec == spec && Arc::ptr_eq(&b.gate, &gate));
            if !same {
                ep.breaker.store(Some(Arc::new(Breaker {
                    spec: spec.clone(),
                    gate: gate.clone(),
                    inner: weir_resilience::EndpointBreaker::new(config.clone(), gate.clone()),
                })));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures::{DOCS, store};

    #[test]
    fn reload_keeps_endpoints_that_stay() {
        let s = store();
        s.install_for_test(weir_policy::parse_str("t.yaml", DOCS).expect("valid"));
        let before = s.load();
        let v2 = s.install_for_test(weir_policy::parse_str("t.yaml", DOCS).expect("valid"));
        let after = s.load();
        assert_eq!(after.version, v2);
        let a = before
            .service_for_authority("payments")
            .and_then(|s| s.own.pick())
            .map(|e| e.addr);
        let ep_before = &before
            .service_for_authority("payments")
            .expect("svc")
            .own
            .endpoints[0];
        let ep_after = &after
            .service_for_authority("payments")
            .expect("svc")
            .own
            .endpoints[0];
        assert!(
            Arc::ptr_eq(ep_before, ep_after),
            "pooled endpoint reused across reloads"
        );
        assert!(a.is_some());
    }

    #[test]
    fn round_robin_spreads() {
        let s = store();
        s.install_for_test(weir_policy::parse_str("t.yaml", DOCS).expect("valid"));
        let snap = s.load();
        let svc = &snap.service_for_authority("payments").expect("svc").own;
        let picks: Vec<_> = (0..4)
            .filter_map(|_| svc.pick().map(|e| e.addr.port()))
            .collect();
        assert_eq!(picks.len(), 4);
        let a = svc.pick().map(|e| e.addr);
        let b = svc.pick().map(|e| e.addr);
        assert_ne!(a, b);
    }
}
