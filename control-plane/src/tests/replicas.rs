//! Two replicas on one etcd store: what is applied through one reaches the proxies of the
//! other, registrations and proxy status travel between them, and a replica's registrations
//! go when it does.

use std::time::Duration;

use weir_proto::admin::v1::{ProxyStatus, StatusResponse};
use weir_proto::discovery::v1::{Ack, Nack, Snapshot};

use super::*;

/// Reads snapshots until one satisfies `check`, failing after `limit`.
async fn until(
    proxy: &mut TestProxy,
    what: &str,
    limit: Duration,
    check: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let next = tokio::time::timeout(left, proxy.snapshots.message()).await;
        match next {
            Ok(Ok(Some(snapshot))) if check(&snapshot) => return snapshot,
            Ok(Ok(Some(_))) => continue,
            other => panic!("no snapshot with {what} within {limit:?}: {other:?}"),
        }
    }
}

fn addresses(snapshot: &Snapshot, service: &str) -> Vec<String> {
    snapshot
        .documents
        .iter()
        .find(|d| d.kind == "Endpoints" && d.name == service)
        .and_then(|d| serde_json::from_slice::<weir_policy::Document>(&d.json).ok())
        .and_then(|d| match d {
            weir_policy::Document::Endpoints(e) => Some(e.spec.addresses),
            _ => None,
        })
        .map(|a| a.iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}

/// Replicas A and B on a fresh prefix of the shared etcd member, each with its own data
/// directory.
async fn two_replicas(
    configure: impl Fn(&mut ServerConfig) + Copy,
) -> (
    Store,
    tempfile::TempDir,
    tempfile::TempDir,
    TestServer,
    TestServer,
) {
    let store = Some(super::etcd::config());
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = TestServer::start_on_with(dir_a.path(), &store, configure).await;
    let b = TestServer::start_on_with(dir_b.path(), &store, configure).await;
    (store, dir_a, dir_b, a, b)
}

#[tokio::test]
async fn replicas_share_documents_registrations_and_the_ca() {
    let (_, dir_a, dir_b, a, b) =
        two_replicas(|c: &mut ServerConfig| c.lease_grace = Duration::from_secs(2)).await;

    let bundle = |dir: &Path| {
        std::fs::read_to_string(dir.join(crate::server::TRUST_BUNDLE_FILE)).expect("bundle")
    };
    assert_eq!(bundle(dir_a.path()), bundle(dir_b.path()), "one mesh CA");
    assert_eq!(a.token, b.token, "one admin token");

    let mut orders = TestProxy::connect(&b.url, hello("orders", ""))
        .await
        .expect("stream to B");
    let first = orders.next().await;
    assert!(first.documents.iter().all(|d| d.kind != "ServicePolicy"));

    a.apply(POLICY).await.expect("apply through A");
    let applied = until(
        &mut orders,
        "the policy applied through A",
        Duration::from_secs(5),
        |s| {
            s.documents
                .iter()
                .any(|d| d.kind == "ServicePolicy" && d.name == "payments")
        },
    )
    .await;
    assert!(applied.version > first.version);

    let payments = TestProxy::connect(&a.url, hello("payments", "10.0.3.7:4143"))
        .await
        .expect("stream to A");
    until(
        &mut orders,
        "the endpoint registered at A",
        Duration::from_secs(5),
        |s| addresses(s, "payments") == ["10.0.3.7:4143"],
    )
    .await;

    // A goes away with its proxy still connected: its lease lapses and the endpoint with it.
    drop(payments);
    a.stop().await;
    until(
        &mut orders,
        "A's endpoint gone after its lease",
        Duration::from_secs(15),
        |s| addresses(s, "payments").is_empty(),
    )
    .await;
    b.stop().await;
}

/// The row of `service` in a status answer.
fn row<'a>(status: &'a StatusResponse, service: &str) -> Option<&'a ProxyStatus> {
    status.proxies.iter().find(|p| p.service == service)
}

/// Polls `server`'s status until `check` holds for the row of `service`, for at most 5 s
/// (status rows are written at most every second).
async fn status_until(
    server: &TestServer,
    service: &str,
    what: &str,
    check: impl Fn(&ProxyStatus) -> bool,
) -> StatusResponse {
    eventually(what, || async {
        let status = server.status().await;
        row(&status, service).is_some_and(&check).then_some(status)
    })
    .await
}

async fn ack(proxy: &TestProxy, snapshot: &Snapshot) {
    proxy
        .send(proxy_message::Kind::Ack(Ack {
            version: snapshot.version,
            nonce: snapshot.nonce.clone(),
        }))
        .await;
}

#[tokio::test]
async fn status_through_one_replica_lists_every_replicas_proxies() {
    let (store, dir_a, _dir_b, a, b) = two_replicas(|_| {}).await;
    let (name_a, name_b) = (a.status().await.replica, b.status().await.replica);
    // Both run on this host: the second one gets the hostname with a suffix.
    assert_eq!(name_a, crate::replica::default_name());
    assert_eq!(name_b, format!("{name_a}-2"));

    let mut payments = TestProxy::connect(&a.url, hello("payments", "10.0.3.7:4143"))
        .await
        .expect("stream to A");
    let first_a = payments.next().await;
    ack(&payments, &first_a).await;
    let mut orders = TestProxy::connect(&b.url, hello("orders", ""))
        .await
        .expect("stream to B");
    let first_b = orders.next().await;
    ack(&orders, &first_b).await;

    let status = status_until(&a, "orders", "B's proxy and its ACK in A's status", |p| {
        p.acked_version == first_b.version
    })
    .await;
    let (on_a, on_b) = (
        row(&status, "payments").expect("A's proxy"),
        row(&status, "orders").expect("B's proxy"),
    );
    assert_eq!(on_a.replica, name_a);
    assert_eq!(on_a.acked_version, first_a.version);
    assert_eq!(on_b.replica, name_b);
    assert!(on_b.connected);
    assert_eq!(on_b.proxy_version, "test");
    assert_eq!(on_b.identity, "spiffe://weir.local/ns/shop/sa/orders");
    assert_eq!(status.proxies.len(), 2, "{:?}", status.proxies);

    // A new version: B's proxy ACKs it and A shows that within the flush interval.
    a.apply(POLICY).await.expect("apply through A");
    let applied = until(&mut orders, "the policy", Duration::from_secs(5), |s| {
        s.documents.iter().any(|d| d.kind == "ServicePolicy")
    })
    .await;
    ack(&orders, &applied).await;
    let status = status_until(&a, "orders", "B's new ACK in A's status", |p| {
        p.acked_version == applied.version
    })
    .await;
    // Status rows written since the apply are no new version: nobody looks behind.
    assert_eq!(status.version, applied.version);
    assert_eq!(b.status().await.version, applied.version);

    // A NACK on B shows on A, with its errors.
    orders
        .send(proxy_message::Kind::Nack(Nack {
            version: applied.version,
            nonce: applied.nonce.clone(),
            errors: vec!["ServicePolicy shop/payments: no".into(), "second".into()],
        }))
        .await;
    let status = status_until(&a, "orders", "B's NACK in A's status", |p| {
        p.last_nack_version == applied.version
    })
    .await;
    let nacked = row(&status, "orders").expect("B's proxy");
    assert_eq!(
        nacked.last_nack_error,
        "ServicePolicy shop/payments: no\nsecond"
    );
    assert_eq!(nacked.replica, name_b);

    // B's proxy goes: A shows it disconnected, still at B.
    drop(orders);
    status_until(&a, "orders", "B's proxy disconnected in A's status", |p| {
        !p.connected && p.replica == name_b
    })
    .await;

    // A restarted on the same data directory gets its name back, though its old lease still
    // holds it.
    drop(payments);
    a.stop().await;
    let a = TestServer::start_on(dir_a.path(), &store).await;
    assert_eq!(a.status().await.replica, name_a);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_without_the_store_lists_own_proxies_and_says_so() {
    let base = super::etcd::config();
    let link = super::etcd::Link::open().await;
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = TestServer::start_on(dir_a.path(), &Some(base.clone())).await;
    // B reaches etcd through the link only; its lease outlives the cut below.
    let b = TestServer::start_on_with(dir_b.path(), &Some(link.reach(&base)), |c| {
        c.lease_grace = Duration::from_secs(20)
    })
    .await;
    let mut orders = TestProxy::connect(&b.url, hello("orders", ""))
        .await
        .expect("stream to B");
    let first = orders.next().await;
    ack(&orders, &first).await;
    status_until(&a, "orders", "B's proxy in A's status", |p| {
        p.acked_version == first.version
    })
    .await;

    link.cut();
    orders
        .send(proxy_message::Kind::Nack(Nack {
            version: first.version,
            nonce: first.nonce.clone(),
            errors: vec!["while etcd was away".into()],
        }))
        .await;
    // B still answers, with its own proxy, and says the others are unknown.
    let status = status_until(&b, "orders", "the NACK in B's own status", |p| {
        p.last_nack_version == first.version
    })
    .await;
    assert!(
        status.warning.contains("unknown"),
        "warning: {:?}",
        status.warning
    );
    let status = a.status().await;
    assert!(status.warning.is_empty(), "{:?}", status.warning);
    assert_eq!(row(&status, "orders").map(|p| p.last_nack_version), Some(0));

    // Once etcd answers again the lease rewrite brings the newest row to the others.
    link.mend();
    eventually_within(
        "B's NACK in A's status after the cut",
        Duration::from_secs(15),
        || async {
            let status = a.status().await;
            row(&status, "orders")
                .is_some_and(|p| p.last_nack_error == "while etcd was away")
                .then_some(())
        },
    )
    .await;
    let status = eventually("B's status without a warning", || async {
        let status = b.status().await;
        status.warning.is_empty().then_some(status)
    })
    .await;
    assert_eq!(row(&status, "orders").map(|p| p.connected), Some(true));
    drop(orders);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn embedded_status_names_this_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with(dir.path(), |c| c.replica = Some("cp one".into())).await;
    let mut proxy = TestProxy::connect(&server.url, hello("payments", "10.0.3.7:4143"))
        .await
        .expect("stream");
    let first = proxy.next().await;
    ack(&proxy, &first).await;
    let status = eventually("the ACK", || async {
        let status = server.status().await;
        row(&status, "payments")
            .is_some_and(|p| p.acked_version == first.version)
            .then_some(status)
    })
    .await;
    assert_eq!(status.replica, "cp-one");
    assert_eq!(status.proxies[0].replica, "cp-one");
    assert!(status.warning.is_empty());
    drop(proxy);
    server.stop().await;
}

/// A rotation step run through one replica is taken up by the other: its CA signs with the new
/// root, its bundle file and its proxies' snapshots carry the new bundle, and a step that the
/// other replica already ran is refused there instead of running twice.
#[tokio::test]
async fn a_rotation_through_one_replica_is_taken_up_by_the_other() {
    use super::identity::{ORDERS, csr};
    use super::rotation::{root, signed_by};

    let (_, _dir_a, dir_b, a, b) = two_replicas(|_| {}).await;
    let (token, _) = a.create_token("shop", "orders", 0).await;
    let mut orders = TestProxy::connect(&b.url, hello("orders", ""))
        .await
        .expect("stream to B");
    let first = orders.next().await;
    let roots_in = |pem: &[u8]| {
        String::from_utf8_lossy(pem)
            .matches("BEGIN CERTIFICATE")
            .count()
    };
    assert_eq!(roots_in(&first.trust_bundle_pem), 1);

    let prepared = a.rotate("prepare", false).await.expect("prepare via A");
    let new_root = root(&prepared, "next");
    let seen = eventually("B to see the prepared root", || async {
        let info = b.ca().await;
        (info.phase == "prepared").then_some(info)
    })
    .await;
    assert_eq!(root(&seen, "next"), new_root);
    until(
        &mut orders,
        "both roots in the bundle of B's proxy",
        Duration::from_secs(5),
        |s| roots_in(&s.trust_bundle_pem) == 2,
    )
    .await;
    let bundle_b = dir_b.path().join(crate::server::TRUST_BUNDLE_FILE);
    eventually("B's bundle file to hold both roots", || async {
        let pem = std::fs::read(&bundle_b).ok()?;
        (roots_in(&pem) == 2).then_some(())
    })
    .await;
    match b.rotate("prepare", false).await {
        Err(status) => assert!(status.message().contains("already prepared"), "{status:?}"),
        Ok(info) => panic!("B prepared a second root over A's: {info:?}"),
    }

    let active = b.rotate("activate", false).await.expect("activate via B");
    eventually("A to sign with the new root", || async {
        let leaf = a.certify(&token, &csr(ORDERS)).await.ok()?;
        signed_by(&leaf, &new_root).then_some(())
    })
    .await;
    let snapshot = until(
        &mut orders,
        "the new generation at B's proxy",
        Duration::from_secs(5),
        |s| s.ca_generation == active.generation,
    )
    .await;
    assert_eq!(roots_in(&snapshot.trust_bundle_pem), 2);
    a.stop().await;
    b.stop().await;
}
