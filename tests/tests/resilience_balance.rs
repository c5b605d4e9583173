//! Load-balancing proof (issue 5): P2C over peak-EWMA latency sends an endpoint 10× slower
//! than its two peers under 15% of 3,000 requests (round robin would give it a third).

use std::time::{Duration, Instant};

use weir_tests::client;
use weir_tests::resilience::{Single, request, run_workers, status_counts};
use weir_tests::util::within;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
const REQUESTS: usize = 3_000;
const WORKERS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_endpoint_gets_under_fifteen_percent() {
    // Balancing needs no policy: every mesh call is balanced. The timeout is there so a
    // stuck endpoint fails the test quickly rather than hanging it.
    let mesh = Single::start("balance", "payments", 3, "timeouts: { request: 10s }").await;
    mesh.upstreams[0]
        .app
        .set_default("delay=20ms")
        .expect("spec");
    mesh.upstreams[1]
        .app
        .set_default("delay=2ms")
        .expect("spec");
    mesh.upstreams[2]
        .app
        .set_default("delay=2ms")
        .expect("spec");

    let started = Instant::now();
    let replies = within(TEST_TIMEOUT, "3,000 requests", async {
        run_workers(mesh.entry(), REQUESTS, WORKERS, |_| {
            request("GET", "payments", "/lb", &[], client::empty())
        })
        .await
    })
    .await;
    let took = started.elapsed();

    assert_eq!(status_counts(&replies).get(&200).copied(), Some(REQUESTS));
    let split: Vec<u64> = mesh.upstreams.iter().map(|u| u.app.calls("/lb")).collect();
    let slow_share = split[0] as f64 / REQUESTS as f64;
    println!(
        "split over {REQUESTS} requests (slow 20ms, fast 2ms, fast 2ms): {split:?}; \
         slow share {:.1}% in {took:?}",
        slow_share * 100.0
    );
    assert_eq!(split.iter().sum::<u64>(), REQUESTS as u64);
    assert!(
        slow_share < 0.15,
        "slow endpoint got {:.1}%",
        slow_share * 100.0
    );
    // The fast two share the rest, neither starved.
    assert!(split[1] > 1000 && split[2] > 1000, "{split:?}");
}

/// An endpoint that fails fast (its proxy is gone: connection refused in microseconds) must
/// not look like the fastest endpoint. With no policy at all, a balancer that merely ignores
/// failures (a coin flip per call) serves 50 ± 15 (3σ) of 100 calls from the live one; one
/// that avoids failing endpoints serves nearly all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoint_does_not_attract_the_traffic() {
    let mut mesh = Single::start("balance-dead", "payments", 2, "").await;
    mesh.upstreams[0].proxy.signal(libc::SIGKILL);
    mesh.upstreams[0]
        .proxy
        .wait_exit(Duration::from_secs(10))
        .await;

    let replies = within(TEST_TIMEOUT, "100 requests", async {
        run_workers(mesh.entry(), 100, 1, |_| {
            request("GET", "payments", "/dead", &[], client::empty())
        })
        .await
    })
    .await;
    let statuses = status_counts(&replies);
    let live = mesh.upstreams[1].app.calls("/dead");
    println!("one of two endpoints dead: statuses {statuses:?}; live endpoint served {live}");
    assert!(
        live >= 35,
        "the dead endpoint took {} of 100 calls",
        100 - live
    );
}
