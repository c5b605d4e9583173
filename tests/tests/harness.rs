//! Checks the harness itself, without any proxy: the test apps answer as the
//! proxy tests expect, so a failure elsewhere points at the proxy, not at us.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use weir_tests::apps;
use weir_tests::client;
use weir_tests::pb::EchoRequest;
use weir_tests::pb::echo_service_client::EchoServiceClient;
use weir_tests::process::ChildGuard;
use weir_tests::util::{Pattern, TestDir, within};
use weir_tests::{bins, raw_http};

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_app_routes_work_directly() {
    let app = apps::http::start("direct").await;
    within(T, "direct requests", async {
        let host = app.addr.to_string();
        let reply = client::get_json(app.addr, &host, "/echo").await;
        assert_eq!(reply["app"], "direct");
        assert_eq!(reply["version"], "HTTP/1.1");

        let mut sender = client::h1(app.addr).await;
        let len = 1_000_003;
        let req = client::request(
            "POST",
            &host,
            "/upload",
            client::pattern(Pattern::Mixed, len, false),
        );
        let reply = client::json(client::send1(&mut sender, req).await).await;
        assert_eq!(reply["body_len"], len);
        assert_eq!(reply["checksum"], Pattern::Mixed.checksum(len));
        assert!(reply["content_length"].is_null(), "{reply}");

        let req = client::request("GET", &host, "/bytes?n=300000", client::empty());
        let resp = client::send1(&mut sender, req).await;
        assert_eq!(
            client::drain(resp.into_body()).await.expect("body"),
            300_000
        );

        let mut stream = tokio::net::TcpStream::connect(app.addr)
            .await
            .expect("connect");
        let resp = raw_http::roundtrip(
            &mut stream,
            b"GET http://echo/echo HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("raw request");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json().expect("json")["host"], "echo");

        let mut h2 = client::h2(app.addr).await;
        let req = http::Request::builder()
            .uri("http://echo/echo")
            .body(client::empty())
            .expect("request");
        let reply = client::json(h2.send_request(req).await.expect("h2")).await;
        assert_eq!(reply["version"], "HTTP/2.0");
        assert_eq!(reply["host"], "echo");

        let stream = tokio::net::TcpStream::connect(app.addr)
            .await
            .expect("connect");
        let req = "ws://echo/ws".into_client_request().expect("ws request");
        let (mut ws, _) = tokio_tungstenite::client_async(req, stream)
            .await
            .expect("ws");
        ws.send(Message::text("ping")).await.expect("send");
        assert_eq!(
            ws.next().await.expect("msg").expect("msg"),
            Message::text("ping")
        );
    })
    .await;
    assert_eq!(app.stats.connections(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_app_answers_directly() {
    let app = apps::grpc::start().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .expect("endpoint")
        .origin("http://echo".parse().expect("origin"))
        .connect()
        .await
        .expect("connect");
    let mut c = EchoServiceClient::new(channel);
    let resp = within(
        T,
        "Echo",
        c.echo(EchoRequest {
            message: "x".into(),
            seq: 1,
        }),
    )
    .await
    .expect("Echo");
    assert!(
        resp.metadata().get(apps::grpc::TRAILER_NAME).is_some(),
        "{:?}",
        resp.metadata()
    );
    assert_eq!(app.stats.hosts(), vec!["echo"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testapp_binary_reports_its_address() {
    let dir = TestDir::new("testapp").expect("temp dir");
    let mut cmd = std::process::Command::new(bins::testapp_bin());
    cmd.args(["tcp-echo", "--listen", "127.0.0.1:0"]);
    let mut app =
        ChildGuard::spawn("tcp-echo", &mut cmd, Some(&dir.join("app.log")), true).expect("spawn");
    let addr: std::net::SocketAddr = app
        .wait_stdout_line("listening", T)
        .await
        .parse()
        .expect("address");
    within(T, "tcp echo", async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"abc").await.expect("write");
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"abc");
    })
    .await;
}

/// The namespace plumbing the opaque test relies on: veth reachability from A to
/// B, and an iptables REDIRECT in A delivering to a loopback listener in A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_pair_and_redirect_work() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use weir_tests::netns::{self, NetnsPair};
    if let Some(reason) = netns::unavailable_reason() {
        eprintln!("SKIPPED netns_pair_and_redirect_work: {reason}");
        return;
    }
    let dir = TestDir::new("netns-harness").expect("temp dir");
    let nets = NetnsPair::new().expect("namespaces");
    let spawn_echo = |ns: &netns::Netns, listen: String, log: &str| {
        let mut cmd = ns.command(bins::testapp_bin());
        cmd.args(["tcp-echo", "--listen", &listen]);
        ChildGuard::spawn(log, &mut cmd, Some(&dir.join(log)), true).expect("spawn")
    };
    let mut in_b = spawn_echo(&nets.b, format!("{}:7000", nets.b_ip), "echo-b");
    in_b.wait_stdout_line("listening", T).await;
    let mut in_a = spawn_echo(&nets.a, "127.0.0.1:4140".into(), "echo-a");
    in_a.wait_stdout_line("listening", T).await;

    let roundtrip = |addr: std::net::SocketAddr| {
        let net = nets.a.net();
        async move {
            let mut s = net.connect(addr).await.expect("connect from A");
            s.write_all(b"xyz").await.expect("write");
            let mut buf = [0u8; 3];
            s.read_exact(&mut buf).await.expect("read");
            assert_eq!(&buf, b"xyz");
        }
    };
    let b_addr = std::net::SocketAddr::from((nets.b_ip, 7000));
    within(T, "A to B over veth", roundtrip(b_addr)).await;
    // Kill B's echo: from now on only the redirect can answer.
    in_b.kill();
    nets.a
        .iptables(&[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            &nets.b_ip.to_string(),
            "--dport",
            "7000",
            "-j",
            "REDIRECT",
            "--to-ports",
            "4140",
        ])
        .expect("iptables");
    within(T, "A to B redirected to A's loopback", roundtrip(b_addr)).await;
}
