//! A real `weir-control serve` process with its own data dir, and `weirctl` runs against it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::bins;
use crate::netns::Net;
use crate::process::ChildGuard;
use crate::util::free_ports;

const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct ControlPlane {
    child: ChildGuard,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    log_dir: PathBuf,
    starts: u32,
    args: Vec<String>,
    /// The network namespace it runs in (and weirctl with it); the host's when `None`.
    netns: Option<String>,
    /// The name weirctl dials instead of the address (its certificate names no IPs).
    host: Option<String>,
}

impl ControlPlane {
    /// Starts a control plane on a free port with `data_dir` (created if missing).
    pub async fn start(data_dir: &Path, log_dir: &Path) -> Self {
        Self::start_with(data_dir, log_dir, &[]).await
    }

    /// Like `start`, with extra `weir-control serve` flags (e.g. `--cert-ttl 3s`).
    pub async fn start_with(data_dir: &Path, log_dir: &Path, args: &[&str]) -> Self {
        let port = free_ports(1).expect("free port")[0];
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        Self::launch(None, None, addr, data_dir, log_dir, args).await
    }

    /// Like `start_with`, inside network namespace `netns` listening on `addr` (an address
    /// of that namespace); `weirctl` then runs there too and dials `host` (a `--server-name`
    /// that resolves to `addr` there).
    pub async fn start_in_netns(
        netns: &str,
        host: &str,
        addr: SocketAddr,
        data_dir: &Path,
        log_dir: &Path,
        args: &[&str],
    ) -> Self {
        Self::launch(Some(netns), Some(host), addr, data_dir, log_dir, args).await
    }

    async fn launch(
        netns: Option<&str>,
        host: Option<&str>,
        addr: SocketAddr,
        data_dir: &Path,
        log_dir: &Path,
        args: &[&str],
    ) -> Self {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let child = spawn(addr, data_dir, log_dir, 1, &args, netns).await;
        Self {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
            starts: 1,
            args,
            netns: netns.map(str::to_owned),
            host: host.map(str::to_owned),
        }
    }

    /// Kills the process (SIGKILL: a crash, not a clean shutdown) and waits for it to be gone.
    pub async fn kill(&mut self) {
        self.child.kill();
    }

    /// Starts again on the same address and data dir.
    pub async fn restart(&mut self) {
        self.child.kill();
        self.starts += 1;
        self.child = spawn(
            self.addr,
            &self.data_dir,
            &self.log_dir,
            self.starts,
            &self.args,
            self.netns.as_deref(),
        )
        .await;
    }

    pub fn url(&self) -> String {
        match &self.host {
            Some(host) => format!("https://{host}:{}", self.addr.port()),
            None => format!("https://{}", self.addr),
        }
    }

    /// The roots that verify this control plane (it writes them at start).
    pub fn trust_bundle(&self) -> PathBuf {
        self.data_dir.join("trust-bundle.pem")
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_owned()
    }

    /// Runs `weirctl ARGS…` against this control plane with its admin token.
    pub fn weirctl(&self, args: &[&str]) -> Output {
        self.weirctl_with_stdin(args, None)
    }

    pub fn weirctl_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write as _;
        let mut cmd = in_netns(self.netns.as_deref(), bins::weirctl_bin());
        cmd.args(["--server", &self.url(), "--token", &self.token()])
            .arg("--trust-bundle")
            .arg(self.trust_bundle())
            .args(args);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn weirctl");
        // Dropping the pipe closes stdin, so weirctl never waits for input nobody sends.
        if let Some(mut pipe) = child.stdin.take()
            && let Some(text) = stdin
        {
            pipe.write_all(text.as_bytes()).expect("weirctl stdin");
        }
        child.wait_with_output().expect("weirctl output")
    }

    /// Writes `yaml` to `path` and `weirctl apply -f`s it; returns weirctl's stdout.
    pub fn apply(&self, path: &Path, yaml: &str) -> String {
        std::fs::write(path, yaml).expect("write policy file");
        self.weirctl_ok(&["apply", "-f", path.to_str().expect("utf-8 path")])
    }

    /// A workload token for `default/SA`, written to `DIR/SA.token`; returns that path.
    pub fn token_file(&self, dir: &Path, service_account: &str) -> String {
        let token = self.weirctl_ok(&[
            "token",
            "create",
            "--namespace",
            "default",
            "--service-account",
            service_account,
        ]);
        let path = dir.join(format!("{service_account}.token"));
        std::fs::write(&path, token.trim()).expect("write token");
        path.to_str().expect("utf-8").to_owned()
    }

    /// `weirctl …` that must succeed; returns stdout.
    pub fn weirctl_ok(&self, args: &[&str]) -> String {
        let out = self.weirctl(args);
        assert!(
            out.status.success(),
            "weirctl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log_tail(&self) -> String {
        self.child.log_tail()
    }

    /// Whether the current process's whole log contains `needle` (case-insensitive).
    pub fn log_contains(&self, needle: &str) -> bool {
        self.child.log_contains(needle)
    }
}

async fn spawn(
    addr: SocketAddr,
    data_dir: &Path,
    log_dir: &Path,
    n: u32,
    args: &[String],
    netns: Option<&str>,
) -> ChildGuard {
    let log = log_dir.join(format!("weir-control-{n}.log"));
    let mut cmd = in_netns(netns, bins::control_bin());
    cmd.args(["serve", "--listen", &addr.to_string(), "--data-dir"])
        .arg(data_dir)
        .args(args);
    let mut child =
        ChildGuard::spawn("weir-control", &mut cmd, Some(&log), false).expect("spawn weir-control");
    let net = netns.map_or(Net::Host, |ns| Net::Netns(ns.to_owned()));
    // Ready = the gRPC port accepts and the admin token and trust bundle exist.
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if data_dir.join("admin.token").is_file()
            && data_dir.join("trust-bundle.pem").is_file()
            && net.connect(addr).await.is_ok()
        {
            return child;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "weir-control exited with {status} before listening; log:\n{}",
                child.log_tail()
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "weir-control not listening on {addr} within {READY_TIMEOUT:?}; log:\n{}",
            child.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `program`, run in `netns` when one is given (`ip netns exec` execs it in place).
fn in_netns(netns: Option<&str>, program: PathBuf) -> Command {
    match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}
