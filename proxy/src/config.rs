//! The config snapshot: policy documents compiled into immutable lookup tables, swapped in whole
//! with `arc-swap`. A request loads the snapshot once and keeps that `Arc` to the end, so a swap
//! never changes the rules under a request in flight.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use http::Request;
use serde::Serialize;
use weir_policy::{Document, MtlsMode};

use crate::client::h2::{H2Slot, PeerTls};
use crate::metrics::{Direction, Metrics, TrafficMetrics};
use crate::resilience::balance::Breaker;
use crate::resilience::policy::{CallPolicy, PolicyCache};
use crate::routes::Route;
use crate::tls::CredStore;

/// Who this proxy is; used to resolve short service names (`echo` means `echo.<own namespace>`).
#[derive(Debug, Clone)]
pub struct LocalIdentity {
    pub service: String,
    pub namespace: String,
    pub service_account: String,
}

impl LocalIdentity {
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` (design §3).
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// One address of a mesh service: another proxy's inbound listener.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub h2: Arc<H2Slot>,
    /// Peak-EWMA latency and requests in flight, for load balancing.
    pub lb: weir_resilience::PeakEwma,
    /// Circuit breaker, when the service's policy has one.
    pub breaker: arc_swap::ArcSwapOption<crate::resilience::balance::Breaker>,
}

/// The endpoints of one service: what a route's backend points at.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Expected SPIFFE identity of the endpoints, checked once mTLS lands.
    pub identity: Option<String>,
    next: AtomicUsize,
}

impl Backend {
    pub fn empty(name: &str) -> Self {
        Backend {
            name: name.to_owned(),
            endpoints: Vec::new(),
            identity: None,
            next: AtomicUsize::new(0),
        }
    }

    /// Round robin; the resilience work replaces this with P2C over peak EWMA.
    pub fn pick(&self) -> Option<&Arc<Endpoint>> {
        match self.endpoints.len() {
            0 => None,
            1 => self.endpoints.first(),
            n => self.endpoints.get(self.next.fetch_add(1, Relaxed) % n),
        }
    }
}

/// A mesh service as callers address it: its routes (from its ServicePolicy) and its own
/// endpoints, used when no route matches.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub own: Arc<Backend>,
    pub routes: Vec<Route>,
    pub metrics: Arc<TrafficMetrics>,
    /// Timeouts, retries, bulkhead, breaker and faults for calls to this service.
    pub policy: Arc<CallPolicy>,
    /// `(port, targetPort)` of its virtual IPs (Endpoints `ports`).
    pub ports: Vec<(u16, u16)>,
}

impl Service {
    /// The backend for this request: the first matching route's weighted pick, or the
    /// service's own endpoints when no route matches (or it has none).
    pub fn backend_for<B>(&self, req: &Request<B>) -> &Arc<Backend> {
        self.routes
            .iter()
            .find(|r| r.matches(req))
            .and_then(Route::pick)
            .unwrap_or(&self.own)
    }

    /// The pod port behind one of the service's declared ports, if it declares it.
    pub fn target_port(&self, port: u16) -> Option<u16> {
        self.ports.iter().find(|(p, _)| *p == port).map(|(_, t)| *t)
    }
}

#[derive(Debug)]
pub struct Snapshot {
    /// Local, increases on every swap (file reload or push).
    pub version: u64,
    /// The control-plane snapshot version merged in, 0 without one.
    pub control_plane_version: u64,
    pub mtls: MtlsMode,
    /// Head-sampling probability for requests that arrive without a decision (MeshConfig
    /// `tracing.sampling`).
    pub sampling: f64,
    /// Who may call this proxy's own service (its ServicePolicy's `authorization`).
    pub inbound_authz: Option<weir_policy::Authorization>,
    /// How fast this proxy's own service may be called (its ServicePolicy's `rateLimit`).
    pub inbound_rate_limit: Option<Arc<weir_resilience::RateLimiter>>,
    pub documents: Vec<Document>,
    /// Every accepted spelling of every service's name (`echo`, `echo.ns`, `echo.ns.svc`,
    /// `echo.ns.svc.cluster.local`), so resolving a Host is one hash lookup.
    by_authority: HashMap<Box<str>, Arc<Service>>,
    /// Exact endpoint addresses, for authorities written as `ip:port`.
    by_addr: HashMap<SocketAddr, Arc<Service>>,
    /// Endpoint IPs, for connections redirected by iptables (SO_ORIGINAL_DST): the app dialled
    /// the pod's app port, the endpoint lists the pod's proxy port. Loopback IPs are left out:
    /// they identify no pod.
    by_ip: HashMap<IpAddr, Arc<Service>>,
    /// Virtual IP:port of a service (Endpoints `clusterIPs` × `ports`) → the service and the
    /// pod port it lands on.
    by_vip: HashMap<SocketAddr, (Arc<Service>, u16)>,
    /// Virtual IPs of services that declare no ports: every port is the same pod port.
    by_vip_any: HashMap<IpAddr, Arc<Service>>,
    services: Vec<Arc<Service>>,
}

/// A service's virtual IPs and their `(port, targetPort)`s, while compiling.
type VirtualIps = (Vec<IpAddr>, Vec<(u16, u16)>);

/// Where a redirected connection goes in the mesh: the service, and the pod port to deliver
/// to at the callee (`None`: its proxy's `--app-addr`).
pub type MeshDst<'a> = (&'a Arc<Service>, Option<u16>);

impl Service {
    /// Whether the mesh can carry a call to it: it has endpoints, or a route that sends calls
    /// elsewhere.
    pub fn reachable(&self) -> bool {
        !self.own.endpoints.is_empty() || !self.routes.is_empty()
    }
}

impl Snapshot {
    /// The mesh service a `Host`/`:authority` value names, if any. The port is ignored: a
    /// service is addressed by name, its endpoints say where it listens.
    pub fn service_for_authority(&self, authority: &str) -> Option<&Arc<Service>> {
        let host = strip_port(authority);
        let host = host.strip_suffix('.').unwrap_or(host);
        // Only an IPv6 literal has a colon and only an IPv4 one is all digits and dots: a name
        // (the usual case) skips both address parsers.
        let maybe_ip = host.contains(':') || host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if maybe_ip && host.parse::<IpAddr>().is_ok() {
            return authority
                .parse::<SocketAddr>()
                .ok()
                .and_then(|a| self.by_addr.get(&a));
        }
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.by_authority.get(host.to_ascii_lowercase().as_str());
        }
        self.by_authority.get(host)
    }

    /// Every mesh service, by name.
    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    /// The mesh service behind a redirected connection's original destination, and the pod
    /// port it was meant for: a virtual IP's `targetPort`, or the port dialled on a pod IP.
    /// A proxy's own address (an endpoint as listed) names no app port.
    pub fn service_for_original_dst(&self, dst: SocketAddr) -> Option<MeshDst<'_>> {
        if let Some(svc) = self.by_addr.get(&dst) {
            return Some((svc, None));
        }
        let vip = match self.by_vip.get(&dst) {
            Some((svc, port)) => Some((svc, Some(*port))),
            None => self
                .by_vip_any
                .get(&dst.ip())
                .map(|svc| (svc, Some(dst.port()))),
        };
        if let Some((svc, port)) = vip {
            // A Service whose pods are not meshed (none has registered) and that no route sends
            // elsewhere: its cluster IP still works, so the call goes where the app sent it
            // rather than failing with no-endpoints.
            return svc.reachable().then_some((svc, port));
        }
        self.by_ip.get(&dst.ip()).map(|svc| (svc, Some(dst.port())))
    }
}

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
    let pushed_mesh = p
        .documents
        .iter()
        .any(|d| matches!(d, Document::MeshConfig(_)));
    let mut docs: Vec<Document> = files
        .iter()
        .filter(|f| {
            let replaced = pushed_mesh && matches!(f, Document::MeshConfig(_));
            let overridden = p.documents.iter().any(|d| same_object(d, f));
            !replaced && !overridden
        })
        .cloned()
        .collect();
    docs.extend(p.documents.iter().cloned());
    weir_policy::validate_set(&docs)?;
    Ok(docs)
}

fn same_object(a: &Document, b: &Document) -> bool {
    a.kind() == b.kind() && a.namespace() == b.namespace() && a.name() == b.name()
}

/// `host:port`, `[v6]:port`, `host` → the host part.
fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        // A bare IPv6 address has more than one colon and no brackets: leave it whole.
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => authority,
    }
}

/// An endpoint is its address plus the identity expected there.
type EndpointKey = (SocketAddr, Option<String>);

/// Holds the snapshot in force and builds new ones.
pub struct ConfigStore {
    current: ArcSwap<Snapshot>,
    local: LocalIdentity,
    metrics: Arc<Metrics>,
    /// Endpoints outlive snapshots while any snapshot references them, so a reload that keeps an
    /// address keeps its pooled connection.
    endpoints: Mutex<HashMap<EndpointKey, Weak<Endpoint>>>,
    /// Bulkheads, retry budgets and ejection gates that outlive a snapshot.
    policy_cache: PolicyCache,
    /// This proxy's credentials, used by every peer connection it opens.
    creds: Arc<CredStore>,
    next_version: AtomicU64,
    pub files: Vec<PathBuf>,
    /// The two sources, merged on every change: `--config` files underneath, the control
    /// plane's snapshot on top (same kind/namespace/name: the pushed one wins; a pushed
    /// MeshConfig replaces any local one).
    sources: Mutex<Sources>,
}

#[derive(Default)]
struct Sources {
    files: Vec<Document>,
    pushed: Option<Pushed>,
}

/// The last good snapshot from the control plane.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Pushed {
    pub version: u64,
    pub documents: Vec<Document>,
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
            Ok(self.install(merged, sources.pushed.as_ref().map_or(0, |p| p.version)))
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
        sources.pushed = Some(pushed);
        Ok(self.install(merged, version))
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
        self.install(documents, 0)
    }

    fn install(&self, documents: Vec<Document>, control_plane_version: u64) -> u64 {
        let version = self.next_version.fetch_add(1, Relaxed);
        let mut snapshot = self.compile(version, documents);
        snapshot.control_plane_version = control_plane_version;
        self.current.store(Arc::new(snapshot));
        self.metrics.config_version.store(version, Relaxed);
        version
    }

    fn compile(&self, version: u64, documents: Vec<Document>) -> Snapshot {
        let mut mtls = MtlsMode::Strict;
        let mut sampling = weir_policy::TracingSpec::default().sampling;
        // Services come into being from Endpoints or ServicePolicy documents; a policy without
        // endpoints still makes the name a mesh service (answered with `no-endpoints`).
        let mut defs: HashMap<(String, String), (Vec<SocketAddr>, Option<String>)> = HashMap::new();
        let mut policies = HashMap::new();
        let mut vips: HashMap<(String, String), VirtualIps> = HashMap::new();
        for doc in &documents {
            match doc {
                Document::MeshConfig(m) => {
                    mtls = m.spec.mtls;
                    sampling = m.spec.tracing.sampling;
                }
                Document::Endpoints(e) => {
                    let def = defs
                        .entry((e.metadata.name.clone(), e.metadata.namespace.clone()))
                        .or_default();
                    def.0.extend(e.spec.addresses.iter().copied());
                    def.1.clone_from(&e.spec.identity);
                    if !e.spec.cluster_ips.is_empty() {
                        let ports = e.spec.ports.iter().map(|p| (p.port, p.target()));
                        let vip = vips
                            .entry((e.metadata.name.clone(), e.metadata.namespace.clone()))
                            .or_default();
                        vip.0.extend(e.spec.cluster_ips.iter().copied());
                        vip.1.extend(ports);
                    }
                }
                Document::ServicePolicy(p) => {
                    let key = (p.spec.service.clone(), p.metadata.namespace.clone());
                    defs.entry(key.clone()).or_default();
                    for b in p.spec.routes.iter().flat_map(|r| &r.backends) {
                        defs.entry((b.service.clone(), p.metadata.namespace.clone()))
                            .or_default();
                    }
                    policies.insert(key, p);
                }
            }
        }

        let own_policy = policies.get(&(self.local.service.clone(), self.local.namespace.clone()));
        let inbound_authz = own_policy.and_then(|p| p.spec.authorization.clone());
        let inbound_rate_limit = own_policy
            .and_then(|p| p.spec.rate_limit.as_ref())
            .and_then(|r| {
                self.policy_cache
                    .rate_limit(&self.local.service, &self.local.namespace, r)
            });
        let mut pool = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        pool.retain(|_, w| w.strong_count() > 0);
        let mut backends: HashMap<(String, String), Arc<Backend>> = HashMap::new();
        for ((name, namespace), (addrs, identity)) in defs {
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
            let backend = Backend {
                endpoints,
                identity,
                ..Backend::empty(&name)
            };
            backends.insert((name, namespace), Arc::new(backend));
        }
        drop(pool);

        let mut by_authority = HashMap::new();
        let mut by_addr = HashMap::new();
        let mut by_ip = HashMap::new();
        let mut by_vip = HashMap::new();
        let mut by_vip_any = HashMap::new();
        let mut services = Vec::new();
        let mut keys: Vec<_> = backends.keys().cloned().collect();
        keys.sort();
        for (name, namespace) in keys {
            let own = backends[&(name.clone(), namespace.clone())].clone();
            let routes: Vec<Route> = policies
                .get(&(name.clone(), namespace.clone()))
                .map(|p| {
                    p.spec
                        .routes
                        .iter()
                        .map(|r| {
                            Route::compile(r, |backend| {
                                backends
                                    .get(&(backend.to_owned(), namespace.clone()))
                                    .cloned()
                                    .unwrap_or_else(|| Arc::new(Backend::empty(backend)))
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let policy = policies
                .get(&(name.clone(), namespace.clone()))
                .map(|p| self.policy_cache.compile(&name, &namespace, &p.spec))
                .unwrap_or_default();
            if let Some((spec, config)) = &policy.breaker {
                let targets = std::iter::once(&own).chain(routes.iter().flat_map(Route::backends));
                for backend in targets {
                    self.install_breakers(backend, &namespace, spec, config);
                }
            }
            let (cluster_ips, ports) = vips
                .remove(&(name.clone(), namespace.clone()))
                .unwrap_or_default();
            let svc = Arc::new(Service {
                ports,
                metrics: self
                    .metrics
                    .traffic(Direction::Outbound, &name, Some(&namespace)),
                name: name.clone(),
                namespace: namespace.clone(),
                own,
                routes,
                policy: Arc::new(policy),
            });
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
                by_authority.insert(name.clone().into_boxed_str(), svc.clone());
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

// === impl Snapshot as JSON (admin /config) ===

#[derive(Serialize)]
struct ServiceView<'a> {
    name: &'a str,
    namespace: &'a str,
    endpoints: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<&'a str>,
    routes: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    breakers: Vec<crate::resilience::report::BreakerState>,
}

#[derive(Serialize)]
struct LocalView<'a> {
    service: &'a str,
    namespace: &'a str,
    service_account: &'a str,
}

#[derive(Serialize)]
struct SnapshotView<'a> {
    version: u64,
    control_plane_version: u64,
    proxy: LocalView<'a>,
    mtls: MtlsMode,
    services: Vec<ServiceView<'a>>,
    documents: &'a [Document],
}

impl Snapshot {
    pub fn to_json(&self, local: &LocalIdentity) -> String {
        let view = SnapshotView {
            version: self.version,
            control_plane_version: self.control_plane_version,
            proxy: LocalView {
                service: &local.service,
                namespace: &local.namespace,
                service_account: &local.service_account,
            },
            mtls: self.mtls,
            services: self
                .services
                .iter()
                .map(|s| ServiceView {
                    name: &s.name,
                    namespace: &s.namespace,
                    endpoints: s.own.endpoints.iter().map(|e| e.addr.to_string()).collect(),
                    identity: s.own.identity.as_deref(),
                    routes: s.routes.iter().map(|r| r.name.as_str()).collect(),
                    breakers: crate::resilience::report::breakers(s, tokio::time::Instant::now()),
                })
                .collect(),
            documents: &self.documents,
        };
        serde_json::to_string_pretty(&view).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> ConfigStore {
        let local = LocalIdentity {
            service: "orders".into(),
            namespace: "shop".into(),
            service_account: "orders".into(),
        };
        ConfigStore::new(
            local,
            Arc::new(Metrics::default()),
            Vec::new(),
            Default::default(),
        )
    }

    const DOCS: &str = "apiVersion: weir/v1\nkind: Endpoints\nmetadata: { name: payments, namespace: shop }\nspec: { addresses: [\"10.0.3.7:4143\", \"10.0.3.8:4143\"] }\n---\napiVersion: weir/v1\nkind: Endpoints\nmetadata: { name: users, namespace: auth }\nspec: { addresses: [\"10.0.4.1:4143\"] }\n";

    #[test]
    fn resolves_every_spelling_of_a_service() {
        let s = store();
        s.install_for_test(weir_policy::parse_str("t.yaml", DOCS).expect("valid"));
        let snap = s.load();
        for host in [
            "payments",
            "payments:8080",
            "payments.shop",
            "payments.shop.svc",
            "PAYMENTS.shop.svc.cluster.local",
            "payments.shop.svc.cluster.local.:80",
            "10.0.3.8:4143",
        ] {
            let svc = snap
                .service_for_authority(host)
                .unwrap_or_else(|| panic!("{host}"));
            assert_eq!(svc.name, "payments", "{host}");
        }
        // Short names resolve only in the proxy's own namespace, like Kubernetes DNS.
        assert!(snap.service_for_authority("users").is_none());
        assert_eq!(
            snap.service_for_authority("users.auth")
                .map(|s| s.name.as_str()),
            Some("users")
        );
        assert!(snap.service_for_authority("example.com").is_none());
        assert!(snap.service_for_authority("[::1]:80").is_none());
        // An IP literal names a service only at an endpoint's exact address...
        assert!(snap.service_for_authority("10.0.3.8:9999").is_none());
        // ...while a redirected connection to any port of an endpoint's IP belongs to it.
        let dst: SocketAddr = "10.0.3.8:9999".parse().expect("addr");
        assert_eq!(
            snap.service_for_original_dst(dst)
                .map(|(s, port)| (s.name.as_str(), port)),
            Some(("payments", Some(9999)))
        );
    }

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
    fn pushed_snapshot_wins_over_files_for_the_same_object() {
        let s = store();
        let files = "apiVersion: weir/v1\nkind: MeshConfig\nmetadata: { name: local }\nspec: { mtls: permissive }\n---\napiVersion: weir/v1\nkind: Endpoints\nmetadata: { name: payments, namespace: shop }\nspec: { addresses: [\"10.0.0.1:4143\"] }\n---\napiVersion: weir/v1\nkind: Endpoints\nmetadata: { name: local-only, namespace: shop }\nspec: { addresses: [\"10.0.0.9:4143\"] }\n";
        s.sources.lock().expect("lock").files =
            weir_policy::parse_str("f.yaml", files).expect("valid");
        s.install_pushed(Pushed {
            version: 1,
            documents: Vec::new(),
        })
        .expect("valid");
        assert_eq!(s.load().mtls, MtlsMode::Permissive);
        let pushed = weir_policy::parse_str("push", "apiVersion: weir/v1\nkind: MeshConfig\nmetadata: { name: default }\nspec: { mtls: strict }\n---\napiVersion: weir/v1\nkind: Endpoints\nmetadata: { name: payments, namespace: shop }\nspec: { addresses: [\"10.0.0.2:4143\"] }\n").expect("valid");
        s.install_pushed(Pushed {
            version: 42,
            documents: pushed,
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
            })
            .expect_err("conflict");
        assert!(err.to_string().contains("already governed"), "{err}");
        assert_eq!(
            s.load().control_plane_version,
            42,
            "the last good snapshot stays"
        );
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
