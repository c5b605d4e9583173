//! Topology and client helpers for the resilience tests (`tests/tests/resilience_*.rs`).
//!
//! The shape every such test uses: an in-test client sends to the caller proxy's outbound
//! listener with `Host: <service>`; the caller applies the callee's `ServicePolicy` (timeouts,
//! retries, breaker, bulkhead, faults) and forwards, plaintext in a permissive mesh, to one of
//! the callee's proxies, whose inbound delivers to a chaos app. Numbers are then read where
//! they happen: calls at the chaos app, statuses and `x-weir-error` at the client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use crate::apps::chaos::{self, ChaosServer};
use crate::client::{self, ReqBody};
use crate::config;
use crate::proxy::Proxy;
use crate::util::{TestDir, wait_until};

/// Every service in these tests lives in the proxies' default namespace.
pub const NS: &str = "default";

/// How long a reload may take to show in `/config`.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// A `ServicePolicy` for `service` whose spec is `spec` (YAML lines, indented here).
pub fn policy(service: &str, spec: &str) -> String {
    let body: String = spec
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("  {l}\n"))
        .collect();
    format!(
        "apiVersion: weir/v1\nkind: ServicePolicy\nmetadata: {{ name: {service}, namespace: {NS} }}\n\
         spec:\n  service: {service}\n{body}"
    )
}

/// One endpoint of a callee: a chaos app and the proxy in front of it.
pub struct Upstream {
    // Drop order: the proxy before its app.
    pub proxy: Proxy,
    pub app: ChaosServer,
}

impl Upstream {
    /// Starts a chaos app named `name` and a proxy for `service` in front of it. `own` is
    /// extra documents for that proxy (e.g. its own ServicePolicy with a `rateLimit`).
    pub async fn start(dir: &TestDir, service: &str, name: &str, own: &[String]) -> Self {
        let app = chaos::start(name).await;
        let path = dir.join(&format!("{name}.yaml"));
        let mut docs = vec![config::MESH_PERMISSIVE.to_string()];
        docs.extend(own.iter().cloned());
        let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
        std::fs::write(&path, config::documents(&refs)).expect("write callee config");
        let proxy = Proxy::builder(name, dir.path())
            .service(service)
            .app_addr(app.addr())
            .config(&path)
            .start()
            .await;
        Upstream { proxy, app }
    }

    /// Where the caller sends: this proxy's inbound listener.
    pub fn addr(&self) -> SocketAddr {
        self.proxy.inbound()
    }
}

/// `Endpoints` for `service` at these addresses.
pub fn endpoints(service: &str, addrs: &[SocketAddr]) -> String {
    config::endpoints(service, NS, addrs)
}

/// The calling side: one proxy whose `--config` file the test may rewrite.
pub struct Caller {
    pub proxy: Proxy,
    pub config: PathBuf,
}

fn caller_file(docs: &[String]) -> String {
    let mut all = vec![config::MESH_PERMISSIVE];
    all.extend(docs.iter().map(String::as_str));
    config::documents(&all)
}

impl Caller {
    /// A proxy for `service` whose config is the permissive mesh plus `docs`.
    pub async fn start(dir: &TestDir, service: &str, docs: &[String]) -> Self {
        let path = dir.join(&format!("{service}-caller.yaml"));
        std::fs::write(&path, caller_file(docs)).expect("write caller config");
        let proxy = Proxy::builder(&format!("{service}-caller"), dir.path())
            .service(service)
            .config(&path)
            .start()
            .await;
        Caller {
            proxy,
            config: path,
        }
    }

    pub fn entry(&self) -> SocketAddr {
        self.proxy.outbound()
    }

    /// Rewrites the config (permissive mesh plus `docs`), sends SIGHUP and waits until the
    /// proxy serves a newer snapshot.
    pub async fn reload(&mut self, docs: &[String]) {
        let before = self.proxy.config_version().await;
        config::write_atomic(&self.config, &caller_file(docs)).expect("rewrite caller config");
        self.proxy.signal(libc::SIGHUP);
        let proxy = &self.proxy;
        wait_until(
            "the caller's config version rises",
            RELOAD_TIMEOUT,
            || async move { proxy.config_version().await > before },
        )
        .await;
    }
}

/// The common case: one caller (`orders`) and one callee service with `n` endpoints, the
/// caller holding the callee's policy.
pub struct Single {
    // Drop order: proxies, then apps, then the dir with the logs.
    pub caller: Caller,
    pub upstreams: Vec<Upstream>,
    pub dir: TestDir,
}

impl Single {
    /// `spec` is the callee's ServicePolicy spec (see [`policy`]); empty for none.
    pub async fn start(label: &str, service: &str, n: usize, spec: &str) -> Self {
        let dir = TestDir::new(label).expect("temp dir");
        let mut upstreams = Vec::new();
        for i in 0..n {
            upstreams.push(Upstream::start(&dir, service, &format!("{service}-{i}"), &[]).await);
        }
        let caller = Caller::start(&dir, "orders", &Self::docs(service, &upstreams, spec)).await;
        Single {
            caller,
            upstreams,
            dir,
        }
    }

    fn docs(service: &str, upstreams: &[Upstream], spec: &str) -> Vec<String> {
        let addrs: Vec<SocketAddr> = upstreams.iter().map(Upstream::addr).collect();
        let mut docs = vec![endpoints(service, &addrs)];
        if !spec.trim().is_empty() {
            docs.push(policy(service, spec));
        }
        docs
    }

    pub fn entry(&self) -> SocketAddr {
        self.caller.entry()
    }

    /// The first endpoint's chaos app.
    pub fn app(&self) -> &ChaosServer {
        &self.upstreams[0].app
    }

    /// Replaces the callee's policy in the caller's config and waits for the reload.
    pub async fn set_policy(&mut self, service: &str, spec: &str) {
        let docs = Self::docs(service, &self.upstreams, spec);
        self.caller.reload(&docs).await;
    }
}

// === client ===

/// What the client got back, and how long it took.
#[derive(Debug, Clone)]
pub struct Reply {
    /// 0 when the request failed at the transport level (see `body`).
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub elapsed: Duration,
}

impl Reply {
    /// `x-weir-error`, when the proxy answered itself.
    pub fn weir_error(&self) -> Option<&str> {
        self.header("x-weir-error")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The chaos app that answered, if one did.
    pub fn server(&self) -> Option<&str> {
        self.header(chaos::SERVER_HEADER)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Builds a request to `host` with extra headers (`x-chaos`, `traceparent`, ...).
pub fn request(
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: ReqBody,
) -> http::Request<ReqBody> {
    let mut req = client::request(method, host, path, body);
    for (k, v) in headers {
        let value = HeaderValue::from_str(v).expect("header value");
        req.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            value,
        );
    }
    req
}

/// A keep-alive HTTP/1.1 connection to a caller's outbound listener. Requests never panic:
/// a transport failure comes back as status 0, so load loops count it instead of dying.
pub struct Conn {
    entry: SocketAddr,
    sender: Option<hyper::client::conn::http1::SendRequest<ReqBody>>,
}

impl Conn {
    pub fn new(entry: SocketAddr) -> Self {
        Conn {
            entry,
            sender: None,
        }
    }

    pub async fn send(&mut self, req: http::Request<ReqBody>) -> Reply {
        let start = Instant::now();
        let result = async {
            if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
                let stream = tokio::net::TcpStream::connect(self.entry)
                    .await
                    .map_err(|e| e.to_string())?;
                self.sender = Some(client::h1_on(stream).await);
            }
            let sender = self.sender.as_mut().expect("just connected");
            sender.ready().await.map_err(|e| e.to_string())?;
            let rsp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let (parts, body) = rsp.into_parts();
            let body = http_body_util::BodyExt::collect(body)
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((parts.status.as_u16(), parts.headers, body))
        }
        .await;
        let elapsed = start.elapsed();
        match result {
            Ok((status, headers, body)) => Reply {
                status,
                headers,
                body,
                elapsed,
            },
            Err(e) => {
                self.sender = None;
                Reply {
                    status: 0,
                    headers: HeaderMap::new(),
                    body: Bytes::from(e),
                    elapsed,
                }
            }
        }
    }

    /// GET `path` on `host` with extra headers.
    pub async fn get(&mut self, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(request("GET", host, path, headers, client::empty()))
            .await
    }
}

/// One request on a fresh connection.
pub async fn send(entry: SocketAddr, req: http::Request<ReqBody>) -> Reply {
    Conn::new(entry).send(req).await
}

/// One GET on a fresh connection.
pub async fn get(entry: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(entry, request("GET", host, path, headers, client::empty())).await
}

/// `total` requests from `workers` concurrent keep-alive connections; `make(i)` builds
/// request `i`. Replies come back in request order.
pub async fn run_workers(
    entry: SocketAddr,
    total: usize,
    workers: usize,
    make: impl Fn(usize) -> http::Request<ReqBody> + Send + Sync + 'static,
) -> Vec<Reply> {
    let make = std::sync::Arc::new(make);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (make, next) = (make.clone(), next.clone());
        tasks.spawn(async move {
            let mut conn = Conn::new(entry);
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return out;
                }
                out.push((i, conn.send(make(i)).await));
            }
        });
    }
    let mut all = Vec::with_capacity(total);
    while let Some(done) = tasks.join_next().await {
        all.extend(done.expect("worker task"));
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// The `p`-th percentile (0..=100) of `samples`, nearest rank.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    assert!(!samples.is_empty(), "no samples");
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// status → count, for messages and prints.
pub fn status_counts(replies: &[Reply]) -> std::collections::BTreeMap<u16, usize> {
    let mut m = std::collections::BTreeMap::new();
    for r in replies {
        *m.entry(r.status).or_insert(0) += 1;
    }
    m
}

/// A W3C `traceparent` with a trace id made from `n`, sampled.
pub fn traceparent(n: u64) -> String {
    format!(
        "00-{:016x}{:016x}-{:016x}-01",
        0x5eed_u64,
        n.max(1),
        n.max(1)
    )
}
