//! `Discovery.Delta` against a real server: scope, increments, per-resource NACKs,
//! reconnection with what a proxy holds, declared dependencies.

use std::collections::BTreeMap;

use weir_proto::discovery::v1::{
    DeltaAck, DeltaHello, DeltaRequest, DeltaResponse, ResourceNack, ResourceVersion, Subscribe,
    delta_request,
};

use super::*;

/// A fake proxy on a delta stream that keeps what it holds, as a real one does.
struct DeltaProxy {
    tx: mpsc::Sender<DeltaRequest>,
    rx: Streaming<DeltaResponse>,
    held: BTreeMap<String, u64>,
}

impl DeltaProxy {
    async fn open(
        url: &str,
        hello: Hello,
        known: &BTreeMap<String, u64>,
        subscribe: &[&str],
    ) -> DeltaProxy {
        let (tx, rx) = mpsc::channel(16);
        let first = DeltaHello {
            hello: Some(hello),
            known: known
                .iter()
                .map(|(name, &version)| ResourceVersion {
                    name: name.clone(),
                    version,
                })
                .collect(),
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        };
        tx.send(DeltaRequest {
            kind: Some(delta_request::Kind::Hello(first)),
        })
        .await
        .expect("queue hello");
        let mut client = DiscoveryClient::new(channel(url).await);
        let rx = client
            .delta(ReceiverStream::new(rx))
            .await
            .expect("delta stream")
            .into_inner();
        DeltaProxy {
            tx,
            rx,
            held: known.clone(),
        }
    }

    /// The next response, applied to what it holds but not yet ACKed.
    async fn next(&mut self) -> DeltaResponse {
        let response = tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a response within 5s")
            .expect("stream ok")
            .expect("stream open");
        for r in &response.resources {
            self.held.insert(r.name.clone(), r.version);
        }
        for n in &response.removed {
            self.held.remove(n);
        }
        response
    }

    async fn ack(&self, response: &DeltaResponse, nacks: Vec<ResourceNack>) {
        self.send(delta_request::Kind::Ack(DeltaAck {
            nonce: response.nonce.clone(),
            nacks,
        }))
        .await;
    }

    /// The next response, ACKed.
    async fn next_acked(&mut self) -> DeltaResponse {
        let response = self.next().await;
        self.ack(&response, Vec::new()).await;
        response
    }

    async fn subscribe(&self, add: &[&str], remove: &[&str]) {
        self.send(delta_request::Kind::Subscribe(Subscribe {
            add: add.iter().map(|s| s.to_string()).collect(),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        }))
        .await;
    }

    async fn send(&self, kind: delta_request::Kind) {
        self.tx
            .send(DeltaRequest { kind: Some(kind) })
            .await
            .expect("send to server");
    }

    fn names(&self) -> Vec<&str> {
        self.held.keys().map(String::as_str).collect()
    }
}

fn names(response: &DeltaResponse) -> Vec<&str> {
    response.resources.iter().map(|r| r.name.as_str()).collect()
}

fn resolutions(response: &DeltaResponse) -> Vec<(&str, &str)> {
    response
        .resolutions
        .iter()
        .map(|r| (r.key.as_str(), r.service.as_str()))
        .collect()
}

const MESH: &str = "
apiVersion: weir/v1
kind: MeshConfig
metadata: { name: default }
spec: { mtls: strict }
---
apiVersion: weir/v1
kind: ServicePolicy
metadata: { name: payments, namespace: shop }
spec:
  service: payments
  timeouts: { request: 2s }
  routes: [ { name: all, backends: [ { service: payments-v2, weight: 100 } ] } ]
---
apiVersion: weir/v1
kind: ServicePolicy
metadata: { name: catalog, namespace: shop }
spec: { service: catalog, timeouts: { request: 1s } }
---
apiVersion: weir/v1
kind: Endpoints
metadata: { name: payments-v2, namespace: shop }
spec: { addresses: [\"10.0.5.1:4143\"] }
---
apiVersion: weir/v1
kind: Endpoints
metadata: { name: catalog, namespace: shop }
spec: { addresses: [\"10.0.6.1:4143\"], clusterIPs: [\"10.96.0.6\"] }
";

async fn a_proxy_gets_only_what_it_calls_and_then_only_what_changed(store: Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_on(dir.path(), &store).await;
    server.apply(MESH).await.expect("apply");

    let mut orders = DeltaProxy::open(
        &server.url,
        hello("orders", "10.0.1.1:4143"),
        &BTreeMap::new(),
        &["payments.shop", "example.com"],
    )
    .await;
    let first = orders.next_acked().await;
    assert_eq!(
        orders.names(),
        [
            "Endpoints/shop/payments-v2",
            "MeshConfig//default",
            "ServicePolicy/shop/payments"
        ],
        "the mesh config, the callee's policy and its route backend's endpoints; not catalog"
    );
    let mut answered = resolutions(&first);
    answered.sort();
    assert_eq!(
        answered,
        [("example.com", ""), ("payments.shop", "payments.shop")]
    );

    // A change outside its scope sends it nothing: the next response it gets is the change
    // inside its scope, alone.
    server
        .apply(&MESH.replace("timeouts: { request: 1s }", "timeouts: { request: 3s }"))
        .await
        .expect("apply catalog change");
    server
        .apply(&MESH.replace("timeouts: { request: 2s }", "timeouts: { request: 4s }"))
        .await
        .expect("apply payments change");
    let change = orders.next_acked().await;
    assert_eq!(names(&change), ["ServicePolicy/shop/payments"]);
    assert!(change.removed.is_empty() && change.resolutions.is_empty());

    // A proxy of the route backend registering: its endpoints, and nothing else.
    let _v2 = DeltaProxy::open(
        &server.url,
        hello("payments-v2", "10.0.5.2:4143"),
        &BTreeMap::new(),
        &[],
    )
    .await;
    let registered = orders.next_acked().await;
    assert_eq!(names(&registered), ["Endpoints/shop/payments-v2"]);
    let json = &registered.resources[0]
        .document
        .as_ref()
        .expect("document")
        .json;
    assert!(
        String::from_utf8_lossy(json).contains("10.0.5.2:4143"),
        "{json:?}"
    );

    // An address subscription (a redirected connection to catalog's cluster IP) brings
    // catalog; dropping it removes catalog again.
    orders.subscribe(&["10.96.0.6:80"], &[]).await;
    let by_ip = orders.next_acked().await;
    let mut brought = names(&by_ip);
    brought.sort();
    assert_eq!(
        brought,
        ["Endpoints/shop/catalog", "ServicePolicy/shop/catalog"]
    );
    assert_eq!(resolutions(&by_ip), [("10.96.0.6:80", "catalog.shop")]);
    assert!(orders.names().contains(&"ServicePolicy/shop/catalog"));
    orders.subscribe(&[], &["10.96.0.6:80"]).await;
    let dropped = orders.next_acked().await;
    let mut removed = dropped.removed.clone();
    removed.sort();
    assert_eq!(
        removed,
        ["Endpoints/shop/catalog", "ServicePolicy/shop/catalog"]
    );

    // Reconnecting with what it holds costs only the answers to its subscriptions.
    let held = orders.held.clone();
    drop(orders);
    let mut again = DeltaProxy::open(
        &server.url,
        hello("orders", "10.0.1.1:4143"),
        &held,
        &["payments.shop"],
    )
    .await;
    let resumed = again.next_acked().await;
    assert!(resumed.resources.is_empty(), "{:?}", names(&resumed));
    assert!(resumed.removed.is_empty(), "{:?}", resumed.removed);
    assert_eq!(resolutions(&resumed), [("payments.shop", "payments.shop")]);

    // A name outside the mesh is answered as such; when an apply brings it in, the proxy is
    // told again, with the service's resources.
    again.subscribe(&["shipping.shop"], &[]).await;
    let outside = again.next_acked().await;
    assert_eq!(resolutions(&outside), [("shipping.shop", "")]);
    assert!(outside.resources.is_empty(), "{:?}", names(&outside));
    let shipping = "
---
apiVersion: weir/v1
kind: ServicePolicy
metadata: { name: shipping, namespace: shop }
spec: { service: shipping, timeouts: { request: 1s } }
";
    server
        .apply(&format!(
            "{}{shipping}",
            MESH.replace("timeouts: { request: 2s }", "timeouts: { request: 4s }")
        ))
        .await
        .expect("apply shipping");
    let brought = again.next_acked().await;
    assert_eq!(names(&brought), ["ServicePolicy/shop/shipping"]);
    assert_eq!(resolutions(&brought), [("shipping.shop", "shipping.shop")]);
    server.stop().await;
}

async fn a_refused_resource_is_reported_and_blocks_nothing_else(store: Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_on(dir.path(), &store).await;
    server.apply(MESH).await.expect("apply");
    let mut orders = DeltaProxy::open(
        &server.url,
        hello("orders", "10.0.1.1:4143"),
        &BTreeMap::new(),
        &["payments.shop"],
    )
    .await;
    let first = orders.next().await;
    let policy = first
        .resources
        .iter()
        .find(|r| r.name == "ServicePolicy/shop/payments")
        .expect("payments policy");
    orders
        .ack(
            &first,
            vec![ResourceNack {
                name: policy.name.clone(),
                version: policy.version,
                errors: vec!["spec.timeouts.request: too long for this proxy".into()],
            }],
        )
        .await;
    let status = eventually("the NACK in status", || async {
        let status = server.status().await;
        let row = status.proxies.into_iter().find(|p| p.service == "orders")?;
        (!row.last_nack_error.is_empty()).then_some(row)
    })
    .await;
    assert!(
        status
            .last_nack_error
            .contains("ServicePolicy/shop/payments: spec.timeouts.request"),
        "{}",
        status.last_nack_error
    );
    // The other resources still flow.
    orders.subscribe(&["catalog.shop"], &[]).await;
    let more = orders.next_acked().await;
    assert!(
        names(&more).contains(&"ServicePolicy/shop/catalog"),
        "{:?}",
        names(&more)
    );
    assert!(!names(&more).contains(&"ServicePolicy/shop/payments"));
    server.stop().await;
}

async fn declared_dependencies_arrive_without_a_subscription(store: Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_on(dir.path(), &store).await;
    server.apply(MESH).await.expect("apply");
    server
        .apply(
            "
apiVersion: weir/v1
kind: ServicePolicy
metadata: { name: orders, namespace: shop }
spec: { service: orders, dependencies: [catalog] }
",
        )
        .await
        .expect("apply orders");
    let mut orders = DeltaProxy::open(
        &server.url,
        hello("orders", "10.0.1.1:4143"),
        &BTreeMap::new(),
        &[],
    )
    .await;
    orders.next_acked().await;
    assert_eq!(
        orders.names(),
        [
            "Endpoints/shop/catalog",
            "MeshConfig//default",
            "ServicePolicy/shop/catalog",
            "ServicePolicy/shop/orders"
        ]
    );
    // In sync: status shows it at the server's version without another response.
    let version = server.status().await.version;
    eventually("orders ACKed at the current version", || async {
        let status = server.status().await;
        status
            .proxies
            .iter()
            .any(|p| p.service == "orders" && p.acked_version >= version)
            .then_some(())
    })
    .await;
    server.stop().await;
}

on_both_stores!(
    a_proxy_gets_only_what_it_calls_and_then_only_what_changed,
    a_refused_resource_is_reported_and_blocks_nothing_else,
    declared_dependencies_arrive_without_a_subscription,
);
