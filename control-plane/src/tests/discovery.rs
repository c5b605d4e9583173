use std::time::{Duration, Instant};

use tonic::Code;
use weir_policy::Document;
use weir_proto::admin::v1::{EndpointsRequest, ServiceEndpoints};
use weir_proto::discovery::v1::{Ack, Nack, ProxyMessage, Snapshot, proxy_message};

use super::*;

fn endpoints_of(snapshot: &Snapshot, service: &str) -> Option<weir_policy::EndpointsSpec> {
    let doc = snapshot
        .documents
        .iter()
        .find(|d| d.kind == "Endpoints" && d.name == service)?;
    match serde_json::from_slice::<Document>(&doc.json) {
        Ok(parsed @ Document::Endpoints(_)) => {
            weir_policy::validate("snapshot", &parsed).expect("synthesised document is valid");
            match parsed {
                Document::Endpoints(e) => Some(e.spec),
                _ => None,
            }
        }
        other => panic!("not an Endpoints document: {other:?}"),
    }
}

async fn endpoints(server: &TestServer, service: &str) -> Vec<ServiceEndpoints> {
    server
        .admin()
        .await
        .endpoints(server.authed(EndpointsRequest {
            service: service.into(),
            namespace: String::new(),
        }))
        .await
        .expect("endpoints")
        .into_inner()
        .services
}

async fn hello_gets_stored_documents_and_its_own_registration(store: Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_on(dir.path(), &store).await;
    server.apply(POLICY).await.expect("apply");
    server
        .apply(
            "
apiVersion: weir/v1
kind: Endpoints
metadata: { name: payments, namespace: shop }
spec: { addresses: [\"10.0.3.8:4143\"] }
",
        )
        .await
        .expect("apply endpoints");

    let mut proxy = TestProxy::connect(&server.url, hello("payments", "10.0.3.7:4143"))
        .await
        .expect("stream");
    let snapshot = proxy.next().await;
    let kinds: Vec<&str> = snapshot.documents.iter().map(|d| d.kind.as_str()).collect();
    assert_eq!(kinds, ["MeshConfig", "ServicePolicy", "Endpoints"]);
    assert_eq!(snapshot.documents[1].revision, 1);
    let spec = endpoints_of(&snapshot, "payments").expect("payments endpoints");
    let addrs: Vec<String> = spec.addresses.iter().map(ToString::to_string).collect();
    assert_eq!(addrs, ["10.0.3.7:4143", "10.0.3.8:4143"]);
    assert_eq!(
        spec.identity.as_deref(),
        Some("spiffe://weir.local/ns/shop/sa/payments")
    );

    let listed = endpoints(&server, "payments").await;
    let sources: Vec<(String, String)> = listed[0]
        .endpoints
        .iter()
        .map(|e| (e.address.clone(), e.source.clone()))
        .collect();
    assert_eq!(
        sources,
        [
            ("10.0.3.7:4143".into(), "registered".into()),
            ("10.0.3.8:4143".into(), "static".into())
        ]
    );

    // A second proxy sees the first one's registration too.
    let mut orders = TestProxy::connect(&server.url, hello("orders", ""))
        .await
        .expect("stream");
    let seen = orders.next().await;
    assert!(seen.version >= snapshot.version);
    assert!(endpoints_of(&seen, "payments").is_some());
    assert!(
        endpoints_of(&seen, "orders").is_none(),
        "no inbound address, no registration"
    );
    server.stop().await;
}

async fn apply_pushes_a_newer_snapshot_and_answers_show_in_status(store: Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_on(dir.path(), &store).await;
    let mut proxy = TestProxy::connect(&server.url, hello("payments", "10.0.3.7:4143"))
        .await
        .expect("stream");
    let first = proxy.next().await;
    proxy
        .send(proxy_message::Kind::Ack(Ack {
            version: first.version,
            nonce: first.nonce.clone(),
        }))
        .await;

    let applied = server.apply(POLICY).await.expect("apply");
    let second = loop {
        let next = proxy.next().await;
        if next.version >= applied.version {
            break next;
        }
    };
    assert!(second.version > first.version);
    assert_ne!(second.nonce, first.nonce);
    assert!(second.documents.iter().any(|d| d.kind == "ServicePolicy"));
    proxy
        .send(proxy_message::Kind::Nack(Nack {
            version: second.version,
            nonce: second.nonce.clone(),
            errors: vec!["one".into(), "two".into()],
        }))
        .await;

    let row = eventually("NACK in status", || async {
        {
            let status = server.status().await;
            let row = status.proxies.into_iter().next()?;
            (row.last_nack_version == second.version).then_some(row)
        }
    })
    .await;
    assert_eq!(row.acked_version, first.version);
    assert_eq!(row.last_nack_error, "one\ntwo");
    assert!(row.connected);
    assert_eq!(row.service, "payments");
    assert_eq!(row.inbound_address, "10.0.3.7:4143");
    assert_eq!(row.identity, "spiffe://weir.local/ns/shop/sa/payments");
    assert_eq!(row.proxy_version, "test");
    assert!(row.connected_since_unix_ms > 0);
    server.stop().await;
}

#[tokio::test]
async fn first_message_must_be_hello() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    let ack = ProxyMessage {
        kind: Some(proxy_message::Kind::Ack(Ack {
            version: 1,
            nonce: String::new(),
        })),
    };
    let status = TestProxy::open(&server.url, ack)
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), Code::InvalidArgument);

    let bad = hello("Payments", "not-an-address");
    let status = TestProxy::connect(&server.url, bad)
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("inbound_address"),
        "{}",
        status.message()
    );
    server.stop().await;
}

#[tokio::test]
async fn registration_outlives_the_stream_by_the_lease_grace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let grace = Duration::from_millis(300);
    let server = TestServer::start_with_grace(dir.path(), grace).await;
    let mut watcher = TestProxy::connect(&server.url, hello("orders", ""))
        .await
        .expect("watcher");
    let mut proxy = TestProxy::connect(&server.url, hello("payments", "10.0.3.7:4143"))
        .await
        .expect("stream");
    proxy.next().await;
    drop(proxy);

    eventually("proxy marked disconnected", || async {
        {
            let status = server.status().await;
            status
                .proxies
                .iter()
                .any(|p| p.service == "payments" && !p.connected)
                .then_some(())
        }
    })
    .await;
    let disconnected = Instant::now();
    let still = endpoints(&server, "payments").await;
    if disconnected.elapsed() < grace {
        assert_eq!(still.len(), 1, "endpoint kept during the grace period");
    }

    eventually("endpoint expired", || async {
        endpoints(&server, "payments")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    // The other proxy is told: its newest snapshot no longer lists payments.
    loop {
        let snapshot = watcher.next().await;
        if endpoints_of(&snapshot, "payments").is_none() {
            break;
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn reconnect_within_the_grace_keeps_the_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start_with_grace(dir.path(), Duration::from_millis(200)).await;
    let mut proxy = TestProxy::connect(&server.url, hello("payments", "10.0.3.7:4143"))
        .await
        .expect("stream");
    let first = proxy.next().await;
    drop(proxy);
    let mut again = TestProxy::connect(&server.url, hello("payments", "10.0.3.7:4143"))
        .await
        .expect("reconnect");
    let snapshot = again.next().await;
    assert!(endpoints_of(&snapshot, "payments").is_some());

    // After the old lease has run out the endpoint is still there (the new stream holds it),
    // and status shows one row for the proxy, not one per connection.
    eventually("one status row per proxy", || async {
        {
            let status = server.status().await;
            (status.proxies.len() == 1 && status.proxies[0].connected).then_some(())
        }
    })
    .await;
    let before = server.status().await.version;
    // A negative check needs time to pass: the old lease ends within one grace of here.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(server.status().await.version, before, "no new version");
    let pushed = tokio::time::timeout(Duration::ZERO, again.snapshots.message()).await;
    assert!(pushed.is_err(), "no push: the endpoint set did not change");
    assert_eq!(endpoints(&server, "payments").await.len(), 1);
    assert!(snapshot.version >= first.version);
    server.stop().await;
}

/// Fan-out smoke benchmark, not run by default:
/// `WEIR_STREAMS=10000 cargo test -p weir-control --release --lib many_streams -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread")]
#[ignore = "load test; run explicitly"]
async fn many_streams_ack_an_apply_quickly() {
    let streams: usize = std::env::var("WEIR_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    // WEIR_REGISTER=0: proxies that only call out, so snapshots stay small.
    let register = std::env::var("WEIR_REGISTER").map_or(true, |v| v != "0");
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(dir.path()).await;
    server.apply(POLICY).await.expect("apply");
    let mut channels = Vec::new();
    for _ in 0..streams.div_ceil(500) {
        channels.push(super::channel(&server.url).await);
    }
    let (acked_tx, mut acked_rx) = mpsc::unbounded_channel::<u64>();
    for i in 0..streams {
        let mut client = DiscoveryClient::new(channels[i % channels.len()].clone());
        let acked_tx = acked_tx.clone();
        tokio::spawn(async move {
            let (tx, rx) = mpsc::channel(4);
            let address = format!("10.{}.{}.{}:4143", i >> 16, (i >> 8) & 255, i & 255);
            let address = if register { address.as_str() } else { "" };
            let hello = hello(&format!("svc-{}", i % 50), address);
            let _ = tx
                .send(ProxyMessage {
                    kind: Some(proxy_message::Kind::Hello(hello)),
                })
                .await;
            let Ok(response) = client.stream(ReceiverStream::new(rx)).await else {
                return;
            };
            let mut snapshots = response.into_inner();
            while let Ok(Some(s)) = snapshots.message().await {
                let ack = Ack {
                    version: s.version,
                    nonce: s.nonce,
                };
                let _ = tx
                    .send(ProxyMessage {
                        kind: Some(proxy_message::Kind::Ack(ack)),
                    })
                    .await;
                let _ = acked_tx.send(s.version);
            }
        });
    }
    drop(acked_tx);
    let started = Instant::now();
    eventually_within("all streams connected", Duration::from_secs(60), || async {
        let status = server.status().await;
        (status.proxies.len() == streams).then_some(())
    })
    .await;
    println!("{streams} streams connected in {:?}", started.elapsed());
    while acked_rx.try_recv().is_ok() {}

    let started = Instant::now();
    let applied = server
        .apply(&POLICY.replace("2s", "3s"))
        .await
        .expect("apply");
    let mut done = 0;
    while done < streams {
        let version = tokio::time::timeout(Duration::from_secs(30), acked_rx.recv())
            .await
            .expect("acks keep coming")
            .expect("ack channel open");
        if version >= applied.version {
            done += 1;
        }
    }
    println!(
        "{streams} streams acked an apply in {:?}",
        started.elapsed()
    );
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS")).map(String::from));
    println!("process (server and clients) {rss:?}");
}

on_both_stores!(
    hello_gets_stored_documents_and_its_own_registration,
    apply_pushes_a_newer_snapshot_and_answers_show_in_status
);
