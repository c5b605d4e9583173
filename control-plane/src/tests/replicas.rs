//! Two replicas on one etcd store: what is applied through one reaches the proxies of the
//! other, registrations travel between them, and a replica's registrations go when it does.

use std::time::Duration;

use weir_proto::discovery::v1::Snapshot;

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

#[tokio::test]
async fn replicas_share_documents_registrations_and_the_ca() {
    let store = Some(super::etcd::config());
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let grace = |c: &mut ServerConfig| c.lease_grace = Duration::from_secs(2);
    let a = TestServer::start_on_with(dir_a.path(), &store, grace).await;
    let b = TestServer::start_on_with(dir_b.path(), &store, grace).await;

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

/// A rotation step run through one replica is taken up by the other: its CA signs with the new
/// root, its bundle file and its proxies' snapshots carry the new bundle, and a step that the
/// other replica already ran is refused there instead of running twice.
#[tokio::test]
async fn a_rotation_through_one_replica_is_taken_up_by_the_other() {
    use super::identity::{ORDERS, csr};
    use super::rotation::{root, signed_by};

    let store = Some(super::etcd::config());
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = TestServer::start_on(dir_a.path(), &store).await;
    let b = TestServer::start_on(dir_b.path(), &store).await;
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
