//! Finding where a request goes in a snapshot: the service a `Host` or an original destination
//! names, and the backend a route picks.
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::Request;

use super::{MeshDst, Service, Snapshot};
use crate::endpoint::Backend;
use crate::routes::Route;

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

    /// Whether the control plane has answered this subscription key.
    pub fn settled(&self, key: &str) -> bool {
        self.settled.contains(key)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures::{DOCS, store};

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
}
