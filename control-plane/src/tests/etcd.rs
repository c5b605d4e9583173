//! One real etcd member for this test binary (Debian's `etcd-server`), started on first use on
//! free loopback ports. Each test gets its own key prefix, so tests share the member and still
//! see only their own data.
//!
//! The member runs under a small shell that kills it when this process's end of its stdin
//! closes, so it never outlives the test binary, whichever way that ends. [`launch`] starts
//! other members the same way (the TLS tests' in [`super::etcd_tls`]).

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::store::EtcdConfig;

pub struct Member {
    pub client_url: String,
    _child: Child,
    _dir: tempfile::TempDir,
}

static MEMBER: OnceLock<Member> = OnceLock::new();
static NEXT_PREFIX: AtomicU64 = AtomicU64::new(0);

/// Where etcd is on this machine; `.ci/run` installs Debian's `etcd-server`.
pub fn etcd_binary() -> String {
    std::env::var("WEIR_ETCD_BIN").unwrap_or_else(|_| "etcd".into())
}

/// An etcd store config with a prefix no other test uses.
pub fn config() -> EtcdConfig {
    let member = member();
    EtcdConfig {
        prefix: prefix(),
        ..EtcdConfig::parse(&format!("etcd:{}", member.client_url)).expect("etcd config")
    }
}

/// The plaintext member this test binary shares, started on first use.
fn member() -> &'static Member {
    MEMBER.get_or_init(|| launch("http", Vec::new()))
}

/// A key prefix no other test of this binary uses.
pub fn prefix() -> String {
    let n = NEXT_PREFIX.fetch_add(1, Ordering::Relaxed);
    format!("/test-{}-{n}/", std::process::id())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// etcd's own `/health` says it has a leader and serves reads.
pub fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
    if tcp.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}

/// Starts a member whose client URL has `scheme` (`https` needs TLS flags in `extra`, which
/// are added to etcd's command line), and waits until it is healthy. Health is read on a
/// plain-HTTP metrics port, which answers the same whatever the client URL demands.
pub fn launch(scheme: &str, extra: Vec<OsString>) -> Member {
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, peer, metrics) = (free_port(), free_port(), free_port());
    let client_url = format!("{scheme}://127.0.0.1:{client}");
    let metrics_url = format!("http://127.0.0.1:{metrics}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let etcd = etcd_binary();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("\"$@\" & pid=$!; cat >/dev/null; kill $pid; wait $pid")
        .arg("etcd-watchdog")
        .arg(&etcd)
        .args(["--name", "test", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("test={peer_url}")])
        .args(["--listen-metrics-urls", &metrics_url])
        .args(extra)
        .args(["--log-level", "error"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!(
                "cannot start {etcd} (install Debian's etcd-server, or set WEIR_ETCD_BIN): {err}"
            )
        });
    let stderr = child.stderr.take().expect("stderr");
    // Drained so etcd never blocks on a full pipe; kept for the failure message below.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(mut log) = sink.lock() {
                log.push_str(&line);
                log.push('\n');
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if healthy(metrics) {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "etcd exited with {status}: {}",
                log.lock().map(|l| l.clone()).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "etcd not listening on {client_url} within 20s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Member {
        client_url,
        _child: child,
        _dir: dir,
    }
}

/// A TCP link to the etcd member that a test can cut and mend, to take etcd away from one
/// replica while the others still reach it. Its tasks run on the test's runtime, which must
/// be multi-threaded: opening an etcd store blocks the thread that opens it.
pub struct Link {
    pub url: String,
    cut: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Link {
    pub async fn open() -> Link {
        let member = member();
        let target = member
            .client_url
            .strip_prefix("http://")
            .expect("http URL")
            .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind link");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (cut, _) = tokio::sync::watch::channel(false);
        let cut = std::sync::Arc::new(cut);
        let state = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cut = state.subscribe();
                if *cut.borrow() {
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Link { url, cut }
    }

    /// `base` (its prefix, so the same mesh) reaching the member through this link.
    pub fn reach(&self, base: &EtcdConfig) -> EtcdConfig {
        EtcdConfig {
            endpoints: vec![self.url.clone()],
            ..base.clone()
        }
    }

    /// Drops every connection and refuses new ones until [`Link::mend`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn mend(&self) {
        self.cut.send_replace(false);
    }
}
