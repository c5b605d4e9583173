//! The control plane end to end: real `weir-control`, real `weirctl`, real proxies that take
//! their config from it. Design §5–§7.

use std::time::{Duration, Instant};

use weir_tests::control::ControlPlane;
use weir_tests::load::{Load, call, failures};
use weir_tests::util::{TestDir, wait_until, within};
use weir_tests::{Proxy, apps, config};

// 138 s measured alone for the NACK test on a loaded 2-core machine (stop 24): 120 s was too tight.
const TEST_TIMEOUT: Duration = Duration::from_secs(300);

struct Mesh {
    // Drop order: proxies and apps first, the dir (with logs) last.
    client: Proxy,
    _p1: Proxy,
    _p2: Proxy,
    _v1: apps::Server,
    _v2: apps::Server,
    cp: ControlPlane,
    dir: TestDir,
}

impl Mesh {
    /// payments (app "v1") and payments-v2 (app "v2") behind proxies that register with the
    /// control plane; an `orders` client proxy with a snapshot cache.
    async fn start(label: &str) -> Mesh {
        let dir = TestDir::new(label).expect("dir");
        let cp = ControlPlane::start(&dir.join("data"), dir.path()).await;
        cp.apply(
            &dir.join("policy.yaml"),
            &config::documents(&[config::MESH_PERMISSIVE, &config::split(100, 0)]),
        );

        let v1 = apps::http::start("v1").await;
        let v2 = apps::http::start("v2").await;
        let meshed = |name: &str, svc: &str| {
            Proxy::builder(name, dir.path())
                .service(svc)
                .namespace("shop")
                .control_plane(&cp)
        };
        let p1 = meshed("payments", "payments")
            .app_addr(v1.addr)
            .start()
            .await;
        let p2 = meshed("payments-v2", "payments-v2")
            .app_addr(v2.addr)
            .start()
            .await;
        let cache = dir.join("cache");
        let client = meshed("orders", "orders")
            .arg("--cache-dir")
            .arg(cache.to_str().expect("utf-8 path"))
            .start()
            .await;
        let mesh = Mesh {
            client,
            _p1: p1,
            _p2: p2,
            _v1: v1,
            _v2: v2,
            cp,
            dir,
        };
        mesh.wait_for_endpoints().await;
        mesh
    }

    /// Until the client's snapshot holds both registered services.
    async fn wait_for_endpoints(&self) {
        self.client.call_once(&["payments", "payments-v2"]).await;
        wait_until(
            "the client proxy sees both registered services",
            Duration::from_secs(20),
            || async {
                let cfg = self
                    .client
                    .admin_get("/config")
                    .await
                    .json()
                    .unwrap_or_default();
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
    }

    fn apply(&self, name: &str, yaml: &str) {
        self.cp.apply(&self.dir.join(name), yaml);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_split_flips_under_load_without_a_failed_request() {
    within(TEST_TIMEOUT, "split flip", async {
        let mesh = Mesh::start("cp-flip").await;
        let load = Load::start(mesh.client.outbound(), "payments", Duration::from_secs(30));
        load.wait_for(200).await;

        let invoked = Instant::now();
        mesh.apply("flip.yaml", &config::split(0, 100));
        let applied = Instant::now();
        // Keep the load on for a second after the flip.
        let after = load.count() + 200;
        load.wait_for(after).await;
        let samples = load.finish().await;

        let failed = failures(&samples);
        assert!(failed.is_empty(), "{} of {} requests failed: {:?}", failed.len(), samples.len(), &failed[..failed.len().min(5)]);
        let before: Vec<_> = samples.iter().filter(|s| s.started < applied).collect();
        assert!(before.iter().take(100).all(|s| s.app == "v1"), "100/0 must send everything to v1");
        let last_v1 = samples.iter().filter(|s| s.app == "v1").map(|s| s.started).max().expect("some v1");
        let converged = last_v1.saturating_duration_since(applied);
        let tail: Vec<_> = samples.iter().filter(|s| s.started > last_v1).collect();
        assert!(tail.len() >= 100 && tail.iter().all(|s| s.app == "v2"), "0/100 must send everything to v2");
        let first_v2 = samples.iter().find(|s| s.app == "v2").map(|s| s.started).expect("some v2");
        eprintln!(
            "split flip: {} requests, 0 failed; weirctl apply ran {} ms; first request on the new split \
             started {} ms after weirctl was invoked; last one on the old split {} ms after it returned",
            samples.len(),
            applied.duration_since(invoked).as_millis(),
            first_v2.saturating_duration_since(invoked).as_millis(),
            converged.as_millis()
        );
        // The target is < 100 ms on loopback; the bound here leaves room for a loaded CI box.
        assert!(converged < Duration::from_secs(1), "flip took {converged:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_outage_loses_nothing_and_restart_keeps_every_object() {
    within(TEST_TIMEOUT, "control-plane outage", async {
        let mut mesh = Mesh::start("cp-outage").await;
        // A second revision, so history has something to compare.
        mesh.apply("v2.yaml", &config::split(50, 50));
        let get_before = mesh.cp.weirctl_ok(&["get", "servicepolicy", "-o", "json"]);
        let history_before = mesh.cp.weirctl_ok(&[
            "history",
            "servicepolicy",
            "payments",
            "-n",
            "shop",
            "-o",
            "json",
        ]);
        let mesh_before = mesh.cp.weirctl_ok(&["get", "meshconfig", "-o", "yaml"]);

        // Wait until the client runs the 50/50 split before pulling the plug.
        wait_until(
            "client on the 50/50 split",
            Duration::from_secs(20),
            || async {
                let (a, b) = (
                    call(mesh.client.outbound(), "payments").await,
                    call(mesh.client.outbound(), "payments").await,
                );
                a.1 != b.1
            },
        )
        .await;

        let load = Load::start(mesh.client.outbound(), "payments", Duration::from_secs(30));
        load.wait_for(100).await;
        mesh.cp.kill().await;
        let after = load.count() + 200;
        load.wait_for(after).await;

        // A proxy restarted while the control plane is down serves from its cache.
        let cache = mesh.dir.join("cache");
        let restarted = Proxy::builder("orders-restarted", mesh.dir.path())
            .service("orders")
            .namespace("shop")
            .control_plane(&mesh.cp)
            .arg("--cache-dir")
            .arg(cache.to_str().expect("utf-8 path"))
            .start()
            .await;
        let (status, app) = call(restarted.outbound(), "payments").await;
        assert_eq!(
            status, 200,
            "restarted proxy must route from its cache: {app}"
        );
        assert!(app == "v1" || app == "v2", "{app}");

        let samples = load.finish().await;
        let failed = failures(&samples);
        assert!(
            failed.is_empty(),
            "{} of {} requests failed with the control plane down: {:?}",
            failed.len(),
            samples.len(),
            &failed[..failed.len().min(5)]
        );

        mesh.cp.restart().await;
        assert_eq!(
            mesh.cp.weirctl_ok(&["get", "servicepolicy", "-o", "json"]),
            get_before
        );
        assert_eq!(
            mesh.cp.weirctl_ok(&[
                "history",
                "servicepolicy",
                "payments",
                "-n",
                "shop",
                "-o",
                "json"
            ]),
            history_before
        );
        assert_eq!(
            mesh.cp.weirctl_ok(&["get", "meshconfig", "-o", "yaml"]),
            mesh_before
        );
        // The proxies come back on their own (jittered backoff) and ACK again.
        wait_until(
            "proxies reconnected and ACKed",
            Duration::from_secs(40),
            || async {
                let status = mesh.cp.weirctl(&["status", "-o", "json"]);
                let v: serde_json::Value =
                    serde_json::from_slice(&status.stdout).unwrap_or_default();
                let version = v["version"].as_u64().unwrap_or(0);
                let proxies = v["proxies"].as_array().cloned().unwrap_or_default();
                proxies
                    .iter()
                    .filter(|p| {
                        p["connected"] == true && p["ackedVersion"].as_u64() == Some(version)
                    })
                    .count()
                    >= 4
            },
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_the_proxy_cannot_apply_is_nacked_and_the_last_good_kept() {
    within(TEST_TIMEOUT, "nack", async {
        let mesh = Mesh::start("cp-nack").await;
        // A second client whose local file already governs payments: a pushed policy for
        // payments conflicts with it, which only this proxy can know.
        let local = mesh.dir.join("local.yaml");
        std::fs::write(&local, "apiVersion: weir/v1\nkind: ServicePolicy\nmetadata: { name: payments-local, namespace: shop }\nspec: { service: payments }\n").expect("write");
        let before_conflict = {
            // Start it before the control plane holds a conflicting policy: remove ours first.
            mesh.cp.weirctl_ok(&["delete", "servicepolicy", "payments", "-n", "shop"]);
            Proxy::builder("billing", mesh.dir.path())
                .service("billing")
                .namespace("shop")
                .config(&local)
                .control_plane(&mesh.cp)
                .start()
                .await
        };
        wait_until("billing routes to payments", Duration::from_secs(20), || async {
            call(before_conflict.outbound(), "payments").await == (200, "v1".to_owned())
        })
        .await;

        mesh.apply("conflict.yaml", &config::split(0, 100));
        wait_until("weirctl status shows the NACK", Duration::from_secs(20), || async {
            let out = mesh.cp.weirctl(&["status", "-o", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v["proxies"].as_array().into_iter().flatten().any(|p| {
                p["service"] == "billing" && p["lastNack"]["error"].as_str().is_some_and(|e| e.contains("already governed"))
            })
        })
        .await;
        // The table truncates the error to fit 100 columns (with REPLICA last, to about 20
        // characters); the row must still show one.
        let table = mesh.cp.weirctl_ok(&["status"]);
        assert!(
            table.lines().any(|l| l.contains(": ServicePolicy")),
            "status table shows billing's NACK:\n{table}"
        );
        // The refused resource is not in force (the rest of that update is): still v1, the
        // local file's view, and the pushed policy is not among the documents.
        let cfg = before_conflict.admin_get("/config").await.json().expect("json");
        let pushed_policy = cfg["documents"].as_array().into_iter().flatten().any(|d| {
            d["kind"] == "ServicePolicy" && d["metadata"]["name"] != "payments-local"
        });
        assert!(!pushed_policy, "the refused policy is not in force: {cfg}");
        assert_eq!(call(before_conflict.outbound(), "payments").await, (200, "v1".to_owned()));
        // The other client took it.
        wait_until("orders on v2", Duration::from_secs(20), || async {
            call(mesh.client.outbound(), "payments").await == (200, "v2".to_owned())
        })
        .await;
    })
    .await;
}

/// Each case: a document body (after `apiVersion`), and what the error must name.
const INVALID: &[(&str, &str)] = &[
    (
        "kind: ServicePolicy\nmetadata: { name: p, namespace: shop }\nspec: { service: p, retries: { attempts: two } }\n",
        "spec.retries.attempts",
    ),
    (
        "kind: ServicePolicy\nmetadata: { name: p, namespace: shop }\nspec: { service: p, bogus: 1 }\n",
        "bogus",
    ),
    (
        "kind: ServicePolicy\nmetadata: { name: p, namespace: shop }\nspec: { service: p, timeouts: { request: 10 parsecs } }\n",
        "spec.timeouts.request",
    ),
    (
        "kind: ServicePolicy\nmetadata: { name: p, namespace: shop }\nspec: { service: p, timeouts: { request: -1s } }\n",
        "spec.timeouts.request",
    ),
    (
        "kind: ServicePolicy\nmetadata: { name: p, namespace: shop }\nspec: { service: p, timeouts: { request: 1s, perTry: 2s } }\n",
        "spec.timeouts.perTry",
    ),
    (
        "kind: ServicePolicy\nmetadata: { name: p, namespace: shop }\nspec: { service: p, routes: [ { name: r, backends: [ { service: a, weight: 0 } ] } ] }\n",
        "spec.routes[0].backends",
    ),
    (
        "kind: ServicePolicy\nmetadata: { name: p, namespace: shop }\nspec: { service: p, routes: [ { name: r, backends: [] } ] }\n",
        "spec.routes[0].backends",
    ),
    (
        "kind: ServicePolicy\nmetadata: { name: p, namespace: shop }\nspec: { service: p, retries: { attempts: 2, on: [reset], budget: { percent: 250 } } }\n",
        "spec.retries.budget.percent",
    ),
    (
        "kind: ServicePolicy\nmetadata: { name: p, namespace: shop }\nspec: { service: p, circuitBreaker: { consecutiveFailures: 5, ejection: { base: 30s, max: 5m, maxPercent: 101 } } }\n",
        "spec.circuitBreaker.ejection.maxPercent",
    ),
    (
        "kind: ServicePolicy\nmetadata: { name: p, namespace: shop }\nspec: { service: p, fault: { abort: { percent: 120, status: 503 } } }\n",
        "spec.fault.abort.percent",
    ),
    (
        "kind: ServicePolicy\nmetadata: { name: p, namespace: shop }\nspec: { service: p, fault: { abort: { percent: 1, status: 999 } } }\n",
        "spec.fault.abort.status",
    ),
    (
        "kind: ServicePolicy\nmetadata: { name: p, namespace: shop }\nspec: { service: p, bulkhead: { maxConcurrent: 0, maxPending: 1, pendingTimeout: 1s } }\n",
        "spec.bulkhead.maxConcurrent",
    ),
    (
        "kind: ServicePolicy\nmetadata: { name: p, namespace: shop }\nspec: { service: p, retries: { attempts: 2, on: [sometimes] } }\n",
        "spec.retries.on",
    ),
    (
        "kind: ServicePolicy\nmetadata: { name: p, namespace: shop }\nspec: { service: p, routes: [ { name: r, match: { pathPrefix: api }, backends: [ { service: a } ] } ] }\n",
        "spec.routes[0].match.pathPrefix",
    ),
    (
        "kind: ServicePolicy\nmetadata: { name: p, namespace: shop }\nspec: { service: p, authorization: { mode: allowList, allow: [ \"http://nope\" ] } }\n",
        "spec.authorization.allow[0]",
    ),
    (
        "kind: ServicePolicy\nmetadata: { name: Bad_Name, namespace: shop }\nspec: { service: p }\n",
        "metadata.name",
    ),
    (
        "kind: ServicePolicy\nmetadata: { namespace: shop }\nspec: { service: p }\n",
        "metadata.name",
    ),
    ("kind: Gateway\nmetadata: { name: p }\nspec: {}\n", "kind"),
    (
        "kind: Endpoints\nmetadata: { name: e, namespace: shop }\nspec: { addresses: [\"nonsense\"] }\n",
        "spec.addresses[0]",
    ),
    (
        "kind: Endpoints\nmetadata: { name: e, namespace: shop }\nspec: { addresses: [\"10.0.0.1:4143\"], identity: \"spiffe://x\" }\n",
        "spec.identity",
    ),
    (
        "kind: MeshConfig\nmetadata: { name: default }\nspec: { mtls: sometimes }\n",
        "spec.mtls",
    ),
    (
        "kind: MeshConfig\nmetadata: { name: default }\nspec: { tracing: { sampling: 1.5 } }\n",
        "spec.tracing.sampling",
    ),
    // Duplicate names in one file.
    (
        "kind: Endpoints\nmetadata: { name: e, namespace: shop }\nspec: { addresses: [\"10.0.0.1:4143\"] }\n---\napiVersion: weir/v1\nkind: Endpoints\nmetadata: { name: e, namespace: shop }\nspec: { addresses: [\"10.0.0.2:4143\"] }\n",
        "duplicate",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_documents_are_rejected_with_their_field_path_and_change_nothing() {
    within(TEST_TIMEOUT, "invalid documents", async {
        let dir = TestDir::new("cp-invalid").expect("dir");
        let cp = ControlPlane::start(&dir.join("data"), dir.path()).await;
        cp.apply(
            &dir.join("good.yaml"),
            &config::documents(&[config::MESH_PERMISSIVE, &config::split(90, 10)]),
        );
        let before = (
            cp.weirctl_ok(&["get", "servicepolicy", "-o", "json"]),
            cp.weirctl_ok(&["get", "meshconfig", "-o", "json"]),
            cp.weirctl_ok(&["get", "endpoints", "-o", "json"]),
        );
        assert!(INVALID.len() >= 20);
        for (i, (body, path)) in INVALID.iter().enumerate() {
            let file = dir.join(&format!("bad{i}.yaml"));
            // Each bad document rides with a valid change, so all-or-nothing is tested too.
            let text = format!("{}---\napiVersion: weir/v1\n{body}", config::split(0, 100));
            std::fs::write(&file, text).expect("write");
            let out = cp.weirctl(&["apply", "-f", file.to_str().expect("utf-8 path")]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(1),
                "case {i} must fail: {body}\nstderr: {stderr}"
            );
            assert!(
                stderr.contains(path),
                "case {i}: error must name {path:?}:\n{stderr}"
            );
            assert!(
                stderr.contains(&format!("bad{i}.yaml")),
                "case {i}: error must name the file:\n{stderr}"
            );
        }
        let after = (
            cp.weirctl_ok(&["get", "servicepolicy", "-o", "json"]),
            cp.weirctl_ok(&["get", "meshconfig", "-o", "json"]),
            cp.weirctl_ok(&["get", "endpoints", "-o", "json"]),
        );
        assert_eq!(
            before, after,
            "a rejected apply must leave the store unchanged"
        );
    })
    .await;
}
