//! Plain HTTP through the mesh: client → outbound proxy → inbound proxy → app.

use std::time::Duration;

use http::Version;
use weir_tests::apps;
use weir_tests::client::{self, ReqBody};
use weir_tests::util::{Pattern, within};
use weir_tests::{Pair, raw_http};

/// Upper bound for any single test's traffic, so a hung proxy fails the test
/// instead of hanging the run.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_get_reaches_app_with_host_and_version() {
    let app = apps::http::start("app").await;
    let pair = Pair::start(app.addr).await;

    let reply = within(TEST_TIMEOUT, "GET /echo", async {
        client::get_json(pair.entry(), "echo", "/echo?x=1").await
    })
    .await;

    assert_eq!(reply["method"], "GET");
    assert_eq!(reply["path"], "/echo");
    assert_eq!(
        reply["host"], "echo",
        "the original Host must reach the app"
    );
    // HTTP/1 travels proxy-to-proxy over HTTP/2 but must be HTTP/1.1 again at the app.
    assert_eq!(reply["version"], "HTTP/1.1");
    assert_eq!(app.stats.versions(), vec![Version::HTTP_11]);
    assert_eq!(
        pair.inbound
            .metric("weir_requests_total", &[("direction", "inbound")])
            .await,
        1.0,
        "the request must have gone through the inbound proxy"
    );
    // Without identities the mesh is permissive and the hop plaintext: labelled so.
    assert_eq!(
        pair.inbound
            .metric(
                "weir_requests_total",
                &[("direction", "inbound"), ("tls", "false")]
            )
            .await,
        1.0
    );
    assert_eq!(
        pair.outbound
            .metric(
                "weir_requests_total",
                &[("direction", "outbound"), ("dst", "echo")]
            )
            .await,
        1.0
    );
    assert_eq!(
        pair.outbound
            .metric(
                "weir_responses_total",
                &[("direction", "outbound"), ("dst", "echo"), ("class", "2xx")]
            )
            .await,
        1.0
    );
}

/// Posts `len` Mixed-pattern bytes to `path`; returns the app's JSON reply.
async fn post(pair: &Pair, path: &str, body: ReqBody) -> serde_json::Value {
    let mut sender = client::h1(pair.entry()).await;
    let req = client::request("POST", "echo", path, body);
    client::json(client::send1(&mut sender, req).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_20mb_body_arrives_intact() {
    const LEN: u64 = 20 * 1024 * 1024;
    let app = apps::http::start("app").await;
    let pair = Pair::start(app.addr).await;

    let reply = within(TEST_TIMEOUT, "POST 20 MB", async {
        post(&pair, "/echo", client::pattern(Pattern::Mixed, LEN, true)).await
    })
    .await;

    assert_eq!(reply["body_len"], LEN);
    assert_eq!(reply["checksum"], Pattern::Mixed.checksum(LEN));
    assert_eq!(reply["headers"]["content-length"][0], LEN.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_streams_without_content_length() {
    const LEN: u64 = 3 * 1024 * 1024 + 123;
    let app = apps::http::start("app").await;
    let pair = Pair::start(app.addr).await;

    let reply = within(TEST_TIMEOUT, "chunked POST", async {
        post(
            &pair,
            "/upload",
            client::pattern(Pattern::Mixed, LEN, false),
        )
        .await
    })
    .await;

    assert_eq!(reply["body_len"], LEN);
    assert_eq!(reply["checksum"], Pattern::Mixed.checksum(LEN));
    assert!(
        reply["content_length"].is_null(),
        "a streamed body must not gain a Content-Length: {reply}"
    );
    assert_eq!(reply["version"], "HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_reuses_one_connection_per_hop() {
    let app = apps::http::start("app").await;
    let pair = Pair::start(app.addr).await;

    within(TEST_TIMEOUT, "50 sequential requests", async {
        let mut sender = client::h1(pair.entry()).await;
        for i in 0..50 {
            let req = client::request("GET", "echo", &format!("/echo?i={i}"), client::empty());
            let reply = client::json(client::send1(&mut sender, req).await).await;
            assert_eq!(reply["path"], "/echo");
        }
    })
    .await;

    assert_eq!(app.stats.requests(), 50);
    assert_eq!(
        app.stats.connections(),
        1,
        "the inbound proxy must reuse its connection to the app"
    );
    let inbound_conns = pair.inbound.metrics().await;
    assert_eq!(
        inbound_conns.get("weir_connections_total", &[("direction", "inbound")]),
        1.0,
        "the outbound proxy must reuse its connection to the inbound proxy:\n{}",
        inbound_conns.describe("weir_connections_total")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_reaches_app_as_http2() {
    let app = apps::http::start("app").await;
    let pair = Pair::start(app.addr).await;

    let reply = within(TEST_TIMEOUT, "h2c GET", async {
        let mut sender = client::h2(pair.entry()).await;
        let req = http::Request::builder()
            .version(Version::HTTP_2)
            .uri("http://echo/echo")
            .body(client::empty())
            .expect("request");
        let resp = sender.send_request(req).await.expect("h2 request");
        assert_eq!(resp.version(), Version::HTTP_2);
        client::json(resp).await
    })
    .await;

    assert_eq!(reply["version"], "HTTP/2.0");
    assert_eq!(reply["host"], "echo");
    assert_eq!(app.stats.versions(), vec![Version::HTTP_2]);
    assert_eq!(
        pair.outbound
            .metric(
                "weir_connections_total",
                &[("direction", "outbound"), ("protocol", "h2")]
            )
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_destination_passes_through_to_the_address() {
    let app = apps::http::start("app").await;
    let pair = Pair::start(app.addr).await;
    let host = app.addr.to_string();

    let reply = within(TEST_TIMEOUT, "pass-through GET", async {
        client::get_json(pair.entry(), &host, "/echo").await
    })
    .await;

    assert_eq!(reply["host"], host);
    assert_eq!(app.stats.requests(), 1);
    let inbound = pair.inbound.metrics().await;
    assert_eq!(
        inbound.get("weir_requests_total", &[]),
        0.0,
        "pass-through must go straight to the address, not through the mesh:\n{}",
        inbound.describe("weir_requests_total")
    );
    let out = pair.outbound.metrics().await;
    assert_eq!(
        out.get(
            "weir_requests_total",
            &[("direction", "outbound"), ("dst", "passthrough")]
        ),
        1.0,
        "{}",
        out.describe("weir_requests_total")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_proxy_absolute_form_is_routed_by_uri() {
    let app = apps::http::start("app").await;
    let pair = Pair::start(app.addr).await;

    for name in ["echo", "echo.default.svc.cluster.local"] {
        // Written by hand: the request target must be absolute-form exactly as an
        // HTTP_PROXY client sends it.
        let req =
            format!("GET http://{name}/echo HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
        let resp = within(TEST_TIMEOUT, "absolute-form GET", async {
            let mut stream = tokio::net::TcpStream::connect(pair.entry())
                .await
                .expect("connect outbound");
            raw_http::roundtrip(&mut stream, req.as_bytes())
                .await
                .expect("absolute-form response")
        })
        .await;
        assert_eq!(
            resp.status,
            200,
            "{name}: x-weir-error {:?}: {}",
            resp.header("x-weir-error"),
            resp.text()
        );
        let reply = resp.json().expect("app JSON");
        assert_eq!(reply["path"], "/echo", "{name}");
        assert_eq!(reply["host"], name, "the app must see the original Host");
    }
    assert_eq!(app.stats.requests(), 2);
    assert_eq!(
        pair.inbound
            .metric("weir_requests_total", &[("direction", "inbound")])
            .await,
        2.0
    );
}
