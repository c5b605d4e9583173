//! The pooled HTTP client of the demo's programs (the shop services and the load loop): one
//! request, its answer or what went wrong as text, never a panic — a failed call is something
//! to report, not a bug in the test.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type Pooled = Client<HttpConnector, Empty<Bytes>>;

/// Keep-alive pool, Nagle off (the requests are small and latency is what is measured).
pub fn client() -> Pooled {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// What came back: the status, the proxy's `x-weir-error` reason if it made the answer, the body.
pub struct Answer {
    pub status: u16,
    pub weir_error: Option<String>,
    pub body: Bytes,
}

pub async fn exchange(client: &Pooled, req: Request<Empty<Bytes>>) -> Result<Answer, String> {
    let rsp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = rsp.status().as_u16();
    let weir_error = rsp
        .headers()
        .get("x-weir-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = rsp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Answer {
        status,
        weir_error,
        body,
    })
}
