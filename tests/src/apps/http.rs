//! The HTTP test app: `/echo`, `/bytes`, `/upload`, `/delay`, `/ws`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::{HttpStats, RespBody, Server, host_of, serve_http};
use crate::util::{Fnv64, Pattern, PatternBody};

/// Longest `/delay` honoured, so a typo cannot hang a test run.
const MAX_DELAY_MS: u64 = 60_000;

/// Starts the app on 127.0.0.1:0. `name` is returned in every `/echo` reply so a
/// test can tell which of several apps answered.
pub async fn start(name: &str) -> Server {
    serve(super::bind_loopback().await, name)
}

pub fn serve(listener: TcpListener, name: &str) -> Server {
    let stats = Arc::new(HttpStats::default());
    let ctx = Arc::new(Ctx {
        name: name.to_string(),
        stats: stats.clone(),
    });
    serve_http(listener, stats, move |req| handle(req, ctx.clone()))
}

struct Ctx {
    name: String,
    stats: Arc<HttpStats>,
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<RespBody> {
    let mut resp = Response::new(
        Full::new(body.into())
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp
}

fn json_response(value: serde_json::Value) -> Response<RespBody> {
    let mut resp = full(StatusCode::OK, value.to_string());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn query_u64(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

async fn handle(req: Request<Incoming>, ctx: Arc<Ctx>) -> Response<RespBody> {
    match req.uri().path() {
        "/echo" => echo(req, &ctx).await,
        "/upload" => upload(req).await,
        // What a readiness probe polls.
        "/healthz" => full(StatusCode::OK, "ok"),
        "/bytes" => match query_u64(&req, "n") {
            Some(n) => bytes(n),
            None => full(StatusCode::BAD_REQUEST, "need ?n=<bytes>"),
        },
        "/delay" => {
            let ms = query_u64(&req, "ms").unwrap_or(0).min(MAX_DELAY_MS);
            ctx.stats.in_flight.fetch_add(1, Ordering::SeqCst);
            // Decrement even if the connection (and so this future) is dropped.
            let _guard = InFlight(ctx.stats.clone());
            tokio::time::sleep(Duration::from_millis(ms)).await;
            full(StatusCode::OK, "ok")
        }
        "/ws" => websocket(req),
        _ => full(StatusCode::NOT_FOUND, "no such test route"),
    }
}

struct InFlight(Arc<HttpStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads the body frame by frame (never whole) and returns (length, checksum).
async fn consume(mut body: Incoming, checksum: bool) -> Result<(u64, Fnv64), hyper::Error> {
    let mut len = 0u64;
    let mut sum = Fnv64::default();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            len += data.len() as u64;
            if checksum {
                sum.update(&data);
            }
        }
    }
    Ok((len, sum))
}

async fn echo(req: Request<Incoming>, ctx: &Ctx) -> Response<RespBody> {
    let host = host_of(&req);
    let (parts, body) = req.into_parts();
    let (len, sum) = match consume(body, true).await {
        Ok(r) => r,
        Err(e) => return full(StatusCode::BAD_REQUEST, format!("reading body: {e}")),
    };
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        let entry = headers
            .entry(name.as_str())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(values) = entry {
            values.push(String::from_utf8_lossy(value.as_bytes()).into());
        }
    }
    json_response(json!({
        "app": ctx.name,
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "path": parts.uri.path(),
        "version": format!("{:?}", parts.version),
        "host": host,
        "headers": headers,
        "body_len": len,
        "checksum": sum.hex(),
    }))
}

async fn upload(req: Request<Incoming>) -> Response<RespBody> {
    // `?sum=0` skips the checksum: gigabyte uploads measure the proxy, not FNV.
    let checksum = query_u64(&req, "sum") != Some(0);
    let header_text = |name: header::HeaderName| {
        req.headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let content_length = header_text(header::CONTENT_LENGTH);
    let transfer_encoding = header_text(header::TRANSFER_ENCODING);
    let version = format!("{:?}", req.version());
    match consume(req.into_body(), checksum).await {
        Ok((len, sum)) => json_response(json!({
            "body_len": len,
            "checksum": sum.hex(),
            "content_length": content_length,
            "transfer_encoding": transfer_encoding,
            "version": version,
        })),
        Err(e) => full(StatusCode::BAD_REQUEST, format!("reading body: {e}")),
    }
}

fn bytes(n: u64) -> Response<RespBody> {
    let mut resp = Response::new(
        PatternBody::new(Pattern::Cycle, n, true)
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(n));
    resp
}

/// Answers the WebSocket handshake itself (RFC 6455 §4.2.2) and echoes every text
/// and binary message on the upgraded connection.
fn websocket(mut req: Request<Incoming>) -> Response<RespBody> {
    let is_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return full(StatusCode::BAD_REQUEST, "missing sec-websocket-key");
    };
    if !is_upgrade {
        return full(StatusCode::BAD_REQUEST, "not a websocket upgrade");
    }
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                eprintln!("test app: websocket upgrade failed: {e}");
                return;
            }
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(m) if m.is_text() || m.is_binary() => {
                    if ws.send(m).await.is_err() {
                        return;
                    }
                }
                // tungstenite answers pings and close frames itself.
                Ok(m) if m.is_close() => return,
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let mut resp = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let h = resp.headers_mut();
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}
