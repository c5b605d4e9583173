//! `weir-control serve --admin-addr`: the real binary answers the kubelet's probes.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{logged_addr, serve, start};

fn get(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = String::new();
    tcp.read_to_string(&mut reply)?;
    reply
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP reply: {reply:?}")))
}

#[test]
fn live_and_ready_once_serving() {
    let data = tempfile::tempdir().expect("tempdir");
    let (_server, lines) = start(serve(data.path()).args(["--admin-addr", "127.0.0.1:0"]));

    let deadline = Instant::now() + Duration::from_secs(30);
    let health = logged_addr(&lines, "health endpoints on ", deadline);
    let grpc = logged_addr(&lines, "weir-control listening on ", deadline);
    loop {
        match get(health, "/ready") {
            Ok(200) => break,
            Ok(503) | Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => panic!("/ready never answered 200: {other:?}"),
        }
    }
    assert_eq!(get(health, "/live").expect("/live"), 200);
    assert_eq!(get(health, "/nope").expect("/nope"), 404);
    // Ready means the gRPC port takes connections.
    TcpStream::connect(grpc).expect("gRPC port accepts once /ready is 200");
    assert_ne!(health.port(), grpc.port());
}
