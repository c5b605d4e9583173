//! CONNECT tunnels, `Expect: 100-continue`, and the proxy's own error answers.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_tests::util::{TestDir, within};
use weir_tests::{Pair, Proxy, apps, config, raw_http};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads one response head (up to the blank line) and nothing more.
async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.expect("read head");
        assert!(n == 1, "connection closed inside a response head: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnel_to_a_mesh_service_rides_the_mesh() {
    let app = apps::http::start("app").await;
    let pair = Pair::start(app.addr).await;

    let reply = within(TEST_TIMEOUT, "CONNECT echo:80", async {
        let mut s = tokio::net::TcpStream::connect(pair.entry())
            .await
            .expect("connect");
        s.write_all(b"CONNECT echo:80 HTTP/1.1\r\nHost: echo:80\r\n\r\n")
            .await
            .expect("write");
        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "CONNECT answer: {head}");
        // Inside the tunnel: plain HTTP/1.1 to whatever is at the far end.
        raw_http::roundtrip(
            &mut s,
            b"GET /echo HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("request through the tunnel")
    })
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json().expect("json")["path"], "/echo");
    // The tunnel is opaque to the proxies: the far side saw an opaque stream, not HTTP.
    assert_eq!(
        pair.inbound
            .metric(
                "weir_connections_total",
                &[("direction", "inbound"), ("protocol", "opaque")]
            )
            .await,
        1.0
    );
    assert_eq!(app.stats.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_honoured_end_to_end() {
    let app = apps::http::start("app").await;
    let pair = Pair::start(app.addr).await;
    let body = vec![b'x'; 256 * 1024];

    let reply = within(TEST_TIMEOUT, "Expect: 100-continue upload", async {
        let mut s = tokio::net::TcpStream::connect(pair.entry()).await.expect("connect");
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: echo\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.expect("write head");
        // The client holds the body back until the interim answer arrives.
        let interim = read_head(&mut s).await;
        assert!(interim.starts_with("HTTP/1.1 100"), "expected 100 Continue, got: {interim}");
        s.write_all(&body).await.expect("write body");
        raw_http::read_response(&mut s).await.expect("final response")
    })
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json().expect("json")["body_len"], body.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_without_endpoints_gets_503_no_endpoints() {
    let dir = TestDir::new("noendpoints").expect("dir");
    let path = dir.join("mesh.yaml");
    let policy = "apiVersion: weir/v1\nkind: ServicePolicy\nmetadata: { name: ghost, namespace: default }\nspec: { service: ghost }\n";
    std::fs::write(&path, config::documents(&[config::MESH_PERMISSIVE, policy])).expect("write");
    let proxy = Proxy::builder("client", dir.path())
        .service("client")
        .config(&path)
        .start()
        .await;

    let rsp = within(TEST_TIMEOUT, "GET ghost", async {
        raw_http::get(proxy.outbound(), "ghost.default", "/")
            .await
            .expect("response")
    })
    .await;
    assert_eq!(rsp.status, 503);
    assert_eq!(rsp.header("x-weir-error"), Some("no-endpoints"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mtls_without_identity_fails_closed() {
    let app = apps::http::start("app").await;
    let dir = TestDir::new("strict").expect("dir");
    let path = dir.join("mesh.yaml");
    // No MeshConfig: mtls defaults to strict, and this proxy has no identity yet.
    std::fs::write(&path, config::endpoints("echo", "default", &[app.addr])).expect("write");
    let proxy = Proxy::builder("client", dir.path())
        .service("client")
        .config(&path)
        .start()
        .await;

    let rsp = within(TEST_TIMEOUT, "GET echo under strict", async {
        raw_http::get(proxy.outbound(), "echo", "/echo")
            .await
            .expect("response")
    })
    .await;
    assert_eq!(rsp.status, 502);
    assert_eq!(rsp.header("x-weir-error"), Some("no-identity"));
    assert_eq!(
        app.stats.requests(),
        0,
        "nothing may leave in plaintext under strict mTLS"
    );
}
