//! Root rotation of the control plane's CA (`weirctl ca rotate prepare|activate|finish`) under a
//! steady 200 rps between two proxies that take their identity from the control plane: not one
//! request may fail, and afterwards only the new root is trusted.
use std::time::Duration;

use weir_tests::control::ControlPlane;
use weir_tests::util::{TestDir, wait_until, within};
use weir_tests::{Proxy, apps};

/// Waits until every connected proxy has ACKed the control plane's current version, i.e. has
/// the roots the last rotation step pushed.
async fn all_acked(cp: &ControlPlane, what: &str) {
    wait_until(what, Duration::from_secs(20), || async {
        let out = cp.weirctl_ok(&["status", "-o", "json"]);
        let status: serde_json::Value = serde_json::from_str(&out).expect("status json");
        let version = status["version"].as_u64().unwrap_or(u64::MAX);
        let proxies = status["proxies"].as_array().cloned().unwrap_or_default();
        !proxies.is_empty()
            && proxies
                .iter()
                .filter(|p| p["connected"].as_bool() == Some(true))
                .all(|p| p["ackedVersion"].as_u64() >= Some(version))
    })
    .await;
}

fn ca_show(cp: &ControlPlane) -> serde_json::Value {
    serde_json::from_str(&cp.weirctl_ok(&["ca", "show", "-o", "json"])).expect("ca json")
}

fn signing_root(info: &serde_json::Value) -> String {
    info["roots"]
        .as_array()
        .and_then(|roots| roots.iter().find(|r| r["role"] == "signing"))
        .and_then(|r| r["sha256"].as_str())
        .expect("a signing root")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_rotates_under_load_without_a_failed_request() {
    within(
        Duration::from_secs(150),
        "root rotation under load",
        async {
            let dir = TestDir::new("root-rotation").expect("dir");
            let cp = ControlPlane::start(&dir.join("data"), dir.path()).await;
            rotate_under_load(&dir, &[&cp]).await;
        },
    )
    .await;
}

/// Two replicas on etcd: the callee's proxy is on A, the caller's on B, and the steps alternate
/// between them, so each step is taken up by the replica it did not run on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_rotates_across_replicas_on_etcd_without_a_failed_request() {
    within(
        Duration::from_secs(200),
        "root rotation across replicas",
        async {
            let dir = TestDir::new("root-rotation-ha").expect("dir");
            let etcd = weir_tests::etcd::EtcdCluster::start(dir.path(), 1).await;
            let store = etcd.store_spec();
            let args = ["--store", store.as_str()];
            let a = ControlPlane::start_with(&dir.join("a"), dir.path(), &args).await;
            let b = ControlPlane::start_with(&dir.join("b"), dir.path(), &args).await;
            rotate_under_load(&dir, &[&a, &b]).await;
        },
    )
    .await;
}

/// The three steps under load between a callee on the first control plane and a caller on the
/// last; step N runs through `cps[N % len]`.
async fn rotate_under_load(dir: &TestDir, cps: &[&ControlPlane]) {
    let (first, last) = (cps[0], cps[cps.len() - 1]);
    let via = |step: usize| cps[step % cps.len()];
    let cp = first;
    let token = |sa: &str| cp.token_file(dir.path(), sa);
    let app = apps::http::start("app").await;
    let meshed = |name: &str, token: &str, cp: &ControlPlane| {
        Proxy::builder(name, dir.path())
            .service(name)
            .control_plane(cp)
            .arg("--token-file")
            .arg(token)
    };
    let (echo_token, orders_token) = (token("echo"), token("orders"));
    let callee = meshed("echo", &echo_token, first)
        .app_addr(app.addr)
        .start()
        .await;
    let caller = meshed("orders", &orders_token, last).start().await;
    wait_until(
        "orders can call echo over mTLS",
        Duration::from_secs(20),
        || async { weir_tests::load::call(caller.outbound(), "echo").await.0 == 200 },
    )
    .await;
    let before = ca_show(cp);
    let old_root = signing_root(&before);
    assert_eq!(before["phase"], "idle");
    assert_eq!(before["roots"].as_array().map(Vec::len), Some(1));

    let load = weir_tests::load::Load::start(caller.outbound(), "echo", Duration::from_secs(90));
    let certs = || async {
        caller.metric("weir_identity_certificates_total", &[]).await
            + callee.metric("weir_identity_certificates_total", &[]).await
    };

    // 1. A new root joins the bundle; the old one still signs.
    via(0).weirctl_ok(&["ca", "rotate", "prepare"]);
    for cp in cps {
        all_acked(cp, "proxies have the bundle with both roots").await;
    }
    let prepared = ca_show(last);
    assert_eq!(prepared["phase"], "prepared");
    assert_eq!(signing_root(&prepared), old_root);

    // 2. The new root signs; both proxies renew within seconds.
    let issued = certs().await;
    via(1).weirctl_ok(&["ca", "rotate", "activate"]);
    wait_until(
        "both proxies renewed from the new root",
        Duration::from_secs(20),
        || async { certs().await >= issued + 2.0 },
    )
    .await;
    let activated = ca_show(first);
    assert_eq!(activated["generation"], 1);
    assert_ne!(signing_root(&activated), old_root);
    // Finishing at once is refused: proxies get time to renew.
    let early = via(0).weirctl(&["ca", "rotate", "finish"]);
    assert!(!early.status.success());
    assert!(String::from_utf8_lossy(&early.stderr).contains("--force"));

    // 3. The old root leaves the bundle (forced: the renewals were observed above).
    via(2).weirctl_ok(&["ca", "rotate", "finish", "--force"]);
    for cp in cps {
        all_acked(cp, "proxies have the bundle with the new root only").await;
    }
    let finished = ca_show(first);
    assert_eq!(finished["phase"], "idle");
    assert_eq!(finished["roots"].as_array().map(Vec::len), Some(1));

    // A proxy started now trusts only the new root; the callee's new certificate must
    // verify for it, and its own for the callee.
    let late_token = token("late");
    let late = meshed("late", &late_token, last).start().await;
    wait_until(
        "a new proxy can call echo",
        Duration::from_secs(20),
        || async { weir_tests::load::call(late.outbound(), "echo").await.0 == 200 },
    )
    .await;

    let samples = load.finish().await;
    weir_tests::load::assert_no_failures(&samples, 200, "the root rotation");
    eprintln!(
        "root rotation through {} control plane(s): {} requests, 0 failed",
        cps.len(),
        samples.len()
    );
}
