//! SIGTERM drains: the listener closes, in-flight requests finish, exit code 0.

use std::time::{Duration, Instant};

use weir_tests::client;
use weir_tests::util::{wait_until, within};
use weir_tests::{Pair, apps};

const CONCURRENT: usize = 10;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() {
    let app = apps::http::start("app").await;
    let mut pair = Pair::start_with(app.addr, |b| b.drain_timeout("10s")).await;
    let entry = pair.entry();

    let requests: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            tokio::spawn(async move {
                // One connection per request so all ten are truly concurrent; the
                // sender is dropped at the end, closing the client side.
                let mut sender = client::h1(entry).await;
                let req = client::request("GET", "echo", "/delay?ms=1500", client::empty());
                client::collect(client::send1(&mut sender, req).await).await
            })
        })
        .collect();
    let stats = &app.stats;
    wait_until(
        "the app has 10 requests in flight",
        Duration::from_secs(20),
        || async move { stats.in_flight() == CONCURRENT as i64 },
    )
    .await;

    pair.outbound.signal(libc::SIGTERM);
    let signalled = Instant::now();
    for (i, task) in requests.into_iter().enumerate() {
        let (status, headers, body) = within(DRAIN_TIMEOUT, "in-flight request", task)
            .await
            .expect("request task");
        assert_eq!(
            status,
            200,
            "request {i} cut by the drain (x-weir-error {:?}): {}",
            headers.get("x-weir-error"),
            String::from_utf8_lossy(&body)
        );
        assert_eq!(&body[..], b"ok");
    }

    let status = pair
        .outbound
        .wait_exit(DRAIN_TIMEOUT + Duration::from_secs(5))
        .await;
    assert_eq!(
        status.code(),
        Some(0),
        "drained proxy must exit 0, got {status}"
    );
    assert!(
        signalled.elapsed() < DRAIN_TIMEOUT,
        "the proxy should exit once in-flight work is done, not at the drain timeout \
         (took {:?})",
        signalled.elapsed()
    );
    let err = tokio::net::TcpStream::connect(entry)
        .await
        .expect_err("the outbound port must refuse connections after exit");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
}
