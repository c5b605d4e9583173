//! A plain-HTTP client for Jaeger's query service (the UI port, 16686).
//!
//! hyper's legacy client rather than a full HTTP crate: weirctl makes one or two GETs, and hyper
//! is already in the build.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::jaeger::{self, V1};
use super::model::Trace;

/// A search for many traces can take Jaeger a while; a stuck one should not hang a terminal.
const TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Far above any sane trace, low enough that a wrong URL cannot eat the memory.
const MAX_BODY: usize = 256 << 20;

pub struct Jaeger {
    /// Without a trailing `/`; may carry a base path (Jaeger's `--query.base-path`).
    base: String,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Jaeger {
    pub fn new(url: &str) -> anyhow::Result<Jaeger> {
        let base = url.trim().trim_end_matches('/').to_string();
        let uri: Uri = base
            .parse()
            .with_context(|| format!("--jaeger {url:?} is not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => bail!(
                "--jaeger {url}: only plain http is supported; reach the query port over \
                 http (e.g. `kubectl port-forward svc/jaeger-query 16686`)"
            ),
            _ => bail!("--jaeger {url:?}: expected http://HOST:PORT, e.g. http://127.0.0.1:16686"),
        }
        if uri.query().is_some() {
            bail!("--jaeger {url:?}: give the base URL only, without `?…`");
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Jaeger { base, client })
    }

    /// `/api/traces/{id}` (v1 JSON), then `/api/v3/traces/{id}` if that is a 404: a Jaeger
    /// that only serves api_v3, or a v1 endpoint that cannot find what api_v3 can.
    pub async fn trace(&self, id: &str) -> anyhow::Result<Trace> {
        let v1 = format!("/api/traces/{id}");
        let (status, body) = self.get(&v1).await?;
        match status {
            StatusCode::OK => match jaeger::parse_v1(&body).with_context(|| self.bad(&v1))? {
                V1::Traces(traces) => {
                    if let Some(trace) = pick(traces, id) {
                        return Ok(trace);
                    }
                }
                V1::NotFound => {}
            },
            StatusCode::NOT_FOUND => {}
            other => return Err(self.refused(&v1, other, &body)),
        }
        let v3 = format!("/api/v3/traces/{id}");
        let (status, body) = self.get(&v3).await?;
        match status {
            StatusCode::OK => {
                let traces = jaeger::parse_v3(&body).with_context(|| self.bad(&v3))?;
                pick(traces, id).ok_or_else(|| self.not_found(id))
            }
            StatusCode::NOT_FOUND => Err(self.not_found(id)),
            other => Err(self.refused(&v3, other, &body)),
        }
    }

    /// Jaeger's search (`/api/traces?service=S&limit=N`), over its default lookback.
    pub async fn search(&self, service: &str, limit: u32) -> anyhow::Result<Vec<Trace>> {
        let path = format!("/api/traces?service={}&limit={limit}", encode(service));
        let (status, body) = self.get(&path).await?;
        if status != StatusCode::OK {
            return Err(self.refused(&path, status, &body));
        }
        match jaeger::parse_v1(&body).with_context(|| self.bad(&path))? {
            V1::Traces(traces) => Ok(traces),
            V1::NotFound => Ok(Vec::new()),
        }
    }

    async fn get(&self, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
        let url = format!("{}{path}", self.base);
        let uri: Uri = url
            .parse()
            .with_context(|| format!("cannot build a request URL from {url:?}"))?;
        let unreachable = || {
            format!(
                "cannot reach Jaeger's query service at {} (set --jaeger or WEIR_JAEGER_URL)",
                self.base
            )
        };
        let response = tokio::time::timeout(TIMEOUT, async {
            let response = self.client.get(uri).await.with_context(unreachable)?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|err| anyhow!("{err}"))
                .with_context(|| format!("reading {url}"))?;
            anyhow::Ok((status, body.to_bytes()))
        })
        .await;
        match response {
            Ok(result) => result,
            Err(_) => Err(anyhow!(
                "no answer from {url} within {}s",
                TIMEOUT.as_secs()
            ))
            .with_context(unreachable),
        }
    }

    fn not_found(&self, id: &str) -> anyhow::Error {
        anyhow!(
            "trace {id} not found in Jaeger at {} (tried /api/traces/{id} and \
             /api/v3/traces/{id}); spans reach Jaeger a few seconds after the request ends, \
             and only sampled requests are traced",
            self.base
        )
    }

    fn refused(&self, path: &str, status: StatusCode, body: &[u8]) -> anyhow::Error {
        let text = String::from_utf8_lossy(body);
        let text = super::render::fit(text.trim(), 200);
        anyhow!(
            "Jaeger at {} answered {status} to {path}: {text}",
            self.base
        )
    }

    fn bad(&self, path: &str) -> String {
        format!(
            "the answer of {}{path} is not Jaeger's (is --jaeger the query port, 16686?)",
            self.base
        )
    }
}

/// The trace asked for; Jaeger drops leading zeros of 64-bit ids, so compare without them.
fn pick(traces: Vec<Trace>, id: &str) -> Option<Trace> {
    let short = |s: &str| s.trim_start_matches('0').to_ascii_lowercase();
    let want = short(id);
    let mut traces: Vec<Trace> = traces.into_iter().filter(|t| !t.spans.is_empty()).collect();
    match traces.iter().position(|t| short(&t.id) == want) {
        Some(i) => Some(traces.swap_remove(i)),
        None => traces.into_iter().next(),
    }
}

/// Percent-encodes a query value (service names are usually plain, but `&` or `+` happen).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(Jaeger::new("http://127.0.0.1:16686/").is_ok());
        assert!(Jaeger::new("http://jaeger/base/").is_ok());
        for bad in ["https://jaeger:16686", "jaeger:16686", "", "http://j/?x=1"] {
            let err = Jaeger::new(bad).err().map(|e| e.to_string());
            assert!(err.is_some_and(|e| e.contains("--jaeger")), "{bad}");
        }
        assert_eq!(encode("a b&c/ü"), "a%20b%26c%2F%C3%BC");
    }
}
