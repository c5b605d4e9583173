//! The snapshot's types: what one compiled configuration holds, read by every request that
//! loaded it.
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use weir_policy::{Document, MtlsMode};

use crate::endpoint::Backend;
use crate::metrics::TrafficMetrics;
use crate::resilience::policy::CallPolicy;
use crate::routes::Route;

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
    pub(super) by_authority: HashMap<Box<str>, Arc<Service>>,
    /// Exact endpoint addresses, for authorities written as `ip:port`.
    pub(super) by_addr: HashMap<SocketAddr, Arc<Service>>,
    /// Endpoint IPs, for connections redirected by iptables (SO_ORIGINAL_DST): the app dialled
    /// the pod's app port, the endpoint lists the pod's proxy port. Loopback IPs are left out:
    /// they identify no pod.
    pub(super) by_ip: HashMap<IpAddr, Arc<Service>>,
    /// Virtual IP:port of a service (Endpoints `clusterIPs` × `ports`) → the service and the
    /// pod port it lands on.
    pub(super) by_vip: HashMap<SocketAddr, (Arc<Service>, u16)>,
    /// Virtual IPs of services that declare no ports: every port is the same pod port.
    pub(super) by_vip_any: HashMap<IpAddr, Arc<Service>>,
    pub(super) services: Vec<Arc<Service>>,
    /// Subscription keys the control plane answered (scoped discovery).
    pub(super) settled: std::collections::HashSet<Box<str>>,
}

/// Where a redirected connection goes in the mesh: the service, and the pod port to deliver
/// to at the callee (`None`: its proxy's `--app-addr`).
pub type MeshDst<'a> = (&'a Arc<Service>, Option<u16>);
