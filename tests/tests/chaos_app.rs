//! The chaos app on its own, no proxy: every misbehaviour the resilience tests
//! build on must do exactly what its spec says, or those tests prove nothing.

use std::io::ErrorKind;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use weir_tests::apps::chaos::{self, Fault, Outcome, Spec};
use weir_tests::client::{self, ReqBody};
use weir_tests::raw_http;
use weir_tests::util::{wait_until, within};

/// Upper bound for any one test, so a hung app fails the test instead of the run.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Generous: waits end as soon as the condition holds.
const WAIT: Duration = Duration::from_secs(10);

fn request(method: &str, path: &str, spec: Option<&str>, body: ReqBody) -> Request<ReqBody> {
    let mut req = client::request(method, "chaos", path, body);
    if let Some(spec) = spec {
        let value = HeaderValue::from_str(spec).expect("spec is a header value");
        req.headers_mut().insert(chaos::CHAOS_HEADER, value);
    }
    req
}

/// An h2c request: HTTP/2 needs the absolute form.
fn request2(path: &str, spec: Option<&str>) -> Request<ReqBody> {
    let mut req = Request::builder()
        .uri(format!("http://chaos{path}"))
        .body(client::empty())
        .expect("request");
    if let Some(spec) = spec {
        let value = HeaderValue::from_str(spec).expect("spec is a header value");
        req.headers_mut().insert(chaos::CHAOS_HEADER, value);
    }
    req
}

/// GET on a fresh HTTP/1.1 connection.
async fn get(
    app: &chaos::ChaosServer,
    path: &str,
    spec: Option<&str>,
) -> (StatusCode, HeaderMap, Bytes) {
    let mut conn = client::h1(app.addr()).await;
    let resp = client::send1(&mut conn, request("GET", path, spec, client::empty())).await;
    client::collect(resp).await
}

fn raw_get(path: &str, spec: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: chaos\r\nx-chaos: {spec}\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_first_n_then_ok() {
    let app = chaos::start("alpha").await;
    within(TEST_TIMEOUT, "status calls", async {
        let mut conn = client::h1(app.addr()).await;
        let mut statuses = Vec::new();
        for _ in 0..4 {
            let req = request(
                "GET",
                "/p",
                Some("status=503,first=2,key=abc"),
                client::empty(),
            );
            let (status, headers, body) =
                client::collect(client::send1(&mut conn, req).await).await;
            assert_eq!(headers[chaos::SERVER_HEADER], "alpha");
            let reply: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
            assert_eq!(reply["server"], "alpha");
            assert_eq!(reply["key"], "abc");
            statuses.push(status.as_u16());
        }
        assert_eq!(statuses, [503, 503, 200, 200]);
    })
    .await;
    assert_eq!(app.calls("abc"), 4);
    assert_eq!(app.calls("/p"), 0, "key= replaces the path as counting key");
    assert_eq!(app.total_calls(), 4);
    assert_eq!(app.status_count("abc", 503), 2);
    assert_eq!(
        app.statuses("abc").into_iter().collect::<Vec<_>>(),
        [(200, 2), (503, 2)]
    );
    assert_eq!(app.total_status(503), 2);
    assert_eq!(app.keys(), ["abc"]);
    assert_eq!(app.stats().connections(), 1, "503s keep the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_spec_applies_without_header_and_header_overrides() {
    let app = chaos::start("d").await;
    within(TEST_TIMEOUT, "default spec", async {
        app.set_default("status=502").expect("valid spec");
        assert_eq!(get(&app, "/d", None).await.0, StatusCode::BAD_GATEWAY);
        assert_eq!(get(&app, "/d", Some("ok")).await.0, StatusCode::OK);
        assert_eq!(
            get(&app, "/d", Some("status=504")).await.0,
            StatusCode::GATEWAY_TIMEOUT
        );
        app.set_default("").expect("empty spec");
        assert_eq!(get(&app, "/d", None).await.0, StatusCode::OK);
        assert!(app.set_default("status=oops").is_err());

        let (status, headers, _) = get(&app, "/d", Some("status=503,reset")).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "a bad spec is answered, not ignored"
        );
        let reason = headers["x-chaos-error"].to_str().expect("ASCII");
        assert!(reason.contains("conflicts"), "{reason}");
    })
    .await;
    assert_eq!(
        app.statuses("/d").into_iter().collect::<Vec<_>>(),
        [(200, 2), (400, 1), (502, 1), (504, 1)]
    );
}

#[test]
fn spec_grammar() {
    let spec: Spec = " status=503 , first=2,key=abc,delay=1s "
        .parse()
        .expect("valid");
    assert_eq!(
        spec.fault,
        Some(Fault::Status(StatusCode::SERVICE_UNAVAILABLE))
    );
    assert_eq!((spec.first, spec.key.as_deref()), (Some(2), Some("abc")));
    assert_eq!(spec.delay, Some(Duration::from_secs(1)));
    let refuse: Spec = "refuse=250ms".parse().expect("valid");
    assert_eq!(
        refuse.fault,
        Some(Fault::Refuse(Some(Duration::from_millis(250))))
    );
    assert_eq!(
        "reset=conn".parse::<Spec>().map(|s| s.fault),
        Ok(Some(Fault::ResetConnection))
    );
    assert_eq!("".parse::<Spec>(), Ok(Spec::default()));
    for bad in [
        "status=abc",
        "status=99",
        "status=503,hang",
        "ok,reset",
        "percent=101",
        "delay=5",
        "delay=2m",
        "first=1,first=2",
        "bogus",
        "key=",
        "reset=stream",
        "hang=1s",
    ] {
        assert!(bad.parse::<Spec>().is_err(), "{bad:?} must not parse");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_holds_the_answer() {
    let app = chaos::start("slow").await;
    let started = Instant::now();
    let (status, _, _) = within(
        TEST_TIMEOUT,
        "delayed GET",
        get(&app, "/slow", Some("delay=200ms")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    let log = app.log("/slow");
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].outcome, Outcome::Status(200));
    assert!(log[0].arrived >= started);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_on_http1_is_a_connection_error() {
    let app = chaos::start("r").await;
    within(TEST_TIMEOUT, "resets", async {
        let mut stream = TcpStream::connect(app.addr()).await.expect("connect");
        let err = raw_http::roundtrip(&mut stream, raw_get("/r", "reset").as_bytes())
            .await
            .expect_err("no response after a reset");
        assert_eq!(
            err.kind(),
            ErrorKind::ConnectionReset,
            "RST, not FIN: {err}"
        );

        let mut conn = client::h1(app.addr()).await;
        let sent = conn
            .send_request(request("GET", "/r", Some("reset,first=2"), client::empty()))
            .await;
        assert!(sent.is_err(), "hyper must see an error, got {sent:?}");
        // Call 3 of /r is outside first=2, so it is answered.
        assert_eq!(
            get(&app, "/r", Some("reset,first=2")).await.0,
            StatusCode::OK
        );
    })
    .await;
    assert_eq!(app.resets("/r"), 2);
    assert_eq!(app.total_resets(), 2);
    assert_eq!(app.calls("/r"), 3);
    assert_eq!(app.in_flight("/r"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_on_h2_is_per_stream_unless_conn() {
    let app = chaos::start("r2").await;
    within(TEST_TIMEOUT, "h2 resets", async {
        let mut h2 = client::h2(app.addr()).await;
        let sent = h2.send_request(request2("/s", Some("reset"))).await;
        assert!(
            sent.is_err(),
            "RST_STREAM must fail the request, got {sent:?}"
        );
        let ok = h2
            .send_request(request2("/s", None))
            .await
            .expect("same connection still serves");
        assert_eq!(ok.status(), StatusCode::OK);

        let sent = h2.send_request(request2("/s", Some("reset=conn"))).await;
        assert!(sent.is_err(), "{sent:?}");
        let after = h2.send_request(request2("/s", None)).await;
        assert!(after.is_err(), "the connection must be gone, got {after:?}");
    })
    .await;
    assert_eq!(app.resets("/s"), 2);
    assert_eq!(app.stats().connections(), 1);
    assert_eq!(app.stats().versions(), vec![http::Version::HTTP_2; 3]);
}

async fn connect_refused(app: &chaos::ChaosServer) -> bool {
    matches!(TcpStream::connect(app.addr()).await, Err(e) if e.kind() == ErrorKind::ConnectionRefused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_closes_the_port_until_told_otherwise() {
    let app = chaos::start("down").await;
    let addr = app.addr();
    within(TEST_TIMEOUT, "refuse", async {
        let mut pooled = client::h1(addr).await;
        let ok = client::send1(&mut pooled, request("GET", "/x", None, client::empty())).await;
        assert_eq!(ok.status(), StatusCode::OK);

        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let answer = raw_http::roundtrip(&mut stream, raw_get("/x", "refuse").as_bytes()).await;
        assert!(answer.is_err(), "going down answers nothing: {answer:?}");
        assert!(app.refusing());
        assert!(
            connect_refused(&app).await,
            "connects must get ECONNREFUSED"
        );
        let pooled_again = pooled
            .send_request(request("GET", "/x", None, client::empty()))
            .await;
        assert!(
            pooled_again.is_err(),
            "open connections die too: {pooled_again:?}"
        );

        app.refuse_connections(false).await.expect("listen again");
        assert!(!app.refusing());
        assert_eq!(get(&app, "/x", None).await.0, StatusCode::OK);
        assert_eq!(app.addr(), addr);

        app.refuse_connections(true).await.expect("go down");
        assert!(connect_refused(&app).await);
        app.refuse_connections(false).await.expect("listen again");
        assert_eq!(get(&app, "/x", None).await.0, StatusCode::OK);
    })
    .await;
    let outcomes: Vec<Outcome> = app.log("/x").iter().map(|c| c.outcome).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Status(200),
            Outcome::Refused,
            Outcome::Status(200),
            Outcome::Status(200)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_refuse_comes_back_by_itself() {
    let app = chaos::start("blip").await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(app.addr()).await.expect("connect");
    let answer = raw_http::roundtrip(&mut stream, raw_get("/t", "refuse=1s").as_bytes()).await;
    assert!(answer.is_err(), "{answer:?}");
    assert!(connect_refused(&app).await);
    wait_until("the app listens again", WAIT, || async {
        !connect_refused(&app).await
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(get(&app, "/t", None).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_is_an_exact_even_spread() {
    let app = chaos::start("p").await;
    let pattern = |key: &'static str| {
        let app = &app;
        async move {
            let mut conn = client::h1(app.addr()).await;
            let mut failed = Vec::new();
            for _ in 0..100 {
                let spec = format!("status=500,percent=50,key={key}");
                let req = request("GET", "/", Some(&spec), client::empty());
                let resp = client::send1(&mut conn, req).await;
                failed.push(client::collect(resp).await.0 == StatusCode::INTERNAL_SERVER_ERROR);
            }
            failed
        }
    };
    let (a, b) = within(TEST_TIMEOUT, "200 calls", async {
        (pattern("a").await, pattern("b").await)
    })
    .await;
    assert_eq!(a.iter().filter(|f| **f).count(), 50);
    assert_eq!(a, b, "the same sequence every time");
    assert_eq!(app.status_count("a", 500), 50);

    let thirty: Spec = "percent=30".parse().expect("valid");
    let hits: Vec<u64> = (1..=10).filter(|n| thirty.misbehaves(*n)).collect();
    assert_eq!(hits, [4, 7, 10]);
    let scoped: Spec = "percent=50,first=4".parse().expect("valid");
    assert_eq!((1..=8).filter(|n| scoped.misbehaves(*n)).count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_attempts_deadlines_and_bodies_per_key() {
    let app = chaos::start("rec").await;
    within(TEST_TIMEOUT, "two POSTs", async {
        let mut conn = client::h1(app.addr()).await;
        for (attempt, timeout) in [("1", "900"), ("2", "450")] {
            let mut req = request(
                "POST",
                "/pay",
                Some("status=503,first=1"),
                client::full("hello"),
            );
            let headers = req.headers_mut();
            headers.insert("x-weir-attempt", HeaderValue::from_static(attempt));
            headers.insert("x-weir-timeout-ms", HeaderValue::from_static(timeout));
            headers.insert("grpc-timeout", HeaderValue::from_static("100m"));
            client::collect(client::send1(&mut conn, req).await).await;
        }
        let req = request("POST", "/pay", None, client::full("other"));
        client::collect(client::send1(&mut conn, req).await).await;
    })
    .await;
    assert_eq!(app.attempt_headers("/pay"), ["1", "2"]);
    assert_eq!(app.deadline_headers("/pay"), ["900", "450"]);
    assert_eq!(app.grpc_timeouts("/pay"), ["100m", "100m"]);
    let hashes = app.body_hashes("/pay");
    assert_eq!(hashes.len(), 3);
    assert_eq!(hashes[0], hashes[1], "a retried POST carries the same body");
    assert_ne!(hashes[0], hashes[2]);
    assert_eq!(app.body_bytes("/pay"), 15);
    let arrivals = app.arrivals("/pay");
    assert!(arrivals.windows(2).all(|w| w[0] <= w[1]), "{arrivals:?}");
    let log = app.log("/pay");
    assert_eq!(log[0].method, http::Method::POST);
    assert_eq!(log[2].attempt, None);
    assert_eq!(log.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        app.statuses("/pay").into_iter().collect::<Vec<_>>(),
        [(200, 2), (503, 1)]
    );
    assert_eq!(app.total_in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_lasts_until_the_client_gives_up() {
    let app = chaos::start("hang").await;
    within(TEST_TIMEOUT, "hangs", async {
        // HTTP/1: the client closes its connection.
        let mut stream = TcpStream::connect(app.addr()).await.expect("connect");
        stream
            .write_all(raw_get("/h", "hang").as_bytes())
            .await
            .expect("write");
        let waited = tokio::time::timeout(
            Duration::from_millis(200),
            raw_http::read_response(&mut stream),
        )
        .await;
        assert!(waited.is_err(), "hang must not answer: {waited:?}");
        app.wait_for_in_flight("/h", 1, WAIT).await;
        drop(stream);
        app.wait_for_in_flight("/h", 0, WAIT).await;

        // HTTP/2: the client cancels the stream; the connection lives on.
        let mut h2 = client::h2(app.addr()).await;
        let waited = tokio::time::timeout(
            Duration::from_millis(200),
            h2.send_request(request2("/h", Some("hang"))),
        )
        .await;
        assert!(waited.is_err(), "hang must not answer");
        app.wait_for_in_flight("/h", 0, WAIT).await;
        let ok = h2
            .send_request(request2("/h", None))
            .await
            .expect("connection still serves");
        assert_eq!(ok.status(), StatusCode::OK);
    })
    .await;
    assert_eq!(app.cancelled("/h"), 2);
    assert_eq!(app.calls("/h"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_wake_on_calls_and_in_flight() {
    let app = chaos::start("w").await;
    let addr = app.addr();
    let callers = tokio::spawn(async move {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut conn = client::h1(addr).await;
            let resp = client::send1(&mut conn, request("GET", "/w", None, client::empty())).await;
            assert_eq!(resp.status(), StatusCode::OK);
        }
    });
    app.wait_for_calls("/w", 3, WAIT).await;
    assert_eq!(app.calls("/w"), 3);
    callers.await.expect("callers");

    // A full bulkhead: three hanging requests, all inside the app at once.
    let mut hung = Vec::new();
    for _ in 0..3 {
        let mut h2 = client::h2(addr).await;
        hung.push(tokio::spawn(async move {
            h2.send_request(request2("/b", Some("hang"))).await
        }));
    }
    app.wait_for_in_flight("/b", 3, WAIT).await;
    app.wait_for_total_calls(6, WAIT).await;
    for task in &hung {
        task.abort();
    }
    app.wait_for_in_flight("/b", 0, WAIT).await;

    let timed_out = tokio::spawn(async move {
        app.wait_for_calls("/never", 1, Duration::from_millis(50))
            .await;
    })
    .await;
    assert!(
        timed_out.is_err_and(|e| e.is_panic()),
        "a wait that times out must fail the test"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connections_kills_pooled_connections_only() {
    let app = chaos::start("pool").await;
    within(TEST_TIMEOUT, "reset_connections", async {
        let mut pooled = client::h1(app.addr()).await;
        let ok = client::send1(&mut pooled, request("GET", "/k", None, client::empty())).await;
        assert_eq!(client::collect(ok).await.0, StatusCode::OK);
        app.reset_connections().await.expect("reset");
        let sent = pooled
            .send_request(request("GET", "/k", None, client::empty()))
            .await;
        assert!(sent.is_err(), "{sent:?}");
        assert_eq!(
            get(&app, "/k", None).await.0,
            StatusCode::OK,
            "still listening"
        );
    })
    .await;
}
