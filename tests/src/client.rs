//! HTTP clients for the tests: hyper's low-level connections, so each test knows
//! exactly which TCP connection carries which request.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::util::{BoxError, Pattern, PatternBody};

pub type ReqBody = BoxBody<Bytes, BoxError>;

pub fn empty() -> ReqBody {
    Empty::new().map_err(|e| match e {}).boxed()
}

pub fn full(data: impl Into<Bytes>) -> ReqBody {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

/// `len` pattern bytes, streamed; `exact` = announce a Content-Length.
pub fn pattern(pattern: Pattern, len: u64, exact: bool) -> ReqBody {
    PatternBody::new(pattern, len, exact)
        .map_err(|e| match e {})
        .boxed()
}

/// An HTTP/1.1 connection to `addr` (normally a proxy's outbound listener).
pub async fn h1(addr: SocketAddr) -> http1::SendRequest<ReqBody> {
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    h1_on(stream).await
}

pub async fn h1_on(stream: TcpStream) -> http1::SendRequest<ReqBody> {
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1 handshake");
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            eprintln!("client connection: {e}");
        }
    });
    sender
}

/// An HTTP/2 connection with prior knowledge (h2c) to `addr`.
pub async fn h2(addr: SocketAddr) -> http2::SendRequest<ReqBody> {
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("client h2 connection: {e}");
        }
    });
    sender
}

/// An HTTP/1.1 request in origin form with an explicit `Host` (the mesh name).
pub fn request(method: &str, host: &str, path: &str, body: ReqBody) -> Request<ReqBody> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host)
        .body(body)
        .expect("valid request parts")
}

/// Sends on an HTTP/1 connection, waiting for it to be ready first.
pub async fn send1(
    sender: &mut http1::SendRequest<ReqBody>,
    req: Request<ReqBody>,
) -> Response<Incoming> {
    sender.ready().await.expect("HTTP/1 connection ready");
    sender.send_request(req).await.expect("HTTP/1 request")
}

/// Collects a response into (status, headers, body).
pub async fn collect(resp: Response<Incoming>) -> (StatusCode, http::HeaderMap, Bytes) {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    (parts.status, parts.headers, body)
}

/// Parses a JSON reply from the test app, panicking with the status and body text
/// (which may be a proxy error page) if it is not JSON.
pub async fn json(resp: Response<Incoming>) -> serde_json::Value {
    let (status, headers, body) = collect(resp).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "expected 200 from the app, got {status} (x-weir-error: {:?}): {}",
        headers.get("x-weir-error"),
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "reply is not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    })
}

/// GET `host` `path` over a fresh HTTP/1 connection to `addr`; returns the app's JSON.
pub async fn get_json(addr: SocketAddr, host: &str, path: &str) -> serde_json::Value {
    let mut sender = h1(addr).await;
    json(send1(&mut sender, request("GET", host, path, empty())).await).await
}

/// Reads a body to the end, counting bytes without keeping them; returns the count.
pub async fn drain(mut body: Incoming) -> Result<u64, hyper::Error> {
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            n += data.len() as u64;
        }
    }
    Ok(n)
}
