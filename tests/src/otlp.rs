//! An in-process OTLP/gRPC trace receiver, standing in for Jaeger's :4317 (no collector
//! binary can be installed here). Proxies under test export to `endpoint()`; tests read
//! back every span flattened with its resource attributes and wait on arrivals through a
//! `watch` channel, never a sleep loop.
//!
//! Also a `BlackHole`: a collector that accepts connections and never answers, to show
//! that a stuck collector neither slows nor fails traffic.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span, status};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
pub use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

/// An attribute value as received; arrays, maps and bytes are kept as their debug text.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
    Other(String),
}

/// One received span with ids in lower-case hex (as Jaeger and `traceparent` show them).
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// `None` for a root span.
    pub parent_span_id: Option<String>,
    pub name: String,
    pub kind: SpanKind,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: BTreeMap<String, AttrValue>,
    pub status: StatusCode,
    pub status_message: String,
    /// The attributes of the resource the span was sent under (`service.name`, ...).
    pub resource: BTreeMap<String, AttrValue>,
    /// The instrumentation scope's name.
    pub scope: String,
}

impl ReceivedSpan {
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        match self.attributes.get(key)? {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn attr_int(&self, key: &str) -> Option<i64> {
        match self.attributes.get(key)? {
            AttrValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn resource_str(&self, key: &str) -> Option<&str> {
        match self.resource.get(key)? {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_unix_nanos.saturating_sub(self.start_unix_nanos))
    }
}

#[derive(Default)]
struct State {
    spans: Mutex<Vec<ReceivedSpan>>,
    /// Spans received so far; `wait_*` subscribe to it.
    count: watch::Sender<usize>,
    requests: AtomicU64,
}

/// The receiver; its server task is aborted on drop.
pub struct OtlpReceiver {
    addr: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

impl OtlpReceiver {
    /// Serves OTLP/gRPC traces on 127.0.0.1 at a free port.
    pub async fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an OTLP receiver on 127.0.0.1");
        let addr = listener.local_addr().expect("OTLP receiver address");
        let state = Arc::new(State::default());
        let service = TraceServiceServer::new(Receiver(state.clone()));
        let server = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
            if let Err(e) = served {
                eprintln!("OTLP receiver stopped: {e}");
            }
        });
        OtlpReceiver {
            addr,
            state,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`, the form `OTEL_EXPORTER_OTLP_ENDPOINT` takes.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.state
            .spans
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// The spans of one trace (`trace_id` in lower-case hex).
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        let mut spans = self.spans();
        spans.retain(|s| s.trace_id == trace_id);
        spans
    }

    /// Export requests received (one per batch a proxy sent).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` spans have arrived and returns all of them; panics with
    /// what did arrive once `timeout` passes.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedSpan> {
        self.wait_until(&format!("{n} spans"), timeout, |spans| spans.len() >= n)
            .await
    }

    /// Waits until `done` holds for the spans received so far, re-checking on each
    /// arrival; panics naming `what` (and listing the spans) once `timeout` passes.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        // Subscribe before the first look, so an arrival in between is not missed.
        let mut arrivals = self.state.count.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            let changed = tokio::time::timeout_at(deadline, arrivals.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                let seen: Vec<_> = spans
                    .iter()
                    .map(|s| format!("{} {:?} {}/{}", s.name, s.kind, s.trace_id, s.span_id))
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; {} spans arrived: {seen:#?}",
                    spans.len()
                );
            }
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Receiver(Arc<State>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for rs in request.into_inner().resource_spans {
            let resource = rs
                .resource
                .map(|r| attrs(&r.attributes))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                let scope = ss.scope.map(|s| s.name).unwrap_or_default();
                received.extend(ss.spans.into_iter().map(|s| flatten(s, &resource, &scope)));
            }
        }
        let total = {
            let mut spans = self
                .0
                .spans
                .lock()
                .map_err(|_| tonic::Status::internal("receiver state poisoned"))?;
            spans.extend(received);
            spans.len()
        };
        self.0.requests.fetch_add(1, Ordering::SeqCst);
        self.0.count.send_replace(total);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn flatten(s: Span, resource: &BTreeMap<String, AttrValue>, scope: &str) -> ReceivedSpan {
    let (status, status_message) = match s.status {
        Some(st) => (
            status::StatusCode::try_from(st.code).unwrap_or(StatusCode::Unset),
            st.message,
        ),
        None => (StatusCode::Unset, String::new()),
    };
    ReceivedSpan {
        trace_id: hex(&s.trace_id),
        span_id: hex(&s.span_id),
        parent_span_id: (!s.parent_span_id.is_empty()).then(|| hex(&s.parent_span_id)),
        name: s.name,
        kind: span::SpanKind::try_from(s.kind).unwrap_or(SpanKind::Unspecified),
        start_unix_nanos: s.start_time_unix_nano,
        end_unix_nanos: s.end_time_unix_nano,
        attributes: attrs(&s.attributes),
        status,
        status_message,
        resource: resource.clone(),
        scope: scope.to_owned(),
    }
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, AttrValue> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => AttrValue::Str(s.clone()),
                Some(any_value::Value::IntValue(i)) => AttrValue::Int(*i),
                Some(any_value::Value::BoolValue(b)) => AttrValue::Bool(*b),
                Some(any_value::Value::DoubleValue(d)) => AttrValue::Double(*d),
                other => AttrValue::Other(format!("{other:?}")),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A collector that accepts TCP connections and never reads or answers. Its task (and
/// the connections it holds) end on drop.
pub struct BlackHole {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl BlackHole {
    pub async fn start() -> BlackHole {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a black-hole collector on 127.0.0.1");
        let addr = listener.local_addr().expect("black-hole address");
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held: Vec<TcpStream> = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        });
        BlackHole {
            addr,
            accepted,
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far (proof that the exporter did try).
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

    use super::*;

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn receives_flattens_and_wakes_waiters() {
        let receiver = OtlpReceiver::start().await;
        let endpoint = receiver.endpoint();
        let sender = tokio::spawn(async move {
            let mut client = TraceServiceClient::connect(endpoint).await.unwrap();
            let span = Span {
                trace_id: vec![0xab; 16],
                span_id: vec![0x01; 8],
                name: "GET /".into(),
                kind: SpanKind::Server as i32,
                attributes: vec![kv(
                    "http.response.status_code",
                    any_value::Value::IntValue(200),
                )],
                ..Default::default()
            };
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![kv(
                            "service.name",
                            any_value::Value::StringValue("orders".into()),
                        )],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        spans: vec![span],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            client.export(request).await.unwrap();
        });
        let spans = receiver.wait_for(1, Duration::from_secs(10)).await;
        sender.await.unwrap();
        let s = &spans[0];
        assert_eq!(s.trace_id, "ab".repeat(16));
        assert_eq!(s.span_id, "0101010101010101");
        assert_eq!(s.parent_span_id, None);
        assert_eq!(s.kind, SpanKind::Server);
        assert_eq!(s.attr_int("http.response.status_code"), Some(200));
        assert_eq!(s.resource_str("service.name"), Some("orders"));
        assert_eq!(receiver.trace(&"ab".repeat(16)).len(), 1);
        assert_eq!(receiver.requests(), 1);
    }
}
