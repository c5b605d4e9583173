//! Retries (issue 5): only on the listed conditions, with `x-weir-attempt` on every try and
//! jittered backoff between tries; POST only with `nonIdempotent: true`; bodies up to 64 KiB
//! replayed byte for byte, larger ones sent once; connect failures and resets retried.
//! Every count is read at the chaos app behind the callee's proxy.

use std::time::Duration;

use weir_tests::client;
use weir_tests::resilience::{Caller, Single, Upstream, endpoints, get, policy, request, send};
use weir_tests::util::{Pattern, TestDir, within};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const WAIT: Duration = Duration::from_secs(10);
/// Scheduling noise allowed on top of a configured time, on two shared cores.
const MARGIN: Duration = Duration::from_millis(150);

const BACKOFF_MAX: Duration = Duration::from_millis(100);
/// Two retries on 503, backoff capped at `BACKOFF_MAX`.
const RETRY_503: &str =
    "retries: { attempts: 2, on: [\"503\"], backoff: { base: 50ms, max: 100ms } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tries_are_retried_with_attempt_headers_and_bounded_backoff() {
    let mesh = Single::start("retry-503", "payments", 1, RETRY_503).await;
    let app = mesh.app();

    let reply = within(TEST_TIMEOUT, "GET with two 503s", async {
        get(
            mesh.entry(),
            "payments",
            "/r",
            &[("x-chaos", "status=503,first=2")],
        )
        .await
    })
    .await;

    assert_eq!(
        reply.status,
        200,
        "the third try succeeds: {}",
        reply.text()
    );
    assert_eq!(reply.server(), Some("payments-0"));
    assert_eq!(app.calls("/r"), 3, "1 try + 2 retries");
    assert_eq!(app.attempt_headers("/r"), ["1", "2", "3"]);
    let arrivals = app.arrivals("/r");
    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    println!("backoff gaps between tries: {gaps:?} (max {BACKOFF_MAX:?})");
    for gap in &gaps {
        assert!(
            *gap <= BACKOFF_MAX + MARGIN,
            "gap {gap:?} above backoff max"
        );
    }
    assert!(
        reply.elapsed <= 2 * BACKOFF_MAX + MARGIN,
        "{:?}",
        reply.elapsed
    );

    // A status not on the list is the answer, at once.
    let reply = get(
        mesh.entry(),
        "payments",
        "/500",
        &[("x-chaos", "status=500")],
    )
    .await;
    assert_eq!(reply.status, 500);
    assert_eq!(app.calls("/500"), 1, "500 is not in `on: [\"503\"]`");
    // Retries give up after `attempts`: the last failure is what the client sees.
    let reply = get(
        mesh.entry(),
        "payments",
        "/down",
        &[("x-chaos", "status=503")],
    )
    .await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.weir_error(), None, "the app's own 503 passes through");
    assert_eq!(app.calls("/down"), 3);
}

/// `payments` keeps the default (POST never retried); `ledger` sets `nonIdempotent: true`.
struct TwoServices {
    caller: Caller,
    payments: Upstream,
    ledger: Upstream,
    _dir: TestDir,
}

impl TwoServices {
    async fn start() -> Self {
        let dir = TestDir::new("retry-post").expect("temp dir");
        let payments = Upstream::start(&dir, "payments", "payments-0", &[]).await;
        let ledger = Upstream::start(&dir, "ledger", "ledger-0", &[]).await;
        let docs = [
            endpoints("payments", &[payments.addr()]),
            endpoints("ledger", &[ledger.addr()]),
            policy("payments", RETRY_503),
            policy(
                "ledger",
                "retries: { attempts: 2, on: [\"503\"], backoff: { base: 5ms, max: 10ms }, nonIdempotent: true }",
            ),
        ];
        let caller = Caller::start(&dir, "orders", &docs).await;
        TwoServices {
            caller,
            payments,
            ledger,
            _dir: dir,
        }
    }

    async fn post(&self, host: &str, path: &str, chaos: &str, len: u64, exact: bool) -> u16 {
        let body = client::pattern(Pattern::Mixed, len, exact);
        let req = request("POST", host, path, &[("x-chaos", chaos)], body);
        within(TEST_TIMEOUT, "POST", send(self.caller.entry(), req))
            .await
            .status
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_retried_only_when_non_idempotent_and_replays_the_same_body() {
    let mesh = TwoServices::start().await;
    const LEN: u64 = 60 * 1024;

    // Default policy: a POST is sent once, whatever the outcome, and is not numbered.
    let status = mesh.post("payments", "/p", "status=503", LEN, true).await;
    assert_eq!(status, 503);
    assert_eq!(mesh.payments.app.calls("/p"), 1, "POST must not be retried");
    // PUT is idempotent: retried under the same policy.
    let req = request(
        "PUT",
        "payments",
        "/put",
        &[("x-chaos", "status=503,first=1")],
        client::full("x"),
    );
    assert_eq!(send(mesh.caller.entry(), req).await.status, 200);
    assert_eq!(mesh.payments.app.calls("/put"), 2);

    // nonIdempotent: the POST is retried and every try carries the very same bytes.
    let status = mesh
        .post("ledger", "/p", "status=503,first=2", LEN, true)
        .await;
    let app = &mesh.ledger.app;
    assert_eq!(status, 200);
    assert_eq!(app.calls("/p"), 3);
    assert_eq!(app.attempt_headers("/p"), ["1", "2", "3"]);
    let hashes = app.body_hashes("/p");
    let want = u64::from_str_radix(&Pattern::Mixed.checksum(LEN), 16).expect("hex");
    assert_eq!(
        hashes, [want; 3],
        "each retry must replay the body unchanged"
    );
    assert_eq!(app.body_bytes("/p"), 3 * LEN);

    // Exactly 64 KiB still fits the replay buffer, also when streamed without a length.
    let status = mesh
        .post("ledger", "/64k", "status=503,first=1", 64 * 1024, false)
        .await;
    assert_eq!(status, 200);
    assert_eq!(app.calls("/64k"), 2);
    let h = app.body_hashes("/64k");
    assert_eq!(h[0], h[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_64k_are_sent_once() {
    let mesh = TwoServices::start().await;
    let app = &mesh.ledger.app;
    // With a Content-Length (known too large up front) and chunked (found out while reading).
    for (path, len, exact) in [
        ("/big", 200 * 1024, true),
        ("/big-chunked", 64 * 1024 + 1, false),
    ] {
        let status = mesh.post("ledger", path, "status=503", len, exact).await;
        assert_eq!(status, 503, "{path}: the only try's answer");
        assert_eq!(
            app.calls(path),
            1,
            "{path}: a body over 64 KiB is never retried"
        );
        assert_eq!(
            app.body_bytes(path),
            len,
            "{path}: the one try got the whole body"
        );
        let want = u64::from_str_radix(&Pattern::Mixed.checksum(len), 16).expect("hex");
        assert_eq!(app.body_hashes(path), [want], "{path}");
    }
}

/// Endpoint 0 is down, endpoint 1 healthy; `connect-failure` retries reach endpoint 1.
async fn connect_failure_case(label: &str, kill_proxy: bool) {
    let spec = "retries: { attempts: 2, on: [connect-failure], backoff: { base: 1ms, max: 2ms } }";
    let mut mesh = Single::start(label, "payments", 2, spec).await;
    if kill_proxy {
        // The callee's proxy itself is gone: the caller's own connect is refused.
        mesh.upstreams[0].proxy.signal(libc::SIGKILL);
        mesh.upstreams[0].proxy.wait_exit(WAIT).await;
    } else {
        // The app behind a live proxy is down: the callee's inbound cannot connect.
        mesh.upstreams[0]
            .app
            .refuse_connections(true)
            .await
            .expect("refuse");
    }
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..30 {
        let r = get(mesh.entry(), "payments", &format!("/c{i}"), &[]).await;
        *statuses
            .entry((r.status, r.weir_error().map(str::to_owned)))
            .or_insert(0) += 1;
    }
    let live = mesh.upstreams[1].app.total_calls();
    println!("{label}: statuses {statuses:?}; live endpoint saw {live}");
    assert_eq!(
        statuses.get(&(200, None)).copied().unwrap_or(0),
        30,
        "every call must end at the live endpoint: {statuses:?}"
    );
    assert_eq!(live, 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_to_a_dead_proxy_is_retried_on_the_other_endpoint() {
    within(
        TEST_TIMEOUT,
        "connect-failure",
        connect_failure_case("retry-cf-proxy", true),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_to_a_dead_app_is_retried_on_the_other_endpoint() {
    within(
        TEST_TIMEOUT,
        "connect-failure",
        connect_failure_case("retry-cf-app", false),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_by_the_app_is_retried() {
    let spec = "retries: { attempts: 2, on: [reset], backoff: { base: 1ms, max: 2ms } }";
    let mesh = Single::start("retry-reset", "payments", 1, spec).await;
    let app = mesh.app();

    let reply = within(TEST_TIMEOUT, "GET with one reset", async {
        get(
            mesh.entry(),
            "payments",
            "/rs",
            &[("x-chaos", "reset,first=1")],
        )
        .await
    })
    .await;

    println!(
        "reset: status {} x-weir-error {:?}; app calls {} resets {}",
        reply.status,
        reply.weir_error(),
        app.calls("/rs"),
        app.resets("/rs")
    );
    assert_eq!(app.resets("/rs"), 1, "the first try was reset by the app");
    assert_eq!(
        reply.status,
        200,
        "the reset must be retried: {}",
        reply.text()
    );
    assert_eq!(app.calls("/rs"), 2);
}
