//! Two `weir-control` replicas on a real three-member etcd cluster (Debian's etcd-server), real
//! proxies and real weirctl: a policy applied through one replica reaches proxies connected to
//! the other; a replica and an etcd member die under load without a failed request; without a
//! quorum writes are refused with an error naming the store while traffic goes on; and after a
//! restart of everything every document, token and the CA are unchanged. Proxies given both
//! replicas fail over when theirs dies, and their endpoints stay through its lease expiry.

use std::time::Duration;

use weir_tests::control::ControlPlane;
use weir_tests::etcd::EtcdCluster;
use weir_tests::load::{Load, assert_no_failures, call};
use weir_tests::raw_http;
use weir_tests::util::{TestDir, free_ports, wait_until, within};
use weir_tests::{Proxy, apps, config};

const TEST_TIMEOUT: Duration = Duration::from_secs(300);

fn read(path: std::path::PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The stored policies and the history of payments', as weirctl prints them.
fn documents(cp: &ControlPlane) -> (String, String) {
    (
        cp.weirctl_ok(&["get", "servicepolicy", "-o", "json"]),
        cp.weirctl_ok(&[
            "history",
            "servicepolicy",
            "payments",
            "-n",
            "shop",
            "-o",
            "json",
        ]),
    )
}

/// payments (app "v1") and payments-v2 (app "v2") behind proxies that register with `cps`, and
/// an `orders` client proxy that sees both.
struct Shop {
    client: Proxy,
    _p1: Proxy,
    _p2: Proxy,
    _v1: apps::Server,
    _v2: apps::Server,
}

impl Shop {
    async fn start(dir: &TestDir, cps: &[&ControlPlane]) -> Shop {
        let v1 = apps::http::start("v1").await;
        let v2 = apps::http::start("v2").await;
        let meshed = |name: &str, svc: &str| {
            Proxy::builder(name, dir.path())
                .service(svc)
                .namespace("shop")
                .control_planes(cps)
        };
        let p1 = meshed("payments", "payments")
            .app_addr(v1.addr)
            .start()
            .await;
        let p2 = meshed("payments-v2", "payments-v2")
            .app_addr(v2.addr)
            .start()
            .await;
        let client = meshed("orders", "orders").start().await;
        client.call_once(&["payments", "payments-v2"]).await;
        wait_until(
            "the client sees both services",
            Duration::from_secs(20),
            || async {
                let cfg = client.admin_get("/config").await.json().unwrap_or_default();
                let services = cfg["services"].as_array().cloned().unwrap_or_default();
                ["payments", "payments-v2"].iter().all(|name| {
                    services.iter().any(|s| {
                        s["name"] == *name
                            && s["endpoints"].as_array().is_some_and(|e| !e.is_empty())
                    })
                })
            },
        )
        .await;
        Shop {
            client,
            _p1: p1,
            _p2: p2,
            _v1: v1,
            _v2: v2,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_etcd_share_the_mesh_and_survive_crashes() {
    within(TEST_TIMEOUT, "two replicas on etcd", async {
        let dir = TestDir::new("ha-etcd").expect("dir");
        let mut etcd = EtcdCluster::start(dir.path(), 3).await;
        let store = etcd.store_spec();
        let args = ["--store", store.as_str(), "--lease-grace", "3s"];
        let mut a = ControlPlane::start_with(&dir.join("a"), dir.path(), &args).await;
        let health: std::net::SocketAddr = ([127, 0, 0, 1], free_ports(1).expect("port")[0]).into();
        let health_arg = health.to_string();
        let b_args = [&args[..], &["--admin-addr", health_arg.as_str()]].concat();
        let mut b = ControlPlane::start_with(&dir.join("b"), dir.path(), &b_args).await;
        let ready = || async move {
            raw_http::get(health, "cp", "/ready")
                .await
                .map(|r| r.status)
                .unwrap_or(0)
        };
        wait_until("B's /ready", Duration::from_secs(10), || async {
            ready().await == 200
        })
        .await;
        assert_eq!(
            read(a.trust_bundle()),
            read(b.trust_bundle()),
            "one mesh CA"
        );
        assert_eq!(a.token(), b.token(), "one admin token");
        let bundle_before = read(b.trust_bundle());

        // Applied through A, served by proxies connected to B.
        a.apply(
            &dir.join("split.yaml"),
            &config::documents(&[config::MESH_PERMISSIVE, &config::split(100, 0)]),
        );
        let shop = Shop::start(&dir, &[&b]).await;
        let client = &shop.client;
        let token = b.weirctl_ok(&["token", "create", "-n", "shop", "--sa", "orders"]);
        let tokens_before = b.weirctl_ok(&["token", "list", "-o", "json"]);

        // Under load: replica A and one etcd member crash; the next apply through B lands.
        let load = Load::start(client.outbound(), "payments", Duration::from_secs(60));
        load.wait_for(100).await;
        a.kill().await;
        etcd.kill(0);
        load.wait_for(load.count() + 100).await;
        b.apply(&dir.join("flip.yaml"), &config::split(0, 100));
        let applied_at = std::time::Instant::now();
        wait_until(
            "the flip applied through B reaches the client",
            Duration::from_secs(10),
            || async { call(client.outbound(), "payments").await.1 == "v2" },
        )
        .await;
        eprintln!(
            "flip through B after a crash reached the client in {:?}",
            applied_at.elapsed()
        );

        // Quorum lost: a write is refused naming the store; traffic does not notice.
        etcd.kill(1);
        let refused = b.weirctl(&[
            "apply",
            "-f",
            dir.join("split.yaml").to_str().expect("utf-8"),
        ]);
        assert!(
            !refused.status.success(),
            "apply without an etcd quorum must fail"
        );
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("etcd store"),
            "the error names the store: {stderr}"
        );
        eprintln!("apply without a quorum: {}", stderr.trim());
        wait_until(
            "B's /ready reports the store down",
            Duration::from_secs(15),
            || async { ready().await == 503 },
        )
        .await;
        let metrics = raw_http::get(health, "cp", "/metrics")
            .await
            .expect("metrics")
            .text();
        assert!(metrics.contains("weir_control_store_up 0"), "{metrics}");
        load.wait_for(load.count() + 100).await;

        // etcd comes back; the control plane recovers by itself.
        etcd.relaunch(0);
        etcd.relaunch(1);
        etcd.wait_all_healthy().await;
        wait_until(
            "B's /ready recovers with etcd",
            Duration::from_secs(15),
            || async { ready().await == 200 },
        )
        .await;
        wait_until(
            "an apply through B succeeds again",
            Duration::from_secs(30),
            || async {
                let out = b.weirctl(&[
                    "apply",
                    "-f",
                    dir.join("split.yaml").to_str().expect("utf-8"),
                ]);
                out.status.success()
            },
        )
        .await;
        load.wait_for(load.count() + 100).await;
        let samples = load.finish().await;
        assert_no_failures(
            &samples,
            300,
            "a replica crash, an etcd member crash and a lost quorum",
        );
        eprintln!(
            "{} requests through a replica crash, an etcd member crash and a lost quorum: 0 failed",
            samples.len()
        );

        // Everything restarted: documents, tokens and the CA are what they were.
        let documents_before = documents(&b);
        b.kill().await;
        for i in 0..3 {
            etcd.kill(i);
        }
        for i in 0..3 {
            etcd.relaunch(i);
        }
        etcd.wait_all_healthy().await;
        a.restart().await;
        assert_eq!(read(a.trust_bundle()), bundle_before, "the CA survives");
        assert_eq!(documents(&a), documents_before);
        assert_eq!(
            a.weirctl_ok(&["token", "list", "-o", "json"]),
            tokens_before
        );
        assert!(!token.trim().is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_fail_over_to_another_replica_without_a_failed_request() {
    within(TEST_TIMEOUT, "proxy failover", async {
        let dir = TestDir::new("ha-failover").expect("dir");
        let etcd = EtcdCluster::start(dir.path(), 3).await;
        let store = etcd.store_spec();
        let args = ["--store", store.as_str(), "--lease-grace", "3s"];
        let mut a = ControlPlane::start_with(&dir.join("a"), dir.path(), &args).await;
        let b = ControlPlane::start_with(&dir.join("b"), dir.path(), &args).await;
        a.apply(
            &dir.join("split.yaml"),
            &config::documents(&[config::MESH_PERMISSIVE, &config::split(100, 0)]),
        );
        // Each proxy starts at a random replica of the two.
        let shop = Shop::start(&dir, &[&a, &b]).await;
        let client = &shop.client;

        // `weirctl status` through A lists every proxy, those connected to B with B's name.
        let status = |cp: &ControlPlane| -> serde_json::Value {
            serde_json::from_str(&cp.weirctl_ok(&["status", "-o", "json"])).unwrap_or_default()
        };
        let at = |status: &serde_json::Value, replica: &str| -> Vec<String> {
            let proxies = status["proxies"].as_array().cloned().unwrap_or_default();
            let mut services: Vec<String> = proxies
                .iter()
                .filter(|p| p["connected"] == true && p["replica"] == replica)
                .filter_map(|p| p["service"].as_str().map(str::to_string))
                .collect();
            services.sort();
            services
        };
        let name_b = status(&b)["replica"].as_str().unwrap_or_default().to_string();
        let on_b = at(&status(&b), &name_b);
        wait_until(
            "A's status lists every proxy, B's at B",
            Duration::from_secs(10),
            || async {
                let via_a = status(&a);
                let name_a = via_a["replica"].as_str().unwrap_or_default();
                at(&via_a, &name_b) == on_b && at(&via_a, name_a).len() + on_b.len() == 3
            },
        )
        .await;
        let moved = 3 - on_b.len();
        let load = Load::start(client.outbound(), "payments", Duration::from_secs(60));
        load.wait_for(100).await;
        a.kill().await;
        let killed = std::time::Instant::now();
        // Past A's lease (3 s): the registrations A held are gone; the proxies that were on A
        // registered again at B, so no endpoint disappears.
        wait_until("A's lease has lapsed", Duration::from_secs(20), || async {
            killed.elapsed() > Duration::from_secs(5)
        })
        .await;
        // weirctl given both replicas uses the one that answers.
        let both = format!("{},{}", a.url(), b.url());
        let out = std::process::Command::new(weir_tests::bins::weirctl_bin())
            .args(["--server", &both, "--token", &b.token(), "--trust-bundle"])
            .arg(b.trust_bundle())
            .args(["get", "servicepolicy"])
            .output()
            .expect("weirctl");
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("payments"),
            "weirctl --server A,B with A dead: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        load.wait_for(load.count() + 100).await;
        b.apply(&dir.join("flip.yaml"), &config::split(0, 100));
        wait_until(
            "the flip through B reaches the client",
            Duration::from_secs(10),
            || async { call(client.outbound(), "payments").await.1 == "v2" },
        )
        .await;
        load.wait_for(load.count() + 100).await;
        let samples = load.finish().await;
        assert_no_failures(&samples, 200, "replica A's crash and its lease expiry");
        // The table cuts long identities to fit 100 columns: read the JSON.
        let after = status(&b);
        assert_eq!(
            at(&after, &name_b),
            ["orders", "payments", "payments-v2"],
            "every proxy connected to B after A died:\n{after:#}"
        );
        eprintln!(
            "{} requests while replica A ({moved} of 3 proxies connected to it) was killed: 0 failed; every proxy is at B",
            samples.len()
        );
    })
    .await;
}
