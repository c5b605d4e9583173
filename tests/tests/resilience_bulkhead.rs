//! Bulkhead proof (issue 5): with `inventory` hung and its bulkhead full, the p99 latency of
//! calls from the same caller proxy to a healthy `payments` stays within 2× of its value
//! without the hang; calls over the bulkhead get `503 bulkhead-full` at once.
//!
//! Both phases run the same offered load — payments workers measuring, plus one worker
//! hammering inventory — so the only difference between them is the hang.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use weir_tests::resilience::{Caller, Conn, Upstream, endpoints, get, percentile, policy};
use weir_tests::util::{TestDir, within};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(10);
const MAX_CONCURRENT: i64 = 5;
/// Enough that p99 is the 20th-slowest call, not one scheduler hiccup on two shared cores.
const SAMPLES: usize = 2_000;
const WORKERS: usize = 3;

/// `SAMPLES` GETs to payments from `WORKERS` connections while one more connection keeps
/// calling inventory; returns payments latencies and inventory replies by status.
async fn measure(caller: &Caller) -> (Vec<Duration>, Vec<(u16, Option<String>)>) {
    let entry = caller.entry();
    let stop = Arc::new(AtomicBool::new(false));
    let hammer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut conn = Conn::new(entry);
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = conn.get("inventory", "/overflow", &[]).await;
                seen.push((r.status, r.weir_error().map(str::to_owned)));
            }
            seen
        })
    };
    let left = Arc::new(AtomicU64::new(SAMPLES as u64));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..WORKERS {
        let left = left.clone();
        workers.spawn(async move {
            let mut conn = Conn::new(entry);
            let mut lat = Vec::new();
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let r = conn.get("payments", "/pay", &[]).await;
                assert_eq!(r.status, 200, "payments must stay healthy: {r:?}");
                lat.push(r.elapsed);
            }
            lat
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = workers.join_next().await {
        latencies.extend(done.expect("worker"));
    }
    stop.store(true, Ordering::Relaxed);
    (latencies, hammer.await.expect("hammer"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_dependency_cannot_slow_calls_to_a_healthy_one() {
    let dir = TestDir::new("bulkhead").expect("temp dir");
    let inventory = Upstream::start(&dir, "inventory", "inventory-0", &[]).await;
    let payments = Upstream::start(&dir, "payments", "payments-0", &[]).await;
    let docs = [
        endpoints("inventory", &[inventory.addr()]),
        endpoints("payments", &[payments.addr()]),
        policy(
            "inventory",
            "bulkhead: { maxConcurrent: 5, maxPending: 0, pendingTimeout: 100ms }",
        ),
    ];
    let caller = Caller::start(&dir, "orders", &docs).await;
    // Warm both paths (connections to both callee proxies exist before measuring).
    for host in ["inventory", "payments"] {
        assert_eq!(get(caller.entry(), host, "/warm", &[]).await.status, 200);
    }

    let (base, base_inv) = within(TEST_TIMEOUT, "baseline", measure(&caller)).await;
    assert!(
        base_inv.iter().all(|(s, _)| *s == 200),
        "inventory healthy in the baseline"
    );

    // Hang inventory and fill its bulkhead with 5 calls that never return.
    inventory.app.set_default("hang").expect("spec");
    let hung: Vec<_> = (0..MAX_CONCURRENT)
        .map(|_| tokio::spawn(get(caller.entry(), "inventory", "/hung", &[])))
        .collect();
    inventory
        .app
        .wait_for_in_flight("/hung", MAX_CONCURRENT, WAIT)
        .await;
    let in_flight = caller
        .proxy
        .metric("weir_bulkhead_in_flight", &[("dst", "inventory")])
        .await;
    println!("weir_bulkhead_in_flight{{dst=inventory}} = {in_flight}");

    // Over the limit: refused by the proxy at once, never reaching the app.
    let over = get(caller.entry(), "inventory", "/over", &[]).await;
    println!(
        "overflow call: {} {:?} in {:?}",
        over.status,
        over.weir_error(),
        over.elapsed
    );
    assert_eq!(
        (over.status, over.weir_error()),
        (503, Some("bulkhead-full"))
    );
    assert!(
        over.elapsed < Duration::from_millis(50),
        "{:?}",
        over.elapsed
    );
    assert_eq!(inventory.app.calls("/over"), 0);

    let (hang, hang_inv) = within(TEST_TIMEOUT, "under the hang", measure(&caller)).await;
    let refused = hang_inv
        .iter()
        .filter(|(s, e)| *s == 503 && e.as_deref() == Some("bulkhead-full"))
        .count();
    assert_eq!(
        refused,
        hang_inv.len(),
        "every overflow call refused: {hang_inv:?}"
    );
    assert_eq!(
        inventory.app.calls("/overflow"),
        base_inv.len() as u64,
        "none got through"
    );
    assert_eq!(inventory.app.in_flight("/hung"), MAX_CONCURRENT);

    let (p50b, p99b) = (percentile(&base, 50.0), percentile(&base, 99.0));
    let (p50h, p99h) = (percentile(&hang, 50.0), percentile(&hang, 99.0));
    println!(
        "payments latency, {SAMPLES} calls: without hang p50 {p50b:?} p99 {p99b:?}; \
         inventory hung + bulkhead full p50 {p50h:?} p99 {p99h:?} (ratio {:.2}); \
         {refused} overflow calls to inventory refused meanwhile",
        p99h.as_secs_f64() / p99b.as_secs_f64()
    );
    assert!(p99h <= 2 * p99b, "p99 {p99h:?} above 2 × {p99b:?}");
    assert_eq!(in_flight, MAX_CONCURRENT as f64);

    for h in hung {
        h.abort();
    }
    inventory.app.wait_for_in_flight("/hung", 0, WAIT).await;
}
