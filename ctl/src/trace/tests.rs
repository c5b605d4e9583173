//! Golden and shape tests of `weirctl trace` on fixtures shaped like Jaeger's answers.

use clap::Parser as _;
use unicode_width::UnicodeWidthStr as _;

use std::time::Duration;

use hyper::StatusCode;

use super::jaeger::{V1, gateway_error, parse_v1, parse_v3};
use super::model::{Kind, Span, Trace};
use super::query::{V3Search, v3_search_answer};
use super::render::{self, View, human};
use super::{parse_lookback, parse_trace_id, select};
use crate::{Cli, Command, TraceFormat};

const CHAIN: &str = include_str!("../../tests/fixtures/trace_chain_v1.json");
const FANOUT: &str = include_str!("../../tests/fixtures/trace_fanout_v1.json");
const ORPHAN: &str = include_str!("../../tests/fixtures/trace_orphan_v1.json");
const CHAIN_V3: &str = include_str!("../../tests/fixtures/trace_chain_v3.json");
/// A `/api/v3/traces?query.service_name=…` answer in the shape of Jaeger's own (its apiv3
/// `snapshots/FindTraces.json`): every trace's resourceSpans in one list.
const SEARCH_V3: &str = include_str!("../../tests/fixtures/trace_search_v3.json");

fn v1(body: &str) -> Trace {
    match parse_v1(body.as_bytes()) {
        Ok(V1::Traces(mut traces)) if traces.len() == 1 => traces.remove(0),
        other => panic!("expected one trace, got {other:?}"),
    }
}

fn plain(trace: &Trace) -> String {
    render::waterfall(&View::new(trace), false)
}

fn assert_fits(text: &str, width: usize) {
    for line in text.lines() {
        assert!(line.width() <= width, "{} columns: {line:?}", line.width());
    }
}

const CHAIN_GOLDEN: &str = "\
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
";

#[test]
fn chain_with_retry() {
    // The failed first try and the wait before the retry cost the caller: all on the path.
    assert_eq!(plain(&v1(CHAIN)), CHAIN_GOLDEN);
}

#[test]
fn fan_out_critical_path_is_the_late_branch() {
    let trace = v1(FANOUT);
    assert_eq!(
        plain(&trace),
        "\
trace 0af7651916cd43dd8448eb211c80319c  100ms  4 spans
services: gateway, catalog, recs, ml
                                   0                     100ms
▶ gateway GET /home                ███████████████████████████   100ms
   catalog GET /items              █████████                      28ms
▶  recs GET /recommendations       ██████████████████████████     92ms
▶   ml POST /score                   ███████████████████████      80ms
▶ critical path: the spans that set the total latency
"
    );
    let view = View::new(&trace);
    let json = serde_json::to_value(render::json(&view)).expect("json");
    let critical: Vec<(&str, bool)> = json["spans"]
        .as_array()
        .expect("spans")
        .iter()
        .map(|s| (s["service"].as_str().unwrap_or(""), s["critical"] == true))
        .collect();
    assert_eq!(
        critical,
        [
            ("gateway", true),
            ("catalog", false),
            ("recs", true),
            ("ml", true)
        ]
    );
}

#[test]
fn orphans_render_as_roots_with_a_note() {
    assert_eq!(
        plain(&v1(ORPHAN)),
        "\
trace 00f067aa0ba902b7  80ms  3 spans  1 error
services: web, api, worker
                                   0                      80ms
▶ web GET /                        █████████████████              50ms
▶  api GET /api                     █████████████                 35ms
  ? worker process job                   █████████████████████    60ms ERROR
▶ critical path: the spans that set the total latency
? parent span not in the trace (not reported yet or dropped): shown as a root
"
    );
}

#[test]
fn api_v3_reads_like_v1() {
    let traces = parse_v3(CHAIN_V3.as_bytes()).expect("v3");
    assert_eq!(traces.len(), 1);
    let expect = CHAIN_GOLDEN.replace(
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "5b8efff798038103d269b633813fc60c",
    );
    assert_eq!(plain(&traces[0]), expect);
    // Jaeger 1.x's api_v3 gateway wrote TracesData without the `result` wrapper; status codes
    // may come as names and times as numbers.
    let bare = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name",
        "value":{"stringValue":"edge"}}]},"scopeSpans":[{"spans":[{"traceId":"AB","spanId":"01",
        "name":"GET /","startTimeUnixNano":2000000,"endTimeUnixNano":"5000000",
        "status":{"code":"STATUS_CODE_ERROR"}}]}]}]}"#;
    let traces = parse_v3(bare.as_bytes()).expect("bare v3");
    let span = &traces[0].spans[0];
    assert_eq!(
        (traces[0].id.as_str(), span.service.as_str()),
        ("ab", "edge")
    );
    assert_eq!(
        (span.start_us, span.duration_us, span.error),
        (2000, 3000, true)
    );
    let bad = r#"{"result":{"resourceSpans":[{"scopeSpans":[{"spans":[
        {"spanId":"01","startTimeUnixNano":"soon"}]}]}]}}"#;
    let err = parse_v3(bad.as_bytes()).err().map(|e| format!("{e:#}"));
    assert!(err.is_some_and(|e| e.contains("startTimeUnixNano")));
}

#[test]
fn v1_errors() {
    let not_found = r#"{"data":null,"total":0,"limit":0,"offset":0,
        "errors":[{"code":404,"msg":"trace not found"}]}"#;
    assert_eq!(parse_v1(not_found.as_bytes()).ok(), Some(V1::NotFound));
    let failed = r#"{"data":[],"errors":[{"code":500,"msg":"storage down"}]}"#;
    let err = parse_v1(failed.as_bytes()).err().map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("storage down")));
    let err = parse_v1(b"<html>").err().map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("not Jaeger's")));
}

#[test]
fn json_is_normalized() {
    let trace = v1(CHAIN);
    let view = View::new(&trace);
    let json = serde_json::to_value(render::json(&view)).expect("json");
    assert_eq!(json["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(json["duration_us"], 120_000);
    assert_eq!(json["span_count"], 6);
    assert_eq!(
        json["services"],
        serde_json::json!(["orders", "payments", "ledger"])
    );
    let retry = &json["spans"][3];
    assert_eq!(
        retry,
        &serde_json::json!({
            "span_id": "e1f0a9b8c7d6e5f4", "parent_id": "53995c3f42cd8ad8", "service": "orders",
            "name": "POST payments", "depth": 1, "offset_us": 60_000, "duration_us": 55_000,
            "critical": true, "status": "ok", "http_status": 200, "attempt": 2, "kind": "client",
            "orphan": false,
        })
    );
    assert_eq!(json["spans"][1]["status"], "error");
    assert_eq!(json["spans"][0]["parent_id"], serde_json::Value::Null);
}

#[test]
fn color_only_adds_escapes() {
    let trace = v1(CHAIN);
    let colored = render::waterfall(&View::new(&trace), true);
    assert!(colored.contains("\x1b[1m▶ orders GET /checkout"));
    assert!(colored.contains("\x1b[31mERROR 503\x1b[39m"));
    let stripped = ["\x1b[1m", "\x1b[22m", "\x1b[31m", "\x1b[39m"]
        .iter()
        .fold(colored, |text, code| text.replace(code, ""));
    assert_eq!(stripped, CHAIN_GOLDEN);
}

/// Long, wide, deep and odd names still fit 80 columns; tiny spans still get a bar.
#[test]
fn hostile_traces_fit() {
    let mut spans = Vec::new();
    let mut parent: Option<String> = None;
    for depth in 0..20u64 {
        let id = format!("{depth:016x}");
        spans.push(Span {
            id: id.clone(),
            parent: parent.replace(id),
            service: format!("支払いサービス-{depth}"),
            name: "POST /a/very/long/path/that/goes/on\nand/on".into(),
            start_us: 1_000_000 + depth,
            duration_us: if depth == 19 {
                0
            } else {
                3_600_000_000 - depth
            },
            error: depth % 3 == 0,
            http_status: Some(599),
            attempt: Some(1000 + u32::try_from(depth).unwrap_or(0)),
            kind: if depth % 2 == 0 {
                Kind::Client
            } else {
                Kind::Server
            },
            peer: Some(format!("peer\u{1b}[31m-{}", "x".repeat(200))),
        });
    }
    let trace = Trace {
        id: "ffffffffffffffffffffffffffffffff".into(),
        spans,
    };
    let text = plain(&trace);
    println!("{text}");
    assert_fits(&text, render::WIDTH);
    assert_eq!(text.lines().filter(|l| l.contains('█')).count(), 20);
    assert!(text.contains("#1019"), "the try number survives truncation");
    for fixture in [CHAIN, FANOUT, ORPHAN] {
        assert_fits(&plain(&v1(fixture)), render::WIDTH);
    }
    let empty = Trace {
        id: "ab".into(),
        spans: Vec::new(),
    };
    assert!(plain(&empty).contains("without spans"));
}

#[test]
fn list_newest_first_is_the_callers_order() {
    let (a, b) = (v1(FANOUT), v1(CHAIN));
    let text = render::list(&[View::new(&a), View::new(&b)]);
    assert_eq!(
        text,
        "\
TRACE ID                          STARTED               DURATION  SPANS  ERR  ROOT
0af7651916cd43dd8448eb211c80319c  2023-11-14T22:13:20Z     100ms      4    0  gateway GET /home
4bf92f3577b34da6a3ce929d0e0e4736  2023-11-14T22:13:20Z     120ms      6    2  orders GET /checkout
"
    );
    assert_fits(&text, render::LIST_WIDTH);
}

#[test]
fn durations() {
    for (us, text) in [
        (0, "0µs"),
        (999, "999µs"),
        (1_000, "1ms"),
        (1_250, "1.25ms"),
        (12_340, "12.3ms"),
        (30_000, "30ms"),
        (999_499, "999ms"),
        (999_999, "1s"),
        (2_500_000, "2.5s"),
        (3_600_000_000, "3600s"),
    ] {
        assert_eq!(human(us), text, "{us}");
    }
}

#[test]
fn trace_ids() {
    assert_eq!(
        parse_trace_id(" 4BF92F3577B34DA6A3CE929D0E0E4736 ").as_deref(),
        Ok("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(
        parse_trace_id("00f067aa0ba902b7").as_deref(),
        Ok("00f067aa0ba902b7")
    );
    assert_eq!(
        parse_trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
        Ok("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    for bad in [
        "",
        "xyz",
        "4bf92f3577b34da6a3ce929d0e0e473",
        "4bf92f3577b34da6a3ce929d0e0e473g",
        "0000000000000000",
    ] {
        assert!(parse_trace_id(bad).is_err(), "{bad:?}");
    }
    let err = parse_trace_id("not-a-trace").err().unwrap_or_default();
    assert!(err.contains("16 or 32 hex digits"), "{err}");
}

#[test]
fn command_line() {
    let parse = |args: &[&str]| Cli::try_parse_from(["weirctl", "trace"].iter().chain(args));
    match parse(&[
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "--jaeger",
        "http://j:1",
        "-o",
        "json",
    ])
    .map(|cli| cli.command)
    {
        Ok(Command::Trace(args)) => {
            assert_eq!(args.jaeger, "http://j:1");
            assert_eq!(args.output, TraceFormat::Json);
        }
        other => panic!("{other:?}"),
    }
    match parse(&["--service", "payments", "--last", "5"]).map(|cli| cli.command) {
        Ok(Command::Trace(args)) => {
            assert_eq!((args.service.as_deref(), args.last), (Some("payments"), 5));
            assert_eq!(args.trace_id, None);
        }
        other => panic!("{other:?}"),
    }
    match parse(&[
        "--file",
        "a.jsonl",
        "--file",
        "dir",
        "--slowest",
        "-o",
        "json",
    ])
    .map(|cli| cli.command)
    {
        Ok(Command::Trace(args)) => {
            assert_eq!(args.file.len(), 2);
            assert!(args.slowest && !args.errors && !args.list);
            assert_eq!(args.lookback, Duration::from_secs(3600), "default 1h");
        }
        other => panic!("{other:?}"),
    }
    match parse(&["--service", "p", "--errors", "--lookback", "30m"]).map(|cli| cli.command) {
        Ok(Command::Trace(args)) => {
            assert!(args.errors && args.file.is_empty());
            assert_eq!(args.lookback, Duration::from_secs(1800));
        }
        other => panic!("{other:?}"),
    }
    for good in [
        &["--file", "a", "4bf92f3577b34da6"][..],
        &["--file", "a", "--service", "p", "--last", "3"],
        &["--file", "a", "--list"],
    ] {
        assert!(parse(good).is_ok(), "{good:?}");
    }
    for bad in [
        &[][..],
        &["zz"],
        &["--last", "3"],
        &["--slowest"],
        &["4bf92f3577b34da6", "--service", "x"],
        &["4bf92f3577b34da6", "--last", "3"],
        &["4bf92f3577b34da6", "--slowest"],
        &["--service", "x", "--slowest", "--errors"],
        &["--service", "x", "--last", "0"],
        &["--service", "x", "--lookback", "0m"],
        &["--file", "a", "--lookback", "2h"],
    ] {
        let err = parse(bad).err().map(|e| e.exit_code());
        assert_eq!(err, Some(2), "{bad:?}");
    }
}

#[test]
fn lookbacks() {
    for (text, secs) in [
        ("30m", 1800),
        ("2h", 7200),
        ("1d", 86_400),
        ("1h30m", 5400),
        ("45s", 45),
    ] {
        assert_eq!(
            parse_lookback(text),
            Ok(Duration::from_secs(secs)),
            "{text}"
        );
    }
    for bad in [
        "",
        "0h",
        "1",
        "h",
        "1w",
        "-1h",
        "1.5h",
        "99999999999999999999d",
    ] {
        assert!(parse_lookback(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn api_v3_search_answer() {
    let traces = match v3_search_answer(StatusCode::OK, SEARCH_V3.as_bytes()) {
        V3Search::Traces(traces) => traces,
        other => panic!("{other:?}"),
    };
    let summary: Vec<(&str, usize, bool)> = traces
        .iter()
        .map(|t| (t.id.as_str(), t.spans.len(), select::has_error(t)))
        .collect();
    assert_eq!(
        summary,
        [
            ("1a2b3c4d5e6f708192a3b4c5d6e7f801", 2, false),
            ("9f8e7d6c5b4a39281706f5e4d3c2b1a0", 2, true),
        ],
        "one resourceSpans list, split by trace id"
    );
    let services: Vec<&str> = traces[0].spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(services, ["gateway", "payment"]);
    let slowest = select::slowest(traces.clone(), Some("payment")).map(|t| t.id);
    assert_eq!(slowest.as_deref(), Some("1a2b3c4d5e6f708192a3b4c5d6e7f801"));
    let newest = select::newest_first(traces, None);
    assert_eq!(newest[0].id, "9f8e7d6c5b4a39281706f5e4d3c2b1a0");

    // What Jaeger 2.x answers when the search finds nothing (http.Error adds the newline).
    let none = "{\"error\":{\"httpCode\":404,\"message\":\"No traces found\"}}\n";
    assert_eq!(
        gateway_error(none.as_bytes()),
        Some((404, "No traces found".into()))
    );
    assert!(matches!(
        v3_search_answer(StatusCode::NOT_FOUND, none.as_bytes()),
        V3Search::Traces(t) if t.is_empty()
    ));
    // Jaeger 1.x's gateway: an empty result.
    assert!(matches!(
        v3_search_answer(StatusCode::OK, br#"{"result":{}}"#),
        V3Search::Traces(t) if t.is_empty()
    ));
    // No api_v3 at all: Go's router, or the UI's page for a path it does not know.
    for (status, body) in [
        (StatusCode::NOT_FOUND, &b"404 page not found\n"[..]),
        (StatusCode::OK, b"<!doctype html><html>"),
        (StatusCode::METHOD_NOT_ALLOWED, b""),
    ] {
        assert!(
            matches!(v3_search_answer(status, body), V3Search::Absent),
            "{status}"
        );
    }
    assert!(matches!(
        v3_search_answer(StatusCode::OK, br#"{"result":{"resourceSpans":3}}"#),
        V3Search::Bad(_)
    ));
    assert!(matches!(
        v3_search_answer(StatusCode::INTERNAL_SERVER_ERROR, b"storage down"),
        V3Search::Refused
    ));
}

/// One hop through two sidecars as the proxies write it: the caller's call and try (CLIENT,
/// kind 3, `peer.service`) and the callee's SERVER span (kind 2).
#[test]
fn client_spans_read_caller_to_callee() {
    let kv = |k: &str, v: &str| format!(r#"{{"key":"{k}","value":{{"stringValue":"{v}"}}}}"#);
    let span = |id: &str, parent: &str, kind: u8, attrs: &str, start: u64, end: u64| {
        format!(
            r#"{{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"{id}","parentSpanId":"{parent}","name":"GET /pay","kind":{kind},"startTimeUnixNano":"{start}","endTimeUnixNano":"{end}","attributes":[{attrs}]}}"#
        )
    };
    let rs = |service: &str, spans: &[String]| {
        format!(
            r#"{{"resource":{{"attributes":[{}]}},"scopeSpans":[{{"spans":[{}]}}]}}"#,
            kv("service.name", service),
            spans.join(",")
        )
    };
    let call = span(
        "00000000000000a1",
        "",
        3,
        &kv("peer.service", "payment"),
        0,
        9_000_000,
    );
    let try1 = span(
        "00000000000000a2",
        "00000000000000a1",
        3,
        &kv("server.address", "payment"),
        1_000_000,
        8_000_000,
    );
    let server = span(
        "00000000000000a3",
        "00000000000000a2",
        2,
        "",
        2_000_000,
        7_000_000,
    );
    let line = format!(
        r#"{{"resourceSpans":[{},{}]}}"#,
        rs("checkout", &[call, try1]),
        rs("payment", &[server])
    );
    let traces = super::jaeger::parse_otlp(line.as_bytes()).expect("parse");
    let trace = &traces[0];
    let kinds: Vec<(Kind, Option<&str>)> = trace
        .spans
        .iter()
        .map(|s| (s.kind, s.peer.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        [
            (Kind::Client, Some("payment")),
            (Kind::Client, Some("payment")),
            (Kind::Server, None)
        ]
    );
    let text = render::waterfall(&View::new(trace), false);
    let rows: Vec<&str> = text.lines().skip(3).take(3).collect();
    assert!(rows[0].contains("checkout → payment"), "{text}");
    assert!(rows[1].contains(" checkout → payment"), "{text}");
    assert!(rows[2].contains("payment GET /pay"), "{text}");
    let view = View::new(trace);
    let value = serde_json::to_value(render::json(&view)).expect("json");
    assert_eq!(value["spans"][0]["kind"], "client");
    assert_eq!(value["spans"][0]["peer"], "payment");
    assert_eq!(value["spans"][2]["kind"], "server");
    assert!(value["spans"][2].get("peer").is_none());
}
