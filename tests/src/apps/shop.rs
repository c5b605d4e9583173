//! The demo's shop service: one process per service of a small API waterfall.
//!
//! Per request it does a little work of its own, then calls its downstream services through
//! its sidecar's outbound listener, stage after stage (`auth,catalog+payment,shipping`: auth,
//! then catalog and payment in parallel, then shipping), and answers with what each call
//! returned. It forwards the trace headers and the remaining deadline the way an instrumented
//! app must, or the mesh could not stitch the hops into one trace or cut a chain whose caller
//! gave up. A failed required call fails the request (502); later stages are skipped.
//!
//! `/_chaos?fail=PERCENT&delay_ms=MS` on the app's own port makes it misbehave (the demo's
//! faults live in the app, so the caller's retries and timeouts have something real to absorb).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::{HttpStats, RespBody, Server, serve_http};
use crate::pooled::{self, Pooled};

/// Headers a real app copies from the request it serves to the calls it makes for it.
const PROPAGATED: [&str; 9] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-request-id",
];
const TIMEOUT_MS: &str = "x-weir-timeout-ms";
/// The app itself has no timeouts (that is the mesh's job); this only stops a lost call from
/// holding a request forever.
const CALL_CAP: Duration = Duration::from_secs(60);
const MAX_CHAOS_DELAY_MS: u64 = 60_000;

/// What one shop service does.
#[derive(Debug, Clone)]
pub struct Shop {
    pub name: String,
    /// Its sidecar's outbound listener; needed only when it has calls to make.
    pub proxy: Option<SocketAddr>,
    /// Stages run in order; the services of one stage are called in parallel.
    pub stages: Vec<Vec<String>>,
    /// Its own work per request, before the calls.
    pub work: Duration,
}

/// Parses `auth,catalog+payment,shipping` into stages.
pub fn parse_calls(spec: &str) -> Result<Vec<Vec<String>>, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok(Vec::new());
    }
    spec.split(',')
        .map(|stage| {
            stage
                .split('+')
                .map(|s| {
                    let s = s.trim();
                    let valid = !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                    if valid {
                        Ok(s.to_owned())
                    } else {
                        Err(format!(
                            "--calls {spec:?}: {s:?} is not a service name (stages are \
                             separated by ',', parallel calls by '+', e.g. auth,catalog+payment)"
                        ))
                    }
                })
                .collect()
        })
        .collect()
}

struct Ctx {
    shop: Shop,
    client: Pooled,
    fail_percent: AtomicU32,
    delay_ms: AtomicU64,
    rolls: AtomicU64,
}

pub fn serve(listener: TcpListener, shop: Shop) -> Server {
    let ctx = Arc::new(Ctx {
        shop,
        client: pooled::client(),
        fail_percent: AtomicU32::new(0),
        delay_ms: AtomicU64::new(0),
        rolls: AtomicU64::new(seed()),
    });
    serve_http(listener, Arc::new(HttpStats::default()), move |req| {
        handle(req, ctx.clone())
    })
}

async fn handle(req: Request<Incoming>, ctx: Arc<Ctx>) -> Response<RespBody> {
    match req.uri().path() {
        "/healthz" => reply(
            StatusCode::OK,
            json!({"service": ctx.shop.name, "ok": true}),
        ),
        "/_chaos" => chaos(&req, &ctx),
        _ => work(req, &ctx).await,
    }
}

fn chaos(req: &Request<Incoming>, ctx: &Ctx) -> Response<RespBody> {
    for (key, value) in query(req) {
        match (key, value.parse::<u64>()) {
            ("fail", Ok(p)) if p <= 100 => ctx.fail_percent.store(p as u32, Relaxed),
            ("delay_ms", Ok(ms)) if ms <= MAX_CHAOS_DELAY_MS => ctx.delay_ms.store(ms, Relaxed),
            _ => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!(
                        "{key}={value}: expected fail=0..100 and/or delay_ms=0..{MAX_CHAOS_DELAY_MS}"
                    )}),
                );
            }
        }
    }
    reply(
        StatusCode::OK,
        json!({
            "service": ctx.shop.name,
            "fail": ctx.fail_percent.load(Relaxed),
            "delay_ms": ctx.delay_ms.load(Relaxed),
        }),
    )
}

async fn work(req: Request<Incoming>, ctx: &Ctx) -> Response<RespBody> {
    let start = Instant::now();
    let headers = req.headers();
    let attempt = number(headers, "x-weir-attempt").unwrap_or(1);
    let budget = number(headers, TIMEOUT_MS).map(Duration::from_millis);
    let mut out = json!({
        "service": ctx.shop.name,
        "trace_id": trace_id(headers),
        "attempt": attempt,
    });
    tokio::time::sleep(ctx.shop.work).await;
    let delay = ctx.delay_ms.load(Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if ctx.roll() < ctx.fail_percent.load(Relaxed) {
        out["error"] = json!("chaos: this service is failing requests on purpose");
        return finish(StatusCode::SERVICE_UNAVAILABLE, out, start);
    }
    let mut status = StatusCode::OK;
    let mut calls = Vec::new();
    for stage in &ctx.shop.stages {
        let deadline = budget.map(|b| b.saturating_sub(start.elapsed()));
        let results = futures_util::future::join_all(
            stage
                .iter()
                .map(|service| call(ctx, service, headers, deadline)),
        )
        .await;
        let failed = results
            .iter()
            .any(|r| !(200..300).contains(&r["status"].as_u64().unwrap_or(0)));
        calls.extend(results);
        if failed {
            status = StatusCode::BAD_GATEWAY;
            break;
        }
    }
    if !calls.is_empty() {
        out["calls"] = Value::Array(calls);
    }
    finish(status, out, start)
}

/// One downstream call through the sidecar, never an error: what happened is the answer.
async fn call(ctx: &Ctx, service: &str, incoming: &HeaderMap, left: Option<Duration>) -> Value {
    let start = Instant::now();
    let mut out = json!({"service": service});
    let Some(proxy) = ctx.shop.proxy else {
        out["status"] = json!(0);
        out["error"] = json!("no --proxy to call through");
        return out;
    };
    if left.is_some_and(|d| d.is_zero()) {
        out["status"] = json!(504);
        out["error"] = json!("deadline passed before the call");
        return out;
    }
    let mut req = Request::new(Empty::<Bytes>::new());
    *req.uri_mut() = match format!("http://{proxy}/{service}").parse() {
        Ok(uri) => uri,
        Err(e) => {
            out["status"] = json!(0);
            out["error"] = json!(e.to_string());
            return out;
        }
    };
    let h = req.headers_mut();
    if let Ok(host) = HeaderValue::from_str(service) {
        h.insert(header::HOST, host);
    }
    for name in PROPAGATED {
        if let Some(v) = incoming.get(name) {
            h.insert(HeaderName::from_static(name), v.clone());
        }
    }
    if let Some(left) = left {
        h.insert(
            HeaderName::from_static(TIMEOUT_MS),
            HeaderValue::from(left.as_millis().max(1) as u64),
        );
    }
    match tokio::time::timeout(CALL_CAP, pooled::exchange(&ctx.client, req)).await {
        Ok(Ok(answer)) => {
            out["status"] = json!(answer.status);
            if let Some(e) = answer.weir_error {
                out["weir_error"] = json!(e);
            }
            if let Ok(reply) = serde_json::from_slice::<Value>(&answer.body) {
                out["reply"] = reply;
            }
        }
        Ok(Err(e)) => {
            out["status"] = json!(0);
            out["error"] = json!(e);
        }
        Err(_) => {
            out["status"] = json!(0);
            out["error"] = json!("no answer within 60 s");
        }
    }
    out["ms"] = json!(millis(start.elapsed()));
    out
}

impl Ctx {
    /// 0..100, uniform enough for chaos (splitmix64 over a counter).
    fn roll(&self) -> u32 {
        let mut z = self
            .rolls
            .fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % 100) as u32
    }
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed)
        ^ u64::from(std::process::id())
}

fn finish(status: StatusCode, mut out: Value, start: Instant) -> Response<RespBody> {
    out["status"] = json!(status.as_u16());
    out["ms"] = json!(millis(start.elapsed()));
    reply(status, out)
}

fn reply(status: StatusCode, body: Value) -> Response<RespBody> {
    let mut rsp = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    rsp
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The W3C trace id, so a client can find the request's trace.
fn trace_id(headers: &HeaderMap) -> Option<String> {
    let tp = headers.get("traceparent")?.to_str().ok()?;
    let id = tp.split('-').nth(1)?;
    (id.len() == 32).then(|| id.to_owned())
}

fn query(req: &Request<Incoming>) -> Vec<(&str, &str)> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_parse_and_bad_names_are_refused() {
        assert_eq!(
            parse_calls("auth, catalog+payment ,shipping"),
            Ok(vec![
                vec!["auth".to_owned()],
                vec!["catalog".to_owned(), "payment".to_owned()],
                vec!["shipping".to_owned()],
            ])
        );
        assert_eq!(parse_calls(""), Ok(vec![]));
        for bad in ["auth,,x", "a+", "a b", "a/b"] {
            assert!(parse_calls(bad).is_err(), "{bad}");
        }
    }
}
