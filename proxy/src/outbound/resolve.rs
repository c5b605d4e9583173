//! Which mesh service a call is for, and which pod port it lands on at the callee.
use std::net::SocketAddr;
use std::sync::Arc;

use http::Request;

use crate::config::{MeshDst, Snapshot};
use crate::headers;

/// The mesh service a request is for, and the pod port to deliver it to at the callee.
///
/// The `Host` wins when it names a service (the app said who it calls); the original
/// destination of a redirected connection says which port, when it belongs to the same
/// service, else a port the service declares for the `Host`'s port. Without a `Host` naming a
/// service, the original destination alone decides (pod IPs and cluster IPs, any port). A
/// redirected call to a service the mesh cannot reach (no endpoints, no routes) is not the
/// mesh's: it passes through to its original destination.
pub(super) fn resolve<'s, B>(
    snapshot: &'s Snapshot,
    req: &Request<B>,
    orig_dst: Option<SocketAddr>,
) -> Option<MeshDst<'s>> {
    let by_dst = orig_dst.and_then(|d| snapshot.service_for_original_dst(d));
    let Some(authority) = headers::authority(req) else {
        return by_dst;
    };
    let Some(svc) = snapshot.service_for_authority(authority) else {
        return by_dst;
    };
    if orig_dst.is_some() && !svc.reachable() {
        // Redirected to a Service no meshed pod serves: where the app was headed still works.
        return by_dst;
    }
    let port = match by_dst {
        Some((s, port)) if Arc::ptr_eq(s, svc) => port,
        _ => authority_port(authority).and_then(|p| svc.target_port(p)),
    };
    Some((svc, port))
}

/// The port of `host:port` / `[v6]:port`, if written.
fn authority_port(authority: &str) -> Option<u16> {
    let (host, port) = authority.rsplit_once(':')?;
    if host.contains(':') && !host.ends_with(']') {
        return None; // a bare IPv6 literal
    }
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigStore;

    const DOCS: &str = r#"
apiVersion: weir/v1
kind: Endpoints
metadata: { name: payments, namespace: shop }
spec:
  addresses: ["10.0.3.7:4143"]
  clusterIPs: ["10.96.0.12", "fd00::12"]
  ports: [{ port: 80, targetPort: 8080 }, { port: 9090 }]
---
apiVersion: weir/v1
kind: Endpoints
metadata: { name: catalog, namespace: shop }
spec:
  addresses: ["10.0.4.1:4143"]
  clusterIPs: ["10.96.0.13"]
---
apiVersion: weir/v1
kind: Endpoints
metadata: { name: legacy, namespace: shop }
spec:
  clusterIPs: ["10.96.0.14"]
  ports: [{ port: 80, targetPort: 8080 }]
"#;

    fn snapshot() -> Arc<Snapshot> {
        let store = ConfigStore::for_test("client", "shop");
        store.install_for_test(weir_policy::parse_str("t.yaml", DOCS).expect("valid"));
        store.load()
    }

    fn req(host: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri("/");
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).expect("request")
    }

    fn dst(s: &str) -> Option<SocketAddr> {
        Some(s.parse().expect("addr"))
    }

    fn resolved(
        snap: &Snapshot,
        host: Option<&str>,
        to: Option<SocketAddr>,
    ) -> Option<(String, Option<u16>)> {
        resolve(snap, &req(host), to).map(|(s, p)| (s.name.clone(), p))
    }

    #[test]
    fn cluster_ip_ports_map_to_target_ports() {
        let snap = snapshot();
        let some = |n: &str, p| Some((n.to_owned(), p));
        assert_eq!(
            resolved(&snap, None, dst("10.96.0.12:80")),
            some("payments", Some(8080))
        );
        assert_eq!(
            resolved(&snap, None, dst("[fd00::12]:80")),
            some("payments", Some(8080))
        );
        assert_eq!(
            resolved(&snap, None, dst("10.96.0.12:9090")),
            some("payments", Some(9090))
        );
        // A port the Service does not declare: kube-proxy would not answer it either.
        assert_eq!(resolved(&snap, None, dst("10.96.0.12:81")), None);
        // A Service without ports: every port is the same pod port.
        assert_eq!(
            resolved(&snap, None, dst("10.96.0.13:7000")),
            some("catalog", Some(7000))
        );
        // A pod IP, any port.
        assert_eq!(
            resolved(&snap, None, dst("10.0.3.7:9999")),
            some("payments", Some(9999))
        );
        // The callee proxy's own address names no app port.
        assert_eq!(
            resolved(&snap, None, dst("10.0.3.7:4143")),
            some("payments", None)
        );
        // Unknown: passed through.
        assert_eq!(resolved(&snap, None, dst("10.1.2.3:80")), None);
    }

    #[test]
    fn host_names_the_service_and_the_destination_the_port() {
        let snap = snapshot();
        let some = |n: &str, p| Some((n.to_owned(), p));
        // Transparent: the app resolved payments to its cluster IP and sent Host: payments.
        assert_eq!(
            resolved(&snap, Some("payments.shop"), dst("10.96.0.12:80")),
            some("payments", Some(8080))
        );
        // Host names another service than the destination: Host wins, its declared port maps.
        assert_eq!(
            resolved(&snap, Some("payments:80"), dst("10.96.0.13:80")),
            some("payments", Some(8080))
        );
        // Explicit mode: Host alone; an undeclared or missing port leaves the callee's default.
        assert_eq!(
            resolved(&snap, Some("payments"), None),
            some("payments", None)
        );
        assert_eq!(
            resolved(&snap, Some("payments:4140"), None),
            some("payments", None)
        );
        assert_eq!(
            resolved(&snap, Some("payments:9090"), None),
            some("payments", Some(9090))
        );
        // A Host outside the mesh on a mesh destination: the destination decides.
        assert_eq!(
            resolved(&snap, Some("example.com"), dst("10.96.0.13:8080")),
            some("catalog", Some(8080))
        );
    }

    #[test]
    fn a_service_no_meshed_pod_serves_passes_through_when_redirected() {
        let snap = snapshot();
        assert_eq!(resolved(&snap, None, dst("10.96.0.14:80")), None);
        assert_eq!(
            resolved(&snap, Some("legacy.shop"), dst("10.96.0.14:80")),
            None
        );
        // Explicit mode has no original destination to fall back to: the mesh answers.
        assert_eq!(
            resolved(&snap, Some("legacy.shop"), None),
            Some(("legacy".to_owned(), None))
        );
    }

    #[test]
    fn authority_ports() {
        assert_eq!(authority_port("a:80"), Some(80));
        assert_eq!(authority_port("[::1]:80"), Some(80));
        assert_eq!(authority_port("::1"), None);
        assert_eq!(authority_port("a"), None);
        assert_eq!(authority_port("a:x"), None);
    }
}
