//! The demo's load loop (`weir-testapp load`): a bounded number of requests at a bounded
//! concurrency into the mesh's edge, and a summary a person can read: status counts, p50/p99,
//! what each service of the waterfall answered, and the trace ids worth looking at.
//!
//! The shop services put the trace id and their try number into their JSON replies, so the
//! traces of the slowest, a failed and a retried request are known without a tracing backend.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, header};
use http_body_util::Empty;
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::pooled::{self, Pooled};

#[derive(Debug, Clone)]
pub struct Plan {
    pub target: SocketAddr,
    pub host: String,
    pub path: String,
    pub requests: u32,
    pub concurrency: u32,
    /// Per request; a request that takes longer counts as failed (status 0).
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub status: u16,
    pub latency: Duration,
    pub weir_error: Option<String>,
    pub reply: Option<Value>,
}

/// Runs the plan; every request is counted, none is fatal.
pub async fn run(plan: &Plan) -> Vec<Sample> {
    let client = pooled::client();
    let permits = Arc::new(Semaphore::new(plan.concurrency.max(1) as usize));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..plan.requests {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (client, plan) = (client.clone(), plan.clone());
        tasks.spawn(async move {
            let sample = one(&client, &plan).await;
            drop(permit);
            sample
        });
    }
    let mut samples = Vec::with_capacity(plan.requests as usize);
    while let Some(done) = tasks.join_next().await {
        if let Ok(sample) = done {
            samples.push(sample);
        }
    }
    samples
}

async fn one(client: &Pooled, plan: &Plan) -> Sample {
    let start = Instant::now();
    let failed = |error: String| Sample {
        status: 0,
        latency: start.elapsed(),
        weir_error: Some(error),
        reply: None,
    };
    let mut req = Request::new(Empty::new());
    *req.uri_mut() = match format!("http://{}{}", plan.target, plan.path).parse() {
        Ok(uri) => uri,
        Err(e) => return failed(format!("bad --path: {e}")),
    };
    if let Ok(host) = plan.host.parse() {
        req.headers_mut().insert(header::HOST, host);
    }
    match tokio::time::timeout(plan.timeout, pooled::exchange(client, req)).await {
        Ok(Ok(answer)) => Sample {
            status: answer.status,
            latency: start.elapsed(),
            weir_error: answer.weir_error,
            reply: serde_json::from_slice(&answer.body).ok(),
        },
        Ok(Err(e)) => failed(e),
        Err(_) => failed("client timeout".into()),
    }
}

/// What the demo prints and the numbers its last line adds up.
#[derive(Debug, Default)]
pub struct Summary {
    pub requests: usize,
    pub failed: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Status (with the proxy's `x-weir-error` reason, if any) → count.
    pub statuses: BTreeMap<String, usize>,
    /// Service → (status or "skipped") → count, over every call of every reply.
    pub services: BTreeMap<String, BTreeMap<String, usize>>,
    pub slowest_trace: Option<String>,
    pub failed_trace: Option<String>,
    pub retried_trace: Option<String>,
    /// Tries after the first, over every reply.
    pub retries: usize,
}

pub fn summarize(samples: &[Sample]) -> Summary {
    let mut s = Summary {
        requests: samples.len(),
        ..Summary::default()
    };
    let mut latencies: Vec<Duration> = samples.iter().map(|x| x.latency).collect();
    latencies.sort();
    s.p50 = percentile(&latencies, 50.0);
    s.p99 = percentile(&latencies, 99.0);
    s.max = latencies.last().copied().unwrap_or_default();
    let mut slowest = Duration::ZERO;
    for x in samples {
        let ok = (200..300).contains(&x.status);
        if !ok {
            s.failed += 1;
        }
        let key = match &x.weir_error {
            Some(e) if x.status == 0 => format!("error ({e})"),
            Some(e) => format!("{} {e}", x.status),
            None => x.status.to_string(),
        };
        *s.statuses.entry(key).or_default() += 1;
        let Some(reply) = &x.reply else { continue };
        let trace = reply["trace_id"].as_str().map(str::to_owned);
        if x.latency >= slowest && trace.is_some() {
            slowest = x.latency;
            s.slowest_trace.clone_from(&trace);
        }
        if !ok && s.failed_trace.is_none() {
            s.failed_trace.clone_from(&trace);
        }
        let retries = walk(reply, &mut s.services);
        s.retries += retries;
        if retries > 0 && s.retried_trace.is_none() {
            s.retried_trace = trace;
        }
    }
    s
}

/// Counts each call's status by service and returns the retries seen below `reply`.
fn walk(reply: &Value, services: &mut BTreeMap<String, BTreeMap<String, usize>>) -> usize {
    let mut retries = reply["attempt"]
        .as_u64()
        .map_or(0, |a| a.saturating_sub(1) as usize);
    for call in reply["calls"].as_array().into_iter().flatten() {
        let service = call["service"].as_str().unwrap_or("?").to_owned();
        let status = match (call["status"].as_u64(), call["weir_error"].as_str()) {
            (Some(0) | None, _) => "error".to_owned(),
            (Some(code), Some(e)) => format!("{code} {e}"),
            (Some(code), None) => code.to_string(),
        };
        *services
            .entry(service)
            .or_default()
            .entry(status)
            .or_default() += 1;
        retries += walk(&call["reply"], services);
    }
    retries
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Summary {
    /// Two or three lines: totals and latency, statuses, and per service if asked.
    pub fn text(&self, by_service: bool) -> String {
        let mut out = String::new();
        let ok = self.requests - self.failed;
        let pct = if self.requests == 0 {
            0.0
        } else {
            100.0 * ok as f64 / self.requests as f64
        };
        let _ = writeln!(
            out,
            "   {} requests: {ok} ok ({pct:.1} %), {} failed · p50 {} · p99 {} · max {}",
            self.requests,
            self.failed,
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
        );
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(k, n)| format!("{k} ×{n}"))
            .collect();
        let _ = writeln!(out, "   answers at the edge: {}", statuses.join(", "));
        if self.retries > 0 {
            let _ = writeln!(out, "   retries made by the sidecars: {}", self.retries);
        }
        if by_service {
            for (service, counts) in &self.services {
                let counts: Vec<String> = counts.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
                let _ = writeln!(out, "     {service:<10} {}", counts.join(", "));
            }
        }
        out
    }

    /// `KEY=value` lines for a shell to source.
    pub fn env(&self) -> String {
        let mut out = format!(
            "REQUESTS={}\nFAILED={}\nP50_MS={:.1}\nP99_MS={:.1}\nMAX_MS={:.1}\nRETRIES={}\n",
            self.requests,
            self.failed,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3,
            self.retries,
        );
        for (key, value) in [
            ("SLOWEST_TRACE", &self.slowest_trace),
            ("FAILED_TRACE", &self.failed_trace),
            ("RETRIED_TRACE", &self.retried_trace),
        ] {
            let _ = writeln!(out, "{key}={}", value.as_deref().unwrap_or(""));
        }
        out
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(status: u16, ms: u64, reply: Value) -> Sample {
        Sample {
            status,
            latency: Duration::from_millis(ms),
            weir_error: None,
            reply: Some(reply),
        }
    }

    #[test]
    fn summary_counts_services_retries_and_picks_traces() {
        let ok = json!({"trace_id": "a", "attempt": 1, "calls": [
            {"service": "payment", "status": 200, "reply": {"attempt": 2, "calls": [
                {"service": "bank", "status": 200, "reply": {"attempt": 1}}]}}]});
        let bad = json!({"trace_id": "b", "attempt": 1, "calls": [
            {"service": "payment", "status": 503, "weir_error": "circuit-open"}]});
        let s = summarize(&[sample(200, 10, ok), sample(502, 30, bad)]);
        assert_eq!((s.requests, s.failed, s.retries), (2, 1, 1));
        assert_eq!(s.slowest_trace.as_deref(), Some("b"));
        assert_eq!(s.failed_trace.as_deref(), Some("b"));
        assert_eq!(s.retried_trace.as_deref(), Some("a"));
        assert_eq!(s.services["payment"]["200"], 1);
        assert_eq!(s.services["payment"]["503 circuit-open"], 1);
        assert_eq!(s.services["bank"]["200"], 1);
        assert_eq!(s.p50, Duration::from_millis(10));
        assert_eq!(s.p99, Duration::from_millis(30));
        assert!(s.env().contains("FAILED=1\n"));
    }
}
