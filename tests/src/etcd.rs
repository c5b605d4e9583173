//! A real three-member etcd cluster on loopback (Debian's `etcd-server`; `.ci/run` installs it),
//! with members that can be killed (SIGKILL) and started again on their data.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::ChildGuard;
use crate::util::{free_ports, wait_until};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<ChildGuard>,
    starts: u32,
}

pub struct EtcdCluster {
    members: Vec<Member>,
    dir: PathBuf,
    initial_cluster: String,
}

fn etcd_binary() -> String {
    std::env::var("WEIR_ETCD_BIN").unwrap_or_else(|_| "etcd".into())
}

impl EtcdCluster {
    /// Starts `n` members under `dir` and waits until the cluster has a leader.
    pub async fn start(dir: &Path, n: usize) -> EtcdCluster {
        let ports = free_ports(2 * n).expect("free ports");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("etcd{i}"),
                client: ports[2 * i],
                peer: ports[2 * i + 1],
                child: None,
                starts: 0,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members,
            dir: dir.to_path_buf(),
            initial_cluster,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            cluster.wait_healthy(i).await;
        }
        cluster
    }

    /// `etcd:http://127.0.0.1:P1,…` for `weir-control serve --store`.
    pub fn store_spec(&self) -> String {
        let urls: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect();
        format!("etcd:{}", urls.join(","))
    }

    fn spawn(&mut self, i: usize) {
        let initial_cluster = self.initial_cluster.clone();
        let m = &mut self.members[i];
        m.starts += 1;
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let data = self.dir.join(format!("{}.data", m.name));
        let log = self.dir.join(format!("{}-{}.log", m.name, m.starts));
        let mut cmd = Command::new(etcd_binary());
        cmd.args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "weir-test"])
            // Loopback: fast elections keep failover tests short.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--log-level", "warn"]);
        let child = ChildGuard::spawn(&m.name, &mut cmd, Some(&log), false).unwrap_or_else(|err| {
            panic!(
                "cannot start {} (install Debian's etcd-server, or set WEIR_ETCD_BIN): {err}",
                etcd_binary()
            )
        });
        m.child = Some(child);
    }

    async fn wait_healthy(&self, i: usize) {
        let port = self.members[i].client;
        let name = self.members[i].name.clone();
        wait_until(&format!("{name} healthy"), READY_TIMEOUT, || async move {
            tokio::task::spawn_blocking(move || healthy(port))
                .await
                .unwrap_or(false)
        })
        .await;
    }

    /// SIGKILL, as a crashed node.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            child.kill();
        }
    }

    /// Starts a killed member again on its data and waits until it serves.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_healthy(i).await;
    }

    /// Starts a killed member again without waiting (it may need others to form a quorum).
    pub fn relaunch(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// Waits until every running member reports a healthy cluster.
    pub async fn wait_all_healthy(&self) {
        for i in 0..self.members.len() {
            if self.members[i].child.is_some() {
                self.wait_healthy(i).await;
            }
        }
    }
}

/// etcd's own `/health`: the member has a leader and serves reads.
fn healthy(port: u16) -> bool {
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
