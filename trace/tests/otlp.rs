//! The exporter against a real OTLP/gRPC receiver on loopback, and against collectors
//! that are slow or never answer. The receiver is a few lines of its own here because
//! weir-tests' `OtlpReceiver` lives in a crate this one must not depend on.
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderValue, Method};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::{Span, span, status};
use tokio::sync::watch;
use weir_trace::{ExportConfig, Resource, SpanKind, SpanRecord, Tracer};

// === a minimal receiver ===

#[derive(Default)]
struct Collector {
    spans: Mutex<Vec<(Option<ProtoResource>, Span)>>,
    count: watch::Sender<usize>,
    requests: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    delay: Duration,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.max_in_flight.fetch_max(now, SeqCst);
        tokio::time::sleep(self.delay).await;
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| (rs.resource.clone(), s)));
            }
        }
        self.count.send_replace(spans.len());
        self.requests.fetch_add(1, SeqCst);
        self.in_flight.fetch_sub(1, SeqCst);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn receiver(delay: Duration) -> (Arc<Collector>, String) {
    let collector = Arc::new(Collector {
        delay,
        ..Collector::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::from_arc(collector.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    (collector, endpoint)
}

async fn wait_for(collector: &Collector, n: usize) {
    let mut count = collector.count.subscribe();
    let arrived = tokio::time::timeout(Duration::from_secs(10), count.wait_for(|c| *c >= n))
        .await
        .is_ok();
    assert!(arrived, "only {} of {n} spans arrived", *count.borrow());
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn str_attr(v: &str) -> Option<Value> {
    Some(Value::StringValue(v.into()))
}

fn fast() -> ExportConfig {
    ExportConfig {
        batch_interval: Duration::from_millis(20),
        ..ExportConfig::default()
    }
}

// === tests ===

#[tokio::test]
async fn spans_arrive_with_ids_kinds_attributes_and_resource() {
    let (collector, endpoint) = receiver(Duration::ZERO).await;
    let resource = Resource {
        service_name: "orders".into(),
        namespace: Some("shop".into()),
        pod_name: Some("orders-7d9f".into()),
    };
    let tracer = Tracer::start(&endpoint, resource, fast()).unwrap();

    // The caller's outbound proxy: one request span, one attempt span under it.
    let mut app_headers = HeaderMap::new();
    app_headers.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    let start = SystemTime::now();
    let ctx = weir_trace::start_or_continue(&app_headers, 0.0, 1);
    let attempt = ctx.child(2);
    let mut forwarded = app_headers.clone();
    weir_trace::inject(&mut forwarded, &attempt);

    // The callee's inbound proxy continues from what the outbound forwarded.
    let server_ctx = weir_trace::start_or_continue(&forwarded, 0.0, 3);
    let mut s = SpanRecord::new(&server_ctx, SpanKind::Server, Method::GET, start);
    s.path = Some("/pay/42?x=1".parse().unwrap());
    s.status_code = Some(503);
    tracer.record(s);

    let mut a = SpanRecord::new(&attempt, SpanKind::Client, Method::GET, start);
    a.attempt = Some(1);
    a.peer = Some("127.0.0.1:4143".parse().unwrap());
    a.status_code = Some(503);
    a.breaker = Some("closed".into());
    tracer.record(a);

    let mut c = SpanRecord::new(&ctx, SpanKind::Client, Method::GET, start);
    c.route = Some("default".into());
    c.path = Some("/pay/42".parse().unwrap());
    c.server_address = Some("payments".into());
    c.server_port = Some(8080);
    c.peer_service = Some("payments".into());
    c.error = Some("circuit-open".into());
    c.status_code = Some(503);
    c.end = SystemTime::now();
    tracer.record(c);

    wait_for(&collector, 3).await;
    let spans = collector.spans.lock().unwrap().clone();
    let find = |id: weir_trace::SpanId| {
        spans
            .iter()
            .find(|(_, s)| s.span_id == id.0)
            .unwrap_or_else(|| panic!("span {id} not received"))
    };
    let trace_id = ctx.trace_id.0.to_vec();
    assert_eq!(ctx.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");

    let (resource, client) = find(ctx.span_id);
    assert_eq!(client.trace_id, trace_id);
    assert_eq!(client.parent_span_id, b"\x00\xf0\x67\xaa\x0b\xa9\x02\xb7");
    assert_eq!(client.kind, span::SpanKind::Client as i32);
    assert_eq!(client.name, "GET default");
    assert_eq!(
        attr(client, "server.address"),
        str_attr("payments").as_ref()
    );
    assert_eq!(attr(client, "server.port"), Some(&Value::IntValue(8080)));
    assert_eq!(attr(client, "peer.service"), str_attr("payments").as_ref());
    assert_eq!(
        attr(client, "weir.error"),
        str_attr("circuit-open").as_ref()
    );
    assert_eq!(
        client.status.as_ref().unwrap().code,
        status::StatusCode::Error as i32
    );
    let resource: Vec<_> = resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .map(|kv| {
            (
                kv.key.as_str(),
                kv.value.as_ref().and_then(|v| v.value.clone()),
            )
        })
        .collect();
    assert_eq!(
        resource,
        [
            ("service.name", str_attr("orders")),
            ("k8s.namespace.name", str_attr("shop")),
            ("k8s.pod.name", str_attr("orders-7d9f")),
        ]
    );

    let (_, attempt_span) = find(attempt.span_id);
    assert_eq!(attempt_span.parent_span_id, ctx.span_id.0);
    assert_eq!(
        attr(attempt_span, "weir.attempt"),
        Some(&Value::IntValue(1))
    );
    assert_eq!(
        attr(attempt_span, "weir.breaker"),
        str_attr("closed").as_ref()
    );
    assert_eq!(
        attr(attempt_span, "network.peer.address"),
        str_attr("127.0.0.1").as_ref()
    );

    let (_, server) = find(server_ctx.span_id);
    assert_eq!(server.trace_id, trace_id);
    assert_eq!(
        server.parent_span_id, attempt.span_id.0,
        "server span is the attempt's child"
    );
    assert_eq!(server.kind, span::SpanKind::Server as i32);
    assert_eq!(server.name, "GET /pay/42");
    assert_eq!(attr(server, "url.path"), str_attr("/pay/42").as_ref());
    assert_eq!(
        attr(server, "http.response.status_code"),
        Some(&Value::IntValue(503))
    );

    // The receiver counts before the exporter reads its answer; a flush waits for that.
    tokio::time::timeout(Duration::from_secs(10), tracer.flush())
        .await
        .unwrap();
    assert_eq!(tracer.exported(), 3);
    assert_eq!((tracer.dropped(), tracer.export_failed()), (0, 0));
}

#[tokio::test]
async fn batches_are_bounded_and_exports_never_overlap() {
    let (collector, endpoint) = receiver(Duration::from_millis(30)).await;
    let config = ExportConfig {
        max_batch: 10,
        ..fast()
    };
    let tracer = Tracer::start(&endpoint, Resource::default(), config).unwrap();
    let ctx = weir_trace::start_or_continue(&HeaderMap::new(), 1.0, 9);
    for i in 0..95 {
        tracer.record(SpanRecord::new(
            &ctx.child(i),
            SpanKind::Client,
            Method::GET,
            SystemTime::now(),
        ));
    }
    tokio::time::timeout(Duration::from_secs(10), tracer.flush())
        .await
        .unwrap();
    wait_for(&collector, 95).await;
    assert_eq!(tracer.exported(), 95);
    assert!(
        collector.requests.load(SeqCst) >= 10,
        "batches of at most 10"
    );
    assert_eq!(collector.max_in_flight.load(SeqCst), 1);
}

#[tokio::test]
async fn dropping_the_tracer_exports_what_is_left() {
    let (collector, endpoint) = receiver(Duration::ZERO).await;
    let config = ExportConfig {
        batch_interval: Duration::from_secs(3600),
        ..ExportConfig::default()
    };
    let tracer = Tracer::start(&endpoint, Resource::default(), config).unwrap();
    let ctx = weir_trace::start_or_continue(&HeaderMap::new(), 1.0, 10);
    tracer.record(SpanRecord::new(
        &ctx,
        SpanKind::Server,
        Method::PUT,
        SystemTime::now(),
    ));
    drop(tracer);
    wait_for(&collector, 1).await;
}

/// Accepts connections and never reads or answers: the worst kind of dead collector.
/// Returns its endpoint and the sockets it holds open.
async fn black_hole() -> (String, Arc<Mutex<Vec<tokio::net::TcpStream>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let sockets = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            sockets.lock().unwrap().push(socket);
        }
    });
    (endpoint, held)
}

#[tokio::test]
async fn a_black_holed_export_times_out_and_counts_its_spans() {
    let (endpoint, held) = black_hole().await;
    let config = ExportConfig {
        export_timeout: Duration::from_millis(200),
        ..fast()
    };
    let tracer = Tracer::start(&endpoint, Resource::default(), config).unwrap();
    let ctx = weir_trace::start_or_continue(&HeaderMap::new(), 1.0, 12);
    for i in 0..3 {
        tracer.record(SpanRecord::new(
            &ctx.child(i),
            SpanKind::Client,
            Method::GET,
            SystemTime::now(),
        ));
    }
    tokio::time::timeout(Duration::from_secs(5), tracer.flush())
        .await
        .unwrap();
    assert_eq!((tracer.export_failed(), tracer.exported()), (3, 0));

    // The stuck connection is given up on: the next export comes on a new one.
    tracer.record(SpanRecord::new(
        &ctx,
        SpanKind::Client,
        Method::GET,
        SystemTime::now(),
    ));
    tokio::time::timeout(Duration::from_secs(5), tracer.flush())
        .await
        .unwrap();
    assert_eq!(tracer.export_failed(), 4);
    assert_eq!(
        held.lock().unwrap().len(),
        2,
        "one connection per timed-out export"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_collector_neither_slows_recording_nor_grows_memory() {
    let (endpoint, held) = black_hole().await;
    let config = ExportConfig {
        queue_capacity: 1024,
        batch_interval: Duration::from_millis(10),
        ..ExportConfig::default()
    };
    let tracer = Tracer::start(&endpoint, Resource::default(), config).unwrap();
    let ctx = weir_trace::start_or_continue(&HeaderMap::new(), 1.0, 11);
    let now = SystemTime::now();
    // Let the first batch reach the stuck export so the queue cannot drain behind it.
    tracer.record(SpanRecord::new(&ctx, SpanKind::Client, Method::GET, now));
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..100_000 {
        let one = Instant::now();
        tracer.record(SpanRecord::new(
            &ctx.child(i),
            SpanKind::Client,
            Method::GET,
            now,
        ));
        slowest = slowest.max(one.elapsed());
        assert!(tracer.queued() <= 1024);
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "100k records took {took:?}");
    assert!(
        slowest < Duration::from_millis(100),
        "one record took {slowest:?}"
    );
    // The one export in flight holds its batch; everything past the queue is dropped.
    assert!(
        tracer.dropped() >= 100_000 - 1024 - 512,
        "dropped {}",
        tracer.dropped()
    );
    assert_eq!(tracer.exported(), 0);
    assert!(!held.lock().unwrap().is_empty(), "the exporter did connect");
}
