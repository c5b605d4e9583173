//! No retry amplification (issue 5, design §7b). Chain A → B → C, C always 503, both hops
//! with `attempts: 2, on: [5xx]`:
//!
//! ```text
//! client ─► proxy A (outbound) ─► proxy B (inbound) ─► app B ─► proxy B (outbound) ─► proxy C ─► chaos C
//! ```
//!
//! App B forwards `traceparent`, so B's proxy can link its inbound request to B's outbound
//! calls: once its retries to C are exhausted it says so on the response, and A's proxy does
//! not retry B. One user request then costs C at most 1 + attempts = 3 calls and B one call.
//! Without `traceparent` the link is lost: each hop retries, (1 + 2)² = 9 calls to C.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use weir_tests::Proxy;
use weir_tests::apps::{self, HttpStats, RespBody};
use weir_tests::client;
use weir_tests::resilience::{
    Caller, Upstream, endpoints, get, policy, request, send, traceparent,
};
use weir_tests::util::{TestDir, within};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const RETRY_5XX: &str = "retries: { attempts: 2, on: [5xx], backoff: { base: 1ms, max: 2ms } }";

struct Chain {
    // Drop order: proxies, apps, then the dir.
    a: Caller,
    _b_proxy: Proxy,
    c: Upstream,
    _b_app: apps::Server,
    /// Requests app B received.
    b_calls: Arc<AtomicU64>,
    _dir: TestDir,
}

/// App B: answers every request by calling C through its own proxy, passing the
/// `traceparent` it received on (as any traced app does), and answering with C's status.
fn start_b(outbound: Arc<OnceLock<SocketAddr>>, calls: Arc<AtomicU64>) -> apps::Server {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind app B");
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    apps::serve_http(listener, Arc::new(HttpStats::default()), move |req| {
        let (outbound, calls) = (outbound.clone(), calls.clone());
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let tp = req.headers().get("traceparent").cloned();
            let mut call = request("GET", "c", req.uri().path(), &[], client::empty());
            if let Some(tp) = tp {
                call.headers_mut().insert("traceparent", tp);
            }
            let entry = *outbound.get().expect("B's proxy started");
            let reply = send(entry, call).await;
            let mut rsp: http::Response<RespBody> = http::Response::new(
                Full::new(Bytes::from(format!("C said {}", reply.status)))
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            );
            *rsp.status_mut() =
                http::StatusCode::from_u16(reply.status).unwrap_or(http::StatusCode::BAD_GATEWAY);
            rsp
        }
    })
}

impl Chain {
    async fn start() -> Self {
        let dir = TestDir::new("chain").expect("temp dir");
        let c = Upstream::start(&dir, "c", "c-0", &[]).await;
        c.app.set_default("status=503").expect("spec");

        let b_outbound = Arc::new(OnceLock::new());
        let b_calls = Arc::new(AtomicU64::new(0));
        let b_app = start_b(b_outbound.clone(), b_calls.clone());
        let b_config = dir.join("b.yaml");
        let b_docs = [
            weir_tests::config::MESH_PERMISSIVE,
            &endpoints("c", &[c.addr()]),
            &policy("c", RETRY_5XX),
        ];
        std::fs::write(&b_config, weir_tests::config::documents(&b_docs)).expect("write");
        let b_proxy = Proxy::builder("b", dir.path())
            .service("b")
            .app_addr(b_app.addr)
            .config(&b_config)
            .start()
            .await;
        b_outbound.set(b_proxy.outbound()).expect("set once");

        let a_docs = [endpoints("b", &[b_proxy.inbound()]), policy("b", RETRY_5XX)];
        let a = Caller::start(&dir, "a", &a_docs).await;
        Chain {
            a,
            _b_proxy: b_proxy,
            c,
            _b_app: b_app,
            b_calls,
            _dir: dir,
        }
    }

    /// One user request to B through A's proxy; returns (status, calls at B, calls at C).
    async fn one_request(&self, path: &str, headers: &[(&str, &str)]) -> (u16, u64, u64) {
        let b_before = self.b_calls.load(Ordering::SeqCst);
        let reply = within(
            TEST_TIMEOUT,
            "user request",
            get(self.a.entry(), "b", path, headers),
        )
        .await;
        let b = self.b_calls.load(Ordering::SeqCst) - b_before;
        (reply.status, b, self.c.app.calls(path))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_do_not_multiply_down_a_traced_chain() {
    let chain = Chain::start().await;
    let tp = traceparent(1);
    let (status, b, c) = chain.one_request("/traced", &[("traceparent", &tp)]).await;
    println!("with traceparent: status {status}, B saw {b} call(s), C saw {c} call(s)");
    assert_eq!(status, 503);
    assert!(c <= 3, "C saw {c} calls: at most 1 + attempts");
    assert_eq!(
        b, 1,
        "A must not retry B once B's proxy exhausted its retries to C"
    );
    // The next user request (a new trace) is judged afresh.
    let (_, b2, _) = chain
        .one_request("/traced-2", &[("traceparent", &traceparent(2))])
        .await;
    assert_eq!(b2, 1);
}

/// Documents the limit of the mechanism: without trace context nothing links B's inbound
/// request to its outbound calls, so each hop retries: (1 + attempts)^depth calls to C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_trace_context_each_hop_retries() {
    let chain = Chain::start().await;
    let (status, b, c) = chain.one_request("/untraced", &[]).await;
    println!("without traceparent: status {status}, B saw {b} call(s), C saw {c} call(s)");
    assert_eq!(status, 503);
    assert_eq!(b, 3, "A retries B: 1 + 2");
    assert_eq!(c, 9, "each of B's 3 calls is retried by B's proxy: 3 × 3");
}
