//! `--kubernetes` end to end: a real server whose real kube client watches the fake API
//! server of `kubernetes::fake_api` over HTTP on 127.0.0.1 (no real API server runs here), and
//! real proxies' discovery streams that receive what the watch derived.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::{Value, json};
use weir_policy::{Document, EndpointsSpec, ServicePort};
use weir_proto::admin::v1::EndpointsRequest;

use super::*;
use crate::kubernetes::fake_api::{FakeApi, State};

const LIMIT: Duration = Duration::from_secs(30);

/// The Service and EndpointSlice of the `clusterip.json` fixture.
fn fixture() -> (Value, Value) {
    let list: Value = serde_json::from_str(include_str!("../kubernetes/fixtures/clusterip.json"))
        .expect("fixture");
    (list["items"][0].clone(), list["items"][1].clone())
}

fn namespace(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": name },
        "status": { "phase": "Active" },
    })
}

fn endpoints_in(snapshot: &Snapshot, service: &str) -> Option<EndpointsSpec> {
    let doc = snapshot
        .documents
        .iter()
        .find(|d| d.kind == "Endpoints" && d.namespace == "shop" && d.name == service)?;
    let parsed: Document = serde_json::from_slice(&doc.json).expect("document parses");
    weir_policy::validate("snapshot", &parsed).expect("a valid document");
    match parsed {
        Document::Endpoints(e) => Some(e.spec),
        _ => None,
    }
}

/// Reads snapshots until `check` accepts one's `payments` Endpoints.
async fn until(
    proxy: &mut TestProxy,
    what: &str,
    check: impl Fn(Option<&EndpointsSpec>) -> bool,
) -> Option<EndpointsSpec> {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let next = tokio::time::timeout(remaining, proxy.snapshots.message())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("stream ok")
            .expect("stream open");
        let spec = endpoints_in(&next, "payments");
        if check(spec.as_ref()) {
            return spec;
        }
    }
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|ip| ip.parse().expect("ip")).collect()
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|a| a.parse().expect("addr")).collect()
}

fn target(port: u16, target: u16) -> Vec<ServicePort> {
    vec![ServicePort {
        port,
        target_port: Some(target),
        name: Some("http".into()),
    }]
}

async fn listed_sources(server: &TestServer) -> Vec<(String, String)> {
    let services = server
        .admin()
        .await
        .endpoints(server.authed(EndpointsRequest {
            service: "payments".into(),
            namespace: "shop".into(),
        }))
        .await
        .expect("endpoints")
        .into_inner()
        .services;
    services
        .iter()
        .flat_map(|s| &s.endpoints)
        .map(|e| (e.address.clone(), e.source.clone()))
        .collect()
}

#[tokio::test]
async fn services_and_slices_become_endpoints_and_survive_a_dead_api_server() {
    let api = FakeApi::start().await;
    let (service, slice) = fixture();
    api.state.put("namespaces", namespace("shop"));
    api.state.put("namespaces", namespace("default"));
    api.state.put("services", service.clone());
    api.state.put("endpointslices", slice.clone());

    let dir = tempfile::tempdir().expect("tempdir");
    let config = api.config();
    let server = TestServer::start_with(dir.path(), |c| c.kubernetes = Some(config)).await;
    let bundle = std::fs::read_to_string(dir.path().join(crate::server::TRUST_BUNDLE_FILE))
        .expect("trust bundle");
    let mut proxy = TestProxy::connect(&server.url, hello("payments", "10.244.1.17:4143"))
        .await
        .expect("stream");

    // The Service's cluster IP and port, with the registered proxy's address.
    let spec = until(&mut proxy, "derived Endpoints", |s| {
        s.is_some_and(|s| !s.cluster_ips.is_empty())
    })
    .await
    .expect("spec");
    assert_eq!(spec.cluster_ips, ips(&["10.96.12.34"]));
    assert_eq!(spec.ports, target(80, 8080));
    assert_eq!(spec.addresses, addrs(&["10.244.1.17:4143"]));
    assert_eq!(
        spec.identity.as_deref(),
        Some("spiffe://weir.local/ns/shop/sa/payments")
    );
    let sources = eventually("the ready pods in weirctl endpoints", || async {
        let listed = listed_sources(&server).await;
        (listed.len() == 3).then_some(listed)
    })
    .await;
    assert_eq!(
        sources,
        [
            ("10.244.1.17:4143".to_string(), "registered".to_string()),
            ("10.244.1.17:8080".into(), "kubernetes".into()),
            ("10.244.2.9:8080".into(), "kubernetes".into()),
        ]
    );

    // The trust bundle lands in every namespace, and in one created later.
    api.state.put("namespaces", namespace("orders"));
    let applied = eventually_within("ConfigMaps in three namespaces", LIMIT, || async {
        let applied = api.state.applied();
        (applied.len() >= 3).then_some(applied)
    })
    .await;
    let mut namespaces: Vec<&str> = applied.iter().map(|a| a.namespace.as_str()).collect();
    namespaces.sort_unstable();
    assert_eq!(namespaces, ["default", "orders", "shop"]);
    for a in &applied {
        assert_eq!(a.name, "weir-trust-bundle");
        assert_eq!(a.field_manager, "weir-control");
        assert!(a.force, "server-side apply forces weir-control's fields");
        assert_eq!(a.content_type, "application/apply-patch+yaml");
        assert_eq!(
            a.body["data"]["trust-bundle.pem"].as_str(),
            Some(bundle.as_str())
        );
        assert_eq!(
            a.body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "weir-control"
        );
    }

    // A named targetPort follows the EndpointSlice.
    let mut named = service.clone();
    named["spec"]["ports"][0]["targetPort"] = json!("http");
    api.state.put("services", named);
    let mut moved = slice.clone();
    moved["ports"][0]["port"] = json!(9080);
    api.state.put("endpointslices", moved);
    until(&mut proxy, "targetPort 9080 from the slice", |s| {
        s.is_some_and(|s| s.ports == target(80, 9080))
    })
    .await;

    // An applied Endpoints wins field by field: its clusterIPs, the cluster's ports.
    server
        .apply(
            "
apiVersion: weir/v1
kind: Endpoints
metadata: { name: payments, namespace: shop }
spec: { addresses: [\"10.0.9.9:4143\"], clusterIPs: [10.96.99.99] }
",
        )
        .await
        .expect("apply");
    let spec = until(&mut proxy, "the stored clusterIPs", |s| {
        s.is_some_and(|s| s.cluster_ips == ips(&["10.96.99.99"]))
    })
    .await
    .expect("spec");
    assert_eq!(spec.ports, target(80, 9080));
    assert_eq!(
        spec.addresses,
        addrs(&["10.0.9.9:4143", "10.244.1.17:4143"])
    );
    let deleted = server
        .admin()
        .await
        .delete(server.authed(weir_proto::admin::v1::DeleteRequest {
            kind: "Endpoints".into(),
            namespace: "shop".into(),
            name: "payments".into(),
        }))
        .await;
    assert!(deleted.is_ok(), "delete: {deleted:?}");
    until(&mut proxy, "the derived clusterIPs again", |s| {
        s.is_some_and(|s| s.cluster_ips == ips(&["10.96.12.34"]))
    })
    .await;

    // The API server dies, then answers 503 to everything: what was known stays.
    let (addr, state): (SocketAddr, std::sync::Arc<State>) = api.kill().await;
    state.set_unavailable(true);
    let api = FakeApi::start_on(addr, state).await;
    eventually_within("watch retries refused", LIMIT, || async {
        (api.state.refused() >= 3).then_some(())
    })
    .await;
    let mut late = TestProxy::connect(&server.url, hello("orders", ""))
        .await
        .expect("stream");
    let seen = endpoints_in(&late.next().await, "payments").expect("payments kept");
    assert_eq!(seen.cluster_ips, ips(&["10.96.12.34"]));
    assert_eq!(seen.ports, target(80, 9080));

    // Meanwhile the Service was deleted; once the API answers, the re-list says so and only
    // the registration is left.
    api.state.delete("services", "shop", "payments");
    api.state.delete("endpointslices", "shop", "payments-8k2vd");
    api.state.set_unavailable(false);
    let spec = until(
        &mut proxy,
        "the Service's deletion after the re-list",
        |s| s.is_some_and(|s| s.cluster_ips.is_empty()),
    )
    .await
    .expect("spec");
    assert_eq!(spec.addresses, addrs(&["10.244.1.17:4143"]));
    server.stop().await;
}
