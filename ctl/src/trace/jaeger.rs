//! Jaeger's two trace JSON formats, reduced to [`Trace`].
//!
//! Mirrors, field for field:
//! - the v1 JSON model of Jaeger 1.x query (`model/json/model.go`), served at
//!   `/api/traces/{id}` and `/api/traces?service=…` by Jaeger 1.x and still by Jaeger 2.x for
//!   its UI: `{"data":[{"traceID","spans":[…],"processes":{…}}],"errors":[{"code","msg"}]}`,
//!   times in microseconds, the parent in `references` (`CHILD_OF`, else `FOLLOWS_FROM`);
//! - api_v3 (`/api/v3/traces/{id}` and the search `/api/v3/traces?query.…`, the HTTP gateway of
//!   Jaeger 2.x's jaegerquery extension and of Jaeger 1.x query): OTLP JSON wrapped as
//!   `{"result":{"resourceSpans":[…]}}`, a search's traces all in one `resourceSpans` list;
//!   errors, including a search that found nothing (404), as
//!   `{"error":{"httpCode","message"}}`. It is gogo `jsonpb` output: 64-bit numbers are
//!   strings, zero values are left out, ids are hex, enums are numbers (names are accepted
//!   too), the service is the resource's `service.name`.
//! - the same OTLP JSON without the wrapper: one line of an OpenTelemetry Collector `file`
//!   exporter or of `weir-proxy --trace-file` (see `files`), where ids may also be base64.
//!
//! Fields the renderer does not use (logs, flags, scope) are not parsed, so a newer Jaeger
//! or collector adding fields cannot break `weirctl trace`.

use std::collections::HashMap;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value as Json;

use super::model::{Kind, Outcome, Span, Trace, Value};

// === v1 JSON model ===

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

// === api_v3 (OTLP JSON) ===

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct V3Response {
    #[serde(default)]
    result: Option<V3Data>,
    #[serde(default, alias = "resource_spans")]
    resource_spans: Option<Vec<ResourceSpans>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct V3Data {
    #[serde(default, alias = "resource_spans")]
    resource_spans: Option<Vec<ResourceSpans>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpans {
    #[serde(default)]
    resource: Option<Attributes>,
    #[serde(default, alias = "scope_spans")]
    scope_spans: Option<Vec<ScopeSpans>>,
}

#[derive(Debug, Default, Deserialize)]
struct Attributes {
    #[serde(default)]
    attributes: Option<Vec<KeyValue>>,
}

#[derive(Debug, Deserialize)]
struct ScopeSpans {
    #[serde(default)]
    spans: Option<Vec<OtlpSpan>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OtlpSpan {
    #[serde(default, alias = "trace_id")]
    trace_id: String,
    #[serde(default, alias = "span_id")]
    span_id: String,
    #[serde(default, alias = "parent_span_id")]
    parent_span_id: String,
    #[serde(default)]
    name: String,
    #[serde(default, alias = "start_time_unix_nano")]
    start_time_unix_nano: Json,
    #[serde(default, alias = "end_time_unix_nano")]
    end_time_unix_nano: Json,
    #[serde(default)]
    attributes: Option<Vec<KeyValue>>,
    #[serde(default)]
    status: Option<OtlpStatus>,
    /// A number in OTLP/JSON, a name (`SPAN_KIND_CLIENT`) in protobuf's generic mapping.
    #[serde(default)]
    kind: Json,
}

#[derive(Debug, Deserialize)]
struct OtlpStatus {
    #[serde(default)]
    code: Json,
}

#[derive(Debug, Deserialize)]
struct KeyValue {
    key: String,
    #[serde(default)]
    value: Option<AnyValue>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnyValue {
    #[serde(default, alias = "string_value")]
    string_value: Option<String>,
    #[serde(default, alias = "int_value")]
    int_value: Option<Json>,
    #[serde(default, alias = "bool_value")]
    bool_value: Option<bool>,
    #[serde(default, alias = "double_value")]
    double_value: Option<f64>,
}

impl AnyValue {
    fn to_value(&self) -> Option<Value> {
        if let Some(s) = &self.string_value {
            return Some(Value::Str(s.clone()));
        }
        if let Some(b) = self.bool_value {
            return Some(Value::Bool(b));
        }
        if let Some(n) = self.int_value.as_ref().and_then(json_u64_or_i64) {
            return Some(Value::Int(n));
        }
        self.double_value.map(Value::Float)
    }
}

/// Parses an `/api/v3/traces/…` answer; one trace per trace id, in the order first seen.
pub fn parse_v3(body: &[u8]) -> anyhow::Result<Vec<Trace>> {
    parse_otlp(body)
        .context("not Jaeger's api_v3 JSON (`{\"result\": {\"resourceSpans\": [...]}}`)")
}

/// Parses OTLP/JSON spans: an `ExportTraceServiceRequest` or `TracesData` (one line of an
/// OpenTelemetry Collector `file` exporter or `weir-proxy --trace-file`), or the same wrapped
/// in api_v3's `{"result": …}`. One trace per trace id, in the order first seen.
pub fn parse_otlp(body: &[u8]) -> anyhow::Result<Vec<Trace>> {
    let response: V3Response = serde_json::from_slice(body)?;
    let resource_spans = response
        .result
        .and_then(|r| r.resource_spans)
        .or(response.resource_spans)
        .unwrap_or_default();
    let mut traces: Vec<Trace> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for rs in resource_spans {
        let service = rs
            .resource
            .and_then(|r| r.attributes)
            .unwrap_or_default()
            .into_iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.and_then(|v| v.string_value))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into());
        for scope in rs.scope_spans.unwrap_or_default() {
            for span in scope.spans.unwrap_or_default() {
                let trace_id = otlp_id(&span.trace_id);
                let span = otlp_span(span, &service)?;
                let slot = *index.entry(trace_id.clone()).or_insert_with(|| {
                    traces.push(Trace {
                        id: trace_id,
                        spans: Vec::new(),
                    });
                    traces.len() - 1
                });
                traces[slot].spans.push(span);
            }
        }
    }
    Ok(traces)
}

fn otlp_span(span: OtlpSpan, service: &str) -> anyhow::Result<Span> {
    let nanos = |field: &Json, what: &str| -> anyhow::Result<u64> {
        match field {
            // jsonpb leaves zero out.
            Json::Null => Ok(0),
            other => json_u64_or_i64(other)
                .and_then(|n| u64::try_from(n).ok())
                .with_context(|| format!("span {}: {what} is not a time: {other}", span.span_id)),
        }
    };
    let start = nanos(&span.start_time_unix_nano, "startTimeUnixNano")?;
    let end = nanos(&span.end_time_unix_nano, "endTimeUnixNano")?;
    let mut outcome = Outcome::default();
    for kv in span.attributes.iter().flatten() {
        if let Some(value) = kv.value.as_ref().and_then(AnyValue::to_value) {
            outcome.tag(&kv.key, &value);
        }
    }
    // STATUS_CODE_ERROR is 2 in the OTLP proto.
    let status_error = match span.status.as_ref().map(|s| &s.code) {
        Some(Json::Number(n)) => n.as_i64() == Some(2),
        Some(Json::String(s)) => s == "STATUS_CODE_ERROR" || s == "2",
        _ => false,
    };
    Ok(Span {
        id: otlp_id(&span.span_id),
        parent: Some(otlp_id(&span.parent_span_id)).filter(|p| !p.is_empty()),
        service: service.to_string(),
        name: span.name,
        start_us: start / 1000,
        duration_us: end.saturating_sub(start) / 1000,
        error: outcome.error || status_error,
        http_status: outcome.http_status,
        attempt: outcome.attempt,
        peer: outcome.peer(),
        kind: match &span.kind {
            Json::Number(n) => Kind::parse(&n.to_string()),
            Json::String(s) => Kind::parse(s),
            _ => outcome.kind,
        },
    })
}

/// jsonpb writes 64-bit integers as strings; other encoders as numbers.
fn json_u64_or_i64(value: &Json) -> Option<i64> {
    match value {
        Json::Number(n) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|u| i64::try_from(u).unwrap_or(i64::MAX))),
        Json::String(s) => s.trim().parse::<i64>().ok().or_else(|| {
            s.trim()
                .parse::<u64>()
                .ok()
                .map(|u| i64::try_from(u).unwrap_or(i64::MAX))
        }),
        _ => None,
    }
}

/// OTLP/JSON ids are hex; protobuf's generic JSON mapping (which some collectors and older
/// api_v3 gateways use) writes the bytes as base64 instead. Both become lower-case hex, so spans
/// of one trace written by different writers still meet.
fn otlp_id(text: &str) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let text = text.trim();
    if text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return text.to_ascii_lowercase();
    }
    [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .filter(|bytes| matches!(bytes.len(), 8 | 16))
        .map_or_else(|| text.to_ascii_lowercase(), hex::encode)
}

/// The body of a non-200 api_v3 answer (`GRPCGatewayError` in Jaeger's `query_service.proto`):
/// `{"error":{"httpCode":404,"message":"No traces found"}}`. Telling it apart from a plain 404
/// page says whether api_v3 is there at all.
#[derive(Debug, Deserialize)]
struct GatewayError {
    error: GatewayErrorDetails,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GatewayErrorDetails {
    #[serde(default, alias = "http_code")]
    http_code: i64,
    #[serde(default)]
    message: String,
}

/// `(httpCode, message)` of an api_v3 error answer, `None` when the body is not one.
pub fn gateway_error(body: &[u8]) -> Option<(i64, String)> {
    serde_json::from_slice::<GatewayError>(body)
        .ok()
        .map(|e| (e.error.http_code, e.error.message))
}
