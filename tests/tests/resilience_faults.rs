//! Fault injection (issue 5): the caller's proxy delays or aborts a percentage of calls before
//! any real work, so an abort costs the callee nothing; aborts carry
//! `x-weir-error: fault-injected`.

use std::time::Duration;

use weir_tests::client;
use weir_tests::resilience::{
    Caller, Conn, Upstream, endpoints, get, policy, request, run_workers,
};
use weir_tests::util::{TestDir, within};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const DELAY: Duration = Duration::from_millis(200);
/// Scheduling noise on top of a configured time.
const MARGIN: Duration = Duration::from_millis(250);

/// Three services behind one caller, one fault each.
struct Faults {
    caller: Caller,
    aborted: Upstream,
    delayed: Upstream,
    half: Upstream,
    _dir: TestDir,
}

impl Faults {
    async fn start() -> Self {
        let dir = TestDir::new("faults").expect("temp dir");
        let aborted = Upstream::start(&dir, "aborted", "aborted-0", &[]).await;
        let delayed = Upstream::start(&dir, "delayed", "delayed-0", &[]).await;
        let half = Upstream::start(&dir, "half", "half-0", &[]).await;
        let docs = [
            endpoints("aborted", &[aborted.addr()]),
            endpoints("delayed", &[delayed.addr()]),
            endpoints("half", &[half.addr()]),
            policy("aborted", "fault: { abort: { percent: 100, status: 503 } }"),
            policy(
                "delayed",
                "fault: { delay: { percent: 100, duration: 200ms } }",
            ),
            policy("half", "fault: { abort: { percent: 50, status: 500 } }"),
        ];
        let caller = Caller::start(&dir, "orders", &docs).await;
        Faults {
            caller,
            aborted,
            delayed,
            half,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_abort_delay_and_split_by_percentage() {
    let mesh = Faults::start().await;
    let entry = mesh.caller.entry();

    // abort 100%: the proxy answers, the app is never called.
    let mut conn = Conn::new(entry);
    for _ in 0..10 {
        let r = within(TEST_TIMEOUT, "aborted call", conn.get("aborted", "/a", &[])).await;
        assert_eq!(
            (r.status, r.weir_error()),
            (503, Some("fault-injected")),
            "{r:?}"
        );
    }
    assert_eq!(
        mesh.aborted.app.total_calls(),
        0,
        "an abort costs the callee nothing"
    );

    // delay 100%: every call waits 200ms first, then reaches the app.
    let mut slowest = Duration::ZERO;
    let mut fastest = Duration::MAX;
    for _ in 0..5 {
        let r = within(
            TEST_TIMEOUT,
            "delayed call",
            get(entry, "delayed", "/d", &[]),
        )
        .await;
        assert_eq!(r.status, 200);
        slowest = slowest.max(r.elapsed);
        fastest = fastest.min(r.elapsed);
    }
    println!("delay 200ms: fastest {fastest:?}, slowest {slowest:?}");
    assert!(fastest >= DELAY, "{fastest:?}");
    assert!(slowest <= DELAY + MARGIN, "{slowest:?}");
    assert_eq!(mesh.delayed.app.calls("/d"), 5);

    // abort 50%: roughly half of 200 calls, each roll independent, so wide bounds
    // (±5 standard deviations of a binomial(200, 0.5) is ±35).
    let replies = within(
        TEST_TIMEOUT,
        "200 calls",
        run_workers(entry, 200, 4, |_| {
            request("GET", "half", "/h", &[], client::empty())
        }),
    )
    .await;
    let aborted = replies
        .iter()
        .filter(|r| r.status == 500 && r.weir_error() == Some("fault-injected"))
        .count();
    let ok = replies.iter().filter(|r| r.status == 200).count();
    println!(
        "abort 50%: {aborted} aborted, {ok} reached the app (app saw {})",
        mesh.half.app.calls("/h")
    );
    assert_eq!(aborted + ok, 200);
    assert!((65..=135).contains(&aborted), "{aborted} of 200");
    assert_eq!(mesh.half.app.calls("/h"), ok as u64);
}
