//! Jaeger's v1 JSON model (`model/json/model.go`), what `/api/traces` answers, and its
//! reduction to [`Trace`].

use std::collections::HashMap;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value as Json;

use crate::trace::model::{Outcome, Span, Trace, Value};

#[derive(Debug, Deserialize)]
struct V1Response {
    #[serde(default)]
    data: Option<Vec<V1Trace>>,
    #[serde(default)]
    errors: Option<Vec<V1Error>>,
}

#[derive(Debug, Deserialize)]
struct V1Error {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    msg: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct V1Trace {
    #[serde(default, rename = "traceID")]
    trace_id: String,
    #[serde(default)]
    spans: Option<Vec<V1Span>>,
    #[serde(default)]
    processes: Option<HashMap<String, V1Process>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct V1Span {
    #[serde(rename = "spanID")]
    span_id: String,
    #[serde(default)]
    operation_name: String,
    #[serde(default)]
    references: Option<Vec<V1Reference>>,
    #[serde(default)]
    start_time: u64,
    #[serde(default)]
    duration: u64,
    #[serde(default)]
    tags: Option<Vec<V1Tag>>,
    #[serde(default, rename = "processID")]
    process_id: String,
    /// Set instead of `processID` when a span is served on its own.
    #[serde(default)]
    process: Option<V1Process>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct V1Reference {
    #[serde(default)]
    ref_type: String,
    #[serde(rename = "spanID")]
    span_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct V1Process {
    #[serde(default)]
    service_name: String,
}

#[derive(Debug, Deserialize)]
struct V1Tag {
    key: String,
    #[serde(default)]
    value: Json,
}

/// Where Jaeger reports a failed lookup, a 404 among `errors` means "no such trace".
#[derive(Debug, PartialEq)]
pub enum V1 {
    Traces(Vec<Trace>),
    NotFound,
}

/// Parses a `/api/traces/{id}` or `/api/traces?service=` answer.
pub fn parse_v1(body: &[u8]) -> anyhow::Result<V1> {
    let response: V1Response =
        serde_json::from_slice(body).context("not Jaeger's v1 JSON (`{\"data\": [...]}`)")?;
    let traces = response.data.unwrap_or_default();
    let errors = response.errors.unwrap_or_default();
    if traces.is_empty() && !errors.is_empty() {
        if errors.iter().any(|e| e.code == 404) {
            return Ok(V1::NotFound);
        }
        let msgs: Vec<String> = errors
            .iter()
            .map(|e| format!("{} (code {})", e.msg, e.code))
            .collect();
        bail!("Jaeger answered with errors: {}", msgs.join("; "));
    }
    Ok(V1::Traces(traces.into_iter().map(v1_trace).collect()))
}

fn v1_trace(trace: V1Trace) -> Trace {
    let processes = trace.processes.unwrap_or_default();
    let spans = trace.spans.unwrap_or_default();
    let spans = spans
        .into_iter()
        .map(|span| {
            let references = span.references.unwrap_or_default();
            let parent = ["CHILD_OF", "FOLLOWS_FROM"].iter().find_map(|kind| {
                references
                    .iter()
                    .find(|r| r.ref_type.eq_ignore_ascii_case(kind))
                    .map(|r| r.span_id.to_ascii_lowercase())
            });
            let service = processes
                .get(&span.process_id)
                .or(span.process.as_ref())
                .map(|p| p.service_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "unknown".into());
            let mut outcome = Outcome::default();
            for tag in span.tags.unwrap_or_default() {
                if let Some(value) = json_value(&tag.value) {
                    outcome.tag(&tag.key, &value);
                }
            }
            Span {
                id: span.span_id.to_ascii_lowercase(),
                parent,
                service,
                name: span.operation_name,
                start_us: span.start_time,
                duration_us: span.duration,
                error: outcome.error,
                http_status: outcome.http_status,
                attempt: outcome.attempt,
                peer: outcome.peer(),
                kind: outcome.kind,
            }
        })
        .collect();
    Trace {
        id: trace.trace_id.to_ascii_lowercase(),
        spans,
    }
}

fn json_value(value: &Json) -> Option<Value> {
    match value {
        Json::Bool(b) => Some(Value::Bool(*b)),
        Json::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .or_else(|| n.as_f64().map(Value::Float)),
        Json::String(s) => Some(Value::Str(s.clone())),
        _ => None,
    }
}
