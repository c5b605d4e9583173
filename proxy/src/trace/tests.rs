use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::SystemTime;

use http::uri::PathAndQuery;
use http::{HeaderValue, Request};
use weir_trace::{ExportConfig, Resource, SpanKind};

use super::client::outcome;
use super::propagate::{ARENA_BYTES, TRACEPARENT, random};
use super::span::{MAX_PATH, span_path};
use super::*;
use crate::body::ProxyBody;
use crate::errors::{ProxyError, X_WEIR_ERROR};

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

/// Counts this thread's allocations, so a test can show a path allocates nothing.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; the counter is a
// const-initialised thread local without a destructor, so counting never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Enabled, exporting to a port nothing listens on: decisions are what is under test.
fn enabled() -> Tracing {
    let tracer = Tracer::start(
        "http://127.0.0.1:9",
        Resource::default(),
        ExportConfig::default(),
    )
    .expect("tracer");
    Tracing::new(tracer, "catalog")
}

/// A try's or call's result with a plain 200 answer.
fn ok() -> Result<Response<()>, ProxyError> {
    Ok(Response::new(()))
}

fn request(traceparent: Option<&'static str>) -> Request<()> {
    let mut b = Request::get("/items/7?secret=1").header("host", "catalog:8080");
    if let Some(tp) = traceparent {
        b = b.header("traceparent", tp);
    }
    b.body(()).expect("request")
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

#[test]
fn disabled_leaves_headers_alone() {
    let t = Tracing::disabled();
    let req = request(Some(PARENT));
    let call = t.client_call(&req, "catalog", 1.0);
    let mut out = req.headers().clone();
    let attempt = t.attempt(&call, 1, &mut out);
    assert_eq!(&out, req.headers());
    assert_eq!(attempt.span_id(), None);
    t.finish_attempt(attempt, &mut ok(), None);
    t.finish_call(call, &mut ok());
    assert_eq!(t.tracer().dropped() + t.tracer().exported(), 0);
}

#[tokio::test]
async fn sampled_call_continues_the_trace_and_each_attempt_is_the_next_parent() {
    let t = enabled();
    let req = request(Some(PARENT));
    let call = t.client_call(&req, "catalog", 0.0);
    assert!(call.is_sampled(), "the caller's decision wins over 0.0");
    let Hop::Sampled(ctx, info) = &call.0 else {
        panic!("{call:?}")
    };
    assert_eq!(ctx.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        ctx.parent_id.map(|p| p.to_string()).as_deref(),
        Some("00f067aa0ba902b7")
    );
    assert_eq!(info.server_address.as_deref(), Some("catalog"));
    assert_eq!(info.server_port, Some(8080));
    assert_eq!(
        info.path.as_ref().map(PathAndQuery::as_str),
        Some("/items/7")
    );

    let mut first = HeaderMap::new();
    let a1 = t.attempt(&call, 1, &mut first);
    let mut second = HeaderMap::new();
    let a2 = t.attempt(&call, 2, &mut second);
    let (s1, s2) = (
        a1.span_id().expect("sampled"),
        a2.span_id().expect("sampled"),
    );
    assert_ne!(s1, s2);
    assert_eq!(
        header(&first, "traceparent"),
        Some(format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{s1}-01"))
    );
    let Hop::Sampled(child, _) = &a2.hop else {
        panic!("{a2:?}")
    };
    assert_eq!(
        child.parent_id,
        Some(ctx.span_id),
        "an attempt is a child of its call"
    );

    let mut a1 = a1;
    let (ctx, info) = a1.hop.take().expect("sampled");
    let mut span = info.record(&ctx, SpanKind::Client, None, Some("reset"));
    span.attempt = Some(1);
    assert!(span.is_error());
    assert_eq!(span.name(), "GET /items/7");
}

#[tokio::test]
async fn an_inherited_no_passes_through_untouched() {
    let t = enabled();
    let req = request(Some(UNSAMPLED));
    let call = t.client_call(&req, "catalog", 1.0);
    assert!(!call.is_sampled(), "the caller's decision wins over 1.0");
    let mut out = req.headers().clone();
    let _ = t.attempt(&call, 1, &mut out);
    assert_eq!(header(&out, "traceparent").as_deref(), Some(UNSAMPLED));
}

#[tokio::test]
async fn a_head_no_is_written_down_for_the_next_hops() {
    let t = enabled();
    let req = request(None);
    let server = t.server(&req, 0.0, None);
    let mut out = HeaderMap::new();
    t.forward(&server, &mut out);
    let written = header(&out, "traceparent").expect("a decision for the next hop");
    assert!(
        written.starts_with("00-") && written.ends_with("-00"),
        "{written}"
    );
    let id = trace_id(&out).expect("a trace id to correlate with");
    assert_ne!(id, [0; 16]);
    // The next hop, sampling everything itself, still honours it.
    let mut next = Request::get("/").body(()).expect("request");
    *next.headers_mut() = out;
    let next = t.server(&next, 1.0, None);
    assert!(matches!(next.0, Hop::Inherited), "{next:?}");
}

#[tokio::test]
async fn unsampled_hops_do_not_allocate() {
    let t = enabled();
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert("host", HeaderValue::from_static("catalog"));
    let inherited = request(Some(UNSAMPLED));
    let head = request(None);
    let mut ok = ok();
    // Warm the thread's arena and random state.
    let mut out = headers.clone();
    let c = t.client_call(&head, "catalog", 0.0);
    let _ = t.attempt(&c, 1, &mut out);

    let before = allocations();
    for _ in 0..1000 {
        let c = t.client_call(&inherited, "catalog", 1.0);
        let a = t.attempt(&c, 1, &mut headers);
        t.finish_attempt(a, &mut ok, None);
        t.finish_call(c, &mut ok);
    }
    assert_eq!(allocations() - before, 0, "inherited no");

    let before = allocations();
    for _ in 0..1000 {
        let c = t.client_call(&head, "catalog", 0.0);
        let a = t.attempt(&c, 1, &mut headers);
        t.finish_attempt(a, &mut ok, None);
        t.finish_call(c, &mut ok);
        headers.remove(TRACEPARENT);
    }
    // One arena block (and its shared header) per ARENA_BYTES / 55 values.
    let blocks = 1000 * 55 / ARENA_BYTES as u64 + 1;
    let n = allocations() - before;
    assert!(n <= 2 * blocks, "{n} allocations for 1000 head decisions");

    // The counter does count: a sampled call captures its attributes.
    let before = allocations();
    let c = t.client_call(&head, "catalog", 1.0);
    assert!(c.is_sampled());
    assert!(allocations() > before);
}

#[tokio::test]
async fn spans_of_abandoned_requests_are_recorded_once() {
    let t = enabled();
    let req = request(Some(PARENT));
    let call = t.client_call(&req, "catalog", 1.0);
    let mut headers = HeaderMap::new();
    // The call's deadline fires while its try is in flight: the try's future is dropped.
    drop(t.attempt(&call, 1, &mut headers));
    t.finish_call(call, &mut Err::<Response<()>, _>(ProxyError::Timeout));
    // The caller hangs up before the app answers.
    drop(t.server(&req, 1.0, None));
    let tr = t.tracer();
    tokio::time::timeout(std::time::Duration::from_secs(10), tr.flush())
        .await
        .expect("flush");
    let seen = tr.exported() + tr.export_failed() + tr.dropped() + tr.queued() as u64;
    assert_eq!(seen, 3, "{tr:?}");
}

#[test]
fn outcomes_name_proxy_made_answers() {
    let ok: Result<Response<()>, ProxyError> = Ok(Response::new(()));
    assert_eq!(outcome(&ok), (Some(200), None));
    let refused: Result<Response<()>, _> = Err(ProxyError::ConnectFailure);
    assert_eq!(outcome(&refused), (None, Some("connect-failure")));
    let fault = ProxyError::fault_response(500).map(|_| ());
    assert_eq!(outcome(&Ok(fault)), (Some(500), Some("fault-injected")));
    let mut odd = Response::new(());
    odd.headers_mut()
        .insert(X_WEIR_ERROR, HeaderValue::from_static("something-new"));
    assert_eq!(outcome(&Ok::<_, ProxyError>(odd)), (Some(200), None));
}

#[test]
fn trace_id_reads_w3c_and_b3() {
    let mut h = HeaderMap::new();
    assert_eq!(trace_id(&h), None);
    h.insert(
        "b3",
        HeaderValue::from_static("a3ce929d0e0e4736-00f067aa0ba902b7-1"),
    );
    let mut want = [0; 16];
    want[8..].copy_from_slice(&[0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36]);
    assert_eq!(trace_id(&h), Some(want));
    h.insert("traceparent", HeaderValue::from_static(PARENT));
    assert_eq!(trace_id(&h).map(|t| t[0]), Some(0x4b));
    h.insert("b3", HeaderValue::from_static("0"));
    h.remove("traceparent");
    assert_eq!(trace_id(&h), None, "a decision without ids");
}

#[test]
fn span_paths_are_bounded() {
    let long = format!("/{}", "a".repeat(600));
    let p = span_path(&long).expect("path");
    assert!(p.as_str().len() <= MAX_PATH);
    assert_eq!(
        span_path("/a").map(|p| p.as_str().to_owned()).as_deref(),
        Some("/a")
    );
}

#[test]
fn random_words_differ() {
    let (a, b) = (random(), random());
    assert_ne!(a, b);
    let other = std::thread::spawn(random).join().expect("thread");
    assert_ne!(other, a);
}

// === spans that end with their body ===

/// Enabled, writing to a span file the test reads back.
struct FileTracing {
    t: Tracing,
    path: std::path::PathBuf,
}

impl FileTracing {
    fn new(label: &str) -> FileTracing {
        let dir =
            std::env::temp_dir().join(format!("weir-proxy-trace-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("spans.jsonl");
        let outputs = weir_trace::Outputs {
            otlp: None,
            file: Some(weir_trace::FileConfig::new(&path)),
        };
        let tracer = Tracer::start_with(&outputs, Resource::default(), ExportConfig::default())
            .expect("tracer");
        FileTracing {
            t: Tracing::new(tracer, "catalog"),
            path,
        }
    }

    /// Every span written so far (after a flush), as OTLP/JSON.
    async fn spans(&self) -> Vec<serde_json::Value> {
        tokio::time::timeout(std::time::Duration::from_secs(10), self.t.tracer().flush())
            .await
            .expect("flush");
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        text.lines()
            .flat_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
                v["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    }
}

impl Drop for FileTracing {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn weir_error(span: &serde_json::Value) -> Option<&str> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == "weir.error")?["value"]["stringValue"]
        .as_str()
}

fn nanos(span: &serde_json::Value, key: &str) -> u128 {
    span[key]
        .as_str()
        .expect("a string")
        .parse()
        .expect("nanos")
}

fn streamed() -> Response<ProxyBody> {
    Response::new(ProxyBody::Full(Some(bytes::Bytes::from_static(b"hello"))))
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos()
}

#[tokio::test]
async fn a_sampled_server_span_ends_with_its_body() {
    use http_body_util::BodyExt;
    let f = FileTracing::new("server");
    let span = f.t.server(&request(Some(PARENT)), 1.0, None);
    let mut rsp = streamed();
    f.t.finish_server(span, &mut rsp, None);
    assert!(matches!(rsp.body(), ProxyBody::Traced(_)));
    assert!(f.spans().await.is_empty(), "not before the body ends");
    let head = now_nanos();
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"hello");
    let spans = f.spans().await;
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert!(nanos(&spans[0], "endTimeUnixNano") >= head);
    assert_eq!(weir_error(&spans[0]), None);
    assert_eq!(spans[0]["kind"], 2);
}

#[tokio::test]
async fn a_body_dropped_half_way_cancels_its_spans() {
    let f = FileTracing::new("dropped");
    let req = request(Some(PARENT));
    let call = f.t.client_call(&req, "catalog", 1.0);
    let attempt = f.t.attempt(&call, 1, &mut HeaderMap::new());
    let mut result = Ok(streamed());
    f.t.finish_attempt(attempt, &mut result, None);
    f.t.finish_call(call, &mut result);
    assert!(f.spans().await.is_empty());
    // The app hangs up while the body streams to it.
    drop(result);
    let spans = f.spans().await;
    assert_eq!(spans.len(), 2, "the try's and the call's: {spans:?}");
    for s in &spans {
        assert_eq!(weir_error(s), Some("cancelled"), "{s}");
    }
}

#[tokio::test]
async fn a_try_whose_answer_a_retry_replaced_ends_without_error() {
    use http_body_util::BodyExt;
    let f = FileTracing::new("retried");
    let req = request(Some(PARENT));
    let call = f.t.client_call(&req, "catalog", 1.0);
    let first = f.t.attempt(&call, 1, &mut HeaderMap::new());
    let mut thrown_away = Ok(streamed());
    f.t.finish_attempt(first, &mut thrown_away, None);
    drop(thrown_away);
    let second = f.t.attempt(&call, 2, &mut HeaderMap::new());
    let mut result = Ok(streamed());
    f.t.finish_attempt(second, &mut result, None);
    f.t.finish_call(call, &mut result);
    assert_eq!(f.spans().await.len(), 1, "only the replaced try so far");
    let Ok(rsp) = result else { panic!("ok") };
    rsp.into_body().collect().await.expect("body");
    let spans = f.spans().await;
    assert_eq!(spans.len(), 3, "{spans:?}");
    assert!(spans.iter().all(|s| weir_error(s).is_none()), "{spans:?}");
}

#[tokio::test]
async fn unsampled_and_empty_bodies_are_not_wrapped() {
    let f = FileTracing::new("plain");
    // Not sampled: the body passes as it is.
    let call = f.t.client_call(&request(Some(UNSAMPLED)), "catalog", 1.0);
    let mut result = Ok(streamed());
    f.t.finish_call(call, &mut result);
    assert!(matches!(result, Ok(ref r) if matches!(r.body(), ProxyBody::Full(Some(_)))));
    // Sampled with nothing to stream: recorded at the head.
    let span = f.t.server(&request(Some(PARENT)), 1.0, None);
    let mut rsp = Response::new(ProxyBody::empty());
    f.t.finish_server(span, &mut rsp, None);
    assert!(matches!(rsp.body(), ProxyBody::Full(None)));
    assert_eq!(f.spans().await.len(), 1);
}
