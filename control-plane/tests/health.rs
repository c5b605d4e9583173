//! `weir-control serve --admin-addr`: the real binary answers the kubelet's probes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Kills the server however the test ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

/// The address after `marker` in the server's log, within the deadline.
fn logged_addr(lines: &mpsc::Receiver<String>, marker: &str, deadline: Instant) -> SocketAddr {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("weir-control never logged {marker:?}"));
        if let Some((_, rest)) = line.split_once(marker) {
            let addr = rest.split_whitespace().next().unwrap_or_default();
            return addr
                .parse()
                .unwrap_or_else(|_| panic!("no address in {line:?}"));
        }
    }
}

#[test]
fn live_and_ready_once_serving() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir-control"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .env("WEIR_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start weir-control");
    let stderr = child.stderr.take().expect("piped stderr");
    let _server = Server(child);
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });

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
