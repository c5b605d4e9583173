//! Hot swap (issue 5): a changed ServicePolicy applies to the next request after a reload
//! (config file rewritten + SIGHUP), with no restart, in both directions.

use std::time::Duration;

use weir_tests::resilience::{Single, get};
use weir_tests::util::within;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_policy_change_applies_after_sighup() {
    let mut mesh = Single::start("reload-retries", "payments", 1, "").await;
    let first_fails = |key: &str| format!("status=503,first=1,key={key}");

    // No policy: the 503 is the answer.
    let r = within(
        TEST_TIMEOUT,
        "GET",
        get(
            mesh.entry(),
            "payments",
            "/",
            &[("x-chaos", &first_fails("v1"))],
        ),
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(mesh.app().calls("v1"), 1);
    let v1 = mesh.caller.proxy.config_version().await;

    // attempts 0 → 2: the same failure is now retried away.
    let retries = "retries: { attempts: 2, on: [\"503\"], backoff: { base: 1ms, max: 2ms } }";
    mesh.set_policy("payments", retries).await;
    let r = get(
        mesh.entry(),
        "payments",
        "/",
        &[("x-chaos", &first_fails("v2"))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mesh.app().calls("v2"), 2);
    assert_eq!(mesh.app().attempt_headers("v2"), ["1", "2"]);
    let v2 = mesh.caller.proxy.config_version().await;

    // And back: retries off again, plus a new layer (a request timeout) on.
    mesh.set_policy("payments", "timeouts: { request: 300ms }")
        .await;
    let r = get(
        mesh.entry(),
        "payments",
        "/",
        &[("x-chaos", &first_fails("v3"))],
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(mesh.app().calls("v3"), 1);
    let r = get(
        mesh.entry(),
        "payments",
        "/",
        &[("x-chaos", "hang,key=v3h")],
    )
    .await;
    assert_eq!((r.status, r.weir_error()), (504, Some("timeout")));
    let v3 = mesh.caller.proxy.config_version().await;
    println!("config versions {v1} → {v2} → {v3}: no retries → 2 retries → timeout only");
    let reloads = mesh
        .caller
        .proxy
        .metric("weir_config_reloads_total", &[("result", "ok")])
        .await;
    assert!(reloads >= 2.0, "{reloads}");
}
