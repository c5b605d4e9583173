//! OTLP JSON, bare (a span file's line) or wrapped by api_v3, reduced to [`Trace`]; and the
//! error body api_v3 answers with.

use std::collections::HashMap;

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value as Json;

use crate::trace::model::{Kind, Outcome, Span, Trace, Value};

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
