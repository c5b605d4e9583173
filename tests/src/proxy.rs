//! `Proxy`: one running `weir-proxy` process on its own ports, killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::netns::{Net, Netns};
use crate::process::ChildGuard;
use crate::raw_http::{self, RawResponse};

/// How long a proxy may take from spawn to `/ready` = 200. Generous because the
/// first start in a run may share two cores with a cargo build.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Free ports are chosen then released before the proxy binds them; another
/// process can take one in between, so a start that fails with "address already in use"
/// is retried on new ports this many times in all.
const START_ATTEMPTS: usize = 3;
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The three listeners of a proxy.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
}

impl Addrs {
    fn free() -> Self {
        let ports = crate::util::free_ports(3).expect("choosing free ports");
        let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        Self {
            outbound: at(ports[0]),
            inbound: at(ports[1]),
            admin: at(ports[2]),
        }
    }
}

pub struct ProxyBuilder {
    name: String,
    log_dir: PathBuf,
    service: String,
    namespace: String,
    service_account: String,
    app_addr: Option<SocketAddr>,
    configs: Vec<PathBuf>,
    drain_timeout: Option<String>,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    fixed_addrs: Option<Addrs>,
    netns: Option<String>,
}

impl ProxyBuilder {
    pub fn service(mut self, service: &str) -> Self {
        self.service = service.into();
        self.service_account = service.into();
        self
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Where the inbound side delivers (`--app-addr`).
    pub fn app_addr(mut self, addr: SocketAddr) -> Self {
        self.app_addr = Some(addr);
        self
    }

    pub fn config(mut self, path: impl Into<PathBuf>) -> Self {
        self.configs.push(path.into());
        self
    }

    pub fn drain_timeout(mut self, dur: &str) -> Self {
        self.drain_timeout = Some(dur.into());
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    /// Takes config (and, with `--token-file`, identity) from `cp`, over TLS verified with its
    /// trust bundle.
    pub fn control_plane(self, cp: &crate::control::ControlPlane) -> Self {
        let bundle = cp.trust_bundle();
        self.arg("--control-plane")
            .arg(&cp.url())
            .arg("--trust-bundle")
            .arg(bundle.to_str().expect("utf-8 path"))
    }

    /// Like [`ProxyBuilder::control_plane`] with several replicas of one mesh (they share its trust
    /// bundle): `--control-plane URL_A,URL_B,…`.
    pub fn control_planes(self, cps: &[&crate::control::ControlPlane]) -> Self {
        let urls: Vec<String> = cps.iter().map(|cp| cp.url()).collect();
        let bundle = cps
            .first()
            .expect("at least one control plane")
            .trust_bundle();
        self.arg("--control-plane")
            .arg(&urls.join(","))
            .arg("--trust-bundle")
            .arg(bundle.to_str().expect("utf-8 path"))
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Fixed listener addresses instead of free loopback ports (used inside a
    /// network namespace, where nothing else can hold the ports).
    pub fn addrs(mut self, addrs: Addrs) -> Self {
        self.fixed_addrs = Some(addrs);
        self
    }

    /// Runs the proxy inside `ns`; admin requests are then made from inside it too.
    pub fn netns(mut self, ns: &Netns) -> Self {
        self.netns = Some(ns.name().into());
        self
    }

    fn command(&self, addrs: &Addrs) -> Command {
        let bin = crate::bins::proxy_bin();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        // Every flag also reads WEIR_<FLAG>; a stray variable in the developer's
        // shell must not change what the test runs.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("WEIR_") {
                cmd.env_remove(key);
            }
        }
        let log_level = std::env::var("WEIR_TEST_PROXY_LOG").unwrap_or_else(|_| "info".into());
        cmd.env("WEIR_LOG", log_level);
        cmd.arg("run")
            .args(["--service", &self.service])
            .args(["--namespace", &self.namespace])
            .args(["--service-account", &self.service_account])
            .arg("--outbound-addr")
            .arg(addrs.outbound.to_string())
            .arg("--inbound-addr")
            .arg(addrs.inbound.to_string())
            .arg("--admin-addr")
            .arg(addrs.admin.to_string());
        if let Some(app) = self.app_addr {
            cmd.arg("--app-addr").arg(app.to_string());
        }
        for config in &self.configs {
            cmd.arg("--config").arg(config);
        }
        if let Some(d) = &self.drain_timeout {
            cmd.args(["--drain-timeout", d]);
        }
        cmd.args(&self.extra_args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Spawns the proxy and waits until `/ready` answers 200.
    pub async fn start(self) -> Proxy {
        let net = self.netns.clone().map(Net::Netns).unwrap_or_default();
        for attempt in 1..=START_ATTEMPTS {
            let addrs = self.fixed_addrs.unwrap_or_else(Addrs::free);
            let log = self.log_dir.join(format!("{}-{attempt}.log", self.name));
            let mut cmd = self.command(&addrs);
            let child = ChildGuard::spawn(&self.name, &mut cmd, Some(&log), false)
                .unwrap_or_else(|e| panic!("spawning {}: {cmd:?}: {e}", self.name));
            let mut proxy = Proxy {
                child,
                addrs,
                net: net.clone(),
            };
            match proxy.wait_ready(READY_TIMEOUT).await {
                Ok(()) => return proxy,
                Err(Some(status))
                    if self.fixed_addrs.is_none()
                        && attempt < START_ATTEMPTS
                        && proxy.child.log_contains("address already in use") =>
                {
                    eprintln!("{} exited ({status}): port taken, retrying", self.name);
                }
                Err(Some(status)) => panic!(
                    "{} exited with {status} before becoming ready; command {cmd:?}; log:\n{}",
                    self.name,
                    proxy.child.log_tail()
                ),
                Err(None) => panic!(
                    "{} not ready (GET /ready on {}) within {READY_TIMEOUT:?}; log:\n{}",
                    self.name,
                    addrs.admin,
                    proxy.child.log_tail()
                ),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }
}

impl ProxyBuilder {
    /// Spawns the proxy without waiting for `/ready`: for a proxy that is expected never to
    /// become ready (e.g. its identity is refused).
    pub fn spawn(self) -> Proxy {
        let addrs = self.fixed_addrs.unwrap_or_else(Addrs::free);
        let log = self.log_dir.join(format!("{}-1.log", self.name));
        let mut cmd = self.command(&addrs);
        let child = ChildGuard::spawn(&self.name, &mut cmd, Some(&log), false)
            .unwrap_or_else(|e| panic!("spawning {}: {cmd:?}: {e}", self.name));
        Proxy {
            child,
            addrs,
            net: self.netns.clone().map(Net::Netns).unwrap_or_default(),
        }
    }
}

pub struct Proxy {
    child: ChildGuard,
    addrs: Addrs,
    net: Net,
}

impl Proxy {
    /// A builder for a proxy named `name` (used in logs) writing its log in `log_dir`.
    pub fn builder(name: &str, log_dir: impl Into<PathBuf>) -> ProxyBuilder {
        ProxyBuilder {
            name: name.into(),
            log_dir: log_dir.into(),
            service: name.into(),
            namespace: "default".into(),
            service_account: name.into(),
            app_addr: None,
            configs: Vec::new(),
            drain_timeout: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            fixed_addrs: None,
            netns: None,
        }
    }

    pub fn outbound(&self) -> SocketAddr {
        self.addrs.outbound
    }

    pub fn inbound(&self) -> SocketAddr {
        self.addrs.inbound
    }

    pub fn admin(&self) -> SocketAddr {
        self.addrs.admin
    }

    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    pub fn name(&self) -> &str {
        self.child.name()
    }

    pub fn log_tail(&self) -> String {
        self.child.log_tail()
    }

    /// Whether the whole log contains `needle` (case-insensitive).
    pub fn log_contains(&self, needle: &str) -> bool {
        self.child.log_contains(needle)
    }

    /// `Err(Some(status))` if the process exited, `Err(None)` on timeout.
    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Some(status));
            }
            // Connection refused until the admin listener is bound: keep polling.
            if let Ok(resp) = self.admin_request("GET", "/ready").await
                && resp.status == 200
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One admin request over a fresh connection (HTTP/1.0 semantics, closed after).
    pub async fn admin_request(&self, method: &str, path: &str) -> std::io::Result<RawResponse> {
        let fut = async {
            let mut stream = self.net.connect(self.addrs.admin).await?;
            let req = format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.addrs.admin
            );
            raw_http::roundtrip(&mut stream, req.as_bytes()).await
        };
        tokio::time::timeout(ADMIN_TIMEOUT, fut)
            .await
            .map_err(|_| std::io::Error::other(format!("admin {method} {path} timed out")))?
    }

    /// Calls each service once through the outbound listener, as an app's first call would,
    /// so the proxy subscribes to it (scoped discovery); the answers do not matter.
    pub async fn call_once(&self, services: &[&str]) {
        for service in services {
            let _ = raw_http::get(self.addrs.outbound, service, "/").await;
        }
    }

    /// GET an admin path; panics if the request fails at the transport level.
    pub async fn admin_get(&self, path: &str) -> RawResponse {
        self.admin_request("GET", path)
            .await
            .unwrap_or_else(|e| panic!("{}: GET {path}: {e}", self.name()))
    }

    pub async fn metrics(&self) -> Metrics {
        let resp = self.admin_get("/metrics").await;
        assert_eq!(
            resp.status,
            200,
            "{}: /metrics: {}",
            self.name(),
            resp.text()
        );
        Metrics::parse(&resp.text())
    }

    /// Sum of the series `name` matching `labels` (0 if absent).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metrics().await.get(name, labels)
    }

    /// `version` from `GET /config`.
    pub async fn config_version(&self) -> u64 {
        let resp = self.admin_get("/config").await;
        assert_eq!(
            resp.status,
            200,
            "{}: /config: {}",
            self.name(),
            resp.text()
        );
        let json = resp.json().unwrap_or_else(|e| {
            panic!(
                "{}: /config is not JSON ({e}): {}",
                self.name(),
                resp.text()
            )
        });
        json.get("version")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_else(|| panic!("{}: /config has no u64 version: {json}", self.name()))
    }

    pub fn signal(&mut self, sig: libc::c_int) {
        let name = self.name().to_string();
        self.child
            .signal(sig)
            .unwrap_or_else(|e| panic!("signal {sig} to {name}: {e}"));
    }

    /// Waits for the process to exit; panics if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.child.wait_exit(timeout).await {
            Some(status) => status,
            None => panic!(
                "{} still running {timeout:?} later; log:\n{}",
                self.name(),
                self.child.log_tail()
            ),
        }
    }

    /// Current RSS in kB; panics if the process is gone.
    pub fn rss_kb(&self) -> u64 {
        crate::process::rss_kb(self.pid())
            .unwrap_or_else(|| panic!("{}: no VmRSS in /proc/{}/status", self.name(), self.pid()))
    }
}
