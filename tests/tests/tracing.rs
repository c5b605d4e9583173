//! Distributed tracing end to end (issue 6): three services call one another in a chain,
//! frontend → catalog → inventory, each app behind its own proxy (inbound delivers to the app,
//! the app's calls leave through the proxy's outbound). Each app copies the trace headers it
//! received onto the call it makes, as instrumented apps do; every proxy exports to one
//! in-process OTLP receiver. What a trace must look like:
//!
//! ```text
//! SERVER frontend ─ CLIENT frontend→catalog ─ CLIENT try #1 ─ SERVER catalog
//!     ─ CLIENT catalog→inventory ─ CLIENT try #1 ─ SERVER inventory
//! ```
//!
//! Spans are waited for as they arrive (the receiver wakes waiters), never slept for.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use weir_tests::apps::{self, RespBody, Server};
use weir_tests::otlp::{OtlpReceiver, ReceivedSpan, SpanKind, StatusCode as SpanStatus};
use weir_tests::util::{BoxError, TestDir, wait_until, within};
use weir_tests::{Proxy, client, config};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Spans leave a proxy in batches at least once a second; generous for two busy cores.
const SPAN_WAIT: Duration = Duration::from_secs(20);
const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);
const OTLP_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

const SERVICES: [&str; 3] = ["frontend", "catalog", "inventory"];
/// What an instrumented app propagates: W3C and both B3 encodings.
const TRACE_HEADERS: [&str; 8] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];
/// One request through the chain: a SERVER span per service, a CLIENT call and a CLIENT try
/// for each of the two calls.
const SPANS_PER_REQUEST: usize = 7;

fn mesh_config(sampling: f64) -> String {
    format!(
        "apiVersion: weir/v1\nkind: MeshConfig\nmetadata: {{ name: default }}\n\
         spec: {{ mtls: permissive, tracing: {{ sampling: {sampling:?} }} }}\n"
    )
}

// === the chain app ===

/// An app that calls `next` (through its own proxy's outbound) with the trace headers it
/// received, answering with what came back; the last one answers itself: `/fail` with 500,
/// anything else with 200 and the trace headers it saw as JSON.
struct ChainApp {
    server: Server,
    /// (own proxy's outbound listener, next service), set once that proxy runs.
    next: Arc<OnceLock<(SocketAddr, &'static str)>>,
}

impl ChainApp {
    async fn start(name: &'static str) -> ChainApp {
        let next = Arc::new(OnceLock::new());
        let n = next.clone();
        let listener = apps::bind_loopback().await;
        let server = apps::serve_http(listener, Arc::default(), move |req| {
            handle(name, n.clone(), req)
        });
        ChainApp { server, next }
    }
}

async fn handle(
    name: &'static str,
    next: Arc<OnceLock<(SocketAddr, &'static str)>>,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let Some(&(outbound, host)) = next.get() else {
        let seen: serde_json::Map<String, serde_json::Value> = TRACE_HEADERS
            .iter()
            .filter_map(|h| Some((h.to_string(), req.headers().get(*h)?.to_str().ok()?.into())))
            .collect();
        let status = match req.uri().path() {
            "/fail" => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::OK,
        };
        let body = serde_json::json!({ "app": name, "headers": seen }).to_string();
        return respond(status, body.into());
    };
    match call_next(outbound, host, &req).await {
        Ok((status, body)) => respond(status, body),
        Err(e) => respond(StatusCode::BAD_GATEWAY, format!("{name}: {e}").into()),
    }
}

async fn call_next(
    outbound: SocketAddr,
    host: &str,
    incoming: &Request<Incoming>,
) -> Result<(StatusCode, Bytes), BoxError> {
    let mut req = client::request("GET", host, incoming.uri().path(), client::empty());
    for name in TRACE_HEADERS {
        for value in incoming.headers().get_all(name) {
            req.headers_mut().append(name, value.clone());
        }
    }
    let stream = tokio::net::TcpStream::connect(outbound).await?;
    let mut sender = client::h1_on(stream).await;
    let rsp = sender.send_request(req).await?;
    let status = rsp.status();
    Ok((status, rsp.into_body().collect().await?.to_bytes()))
}

fn respond(status: StatusCode, body: Bytes) -> Response<RespBody> {
    let mut rsp = Response::new(Full::new(body).map_err(|e| match e {}).boxed_unsync());
    *rsp.status_mut() = status;
    rsp
}

// === the mesh ===

struct Chain {
    // Drop order: proxies first, then the apps, then the dir with the logs.
    proxies: Vec<Proxy>,
    configs: Vec<PathBuf>,
    _apps: Vec<ChainApp>,
    _dir: TestDir,
}

impl Chain {
    async fn start(label: &str, otlp: &str, sampling: f64) -> Chain {
        let dir = TestDir::new(label).expect("temp dir");
        let mut apps = Vec::new();
        for name in SERVICES {
            apps.push(ChainApp::start(name).await);
        }
        // From the end of the chain: each proxy's config names the next one's inbound.
        let (mut proxies, mut configs) = (Vec::new(), Vec::new());
        let mut next: Option<(&str, SocketAddr)> = None;
        for (i, service) in SERVICES.iter().enumerate().rev() {
            let path = dir.join(&format!("{service}.yaml"));
            std::fs::write(&path, docs(sampling, next)).expect("write config");
            let proxy = Proxy::builder(service, dir.path())
                .service(service)
                .app_addr(apps[i].server.addr)
                .config(&path)
                .env(OTLP_ENV, otlp)
                .env("WEIR_POD_NAME", &format!("{service}-0"))
                .start()
                .await;
            next = Some((service, proxy.inbound()));
            proxies.insert(0, proxy);
            configs.insert(0, path);
        }
        for i in 0..SERVICES.len() - 1 {
            let wiring = (proxies[i].outbound(), SERVICES[i + 1]);
            apps[i].next.set(wiring).expect("set once");
        }
        Chain {
            proxies,
            configs,
            _apps: apps,
            _dir: dir,
        }
    }

    /// A request from outside the mesh to frontend's inbound; returns the status and body.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
        let mut req = client::request("GET", "frontend", path, client::empty());
        for (k, v) in headers {
            let name = http::HeaderName::from_bytes(k.as_bytes()).expect("header name");
            req.headers_mut()
                .insert(name, v.parse().expect("header value"));
        }
        let rsp = within(TEST_TIMEOUT, "a request through the chain", async {
            let mut sender = client::h1(self.proxies[0].inbound()).await;
            client::collect(client::send1(&mut sender, req).await).await
        })
        .await;
        let json = serde_json::from_slice(&rsp.2).unwrap_or(serde_json::Value::Null);
        (rsp.0.as_u16(), json)
    }

    /// Rewrites service `i`'s MeshConfig and waits until its proxy runs with it.
    async fn set_sampling(&mut self, i: usize, sampling: f64) {
        let next = self
            .proxies
            .get(i + 1)
            .map(|p| (SERVICES[i + 1], p.inbound()));
        let proxy = &mut self.proxies[i];
        let before = proxy.config_version().await;
        config::write_atomic(&self.configs[i], &docs(sampling, next)).expect("rewrite config");
        proxy.signal(libc::SIGHUP);
        let proxy = &*proxy;
        wait_until(
            "the reloaded config is in force",
            RELOAD_TIMEOUT,
            || async { proxy.config_version().await > before },
        )
        .await;
    }
}

fn docs(sampling: f64, next: Option<(&str, SocketAddr)>) -> String {
    match next {
        Some((service, addr)) => config::documents(&[
            &mesh_config(sampling),
            &config::endpoints(service, "default", &[addr]),
        ]),
        None => mesh_config(sampling),
    }
}

/// The trace id the last app saw in `traceparent`.
fn leaf_trace_id(reply: &serde_json::Value) -> String {
    let tp = reply["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent reached inventory: {reply}"));
    tp.get(3..35).expect("a traceparent").to_owned()
}

async fn trace(receiver: &OtlpReceiver, trace_id: &str, n: usize) -> Vec<ReceivedSpan> {
    let what = format!("{n} spans of trace {trace_id}");
    receiver
        .wait_until(&what, SPAN_WAIT, |spans| {
            spans.iter().filter(|s| s.trace_id == trace_id).count() >= n
        })
        .await;
    receiver.trace(trace_id)
}

/// The hop's spans in chain order; panics unless each service has exactly one SERVER, one
/// CLIENT call and one CLIENT try (where it calls on).
fn chain(spans: &[ReceivedSpan]) -> Vec<&ReceivedSpan> {
    let one = |service: &str, kind: SpanKind, is_try: bool| {
        let found: Vec<_> = spans
            .iter()
            .filter(|s| s.resource_str("service.name") == Some(service) && s.kind == kind)
            .filter(|s| s.attributes.contains_key("weir.attempt") == is_try)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{service} {kind:?} try={is_try}: {found:#?}\nall: {spans:#?}"
        );
        found[0]
    };
    let mut out = Vec::new();
    for (i, service) in SERVICES.iter().enumerate() {
        out.push(one(service, SpanKind::Server, false));
        if i + 1 < SERVICES.len() {
            out.push(one(service, SpanKind::Client, false));
            out.push(one(service, SpanKind::Client, true));
        }
    }
    out
}

fn assert_parents(chain: &[&ReceivedSpan]) {
    for pair in chain.windows(2) {
        let (parent, child) = (pair[0], pair[1]);
        assert_eq!(
            child.parent_span_id.as_deref(),
            Some(parent.span_id.as_str()),
            "{} {:?} of {:?} must be the child of {} {:?} of {:?}",
            child.name,
            child.kind,
            child.resource_str("service.name"),
            parent.name,
            parent.kind,
            parent.resource_str("service.name"),
        );
        assert!(child.start_unix_nanos >= parent.start_unix_nanos);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_three_is_one_trace_client_server_client_server() {
    let receiver = OtlpReceiver::start().await;
    let mesh = Chain::start("trace-chain", &receiver.endpoint(), 1.0).await;

    let (status, reply) = mesh.get("/chain", &[]).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["app"], "inventory");
    let trace_id = leaf_trace_id(&reply);
    let spans = trace(&receiver, &trace_id, SPANS_PER_REQUEST).await;
    assert_eq!(
        receiver.spans().len(),
        SPANS_PER_REQUEST,
        "one request, one trace"
    );
    let hops = chain(&spans);
    assert_parents(&hops);
    let root = hops[0];
    assert_eq!(
        root.parent_span_id, None,
        "the frontend's inbound started it"
    );
    let leaf = hops[SPANS_PER_REQUEST - 1];
    assert_eq!(
        reply["headers"]["traceparent"],
        format!("00-{trace_id}-{}-01", leaf.span_id),
        "the app sees its proxy's SERVER span as its parent"
    );

    for span in &hops {
        let service = span.resource_str("service.name").expect("service.name");
        assert_eq!(span.name, "GET /chain");
        assert_eq!(span.attr_str("http.request.method"), Some("GET"));
        assert_eq!(span.attr_str("url.path"), Some("/chain"));
        assert_eq!(span.attr_int("http.response.status_code"), Some(200));
        assert_eq!(span.status, SpanStatus::Unset, "{span:#?}");
        assert_eq!(span.resource_str("k8s.namespace.name"), Some("default"));
        assert_eq!(
            span.resource_str("k8s.pod.name"),
            Some(format!("{service}-0").as_str())
        );
        match span.kind {
            SpanKind::Server => assert_eq!(span.attr_str("server.address"), Some(service)),
            SpanKind::Client => {
                let callee =
                    SERVICES[SERVICES.iter().position(|s| *s == service).expect("known") + 1];
                assert_eq!(span.attr_str("server.address"), Some(callee));
                assert_eq!(span.attr_str("peer.service"), Some(callee));
            }
            other => panic!("unexpected kind {other:?}"),
        }
    }
    for attempt in [hops[2], hops[5]] {
        assert_eq!(attempt.attr_int("weir.attempt"), Some(1));
        assert_eq!(attempt.attr_str("network.peer.address"), Some("127.0.0.1"));
    }

    // A 5xx at the end of the chain marks every span on the way back as an error.
    let (status, _) = mesh.get("/fail", &[]).await;
    assert_eq!(status, 500);
    let failed = receiver
        .wait_until("the spans of /fail", SPAN_WAIT, |spans| {
            spans
                .iter()
                .filter(|s| s.attr_str("url.path") == Some("/fail"))
                .count()
                >= SPANS_PER_REQUEST
        })
        .await;
    let failed: Vec<_> = failed
        .into_iter()
        .filter(|s| s.attr_str("url.path") == Some("/fail"))
        .collect();
    assert_parents(&chain(&failed));
    for span in &failed {
        assert_eq!(span.attr_int("http.response.status_code"), Some(500));
        assert_eq!(span.status, SpanStatus::Error, "{span:#?}");
    }

    // A request that arrives with a context continues it, W3C or B3.
    let (tid, sid) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let tp = format!("00-{tid}-{sid}-01");
    let (status, reply) = mesh.get("/chain", &[("traceparent", &tp)]).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(leaf_trace_id(&reply), tid);
    let spans = trace(&receiver, tid, SPANS_PER_REQUEST).await;
    let hops = chain(&spans);
    assert_parents(&hops);
    assert_eq!(hops[0].parent_span_id.as_deref(), Some(sid));

    let b3_tid = "80f198ee56343ba864fe8b2a57d3eff7";
    let b3 = format!("{b3_tid}-e457b5a2e4d86bd1-1");
    let (status, reply) = mesh.get("/chain", &[("b3", &b3)]).await;
    assert_eq!(status, 200, "{reply}");
    let seen = reply["headers"]["b3"].as_str().unwrap_or_default();
    assert!(seen.starts_with(b3_tid), "B3 in, B3 out: {reply}");
    let hops_b3 = trace(&receiver, b3_tid, SPANS_PER_REQUEST).await;
    assert_parents(&chain(&hops_b3));
    assert_eq!(
        chain(&hops_b3)[0].parent_span_id.as_deref(),
        Some("e457b5a2e4d86bd1")
    );
    drop(mesh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_zero_at_the_head_exports_nothing_anywhere() {
    let receiver = OtlpReceiver::start().await;
    let mut mesh = Chain::start("trace-sampling", &receiver.endpoint(), 1.0).await;
    // Hot-swapped: the frontend decides "no"; catalog and inventory would sample everything
    // on their own, so any span from them means the decision did not travel.
    mesh.set_sampling(0, 0.0).await;
    let mut trace_ids = Vec::new();
    for _ in 0..20 {
        let (status, reply) = mesh.get("/chain", &[]).await;
        assert_eq!(status, 200, "{reply}");
        let tp = reply["headers"]["traceparent"].as_str().unwrap_or_default();
        assert!(
            tp.ends_with("-00"),
            "the 'not sampled' decision travels: {reply}"
        );
        trace_ids.push(leaf_trace_id(&reply));
    }
    // A caller's "yes" still wins. Each proxy exports in order, so once this trace is in
    // from all three, anything recorded for the requests before it would be in too.
    let marker = "0af7651916cd43dd8448eb211c80319c";
    let tp = format!("00-{marker}-b7ad6b7169203331-01");
    let (status, _) = mesh.get("/chain", &[("traceparent", &tp)]).await;
    assert_eq!(status, 200);
    trace(&receiver, marker, SPANS_PER_REQUEST).await;
    let others: Vec<_> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.trace_id != marker)
        .collect();
    assert!(others.is_empty(), "sampling 0.0 exported: {others:#?}");
    trace_ids.sort();
    trace_ids.dedup();
    assert_eq!(
        trace_ids.len(),
        20,
        "each unsampled request still has its own trace id"
    );
    for proxy in &mesh.proxies {
        let m = proxy.metrics().await;
        assert_eq!(m.get("weir_trace_spans_dropped_total", &[]), 0.0);
        assert_eq!(m.get("weir_trace_export_failures_total", &[]), 0.0);
    }
    drop(mesh);
}
