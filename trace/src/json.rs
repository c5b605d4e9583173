//! OTLP/JSON: the protobuf JSON mapping with OTLP's own rules, as the OpenTelemetry
//! Collector's `file` exporter writes it (one `ExportTraceServiceRequest` per line).
//!
//! Why not opentelemetry-proto's `with-serde`: it writes every default field (`"parentSpanId":
//! ""`, `"traceState": ""`, `"events": []`, ...) and would add three crates to the proxy for it.
//! The rules that differ from plain serde, from the OTLP specification ("JSON Protobuf
//! Encoding"):
//! - `traceId`, `spanId`, `parentSpanId` (also in links) are lower-case hex, not base64;
//!   other `bytes` fields (`bytesValue`) stay base64.
//! - enums (`kind`, `status.code`) are integers;
//! - 64-bit integers (`startTimeUnixNano`, `intValue`, ...) are decimal strings;
//! - keys are lowerCamelCase; fields at their default value are left out.
use base64::Engine as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// One file line: the request as OTLP/JSON followed by `\n`. (serde_json fails only on
/// non-string map keys, which these impls never write; the error is passed on regardless.)
pub(crate) fn line(request: &ExportTraceServiceRequest) -> serde_json::Result<Vec<u8>> {
    let mut out = serde_json::to_vec(&Json(request))?;
    out.push(b'\n');
    Ok(out)
}

/// A borrowed proto message with its OTLP/JSON `Serialize` (the orphan rule keeps the impls
/// off the foreign types themselves).
struct Json<'a, T>(&'a T);

/// `Json` over each item of a slice, as a JSON array.
struct Each<'a, T>(&'a [T]);

impl<'a, T> Serialize for Each<'a, T>
where
    Json<'a, T>: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            seq.serialize_element(&Json(item))?;
        }
        seq.end()
    }
}

/// An id as lower-case hex.
struct Hex<'a>(&'a [u8]);

impl Serialize for Hex<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(self.0.len() * 2);
        for b in self.0 {
            out.push(char::from(DIGITS[usize::from(b >> 4)]));
            out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
        }
        s.serialize_str(&out)
    }
}

/// A 64-bit integer as a decimal string (JSON numbers lose precision past 2^53 in most readers).
struct Int64<T>(T);

impl<T: std::fmt::Display> Serialize for Int64<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// Map entries skipped at their default value.
trait MapExt: SerializeMap {
    fn str_field(&mut self, key: &str, value: &str) -> Result<(), Self::Error> {
        if value.is_empty() {
            return Ok(());
        }
        self.serialize_entry(key, value)
    }

    fn u32_field(&mut self, key: &str, value: u32) -> Result<(), Self::Error> {
        if value == 0 {
            return Ok(());
        }
        self.serialize_entry(key, &value)
    }

    fn list_field<'a, T>(&mut self, key: &str, items: &'a [T]) -> Result<(), Self::Error>
    where
        Json<'a, T>: Serialize,
    {
        if items.is_empty() {
            return Ok(());
        }
        self.serialize_entry(key, &Each(items))
    }

    fn id_field(&mut self, key: &str, id: &[u8]) -> Result<(), Self::Error> {
        if id.is_empty() {
            return Ok(());
        }
        self.serialize_entry(key, &Hex(id))
    }
}

impl<M: SerializeMap> MapExt for M {}

impl Serialize for Json<'_, ExportTraceServiceRequest> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.list_field("resourceSpans", &self.0.resource_spans)?;
        m.end()
    }
}

impl Serialize for Json<'_, ResourceSpans> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if let Some(resource) = &self.0.resource {
            m.serialize_entry("resource", &Json(resource))?;
        }
        m.list_field("scopeSpans", &self.0.scope_spans)?;
        m.str_field("schemaUrl", &self.0.schema_url)?;
        m.end()
    }
}

impl Serialize for Json<'_, Resource> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.list_field("attributes", &self.0.attributes)?;
        m.u32_field("droppedAttributesCount", self.0.dropped_attributes_count)?;
        m.end()
    }
}

impl Serialize for Json<'_, ScopeSpans> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if let Some(scope) = &self.0.scope {
            m.serialize_entry("scope", &Json(scope))?;
        }
        m.list_field("spans", &self.0.spans)?;
        m.str_field("schemaUrl", &self.0.schema_url)?;
        m.end()
    }
}

impl Serialize for Json<'_, InstrumentationScope> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.str_field("name", &self.0.name)?;
        m.str_field("version", &self.0.version)?;
        m.list_field("attributes", &self.0.attributes)?;
        m.u32_field("droppedAttributesCount", self.0.dropped_attributes_count)?;
        m.end()
    }
}

impl Serialize for Json<'_, Span> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let span = self.0;
        let mut m = s.serialize_map(None)?;
        m.id_field("traceId", &span.trace_id)?;
        m.id_field("spanId", &span.span_id)?;
        m.str_field("traceState", &span.trace_state)?;
        m.id_field("parentSpanId", &span.parent_span_id)?;
        m.u32_field("flags", span.flags)?;
        m.str_field("name", &span.name)?;
        if span.kind != 0 {
            m.serialize_entry("kind", &span.kind)?;
        }
        m.serialize_entry("startTimeUnixNano", &Int64(span.start_time_unix_nano))?;
        m.serialize_entry("endTimeUnixNano", &Int64(span.end_time_unix_nano))?;
        m.list_field("attributes", &span.attributes)?;
        m.u32_field("droppedAttributesCount", span.dropped_attributes_count)?;
        m.list_field("events", &span.events)?;
        m.u32_field("droppedEventsCount", span.dropped_events_count)?;
        m.list_field("links", &span.links)?;
        m.u32_field("droppedLinksCount", span.dropped_links_count)?;
        if let Some(status) = &span.status
            && (status.code != 0 || !status.message.is_empty())
        {
            m.serialize_entry("status", &Json(status))?;
        }
        m.end()
    }
}

impl Serialize for Json<'_, Status> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.str_field("message", &self.0.message)?;
        if self.0.code != 0 {
            m.serialize_entry("code", &self.0.code)?;
        }
        m.end()
    }
}

impl Serialize for Json<'_, span::Event> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("timeUnixNano", &Int64(self.0.time_unix_nano))?;
        m.str_field("name", &self.0.name)?;
        m.list_field("attributes", &self.0.attributes)?;
        m.u32_field("droppedAttributesCount", self.0.dropped_attributes_count)?;
        m.end()
    }
}

impl Serialize for Json<'_, span::Link> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.id_field("traceId", &self.0.trace_id)?;
        m.id_field("spanId", &self.0.span_id)?;
        m.str_field("traceState", &self.0.trace_state)?;
        m.list_field("attributes", &self.0.attributes)?;
        m.u32_field("droppedAttributesCount", self.0.dropped_attributes_count)?;
        m.u32_field("flags", self.0.flags)?;
        m.end()
    }
}

impl Serialize for Json<'_, KeyValue> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("key", &self.0.key)?;
        if let Some(value) = &self.0.value {
            m.serialize_entry("value", &Json(value))?;
        }
        m.end()
    }
}

impl Serialize for Json<'_, AnyValue> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use any_value::Value;
        let mut m = s.serialize_map(None)?;
        match &self.0.value {
            None => {}
            Some(Value::StringValue(v)) => m.serialize_entry("stringValue", v)?,
            Some(Value::BoolValue(v)) => m.serialize_entry("boolValue", v)?,
            Some(Value::IntValue(v)) => m.serialize_entry("intValue", &Int64(v))?,
            Some(Value::DoubleValue(v)) => m.serialize_entry("doubleValue", v)?,
            Some(Value::BytesValue(v)) => m.serialize_entry(
                "bytesValue",
                &base64::engine::general_purpose::STANDARD.encode(v),
            )?,
            Some(Value::ArrayValue(v)) => m.serialize_entry("arrayValue", &Values(&v.values))?,
            Some(Value::KvlistValue(v)) => m.serialize_entry("kvlistValue", &Values(&v.values))?,
            // Profiles only (an index into their string table); an int32, so a JSON number.
            Some(Value::StringValueStrindex(v)) => m.serialize_entry("stringValueStrindex", v)?,
        }
        m.end()
    }
}

/// `{"values": [...]}` of an array or key-value list value.
struct Values<'a, T>(&'a [T]);

impl<'a, T> Serialize for Values<'a, T>
where
    Json<'a, T>: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("values", &Each(self.0))?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    use serde_json::{Value, json};

    use super::*;
    use crate::span::{SpanKind, SpanRecord};
    use crate::{Resource as WeirResource, SpanId, TraceContext, TraceId};

    fn parse(line: &[u8]) -> Value {
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1, "one line");
        serde_json::from_slice(line).unwrap()
    }

    fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(
                    WeirResource {
                        service_name: "payment".into(),
                        ..Default::default()
                    }
                    .to_proto(),
                ),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "weir".into(),
                        version: "0.1.0".into(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    fn record(parent: Option<SpanId>) -> SpanRecord {
        let ctx = TraceContext {
            trace_id: TraceId([
                0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f,
                0xc6, 0x0c,
            ]),
            span_id: SpanId([0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74]),
            parent_id: parent,
            ..crate::start_or_continue(&http::HeaderMap::new(), 1.0, 1)
        };
        let start = UNIX_EPOCH + Duration::from_nanos(1_544_712_660_000_000_000);
        let mut r = SpanRecord::new(&ctx, SpanKind::Client, http::Method::GET, start);
        r.path = Some(http::uri::PathAndQuery::from_static("/pay"));
        r.status_code = Some(503);
        r.attempt = Some(2);
        r.end = start + Duration::from_secs(1);
        r
    }

    #[test]
    fn a_weir_span_follows_the_otlp_json_rules() {
        let parent = SpanId([0, 0, 0, 0, 0, 0, 0, 0x2a]);
        let v = parse(&line(&request(vec![record(Some(parent)).to_proto()])).unwrap());
        let rs = &v["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0],
            json!({"key": "service.name", "value": {"stringValue": "payment"}})
        );
        assert_eq!(
            rs["scopeSpans"][0]["scope"],
            json!({"name": "weir", "version": "0.1.0"})
        );
        let span = &rs["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "5b8efff798038103d269b633813fc60c");
        assert_eq!(span["spanId"], "eee19b7ec3c1b174");
        assert_eq!(span["parentSpanId"], "000000000000002a");
        assert_eq!(span["name"], "GET /pay");
        assert_eq!(span["kind"], json!(3), "CLIENT as an integer");
        assert_eq!(span["startTimeUnixNano"], "1544712660000000000");
        assert_eq!(span["endTimeUnixNano"], "1544712661000000000");
        assert_eq!(span["flags"], json!(1));
        let attrs = span["attributes"].as_array().unwrap();
        let attr = |key: &str| {
            attrs
                .iter()
                .find(|a| a["key"] == key)
                .map(|a| a["value"].clone())
        };
        assert_eq!(
            attr("http.response.status_code"),
            Some(json!({"intValue": "503"}))
        );
        assert_eq!(attr("weir.attempt"), Some(json!({"intValue": "2"})));
        assert_eq!(
            attr("http.request.method"),
            Some(json!({"stringValue": "GET"}))
        );
        assert_eq!(span["status"], json!({"message": "HTTP 503", "code": 2}));
        // Nothing at its default value is written.
        for absent in ["traceState", "events", "links", "droppedAttributesCount"] {
            assert!(span.get(absent).is_none(), "{absent} in {span}");
        }
    }

    #[test]
    fn a_root_span_has_no_parent_and_an_ok_span_no_status() {
        let mut r = record(None);
        r.status_code = Some(200);
        let v = parse(&line(&request(vec![r.to_proto()])).unwrap());
        let span = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert!(span.get("parentSpanId").is_none(), "{span}");
        assert!(span.get("status").is_none(), "{span}");
        assert!(v["resourceSpans"][0].get("schemaUrl").is_none());
    }

    #[test]
    fn other_value_types_follow_the_mapping() {
        use any_value::Value as V;
        let kv = |key: &str, v: V| KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        };
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            kind: span::SpanKind::Server as i32,
            end_time_unix_nano: u64::MAX,
            attributes: vec![
                kv("b", V::BoolValue(true)),
                kv("d", V::DoubleValue(1.5)),
                kv("n", V::IntValue(i64::MIN)),
                kv("x", V::BytesValue(vec![0xff, 0, 1])),
                kv(
                    "a",
                    V::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(V::IntValue(7)),
                        }],
                    }),
                ),
                kv(
                    "m",
                    V::KvlistValue(KeyValueList {
                        values: vec![kv("k", V::StringValue("v".into()))],
                    }),
                ),
            ],
            events: vec![span::Event {
                time_unix_nano: 5,
                name: "retry".into(),
                ..Default::default()
            }],
            links: vec![span::Link {
                trace_id: vec![0xab; 16],
                span_id: vec![0xcd; 8],
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = parse(&line(&request(vec![span])).unwrap());
        let span = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["kind"], json!(2));
        assert_eq!(span["startTimeUnixNano"], "0");
        assert_eq!(span["endTimeUnixNano"], u64::MAX.to_string());
        let values: Vec<_> = span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["value"].clone())
            .collect();
        assert_eq!(
            values,
            [
                json!({"boolValue": true}),
                json!({"doubleValue": 1.5}),
                json!({"intValue": i64::MIN.to_string()}),
                json!({"bytesValue": "/wAB"}),
                json!({"arrayValue": {"values": [{"intValue": "7"}]}}),
                json!({"kvlistValue": {"values": [{"key": "k", "value": {"stringValue": "v"}}]}}),
            ]
        );
        assert_eq!(
            span["events"],
            json!([{"timeUnixNano": "5", "name": "retry"}])
        );
        assert_eq!(
            span["links"],
            json!([{"traceId": "ab".repeat(16), "spanId": "cd".repeat(8)}])
        );
    }
}
