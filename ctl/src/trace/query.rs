//! A plain-HTTP client for Jaeger's query service (the UI port, 16686).
//!
//! hyper's legacy client rather than a full HTTP crate: weirctl makes one or two GETs, and hyper
//! is already in the build.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::jaeger::{self, V1};
use super::model::Trace;
use super::select;
use crate::output;

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

    /// The newest `limit` traces that involve `service` and started within `lookback`: api_v3's
    /// search, or the v1 search when this Jaeger has no api_v3 (see [`v3_search_answer`]).
    pub async fn search(
        &self,
        service: &str,
        limit: u32,
        lookback: Duration,
    ) -> anyhow::Result<Vec<Trace>> {
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let window = Window::new(now_us, lookback);
        let v3 = v3_search_path(service, limit, window);
        let (status, body) = self.get(&v3).await?;
        match v3_search_answer(status, &body) {
            V3Search::Traces(traces) => return Ok(traces),
            V3Search::Absent => {}
            V3Search::Bad(err) => return Err(err.context(self.bad(&v3))),
            V3Search::Refused => return Err(self.refused(&v3, status, &body)),
        }
        let v1 = v1_search_path(service, limit, window);
        let (status, body) = self.get(&v1).await?;
        if status != StatusCode::OK {
            return Err(self.refused(&v1, status, &body));
        }
        match jaeger::parse_v1(&body).with_context(|| self.bad(&v1))? {
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

/// What an api_v3 search answer means.
#[derive(Debug)]
pub enum V3Search {
    /// api_v3 answered: these traces (none when it found none).
    Traces(Vec<Trace>),
    /// This Jaeger has no api_v3 here: ask v1.
    Absent,
    /// api_v3 answered with something that is not its JSON.
    Bad(anyhow::Error),
    /// api_v3 answered with an error of its own.
    Refused,
}

/// Tells "api_v3 found nothing" (404 with its error JSON, Jaeger 2.x) from "there is no
/// api_v3" (a bare 404 from the router, or the UI's HTML page served for an unknown path).
pub fn v3_search_answer(status: StatusCode, body: &[u8]) -> V3Search {
    match status {
        StatusCode::OK => match jaeger::parse_v3(body) {
            Ok(traces) => V3Search::Traces(traces),
            Err(_) if !body.trim_ascii_start().starts_with(b"{") => V3Search::Absent,
            Err(err) => V3Search::Bad(err),
        },
        StatusCode::NOT_FOUND if jaeger::gateway_error(body).is_some() => {
            V3Search::Traces(Vec::new())
        }
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED => {
            V3Search::Absent
        }
        _ => V3Search::Refused,
    }
}

/// A search's time range, in microseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start_us: u64,
    pub end_us: u64,
    lookback: Duration,
}

impl Window {
    pub fn new(now_us: u64, lookback: Duration) -> Window {
        let back = u64::try_from(lookback.as_micros()).unwrap_or(u64::MAX);
        Window {
            // RFC 3339 has no time before the epoch, and weirctl writes 0 as `-`.
            start_us: now_us.saturating_sub(back).max(1_000_000),
            // api_v3 takes whole seconds here; round up so a trace of this second is in.
            end_us: now_us.div_ceil(1_000_000).saturating_mul(1_000_000),
            lookback,
        }
    }
}

/// api_v3's search. The snake_case names are the ones every Jaeger with api_v3 takes (2.19
/// renamed them to camelCase and keeps these as aliases); `num_traces` is the alias of
/// `search_depth`. Times are RFC 3339, and start_time_min must be before start_time_max.
pub fn v3_search_path(service: &str, limit: u32, window: Window) -> String {
    let rfc3339 = |us: u64| output::timestamp(i64::try_from(us / 1000).unwrap_or(i64::MAX));
    format!(
        "/api/v3/traces?query.service_name={}&query.start_time_min={}\
         &query.start_time_max={}&query.num_traces={limit}",
        encode(service),
        encode(&rfc3339(window.start_us)),
        encode(&rfc3339(window.end_us)),
    )
}

/// The v1 search as Jaeger's UI sends it: the server reads `start` and `end` (microseconds);
/// `lookback` only names the range for people reading logs.
pub fn v1_search_path(service: &str, limit: u32, window: Window) -> String {
    format!(
        "/api/traces?service={}&limit={limit}&lookback={}&start={}&end={}",
        encode(service),
        short_duration(window.lookback),
        window.start_us,
        window.end_us,
    )
}

/// `2d`, `1h`, `90m`, `45s`: Jaeger UI's lookback names, and how `--lookback` was written.
pub fn short_duration(d: Duration) -> String {
    match d.as_secs() {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s >= 3600 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The trace asked for; Jaeger drops leading zeros of 64-bit ids, so compare without them.
fn pick(traces: Vec<Trace>, id: &str) -> Option<Trace> {
    let mut traces: Vec<Trace> = traces.into_iter().filter(|t| !t.spans.is_empty()).collect();
    match traces.iter().position(|t| select::same_id(&t.id, id)) {
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

    #[test]
    fn search_urls() {
        // 2023-11-14T22:13:20.5Z, an hour back.
        let window = Window::new(1_700_000_000_500_000, Duration::from_secs(3600));
        assert_eq!(
            (window.start_us, window.end_us),
            (1_699_996_400_500_000, 1_700_000_001_000_000)
        );
        assert_eq!(
            v3_search_path("pay ment", 20, window),
            "/api/v3/traces?query.service_name=pay%20ment\
             &query.start_time_min=2023-11-14T21%3A13%3A20Z\
             &query.start_time_max=2023-11-14T22%3A13%3A21Z&query.num_traces=20"
        );
        assert_eq!(
            v1_search_path("payment", 20, window),
            "/api/traces?service=payment&limit=20&lookback=1h\
             &start=1699996400500000&end=1700000001000000"
        );
        let window = Window::new(1_700_000_000_000_000, Duration::from_secs(90 * 60));
        assert!(v1_search_path("p", 1, window).contains("&lookback=90m&"));
        let window = Window::new(1_700_000_000_000_000, Duration::from_secs(45));
        assert!(v1_search_path("p", 1, window).contains("&lookback=45s&"));
    }
}
