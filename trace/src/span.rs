//! A finished span as the proxy hands it over, and its OTLP form.
//!
//! `SpanRecord` is a plain struct with one field per attribute Weir sets instead of a
//! `Vec` of dynamic key-values: building one costs no allocation beyond what the caller
//! already holds (`Arc<str>` names from the config snapshot, the request's `Method` and
//! path, which clone without copying). The span name and attribute keys are only made
//! on the export task.
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::Method;
use http::uri::PathAndQuery;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::{self as proto, span, status};

use crate::propagation::TraceContext;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// The caller's outbound proxy: one per request, and one per attempt under it.
    Client,
    /// The callee's inbound proxy.
    Server,
    Internal,
}

/// One finished span. Build it only for sampled requests (`TraceContext::sampled`).
#[derive(Clone, Debug)]
pub struct SpanRecord {
    pub trace_id: crate::TraceId,
    pub span_id: crate::SpanId,
    pub parent_id: Option<crate::SpanId>,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    /// `http.request.method`; with the route or path it also makes the span name.
    pub method: Method,
    /// Only the path part is exported (`url.path`): queries may hold secrets.
    pub path: Option<PathAndQuery>,
    /// The matched Weir route; the span name prefers it to the path (bounded names).
    pub route: Option<Arc<str>>,
    /// `http.response.status_code`; `None` when no response came back.
    pub status_code: Option<u16>,
    /// `server.address` / `server.port`: the authority the request was addressed to.
    pub server_address: Option<Arc<str>>,
    pub server_port: Option<u16>,
    /// `network.peer.address` / `network.peer.port`: the socket at the other end.
    pub peer: Option<SocketAddr>,
    /// `peer.service`: the mesh service on the other side.
    pub peer_service: Option<Arc<str>>,
    /// `weir.attempt`: 1 for the first try, 2 for the first retry, ...
    pub attempt: Option<u32>,
    /// `weir.error`: the reason of a response the proxy made (`timeout`, `circuit-open`, ...),
    /// or of a failed attempt. Marks the span as an error.
    pub error: Option<Cow<'static, str>>,
    /// `weir.breaker`: the circuit breaker state seen by this request or attempt.
    pub breaker: Option<Cow<'static, str>>,
}

/// Who is emitting spans; sent once per export batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resource {
    /// `service.name`.
    pub service_name: String,
    /// `k8s.namespace.name`, when known.
    pub namespace: Option<String>,
    /// `k8s.pod.name`, when known.
    pub pod_name: Option<String>,
}

// === impl SpanRecord ===

impl SpanRecord {
    /// A span for `ctx` with every optional attribute unset and `end == start`.
    pub fn new(ctx: &TraceContext, kind: SpanKind, method: Method, start: SystemTime) -> Self {
        SpanRecord {
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            parent_id: ctx.parent_id,
            kind,
            start,
            end: start,
            method,
            path: None,
            route: None,
            status_code: None,
            server_address: None,
            server_port: None,
            peer: None,
            peer_service: None,
            attempt: None,
            error: None,
            breaker: None,
        }
    }

    /// `"{METHOD} {route-or-path}"`, or just the method when neither is known.
    pub fn name(&self) -> String {
        let target = match (&self.route, &self.path) {
            (Some(route), _) => Some(&**route),
            (None, Some(path)) => Some(path.path()),
            (None, None) => None,
        };
        match target {
            Some(t) => format!("{} {t}", self.method),
            None => self.method.to_string(),
        }
    }

    /// Errors are 5xx responses and anything the proxy itself failed or refused.
    pub fn is_error(&self) -> bool {
        self.error.is_some() || self.status_code.is_some_and(|c| c >= 500)
    }

    pub(crate) fn to_proto(&self) -> proto::Span {
        let mut attributes = Vec::with_capacity(12);
        attributes.push(kv_str("http.request.method", self.method.as_str()));
        if let Some(path) = &self.path {
            attributes.push(kv_str("url.path", path.path()));
        }
        if let Some(route) = &self.route {
            attributes.push(kv_str("weir.route", route));
        }
        if let Some(code) = self.status_code {
            attributes.push(kv_int("http.response.status_code", code.into()));
        }
        if let Some(address) = &self.server_address {
            attributes.push(kv_str("server.address", address));
        }
        if let Some(port) = self.server_port {
            attributes.push(kv_int("server.port", port.into()));
        }
        if let Some(peer) = self.peer {
            attributes.push(kv_str("network.peer.address", &peer.ip().to_string()));
            attributes.push(kv_int("network.peer.port", peer.port().into()));
        }
        if let Some(service) = &self.peer_service {
            attributes.push(kv_str("peer.service", service));
        }
        if let Some(attempt) = self.attempt {
            attributes.push(kv_int("weir.attempt", attempt.into()));
        }
        if let Some(error) = &self.error {
            attributes.push(kv_str("weir.error", error));
        }
        if let Some(breaker) = &self.breaker {
            attributes.push(kv_str("weir.breaker", breaker));
        }
        if self.is_error() {
            // The HTTP semantic conventions' `error.type`: the class of the failure, here
            // Weir's reason, or else the status code as a string.
            let error_type = match (&self.error, self.status_code) {
                (Some(e), _) => Cow::Borrowed(&**e),
                (None, Some(code)) => Cow::Owned(code.to_string()),
                (None, None) => Cow::Borrowed("_OTHER"),
            };
            attributes.push(kv_str("error.type", &error_type));
        }

        let status = if self.is_error() {
            let message = match (&self.error, self.status_code) {
                (Some(e), _) => e.to_string(),
                (None, Some(code)) => format!("HTTP {code}"),
                (None, None) => String::new(),
            };
            proto::Status {
                message,
                code: status::StatusCode::Error as i32,
            }
        } else {
            proto::Status::default()
        };

        let kind = match self.kind {
            SpanKind::Client => span::SpanKind::Client,
            SpanKind::Server => span::SpanKind::Server,
            SpanKind::Internal => span::SpanKind::Internal,
        };
        proto::Span {
            trace_id: self.trace_id.0.to_vec(),
            span_id: self.span_id.0.to_vec(),
            parent_span_id: self.parent_id.map(|p| p.0.to_vec()).unwrap_or_default(),
            // The W3C trace flags: only sampled spans are ever recorded.
            flags: 0x01,
            name: self.name(),
            kind: kind as i32,
            start_time_unix_nano: unix_nanos(self.start),
            end_time_unix_nano: unix_nanos(self.end.max(self.start)),
            attributes,
            status: Some(status),
            ..Default::default()
        }
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

// === impl Resource ===

impl Resource {
    pub(crate) fn to_proto(&self) -> ProtoResource {
        let mut attributes = vec![kv_str("service.name", &self.service_name)];
        if let Some(ns) = &self.namespace {
            attributes.push(kv_str("k8s.namespace.name", ns));
        }
        if let Some(pod) = &self.pod_name {
            attributes.push(kv_str("k8s.pod.name", pod));
        }
        ProtoResource {
            attributes,
            ..Default::default()
        }
    }
}

fn kv_str(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.to_owned()))
}

fn kv_int(key: &str, value: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(value))
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn record() -> SpanRecord {
        let ctx = crate::start_or_continue(&http::HeaderMap::new(), 1.0, 1);
        SpanRecord::new(
            &ctx,
            SpanKind::Client,
            Method::POST,
            UNIX_EPOCH + Duration::from_secs(1),
        )
    }

    fn attr<'a>(span: &'a proto::Span, key: &str) -> Option<&'a any_value::Value> {
        let kv = span.attributes.iter().find(|kv| kv.key == key)?;
        kv.value.as_ref()?.value.as_ref()
    }

    #[test]
    fn name_prefers_route_then_path_without_query() {
        let mut r = record();
        assert_eq!(r.name(), "POST");
        r.path = Some(PathAndQuery::from_static("/pay?card=secret"));
        assert_eq!(r.name(), "POST /pay");
        r.route = Some("canary".into());
        assert_eq!(r.name(), "POST canary");
    }

    #[test]
    fn attributes_have_semantic_convention_keys_and_types() {
        let mut r = record();
        r.path = Some(PathAndQuery::from_static("/pay?card=secret"));
        r.status_code = Some(200);
        r.server_address = Some("payments".into());
        r.server_port = Some(8080);
        r.peer = Some("10.0.0.7:4143".parse().unwrap());
        r.peer_service = Some("payments".into());
        r.attempt = Some(2);
        r.breaker = Some("closed".into());
        r.end = r.start + Duration::from_millis(5);
        let p = r.to_proto();
        use any_value::Value::{IntValue, StringValue};
        assert_eq!(
            attr(&p, "http.request.method"),
            Some(&StringValue("POST".into()))
        );
        assert_eq!(attr(&p, "url.path"), Some(&StringValue("/pay".into())));
        assert_eq!(attr(&p, "http.response.status_code"), Some(&IntValue(200)));
        assert_eq!(
            attr(&p, "server.address"),
            Some(&StringValue("payments".into()))
        );
        assert_eq!(attr(&p, "server.port"), Some(&IntValue(8080)));
        assert_eq!(
            attr(&p, "network.peer.address"),
            Some(&StringValue("10.0.0.7".into()))
        );
        assert_eq!(
            attr(&p, "peer.service"),
            Some(&StringValue("payments".into()))
        );
        assert_eq!(attr(&p, "weir.attempt"), Some(&IntValue(2)));
        assert_eq!(
            attr(&p, "weir.breaker"),
            Some(&StringValue("closed".into()))
        );
        assert_eq!(attr(&p, "weir.error"), None);
        assert_eq!(attr(&p, "error.type"), None);
        assert_eq!(p.kind, span::SpanKind::Client as i32);
        assert_eq!(p.end_time_unix_nano - p.start_time_unix_nano, 5_000_000);
        assert_eq!(p.parent_span_id, Vec::<u8>::new());
        assert_eq!(p.status.unwrap().code, status::StatusCode::Unset as i32);
    }

    #[test]
    fn status_is_error_on_5xx_and_proxy_errors_only() {
        let mut r = record();
        r.status_code = Some(404);
        assert_eq!(
            r.to_proto().status.unwrap().code,
            status::StatusCode::Unset as i32
        );
        r.status_code = Some(503);
        let p = r.to_proto();
        assert_eq!(p.status.unwrap().code, status::StatusCode::Error as i32);
        assert_eq!(
            attr(&r.to_proto(), "error.type"),
            Some(&any_value::Value::StringValue("503".into()))
        );
        r.status_code = Some(429);
        r.error = Some("rate-limited".into());
        assert_eq!(
            attr(&r.to_proto(), "error.type"),
            Some(&any_value::Value::StringValue("rate-limited".into()))
        );
        let status = r.to_proto().status.unwrap();
        assert_eq!(
            (status.code, status.message.as_str()),
            (status::StatusCode::Error as i32, "rate-limited")
        );
    }

    #[test]
    fn resource_attributes_only_when_known() {
        let r = Resource {
            service_name: "orders".into(),
            namespace: Some("shop".into()),
            pod_name: None,
        };
        let keys: Vec<_> = r
            .to_proto()
            .attributes
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(keys, ["service.name", "k8s.namespace.name"]);
    }
}
