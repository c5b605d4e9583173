//! Rate limiting (issue 5), enforced by the callee's inbound: its own ServicePolicy's
//! `rateLimit: { requestsPerSecond: 10, burst: 5 }` lets a burst of 20 through as 5 calls to
//! the app; the rest get `429 x-weir-error: rate-limited` with `Retry-After` ≥ 1 second.

use std::time::Duration;

use weir_tests::resilience::{Caller, Conn, Upstream, endpoints, policy};
use weir_tests::util::{TestDir, within};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const BURST: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_over_the_limit_gets_429_with_retry_after() {
    let dir = TestDir::new("ratelimit").expect("temp dir");
    // The limit lives in the callee's own config: it is the callee that is protected.
    let own = [policy(
        "payments",
        "rateLimit: { requestsPerSecond: 10, burst: 5 }",
    )];
    let payments = Upstream::start(&dir, "payments", "payments-0", &own).await;
    let caller = Caller::start(&dir, "orders", &[endpoints("payments", &[payments.addr()])]).await;

    // Back to back on one connection: 20 calls take a few ms, far less than the 100 ms
    // a new token takes at 10/s, so at most one token refills during the burst.
    let mut conn = Conn::new(caller.entry());
    let replies = within(TEST_TIMEOUT, "a burst of 20", async {
        let mut v = Vec::new();
        for _ in 0..BURST {
            v.push(conn.get("payments", "/rl", &[]).await);
        }
        v
    })
    .await;

    let ok = replies.iter().filter(|r| r.status == 200).count();
    let limited: Vec<_> = replies.iter().filter(|r| r.status == 429).collect();
    let took = replies.iter().map(|r| r.elapsed).sum::<Duration>();
    println!(
        "burst of {BURST} in {took:?}: {ok} ok, {} rate-limited, app saw {}",
        limited.len(),
        payments.app.calls("/rl")
    );
    assert!(
        (5..=6).contains(&ok),
        "burst 5 (+1 refill at most), got {ok}"
    );
    assert_eq!(ok + limited.len(), BURST, "only 200 or 429");
    assert_eq!(
        payments.app.calls("/rl"),
        ok as u64,
        "refused calls never reach the app"
    );
    for r in limited {
        assert_eq!(r.weir_error(), Some("rate-limited"));
        let after: u64 = r
            .header("retry-after")
            .expect("Retry-After on a 429")
            .parse()
            .expect("Retry-After in seconds");
        assert!(after >= 1, "Retry-After {after}");
    }

    // Tokens come back at the configured rate.
    let before = payments.app.calls("/rl");
    let started = std::time::Instant::now();
    within(TEST_TIMEOUT, "a token to refill", async {
        while conn.get("payments", "/rl", &[]).await.status != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    println!("next token after {:?}", started.elapsed());
    assert!(started.elapsed() <= Duration::from_millis(300));
    assert_eq!(payments.app.calls("/rl"), before + 1);
}
