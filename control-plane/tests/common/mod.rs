//! Running the real `weir-control` binary in tests: started with none of the caller's WEIR_*
//! variables, killed however the test ends, and its log read line by line.
#![allow(dead_code)] // Each test binary uses its own part.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

/// Kills the server however the test ends.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `weir-control serve` on a free port with `data` as its data directory and none of the
/// caller's WEIR_* variables, so only what a test sets reaches it.
pub fn serve(data: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir-control"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("WEIR_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data)
        .env("WEIR_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Starts `cmd` (with stderr piped) and its log's lines, read on a thread of their own.
pub fn start(cmd: &mut Command) -> (Server, mpsc::Receiver<String>) {
    let mut child = cmd.spawn().expect("start weir-control");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (Server(child), lines)
}

/// The address after `marker` in the server's log, within the deadline.
pub fn logged_addr(lines: &mpsc::Receiver<String>, marker: &str, deadline: Instant) -> SocketAddr {
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
