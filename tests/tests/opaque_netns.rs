//! Transparent interception of opaque TCP: the client in namespace A dials the
//! callee's real address; iptables redirects it to the outbound proxy, which finds
//! the mesh service by SO_ORIGINAL_DST and carries the bytes to namespace B's
//! inbound proxy and on to a TCP echo app. Needs root, `ip` and `iptables`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_tests::netns::{self, NetnsPair};
use weir_tests::process::ChildGuard;
use weir_tests::proxy::{Addrs, Proxy};
use weir_tests::util::{TestDir, within};
use weir_tests::{bins, config};

const APP_PORT: u16 = 7000;
const OUTBOUND_PORT: u16 = 4140;
const INBOUND_PORT: u16 = 4143;

/// Inside a fresh namespace nothing else holds ports, so the design's defaults work.
fn ns_addrs(inbound_ip: [u8; 4]) -> Addrs {
    Addrs {
        outbound: SocketAddr::from(([127, 0, 0, 1], OUTBOUND_PORT)),
        inbound: SocketAddr::from((inbound_ip, INBOUND_PORT)),
        admin: SocketAddr::from(([127, 0, 0, 1], 4191)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_through_iptables_redirect() {
    if let Some(reason) = netns::unavailable_reason() {
        eprintln!("SKIPPED opaque_tcp_through_iptables_redirect: {reason}");
        return;
    }
    // Declaration order matters: processes (declared later) are dropped first, so
    // the namespaces they run in can then be deleted, and logs outlive both.
    let dir = TestDir::new("netns").expect("temp dir");
    let nets = NetnsPair::new().expect("creating network namespaces");

    // Namespace B: the callee pod.
    let mut app = ChildGuard::spawn(
        "tcp-echo",
        nets.b.command(bins::testapp_bin()).args([
            "tcp-echo",
            "--listen",
            &format!("127.0.0.1:{APP_PORT}"),
        ]),
        Some(&dir.join("tcp-echo.log")),
        true,
    )
    .expect("spawn weir-testapp in B");
    app.wait_stdout_line("listening", Duration::from_secs(20))
        .await;
    let b_config = dir.join("b.yaml");
    std::fs::write(&b_config, config::MESH_PERMISSIVE).expect("write B config");
    let inbound = Proxy::builder("inbound-echo", dir.path())
        .service("echo")
        .netns(&nets.b)
        .addrs(ns_addrs([0, 0, 0, 0]))
        .app_addr(SocketAddr::from(([127, 0, 0, 1], APP_PORT)))
        .config(&b_config)
        .start()
        .await;

    // Namespace A: the caller pod, its outbound traffic to B:7000 intercepted.
    let a_config = dir.join("a.yaml");
    let b_inbound = SocketAddr::from((nets.b_ip, INBOUND_PORT));
    std::fs::write(&a_config, config::mesh_with_echo(&[b_inbound])).expect("write A config");
    let outbound = Proxy::builder("outbound-client", dir.path())
        .service("client")
        .netns(&nets.a)
        .addrs(ns_addrs([127, 0, 0, 1]))
        .config(&a_config)
        .start()
        .await;
    let b_ip = nets.b_ip.to_string();
    nets.a
        .iptables(&[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            &b_ip,
            "--dport",
            &APP_PORT.to_string(),
            "-j",
            "REDIRECT",
            "--to-ports",
            &OUTBOUND_PORT.to_string(),
        ])
        .expect("iptables REDIRECT in A");

    // Client-first binary bytes that cannot be mistaken for HTTP.
    let payload: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .chain([0u8, 0xff, 0x13])
        .collect();
    let echoed = within(
        Duration::from_secs(30),
        "opaque echo through the mesh",
        async {
            let mut stream = nets
                .a
                .net()
                .connect(SocketAddr::from((nets.b_ip, APP_PORT)))
                .await
                .expect("connect from A to B:7000");
            // Write and read concurrently: the echo returns bytes while we still send.
            let (mut rd, mut wr) = stream.split();
            let send = async {
                wr.write_all(&payload).await.expect("write");
                wr.shutdown().await.expect("half-close");
            };
            let mut echoed = Vec::new();
            let recv = async {
                rd.read_to_end(&mut echoed).await.expect("read echo");
            };
            tokio::join!(send, recv);
            echoed
        },
    )
    .await;

    assert_eq!(echoed.len(), payload.len(), "echo length");
    assert!(echoed == payload, "echoed bytes differ from what was sent");
    let in_metrics = inbound.metrics().await;
    assert!(
        in_metrics.get(
            "weir_connections_total",
            &[("direction", "inbound"), ("protocol", "opaque")]
        ) >= 1.0,
        "the bytes must have crossed B's inbound proxy as opaque:\n{}",
        in_metrics.describe("weir_connections_total")
    );
    let out_metrics = outbound.metrics().await;
    assert!(
        out_metrics.get(
            "weir_connections_total",
            &[("direction", "outbound"), ("protocol", "opaque")]
        ) >= 1.0,
        "A's outbound proxy must have intercepted the connection:\n{}",
        out_metrics.describe("weir_connections_total")
    );
}
