//! `weirctl trace` (the real binary) against a stand-in for Jaeger's query service: a small
//! hyper server that answers with fixture files shaped like Jaeger's JSON.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

mod common;
use common::Run;

const CHAIN: &str = include_str!("fixtures/trace_chain_v1.json");
const FANOUT: &str = include_str!("fixtures/trace_fanout_v1.json");
const ORPHAN: &str = include_str!("fixtures/trace_orphan_v1.json");
const CHAIN_V3: &str = include_str!("fixtures/trace_chain_v3.json");
const SEARCH_V3: &str = include_str!("fixtures/trace_search_v3.json");
/// OTLP JSON lines as `weir-proxy --trace-file` writes them: three traces of gateway and
/// payment, spans of a trace on several lines.
const SPANS: &str = include_str!("fixtures/trace_spans.jsonl");
const CHAIN_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const FANOUT_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const V3_ID: &str = "5b8efff798038103d269b633813fc60c";
/// What Jaeger 1.x's query service answers for an unknown id.
const V1_NOT_FOUND: &str = r#"{"data":null,"total":0,"limit":0,"offset":0,"errors":[{"code":404,"msg":"trace not found"}]}"#;

type Routes = HashMap<String, (StatusCode, String)>;

/// Answers each path-and-query, else each path, from `routes` (Go's plain 404 otherwise) and
/// records what was asked.
struct Jaeger {
    url: String,
    asked: Arc<Mutex<Vec<String>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Jaeger {
    fn start(routes: &[(&str, StatusCode, &str)]) -> Jaeger {
        let routes: Arc<Routes> = Arc::new(
            routes
                .iter()
                .map(|(path, status, body)| (path.to_string(), (*status, body.to_string())))
                .collect(),
        );
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (shutdown, mut stop) = tokio::sync::oneshot::channel::<()>();
        let log = asked.clone();
        // Its own runtime on its own thread: the test body blocks on weirctl processes.
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                    .await
                    .expect("bind");
                ready_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("test is waiting");
                loop {
                    let stream = tokio::select! {
                        accepted = listener.accept() => accepted.expect("accept").0,
                        _ = &mut stop => break,
                    };
                    let (routes, log) = (routes.clone(), log.clone());
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let key = req
                            .uri()
                            .path_and_query()
                            .map_or_else(String::new, |p| p.to_string());
                        log.lock().expect("log").push(key.clone());
                        // A search is routed by its path: its query has the current time.
                        let (status, body) = routes
                            .get(&key)
                            .or_else(|| routes.get(req.uri().path()))
                            .cloned()
                            .unwrap_or((StatusCode::NOT_FOUND, "404 page not found".into()));
                        let response = Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))
                            .expect("response");
                        async move { Ok::<_, Infallible>(response) }
                    });
                    tokio::spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        let addr = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("fake Jaeger started");
        Jaeger {
            url: format!("http://{addr}"),
            asked,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().expect("log").clone()
    }

    fn trace(&self, args: &[&str]) -> Run {
        let mut all = vec!["trace", "--jaeger", &self.url];
        all.extend_from_slice(args);
        weirctl(&all, &[])
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs the real binary; stdout is a pipe, so the output has no ANSI codes.
fn weirctl(args: &[&str], env: &[(&str, &str)]) -> Run {
    Command::new(env!("CARGO_BIN_EXE_weirctl"))
        .args(args)
        .env_remove("WEIR_JAEGER_URL")
        .envs(env.iter().copied())
        .output()
        .expect("run weirctl")
        .into()
}

#[test]
fn shows_a_trace_with_retries() {
    let jaeger = Jaeger::start(&[(&format!("/api/traces/{CHAIN_ID}"), StatusCode::OK, CHAIN)]);
    let run = jaeger.trace(&[CHAIN_ID]).code(0).fits();
    assert_eq!(
        run.stdout,
        "\
trace 4bf92f3577b34da6a3ce929d0e0e4736  120ms  6 spans  2 errors
services: orders, payments, ledger
                                   0                     120ms
▶ orders GET /checkout             ███████████████████████████   120ms
▶  orders POST payments #1          ███████                       30ms ERROR 503
▶   payments POST /charge           ███████                       26ms ERROR 503
▶  orders POST payments #2                      █████████████     55ms
▶   payments POST /charge                       █████████████     51ms
▶    ledger PUT /entries                          █████████       35ms
▶ critical path: the spans that set the total latency
"
    );
    assert!(!run.stdout.contains('\x1b'), "no ANSI into a pipe");
    assert_eq!(jaeger.asked(), [format!("/api/traces/{CHAIN_ID}")]);
}

#[test]
fn fan_out_json_marks_the_late_branch_critical() {
    let jaeger = Jaeger::start(&[(&format!("/api/traces/{FANOUT_ID}"), StatusCode::OK, FANOUT)]);
    // Upper case and a traceparent are both taken as the id.
    let traceparent = format!("00-{}-b7ad6b7169203331-01", FANOUT_ID.to_uppercase());
    let run = jaeger.trace(&[&traceparent, "-o", "json"]).code(0);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON on stdout");
    assert_eq!(json["trace_id"], FANOUT_ID);
    assert_eq!(json["duration_us"], 100_000);
    let spans = json["spans"].as_array().expect("spans");
    let summary: Vec<(String, u64, bool)> = spans
        .iter()
        .map(|s| {
            (
                format!(
                    "{} {}",
                    s["service"].as_str().unwrap_or("?"),
                    s["name"].as_str().unwrap_or("?")
                ),
                s["depth"].as_u64().unwrap_or(99),
                s["critical"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    let expect = [
        ("gateway GET /home", 0, true),
        ("catalog GET /items", 1, false),
        ("recs GET /recommendations", 1, true),
        ("ml POST /score", 2, true),
    ];
    let expect: Vec<(String, u64, bool)> = expect
        .iter()
        .map(|(n, d, c)| (n.to_string(), *d, *c))
        .collect();
    assert_eq!(summary, expect);
    assert_eq!(spans[3]["offset_us"], 10_000);
    assert_eq!(spans[3]["status"], "ok");
}

#[test]
fn orphan_span_is_an_extra_root() {
    let id = "00f067aa0ba902b7";
    let jaeger = Jaeger::start(&[(&format!("/api/traces/{id}"), StatusCode::OK, ORPHAN)]);
    let run = jaeger.trace(&[id]).code(0).fits();
    assert!(
        run.stdout.contains("\n  ? worker process job "),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("parent span not in the trace"));
}

#[test]
fn falls_back_to_api_v3_on_404() {
    let v1 = format!("/api/traces/{V3_ID}");
    let v3 = format!("/api/v3/traces/{V3_ID}");
    let jaeger = Jaeger::start(&[
        (&v1, StatusCode::NOT_FOUND, V1_NOT_FOUND),
        (&v3, StatusCode::OK, CHAIN_V3),
    ]);
    let run = jaeger.trace(&[V3_ID]).code(0).fits();
    assert!(
        run.stdout
            .starts_with(&format!("trace {V3_ID}  120ms  6 spans  2 errors\n"))
    );
    assert!(run.stdout.contains("▶  orders POST payments #2 "));
    assert!(run.stdout.contains("ERROR 503"));
    assert_eq!(jaeger.asked(), [v1, v3]);
}

#[test]
fn missing_trace_is_an_error() {
    let jaeger = Jaeger::start(&[]);
    let run = jaeger.trace(&[CHAIN_ID]).code(1);
    assert!(run.stdout.is_empty());
    assert!(
        run.stderr.contains(&format!(
            "trace {CHAIN_ID} not found in Jaeger at {}",
            jaeger.url
        )),
        "{}",
        run.stderr
    );
    assert_eq!(jaeger.asked().len(), 2, "both APIs tried");

    let jaeger = Jaeger::start(&[(
        &format!("/api/traces/{CHAIN_ID}"),
        StatusCode::INTERNAL_SERVER_ERROR,
        "storage down",
    )]);
    let run = jaeger.trace(&[CHAIN_ID]).code(1);
    assert!(
        run.stderr.contains("answered 500 Internal Server Error"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("storage down"));
}

#[test]
fn bad_trace_id_is_a_usage_error() {
    for bad in ["xyz", "4bf92f3577b34da6a3ce929d0e0e473", "4bf92f3577b34dz6"] {
        let run = weirctl(&["trace", bad], &[]).code(2);
        assert!(run.stderr.contains("16 or 32 hex digits"), "{}", run.stderr);
        assert!(run.stdout.is_empty());
    }
    let run = weirctl(
        &["trace", CHAIN_ID, "--jaeger", "https://jaeger:16686"],
        &[],
    )
    .code(2);
    assert!(run.stderr.contains("only plain http"), "{}", run.stderr);
}

#[test]
fn unreachable_jaeger_is_explained() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let run = weirctl(&["trace", CHAIN_ID], &[("WEIR_JAEGER_URL", &url)]).code(1);
    assert!(
        run.stderr
            .contains(&format!("cannot reach Jaeger's query service at {url}")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("WEIR_JAEGER_URL"));
}

#[test]
fn env_url_is_used() {
    let jaeger = Jaeger::start(&[(&format!("/api/traces/{CHAIN_ID}"), StatusCode::OK, CHAIN)]);
    let run = weirctl(
        &["trace", CHAIN_ID],
        &[("WEIR_JAEGER_URL", &format!("{}/", jaeger.url))],
    )
    .code(0);
    assert!(run.stdout.starts_with(&format!("trace {CHAIN_ID}")));
}

#[test]
fn lists_the_newest_traces_of_a_service() {
    // Jaeger's search answers traces in no particular order: make the fan-out one newer.
    let mut fanout: serde_json::Value = serde_json::from_str(FANOUT).expect("fixture");
    for span in fanout["data"][0]["spans"].as_array_mut().expect("spans") {
        let start = span["startTime"].as_u64().expect("startTime");
        span["startTime"] = (start + 90_000_000).into();
    }
    let chain: serde_json::Value = serde_json::from_str(CHAIN).expect("fixture");
    let body = serde_json::json!({
        "data": [chain["data"][0], fanout["data"][0]],
        "total": 0, "limit": 0, "offset": 0, "errors": null,
    })
    .to_string();
    // No api_v3 here (Go's plain 404): the v1 search answers.
    let jaeger = Jaeger::start(&[("/api/traces", StatusCode::OK, &body)]);
    let run = jaeger
        .trace(&["--service", "orders", "--last", "2"])
        .code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert!(lines[0].starts_with("TRACE ID "));
    assert!(
        lines[1].starts_with(&format!(
            "{FANOUT_ID}  2023-11-14T22:14:50Z     100ms      4    0  gateway GET /home"
        )),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with(&format!(
            "{CHAIN_ID}  2023-11-14T22:13:20Z     120ms      6    2  orders GET /checkout"
        )),
        "{}",
        lines[2]
    );
    let asked = jaeger.asked();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert!(
        asked[0].starts_with("/api/v3/traces?query.service_name=orders&query.start_time_min=20"),
        "{}",
        asked[0]
    );
    assert!(
        asked[0].contains("&query.start_time_max=20") && asked[0].ends_with("&query.num_traces=2")
    );
    assert!(
        asked[1].starts_with("/api/traces?service=orders&limit=2&lookback=1h&start="),
        "{}",
        asked[1]
    );
    // --lookback sets the window of both searches.
    let (start, end) = v1_window(&asked[1]);
    assert_eq!((end - start) / 1_000_000, 3600, "{}", asked[1]);

    let run = jaeger
        .trace(&[
            "--service",
            "orders",
            "--last",
            "2",
            "-o",
            "json",
            "--lookback",
            "2h",
        ])
        .code(0);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    let ids: Vec<&str> = json
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|t| t["trace_id"].as_str())
        .collect();
    assert_eq!(ids, [FANOUT_ID, CHAIN_ID]);
    let asked = jaeger.asked();
    let (start, end) = v1_window(&asked[3]);
    assert_eq!((end - start) / 1_000_000, 7200, "{}", asked[3]);
    assert!(asked[3].contains("&lookback=2h&"));

    // api_v3 that found nothing says so with a 404 of its own: no second search.
    let jaeger = Jaeger::start(&[(
        "/api/v3/traces",
        StatusCode::NOT_FOUND,
        r#"{"error":{"httpCode":404,"message":"No traces found"}}"#,
    )]);
    let run = jaeger.trace(&["--service", "idle"]).code(0);
    assert!(run.stdout.is_empty());
    assert!(
        run.stderr
            .contains("no traces of service \"idle\" in Jaeger's last 1h"),
        "{}",
        run.stderr
    );
    assert_eq!(jaeger.asked().len(), 1);
}

/// `start` and `end` (microseconds) of a v1 search path.
fn v1_window(path: &str) -> (u64, u64) {
    let param = |name: &str| {
        path.split(['?', '&'])
            .find_map(|p| p.strip_prefix(name))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} in {path}"))
    };
    (param("start="), param("end="))
}

const SEARCH_OLD: &str = "1a2b3c4d5e6f708192a3b4c5d6e7f801";
const SEARCH_NEW: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a0";

#[test]
fn api_v3_search_serves_slowest_and_errors() {
    let jaeger = Jaeger::start(&[("/api/v3/traces", StatusCode::OK, SEARCH_V3)]);
    let run = jaeger.trace(&["--service", "payment", "--errors"]).code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stdout);
    assert!(
        lines[1].starts_with(&format!(
            "{SEARCH_NEW}  2023-11-14T22:14:20Z      30ms      2    2  gateway GET /pay"
        )),
        "{}",
        lines[1]
    );
    let run = jaeger
        .trace(&["--service", "payment", "--slowest", "-o", "json"])
        .code(0);
    let json = run.json();
    assert_eq!(
        (json["trace_id"].as_str(), json["span_count"].as_u64()),
        (Some(SEARCH_OLD), Some(2))
    );
    assert_eq!(json["duration_us"], 80_000);
    let asked = jaeger.asked();
    assert_eq!(
        asked.len(),
        2,
        "api_v3 answered: v1 is not asked: {asked:?}"
    );
    assert!(
        asked
            .iter()
            .all(|a| a.starts_with("/api/v3/traces?query.service_name=payment&"))
    );
    assert!(
        asked[1].ends_with("&query.num_traces=100"),
        "picked from Jaeger's search depth"
    );

    let run = weirctl(&["trace", "--slowest"], &[]).code(2);
    assert!(
        run.stderr.contains("--service") || run.stderr.contains("--file"),
        "{}",
        run.stderr
    );
}

// === --file ===

const FILE_SLOW: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const FILE_ERROR: &str = "0af7651916cd43dd8448eb211c80319c";
const FILE_HEALTH: &str = "5b8efff798038103d269b633813fc60c";

/// The fixture as two proxies would leave it: the gateway's file rotated once, the payment
/// proxy's last line cut off mid-write, and a bad line.
fn span_files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines: Vec<&str> = SPANS.lines().collect();
    let (gateway, payment): (Vec<&str>, Vec<&str>) = lines
        .iter()
        .partition(|l| l.contains(r#""stringValue":"gateway""#));
    assert_eq!((gateway.len(), payment.len()), (3, 2), "fixture");
    let write = |name: &str, text: String| {
        std::fs::write(dir.path().join(name), text).expect("write fixture");
    };
    write("gateway.jsonl.1", format!("{}\n", gateway[0]));
    write(
        "gateway.jsonl",
        format!("{}\n{{oops\n{}\n", gateway[1], gateway[2]),
    );
    let cut = &payment[0][..payment[0].len() / 2];
    write(
        "payment.jsonl",
        format!("{}\n{}\n{cut}", payment[0], payment[1]),
    );
    dir
}

fn file_trace(args: &[&str]) -> Run {
    let mut all = vec!["trace"];
    all.extend_from_slice(args);
    // A Jaeger URL that would fail: --file must not touch it.
    weirctl(&all, &[("WEIR_JAEGER_URL", "https://nowhere:1")])
}

#[test]
fn file_lists_newest_first() {
    let dir = span_files();
    let path = dir.path().to_string_lossy().into_owned();
    let run = file_trace(&["--file", &path]).code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", run.stdout);
    assert!(lines[0].starts_with("TRACE ID "));
    let expect = [
        format!("{FILE_ERROR}  2018-12-13T14:52:00Z     200ms      2    2  gateway GET /pay"),
        format!("{FILE_HEALTH}  2018-12-13T14:51:30Z       5ms      1    0  gateway GET /health"),
        format!("{FILE_SLOW}  2018-12-13T14:51:00Z        1s      3    0  gateway GET /pay"),
    ];
    assert_eq!(lines[1..], expect, "{}", run.stdout);
    // One warning for the bad line, none for the cut-off last one.
    let warning = format!(
        "warning: skipped 1 line that is not OTLP JSON (first: {}:2: ",
        dir.path().join("gateway.jsonl").display()
    );
    assert!(run.stderr.starts_with(&warning), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);

    let run = file_trace(&["--file", &path, "--errors", "-o", "json"]).code(0);
    let ids: Vec<String> = run
        .json()
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|t| t["trace_id"].as_str().map(String::from))
        .collect();
    assert_eq!(ids, [FILE_ERROR]);
    let run = file_trace(&[
        "--file",
        &path,
        "--list",
        "--last",
        "1",
        "--service",
        "gateway",
    ])
    .code(0);
    assert_eq!(run.stdout.lines().count(), 2);
    assert!(run.stdout.contains(FILE_ERROR));
}

#[test]
fn file_slowest_and_one_trace() {
    let dir = span_files();
    let gateway = dir
        .path()
        .join("gateway.jsonl")
        .to_string_lossy()
        .into_owned();
    let payment = dir
        .path()
        .join("payment.jsonl")
        .to_string_lossy()
        .into_owned();
    // gateway.jsonl.1 holds the slow trace's root: read because gateway.jsonl is.
    let run = file_trace(&[
        "--file",
        &gateway,
        "--file",
        &payment,
        "--slowest",
        "-o",
        "json",
    ])
    .code(0);
    let json = run.json();
    assert_eq!(json["trace_id"], FILE_SLOW);
    assert_eq!(json["span_count"], 3);
    assert_eq!(json["duration_us"], 1_000_000);
    let services = &json["services"];
    assert_eq!(services, &serde_json::json!(["gateway", "payment"]));
    assert_eq!(
        json["spans"][2]["parent_id"], "a2fb4a1d1a96d312",
        "merged across files"
    );
    assert_eq!(json["spans"][2]["orphan"], false);

    let run = file_trace(&["--file", &gateway, "--file", &payment, FILE_ERROR])
        .code(0)
        .fits();
    assert_eq!(
        run.stdout,
        format!(
            "\
trace {FILE_ERROR}  200ms  2 spans  2 errors
services: gateway, payment
                                   0                     200ms
▶ gateway GET /pay                 ███████████████████████████   200ms ERROR 503
▶  payment POST /charge             █████████████████████████    180ms ERROR 503
▶ critical path: the spans that set the total latency
"
        )
    );
}

#[test]
fn file_missing_trace_is_an_error() {
    let dir = span_files();
    let path = dir.path().to_string_lossy().into_owned();
    let missing = "ffffffffffffffffffffffffffffffff";
    let run = file_trace(&["--file", &path, missing]).code(1);
    assert!(run.stdout.is_empty());
    let gateway = dir.path().join("gateway.jsonl");
    assert!(
        run.stderr.contains(&format!(
            "error: trace {missing} not found in {}.1, {} and {} (3 traces)",
            gateway.display(),
            gateway.display(),
            dir.path().join("payment.jsonl").display()
        )),
        "{}",
        run.stderr
    );
    let gone = dir.path().join("gone.jsonl").to_string_lossy().into_owned();
    let run = file_trace(&["--file", &gone]).code(1);
    assert!(run.stderr.contains("gone.jsonl"), "{}", run.stderr);
    let run = file_trace(&["--file", &path, "--lookback", "2h"]).code(2);
    assert!(run.stderr.contains("--lookback"), "{}", run.stderr);
}
