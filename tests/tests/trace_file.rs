//! `--trace-file`: each proxy appends its spans to a file as OTLP/JSON lines, the format of
//! the OpenTelemetry Collector's `file` exporter. Two standalone proxies, caller `web` and
//! callee `payment`, sampling 1.0, no collector; the files are read back and checked against
//! the OTLP/JSON rules (hex ids, 64-bit integers as strings, integer enums) and for the trace
//! shape: CLIENT call → CLIENT try → SERVER, one trace id.
//!
//! Spans are waited for by polling `/metrics` or for the process to exit, never slept for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::Value;
use weir_tests::apps::{self, RespBody, Server};
use weir_tests::util::{BoxError, TestDir, wait_until, within};
use weir_tests::{Proxy, client, config};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Spans leave a proxy in batches at least once a second; generous for two busy cores.
const SPAN_WAIT: Duration = Duration::from_secs(20);
const EXIT_WAIT: Duration = Duration::from_secs(20);

const CLIENT: i64 = 3;
const SERVER: i64 = 2;

fn mesh_config() -> &'static str {
    "apiVersion: weir/v1\nkind: MeshConfig\nmetadata: { name: default }\n\
     spec: { mtls: permissive, tracing: { sampling: 1.0 } }\n"
}

// === the app ===

/// `/drip?chunks=N&ms=M`: N chunks, each after a pause of M ms (the head goes out at once);
/// with `&fail=1` the body then fails instead of ending (the connection is cut mid-body).
/// Anything else: 200 `ok`.
async fn handle(req: Request<Incoming>) -> Response<RespBody> {
    if req.uri().path() != "/drip" {
        return Response::new(
            Full::new(Bytes::from_static(b"ok"))
                .map_err(|e| match e {})
                .boxed_unsync(),
        );
    }
    let query = |key: &str| {
        req.uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(1)
    };
    let (chunks, ms) = (query("chunks").min(50), query("ms").min(2_000));
    let fail = req.uri().query().unwrap_or("").contains("fail=1");
    let stream = futures_util::stream::unfold(0, move |sent| async move {
        if sent == chunks && fail {
            let cut: BoxError = "the app fails mid-body".into();
            return Some((Err(cut), sent + 1));
        }
        if sent >= chunks {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let frame = Frame::data(Bytes::from(format!("chunk {sent}\n")));
        Some((Ok::<_, BoxError>(frame), sent + 1))
    });
    let mut rsp = Response::new(StreamBody::new(stream).boxed_unsync());
    *rsp.status_mut() = StatusCode::OK;
    rsp
}

// === the mesh ===

struct Mesh {
    // Drop order: proxies first, then the app, then the dir with the logs and span files.
    caller: Proxy,
    callee: Proxy,
    caller_file: PathBuf,
    callee_file: PathBuf,
    _app: Server,
    _dir: TestDir,
}

impl Mesh {
    async fn start(label: &str) -> Mesh {
        let dir = TestDir::new(label).expect("temp dir");
        let listener = apps::bind_loopback().await;
        let app = apps::serve_http(listener, Default::default(), handle);

        let callee_config = dir.join("payment.yaml");
        std::fs::write(&callee_config, mesh_config()).expect("write config");
        let callee_file = dir.join("payment-spans.jsonl");
        let callee = Proxy::builder("payment", dir.path())
            .service("payment")
            .app_addr(app.addr)
            .config(&callee_config)
            .arg("--trace-file")
            .arg(path_str(&callee_file))
            .start()
            .await;

        let caller_config = dir.join("web.yaml");
        let docs = config::documents(&[
            mesh_config(),
            &config::endpoints("payment", "default", &[callee.inbound()]),
        ]);
        std::fs::write(&caller_config, docs).expect("write config");
        let caller_file = dir.join("web-spans.jsonl");
        // The environment variable, so both spellings of the flag are covered.
        let caller = Proxy::builder("web", dir.path())
            .service("web")
            .config(&caller_config)
            .env("WEIR_TRACE_FILE", path_str(&caller_file))
            .start()
            .await;
        Mesh {
            caller,
            callee,
            caller_file,
            callee_file,
            _app: app,
            _dir: dir,
        }
    }

    /// GET `path` from the caller's app through both proxies; the status and how long the
    /// body took to arrive after the head.
    async fn get(&self, path: &str) -> (StatusCode, Duration) {
        let (status, body, took) = self.get_result(path).await;
        body.expect("response body");
        (status, took)
    }

    /// Like `get`, for a body that may fail.
    async fn get_result(&self, path: &str) -> (StatusCode, Result<u64, hyper::Error>, Duration) {
        within(TEST_TIMEOUT, "a request through the mesh", async {
            let mut sender = client::h1(self.caller.outbound()).await;
            let req = client::request("GET", "payment", path, client::empty());
            let rsp = client::send1(&mut sender, req).await;
            let head = Instant::now();
            let status = rsp.status();
            let body = client::drain(rsp.into_body()).await;
            (status, body, head.elapsed())
        })
        .await
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

async fn wait_written(proxy: &Proxy, spans: f64) {
    let what = format!("{} wrote {spans} spans to its trace file", proxy.name());
    wait_until(&what, SPAN_WAIT, || async {
        proxy
            .metric("weir_trace_file_spans_written_total", &[])
            .await
            >= spans
    })
    .await;
}

// === reading the files ===

/// One span of a file, checked against the OTLP/JSON rules while it is read.
#[derive(Debug, Clone)]
struct FileSpan {
    service: String,
    trace_id: String,
    span_id: String,
    parent: Option<String>,
    name: String,
    kind: i64,
    start: u64,
    end: u64,
    attributes: BTreeMap<String, Value>,
    status_code: i64,
}

impl FileSpan {
    fn duration(&self) -> Duration {
        Duration::from_nanos(self.end - self.start)
    }

    fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key)?.get("stringValue")?.as_str()
    }

    /// An `intValue`, which OTLP/JSON writes as a decimal string.
    fn attr_int(&self, key: &str) -> Option<i64> {
        let v = self.attributes.get(key)?.get("intValue")?;
        let s = v
            .as_str()
            .unwrap_or_else(|| panic!("{key}: intValue must be a string: {v}"));
        Some(s.parse().expect("decimal intValue"))
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn nanos(v: &Value, what: &str) -> u64 {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} must be a decimal string: {v}"))
        .parse()
        .unwrap_or_else(|e| panic!("{what}: {e}: {v}"))
}

fn read_spans(path: &Path) -> Vec<FileSpan> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(text.ends_with('\n'), "whole lines only: {text:?}");
    let mut out = Vec::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", path.display()));
        for rs in v["resourceSpans"].as_array().expect("resourceSpans") {
            let service = rs["resource"]["attributes"]
                .as_array()
                .expect("resource attributes")
                .iter()
                .find(|a| a["key"] == "service.name")
                .and_then(|a| a["value"]["stringValue"].as_str())
                .expect("service.name")
                .to_owned();
            for ss in rs["scopeSpans"].as_array().expect("scopeSpans") {
                assert_eq!(ss["scope"]["name"], "weir", "{line}");
                for s in ss["spans"].as_array().expect("spans") {
                    out.push(span(&service, s));
                }
            }
        }
    }
    out
}

fn span(service: &str, s: &Value) -> FileSpan {
    let id = |key: &str, len: usize| {
        let v = s[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing: {s}"));
        assert!(
            is_hex(v, len),
            "{key} must be {len} lower-case hex digits: {s}"
        );
        v.to_owned()
    };
    let parent = s.get("parentSpanId").map(|p| {
        let p = p.as_str().expect("parentSpanId string");
        assert!(is_hex(p, 16), "parentSpanId: {s}");
        p.to_owned()
    });
    let attributes = s["attributes"]
        .as_array()
        .expect("attributes")
        .iter()
        .map(|a| {
            let key = a["key"].as_str().expect("attribute key").to_owned();
            (key, a["value"].clone())
        })
        .collect();
    let start = nanos(&s["startTimeUnixNano"], "startTimeUnixNano");
    let end = nanos(&s["endTimeUnixNano"], "endTimeUnixNano");
    assert!(end >= start, "{s}");
    FileSpan {
        service: service.to_owned(),
        trace_id: id("traceId", 32),
        span_id: id("spanId", 16),
        parent,
        name: s["name"].as_str().expect("name").to_owned(),
        kind: s["kind"]
            .as_i64()
            .unwrap_or_else(|| panic!("kind must be an integer: {s}")),
        start,
        end,
        attributes,
        status_code: s
            .get("status")
            .and_then(|st| st.get("code"))
            .map_or(0, |c| c.as_i64().expect("status.code is an integer")),
    }
}

/// For each request (`path`): the caller's call span, its try span, and the callee's server
/// span, after checking how they hang together.
fn request_spans<'a>(
    caller: &'a [FileSpan],
    callee: &'a [FileSpan],
    path: &str,
) -> (&'a FileSpan, &'a FileSpan, &'a FileSpan) {
    let name = format!("GET {path}");
    let server: Vec<_> = callee.iter().filter(|s| s.name == name).collect();
    assert_eq!(server.len(), 1, "{name}: {callee:#?}");
    let server = server[0];
    let in_trace: Vec<_> = caller
        .iter()
        .filter(|s| s.trace_id == server.trace_id)
        .collect();
    assert_eq!(in_trace.len(), 2, "a call and one try: {in_trace:#?}");
    let (tries, calls): (Vec<_>, Vec<_>) = in_trace
        .into_iter()
        .partition(|s| s.attributes.contains_key("weir.attempt"));
    let (call, attempt) = (calls[0], tries[0]);
    assert_eq!(attempt.attr_int("weir.attempt"), Some(1), "{attempt:#?}");
    assert_eq!(
        attempt.parent.as_deref(),
        Some(call.span_id.as_str()),
        "the try hangs under the call"
    );
    assert_eq!(
        server.parent.as_deref(),
        Some(attempt.span_id.as_str()),
        "the callee's SERVER span hangs under the caller's try"
    );
    assert_eq!(call.parent, None, "the caller's proxy started the trace");
    for s in [call, attempt, server] {
        assert_eq!(s.name, name);
        assert_eq!(s.attr_str("http.request.method"), Some("GET"));
        assert_eq!(s.attr_str("url.path"), Some(path));
        assert_eq!(s.attr_int("http.response.status_code"), Some(200));
        assert_eq!(s.attr_str("server.address"), Some("payment"));
        assert_eq!(s.status_code, 0, "unset: {s:#?}");
    }
    assert_eq!(
        (call.kind, attempt.kind, server.kind),
        (CLIENT, CLIENT, SERVER)
    );
    (call, attempt, server)
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_proxy_writes_its_spans_as_otlp_json_lines() {
    let mesh = Mesh::start("trace-file").await;
    let paths = ["/pay/1", "/pay/2", "/pay/3"];
    for path in paths {
        assert_eq!(mesh.get(path).await.0, StatusCode::OK);
    }
    wait_written(&mesh.caller, 6.0).await;
    wait_written(&mesh.callee, 3.0).await;

    let caller = read_spans(&mesh.caller_file);
    let callee = read_spans(&mesh.callee_file);
    assert_eq!(
        (caller.len(), callee.len()),
        (6, 3),
        "{caller:#?}\n{callee:#?}"
    );
    assert!(
        caller
            .iter()
            .all(|s| s.service == "web" && s.kind == CLIENT)
    );
    assert!(
        callee
            .iter()
            .all(|s| s.service == "payment" && s.kind == SERVER)
    );
    for path in paths {
        let (call, attempt, server) = request_spans(&caller, &callee, path);
        assert!(call.start <= attempt.start && attempt.start <= server.start);
        assert!(server.end <= call.end.max(attempt.end) + 1_000_000_000);
    }
    let traces: std::collections::BTreeSet<_> = callee.iter().map(|s| &s.trace_id).collect();
    assert_eq!(traces.len(), 3, "one trace per request");
    assert_eq!(
        mesh.caller
            .metric("weir_trace_file_write_failures_total", &[])
            .await,
        0.0
    );
}

/// The last requests' spans are on disk when the process has exited: SIGTERM for one proxy,
/// the admin `POST /shutdown` for the other, both before a batch interval has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_flushed_to_the_file_on_shutdown() {
    let mut mesh = Mesh::start("trace-file-exit").await;
    assert_eq!(mesh.get("/last").await.0, StatusCode::OK);
    let rsp = mesh
        .callee
        .admin_request("POST", "/shutdown")
        .await
        .expect("POST /shutdown");
    assert!(rsp.status < 300, "{}", rsp.text());
    mesh.caller.signal(libc::SIGTERM);
    let (caller_exit, callee_exit) = (
        mesh.caller.wait_exit(EXIT_WAIT).await,
        mesh.callee.wait_exit(EXIT_WAIT).await,
    );
    assert!(caller_exit.success() && callee_exit.success());
    let caller = read_spans(&mesh.caller_file);
    let callee = read_spans(&mesh.callee_file);
    request_spans(&caller, &callee, "/last");
}

/// A response the app streams slowly: the caller's call and try spans and the callee's
/// server span end with the body, not with the head that came at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_a_streamed_response_last_until_its_end() {
    const CHUNKS: u64 = 5;
    const PAUSE_MS: u64 = 100;
    let streaming = Duration::from_millis(CHUNKS * PAUSE_MS);
    let mesh = Mesh::start("trace-file-drip").await;
    let (status, body_time) = mesh
        .get(&format!("/drip?chunks={CHUNKS}&ms={PAUSE_MS}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    // The head came first, the body over the pauses: it did stream through both proxies.
    assert!(body_time >= streaming * 8 / 10, "{body_time:?}");
    wait_written(&mesh.caller, 2.0).await;
    wait_written(&mesh.callee, 1.0).await;
    let caller = read_spans(&mesh.caller_file);
    let callee = read_spans(&mesh.callee_file);
    let (call, attempt, server) = request_spans(&caller, &callee, "/drip");
    for s in [call, attempt, server] {
        // Each started before the app answered and the app's body took `streaming` after that.
        assert!(
            s.duration() >= streaming,
            "{:?} span of {:?}: {s:#?}",
            s.kind,
            s.duration()
        );
    }
    // The caller's spans end after the callee's: the last frame passes the callee first.
    assert!(call.end >= server.end && attempt.end >= server.end);
}

/// A body that breaks half way makes every span it ends an error (`weir.error: reset`, with
/// the semantic conventions' `error.type`), although the head said 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_fails_half_way_makes_its_spans_errors() {
    let mesh = Mesh::start("trace-file-cut").await;
    let (status, body, _) = mesh.get_result("/drip?chunks=2&ms=20&fail=1").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_err(), "the cut reaches the caller's app: {body:?}");
    wait_written(&mesh.caller, 2.0).await;
    wait_written(&mesh.callee, 1.0).await;
    let caller = read_spans(&mesh.caller_file);
    let callee = read_spans(&mesh.callee_file);
    assert_eq!(
        (caller.len(), callee.len()),
        (2, 1),
        "{caller:#?}\n{callee:#?}"
    );
    let server = &callee[0];
    let tries: Vec<_> = caller
        .iter()
        .filter(|s| s.attributes.contains_key("weir.attempt"))
        .collect();
    assert_eq!(tries.len(), 1);
    assert_eq!(server.parent.as_deref(), Some(tries[0].span_id.as_str()));
    for s in caller.iter().chain(&callee) {
        assert_eq!(s.attr_int("http.response.status_code"), Some(200), "{s:#?}");
        assert_eq!(s.attr_str("weir.error"), Some("reset"), "{s:#?}");
        assert_eq!(s.attr_str("error.type"), Some("reset"), "{s:#?}");
        assert_eq!(s.status_code, 2, "status ERROR: {s:#?}");
    }
}
