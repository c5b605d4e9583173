//! Timeouts and deadlines (issue 5, design §7a): the request timeout spans every try and
//! ends in `504 x-weir-error: timeout`; a per-try timeout turns a hung try into a retry; the
//! remaining budget travels to the callee as `x-weir-timeout-ms`, and a budget the caller's
//! app sends caps the policy's own.

use std::time::Duration;

use weir_tests::apps::chaos::Outcome;
use weir_tests::client;
use weir_tests::resilience::{Single, get, request, run_workers, status_counts};
use weir_tests::util::within;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(10);
/// Scheduling noise on top of a configured time, on two shared cores with debug builds.
const MARGIN: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_answers_504_and_frees_the_upstream() {
    const TIMEOUT: Duration = Duration::from_millis(400);
    let mesh = Single::start(
        "timeout-request",
        "payments",
        1,
        "timeouts: { request: 400ms }",
    )
    .await;
    let app = mesh.app();

    let reply = within(TEST_TIMEOUT, "GET to a hung upstream", async {
        get(mesh.entry(), "payments", "/hang", &[("x-chaos", "hang")]).await
    })
    .await;

    println!("hung upstream answered in {:?}", reply.elapsed);
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(reply.weir_error(), Some("timeout"));
    assert!(
        reply.elapsed >= TIMEOUT,
        "{:?} < {TIMEOUT:?}",
        reply.elapsed
    );
    assert!(reply.elapsed <= TIMEOUT + MARGIN, "{:?}", reply.elapsed);
    assert_eq!(app.calls("/hang"), 1);
    // Giving up must reach the app too: the hung call is cancelled, not left running.
    app.wait_for_in_flight("/hang", 0, WAIT).await;
    assert_eq!(app.log("/hang")[0].outcome, Outcome::Cancelled);

    // The budget the callee is told about never exceeds the request timeout.
    let ok = get(mesh.entry(), "payments", "/ok", &[]).await;
    assert_eq!(ok.status, 200);
    let sent: Vec<u64> = app
        .deadline_headers("/ok")
        .iter()
        .map(|v| v.parse().expect("x-weir-timeout-ms is a number"))
        .collect();
    println!("x-weir-timeout-ms seen by the app: {sent:?}");
    assert_eq!(sent.len(), 1, "every call carries the remaining budget");
    assert!((200..=400).contains(&sent[0]), "{sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_retries_a_hung_try() {
    const PER_TRY: Duration = Duration::from_millis(300);
    let spec = "timeouts: { request: 3s, perTry: 300ms }\n\
                retries: { attempts: 2, on: [gateway-error], backoff: { base: 10ms, max: 20ms } }";
    let mesh = Single::start("timeout-per-try", "payments", 1, spec).await;
    let app = mesh.app();

    let reply = within(TEST_TIMEOUT, "GET, first try hangs", async {
        get(
            mesh.entry(),
            "payments",
            "/t",
            &[("x-chaos", "hang,first=1")],
        )
        .await
    })
    .await;

    println!("first try hung, second answered: total {:?}", reply.elapsed);
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(app.calls("/t"), 2);
    assert_eq!(app.attempt_headers("/t"), ["1", "2"]);
    assert!(reply.elapsed >= PER_TRY, "{:?}", reply.elapsed);
    assert!(
        reply.elapsed <= PER_TRY + MARGIN,
        "per-try timeout plus one fast try, got {:?}",
        reply.elapsed
    );
    app.wait_for_in_flight("/t", 0, WAIT).await;
    assert_eq!(app.log("/t")[0].outcome, Outcome::Cancelled);
    // The second try is told what is left of the request's 3 s, not the whole of it.
    let budgets: Vec<u64> = app
        .deadline_headers("/t")
        .iter()
        .map(|v| v.parse().expect("number"))
        .collect();
    println!("x-weir-timeout-ms per try: {budgets:?}");
    assert_eq!(budgets.len(), 2);
    assert!(
        budgets[0] <= 3000 && budgets[1] <= 3000 - 300,
        "{budgets:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_try_timing_out_ends_at_the_request_timeout() {
    // perTry 200ms × 3 tries would be 600ms; the request timeout (500ms) wins.
    let spec = "timeouts: { request: 500ms, perTry: 200ms }\n\
                retries: { attempts: 2, on: [5xx], backoff: { base: 1ms, max: 2ms } }";
    let mesh = Single::start("timeout-all-tries", "payments", 1, spec).await;
    let reply = within(TEST_TIMEOUT, "GET, every try hangs", async {
        get(mesh.entry(), "payments", "/h", &[("x-chaos", "hang")]).await
    })
    .await;
    println!(
        "all tries hung: {} after {:?}, app calls {}",
        reply.status,
        reply.elapsed,
        mesh.app().calls("/h")
    );
    assert_eq!(reply.status, 504);
    assert_eq!(reply.weir_error(), Some("timeout"));
    assert!(reply.elapsed >= Duration::from_millis(500) - Duration::from_millis(5));
    assert!(
        reply.elapsed <= Duration::from_millis(500) + MARGIN,
        "{:?}",
        reply.elapsed
    );
    assert_eq!(
        mesh.app().calls("/h"),
        3,
        "two 200ms tries, then a third cut short"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_deadline_caps_the_policy_timeout() {
    let mesh = Single::start(
        "timeout-inherited",
        "payments",
        1,
        "timeouts: { request: 2s }",
    )
    .await;
    let app = mesh.app();

    // The app calling through its proxy has only 300ms left of its own caller's budget.
    let reply = within(TEST_TIMEOUT, "GET with x-weir-timeout-ms: 300", async {
        let headers = [("x-chaos", "hang"), ("x-weir-timeout-ms", "300")];
        get(mesh.entry(), "payments", "/d", &headers).await
    })
    .await;

    println!("inherited 300ms budget: 504 after {:?}", reply.elapsed);
    assert_eq!(reply.status, 504);
    assert_eq!(reply.weir_error(), Some("timeout"));
    assert!(
        reply.elapsed >= Duration::from_millis(295),
        "{:?}",
        reply.elapsed
    );
    assert!(
        reply.elapsed <= Duration::from_millis(300) + MARGIN,
        "the 2s policy must be capped at 300ms: {:?}",
        reply.elapsed
    );
    let told: u64 = app.deadline_headers("/d")[0].parse().expect("number");
    assert!(
        told <= 300,
        "the callee must be told at most 300ms, got {told}"
    );

    // Without a policy timeout the inherited deadline alone applies.
    let plain = Single::start("timeout-inherited-plain", "ledger", 1, "").await;
    let reply = get(
        plain.entry(),
        "ledger",
        "/d",
        &[("x-chaos", "hang"), ("x-weir-timeout-ms", "300")],
    )
    .await;
    println!(
        "no policy, inherited 300ms: {} after {:?}",
        reply.status, reply.elapsed
    );
    assert_eq!(reply.status, 504);
    assert!(reply.elapsed <= Duration::from_millis(300) + MARGIN);
}

/// A retry is only worth its backoff if the deadline outlasts the wait. Here every try takes
/// 250ms of a 300ms budget, leaving ~47ms, and the backoff is uniform in [0, 100ms]: about
/// half the calls must give up at once with the app's own 503 instead of sleeping into a 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retry_when_the_backoff_outlasts_the_deadline() {
    const CALLS: usize = 12;
    let spec = "timeouts: { request: 300ms }\n\
                retries: { attempts: 1, on: [\"503\"], backoff: { base: 100ms, max: 100ms } }";
    let mesh = Single::start("timeout-room", "payments", 1, spec).await;
    let replies = within(TEST_TIMEOUT, "slow 503s", async {
        run_workers(mesh.entry(), CALLS, CALLS, |i| {
            let chaos = format!("delay=250ms,status=503,key=k{i}");
            request(
                "GET",
                "payments",
                "/",
                &[("x-chaos", &chaos)],
                client::empty(),
            )
        })
        .await
    })
    .await;
    let statuses = status_counts(&replies);
    let retried: u64 = (0..CALLS)
        .map(|i| mesh.app().calls(&format!("k{i}")) - 1)
        .sum();
    println!(
        "{CALLS} calls, 250ms 503s, 300ms budget: statuses {statuses:?}, {retried} retries reached the app"
    );
    // P(no 503 at all | correct room check) ≈ 0.47^12 < 1e-3.
    assert!(
        statuses.get(&503).copied().unwrap_or(0) > 0,
        "every call slept into the deadline: the room check must use the time after the try"
    );
}

/// gRPC callers carry their deadline as `grpc-timeout`; it caps the policy like
/// `x-weir-timeout-ms` and travels on in both spellings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_is_read_and_propagated() {
    let mesh = Single::start("timeout-grpc", "payments", 1, "timeouts: { request: 2s }").await;
    let headers = [
        ("content-type", "application/grpc"),
        ("grpc-timeout", "250m"),
    ];
    let r = within(
        TEST_TIMEOUT,
        "gRPC-style call",
        get(mesh.entry(), "payments", "/g", &headers),
    )
    .await;
    assert_eq!(r.status, 200);
    let app = mesh.app();
    let ms: u64 = app.deadline_headers("/g")[0].parse().expect("number");
    let grpc = app.grpc_timeouts("/g");
    println!("grpc-timeout 250m in: app saw x-weir-timeout-ms {ms}, grpc-timeout {grpc:?}");
    assert!((150..=250).contains(&ms), "{ms}");
    let g = &grpc[0];
    let (n, unit) = g.split_at(g.len() - 1);
    let n: u64 = n.parse().expect("digits");
    let nanos = n * match unit {
        "n" => 1,
        "u" => 1_000,
        "m" => 1_000_000,
        "S" => 1_000_000_000,
        other => panic!("unexpected grpc-timeout unit {other}"),
    };
    assert!(nanos <= 250_000_000, "{g}");

    let r = get(
        mesh.entry(),
        "payments",
        "/gh",
        &[headers[0], headers[1], ("x-chaos", "hang")],
    )
    .await;
    assert_eq!((r.status, r.weir_error()), (504, Some("timeout")));
    assert!(
        r.elapsed <= Duration::from_millis(250) + MARGIN,
        "{:?}",
        r.elapsed
    );
}
