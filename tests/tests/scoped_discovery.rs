//! Scoped discovery end to end (issue 15): real `weir-control`, real proxies. A proxy holds
//! only what it calls or its policy declares; its first call to a new service waits for the
//! control plane and succeeds; when the control plane cannot answer, a new destination gets
//! a clear 503 while known ones keep working.

use std::time::Duration;

use weir_tests::control::ControlPlane;
use weir_tests::load::call;
use weir_tests::util::{TestDir, wait_until, within};
use weir_tests::{Proxy, apps, config, raw_http};

/// The services in a proxy's `/config` that have endpoints.
async fn services_with_endpoints(proxy: &Proxy) -> Vec<String> {
    let cfg = proxy.admin_get("/config").await.json().unwrap_or_default();
    let mut names: Vec<String> = cfg["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["endpoints"].as_array().is_some_and(|e| !e.is_empty()))
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_holds_what_it_calls_and_its_first_call_succeeds() {
    within(Duration::from_secs(120), "scoped discovery", async {
        let dir = TestDir::new("scoped").expect("dir");
        let mut cp = ControlPlane::start(&dir.join("data"), dir.path()).await;
        let orders_policy = "apiVersion: weir/v1\nkind: ServicePolicy\nmetadata: { name: orders, namespace: shop }\nspec: { service: orders, dependencies: [catalog] }\n";
        cp.apply(
            &dir.join("policy.yaml"),
            &config::documents(&[config::MESH_PERMISSIVE, orders_policy]),
        );
        let payments_app = apps::http::start("payments").await;
        let catalog_app = apps::http::start("catalog").await;
        let unused_app = apps::http::start("unused").await;
        let meshed = |name: &str| {
            Proxy::builder(name, dir.path())
                .service(name)
                .namespace("shop")
                .control_plane(&cp)
        };
        let _payments = meshed("payments").app_addr(payments_app.addr).start().await;
        let _catalog = meshed("catalog").app_addr(catalog_app.addr).start().await;
        let _unused = meshed("unused").app_addr(unused_app.addr).start().await;
        let orders = meshed("orders")
            .arg("--resolve-timeout")
            .arg("1s")
            .start()
            .await;

        // Declared: catalog arrives without a call. Nothing else does.
        wait_until("orders holds catalog", Duration::from_secs(20), || async {
            services_with_endpoints(&orders).await == ["catalog"]
        })
        .await;

        // The very first call to payments succeeds: it waits for discovery, once.
        assert_eq!(call(orders.outbound(), "payments").await, (200, "payments".to_owned()));
        assert_eq!(services_with_endpoints(&orders).await, ["catalog", "payments"]);
        let answered = orders
            .metric("weir_discovery_waits_total", &[("result", "answered")])
            .await;
        assert!(answered >= 1.0, "waits answered: {answered}");
        assert_eq!(call(orders.outbound(), "catalog").await, (200, "catalog".to_owned()));

        // The control plane gone: known services still work; a new one fails clearly, after
        // the resolve timeout, instead of hanging or going somewhere else.
        cp.kill().await;
        assert_eq!(call(orders.outbound(), "payments").await, (200, "payments".to_owned()));
        let started = std::time::Instant::now();
        let rsp = raw_http::get(orders.outbound(), "unused", "/")
            .await
            .expect("a response");
        assert_eq!(rsp.status, 503, "{rsp:?}");
        assert_eq!(rsp.header("x-weir-error"), Some("discovery-timeout"));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
            "waited {waited:?} for a 1s resolve timeout"
        );

        // Back: the same name resolves on the next call.
        cp.restart().await;
        wait_until("unused resolves once the control plane is back", Duration::from_secs(30), || async {
            call(orders.outbound(), "unused").await == (200, "unused".to_owned())
        })
        .await;
    })
    .await;
}
