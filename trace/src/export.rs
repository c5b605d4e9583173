//! Span export: a bounded queue the hot path pushes into without waiting, and one
//! background task that batches and sends OTLP/gRPC with a timeout per export.
//!
//! Why opentelemetry-proto + tonic rather than opentelemetry-otlp's `SpanExporter`: the
//! SDK route converts every span into SDK `SpanData` (dynamic key-values, owned strings)
//! and brings its own batch processor, whose queue, overflow handling and blocking
//! flush/shutdown are not ours to bound. Building `ExportTraceServiceRequest`s directly is
//! one small conversion (`SpanRecord::to_proto`), keeps the only queue the one below, and
//! the same crate gives the tests a receiver (`TraceServiceServer`).
//!
//! Failure model: a dead collector fails each export fast; a black-holed one (accepts TCP,
//! never answers) holds one export until its timeout. Either way at most one export is in
//! flight, the task stops pulling from the queue meanwhile, the queue fills, and `record`
//! drops and counts. Memory is bounded by `queue_capacity + max_batch` spans (the queue
//! plus the batch in flight) and one connection: after a timed-out export the connection
//! is replaced, since a never-answering peer otherwise makes it keep state for every
//! request given up on (measured: RSS crept up without this, stays flat with it).
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{self, Instant};
use tonic::transport::{Channel, Endpoint};

use crate::Error;
use crate::span::{Resource, SpanRecord};

/// Where the proxy reads the collector address from, e.g. `http://jaeger:4317`.
pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// Spans waiting for export; beyond this `record` drops. The memory bound.
    pub queue_capacity: usize,
    /// Spans per OTLP request.
    pub max_batch: usize,
    /// How long a span may wait for its batch to fill before it is sent anyway.
    pub batch_interval: Duration,
    /// Per export, including connecting; a black-holed collector costs this much per batch.
    pub export_timeout: Duration,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            queue_capacity: 4096,
            max_batch: 512,
            batch_interval: Duration::from_secs(1),
            export_timeout: Duration::from_secs(5),
        }
    }
}

/// The handle the proxy keeps (cheap to clone). `record` never waits; when every clone is
/// dropped the task exports what is left and exits.
#[derive(Clone, Default)]
pub struct Tracer {
    shared: Option<Arc<Shared>>,
}

struct Shared {
    spans: mpsc::Sender<SpanRecord>,
    flushes: mpsc::Sender<oneshot::Sender<()>>,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    dropped: AtomicU64,
    exported: AtomicU64,
    failed: AtomicU64,
}

// === impl Tracer ===

impl Tracer {
    /// Records nothing: for a proxy without a collector.
    pub fn disabled() -> Tracer {
        Tracer { shared: None }
    }

    /// Starts the export task on the current tokio runtime. The connection is made lazily
    /// on the first export, so an unreachable collector does not fail startup.
    pub fn start(
        endpoint: &str,
        resource: Resource,
        config: ExportConfig,
    ) -> Result<Tracer, Error> {
        let uri = endpoint.parse::<http::Uri>().map_err(|e| Error::Endpoint {
            endpoint: endpoint.to_owned(),
            reason: e.to_string(),
        })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(Error::Endpoint {
                endpoint: endpoint.to_owned(),
                reason: "only plaintext gRPC to http://host:port is supported".to_owned(),
            });
        }
        if config.queue_capacity == 0 {
            return Err(Error::Config("queue_capacity"));
        }
        if config.max_batch == 0 {
            return Err(Error::Config("max_batch"));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let _guard = runtime.enter();
        // No request timeout on the endpoint: the export task's own timeout is the one that
        // also replaces a stuck connection, so it must be the one that fires.
        let endpoint = Endpoint::from(uri).connect_timeout(config.export_timeout);

        let (tracer, spans, flushes) = Tracer::channel(config.queue_capacity);
        let exporter = Exporter {
            client: TraceServiceClient::new(endpoint.connect_lazy()),
            endpoint,
            resource: resource.to_proto(),
            scope: InstrumentationScope {
                name: "weir".to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                ..Default::default()
            },
            timeout: config.export_timeout,
            stats: tracer.stats(),
            failing: false,
        };
        runtime.spawn(run(spans, flushes, exporter, config));
        Ok(tracer)
    }

    fn channel(
        capacity: usize,
    ) -> (
        Tracer,
        mpsc::Receiver<SpanRecord>,
        mpsc::Receiver<oneshot::Sender<()>>,
    ) {
        let (spans, span_rx) = mpsc::channel(capacity);
        let (flushes, flush_rx) = mpsc::channel(4);
        let shared = Shared {
            spans,
            flushes,
            stats: Arc::default(),
        };
        let tracer = Tracer {
            shared: Some(Arc::new(shared)),
        };
        (tracer, span_rx, flush_rx)
    }

    fn stats(&self) -> Arc<Stats> {
        self.shared
            .as_ref()
            .map(|s| s.stats.clone())
            .unwrap_or_default()
    }

    pub fn is_enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// Queues a finished span for export without waiting; when the queue is full (the
    /// collector is slow, dead or black-holed) the span is dropped and counted.
    pub fn record(&self, span: SpanRecord) {
        if let Some(shared) = &self.shared
            && shared.spans.try_send(span).is_err()
        {
            shared.stats.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Spans dropped because the queue was full: a metric for `/metrics`.
    pub fn dropped(&self) -> u64 {
        self.counter(|s| &s.dropped)
    }

    /// Spans the collector accepted.
    pub fn exported(&self) -> u64 {
        self.counter(|s| &s.exported)
    }

    /// Spans lost in exports that failed, timed out or were rejected by the collector.
    pub fn export_failed(&self) -> u64 {
        self.counter(|s| &s.failed)
    }

    /// Spans waiting in the queue; never more than `queue_capacity`.
    pub fn queued(&self) -> usize {
        self.shared
            .as_ref()
            .map_or(0, |s| s.spans.max_capacity() - s.spans.capacity())
    }

    fn counter(&self, which: impl Fn(&Stats) -> &AtomicU64) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |s| which(&s.stats).load(Relaxed))
    }

    /// Exports everything queued so far and returns once that is done (or failed). For
    /// shutdown and tests; bound it with a timeout, since a black-holed collector holds
    /// each export for `export_timeout`.
    pub async fn flush(&self) {
        let Some(shared) = &self.shared else { return };
        let (done, wait) = oneshot::channel();
        if shared.flushes.send(done).await.is_ok() {
            // An error only means the task is gone, which leaves nothing to wait for.
            let _ = wait.await;
        }
    }
}

impl fmt::Debug for Tracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracer")
            .field("enabled", &self.is_enabled())
            .field("queued", &self.queued())
            .field("dropped", &self.dropped())
            .field("exported", &self.exported())
            .field("export_failed", &self.export_failed())
            .finish()
    }
}

// === export task ===

async fn run(
    mut spans: mpsc::Receiver<SpanRecord>,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
    mut exporter: Exporter,
    config: ExportConfig,
) {
    let max = config.max_batch;
    let mut batch = Vec::with_capacity(max);
    loop {
        // Idle until a span or a flush request arrives: no timer ticks while nothing is queued.
        let mut flush = None;
        tokio::select! {
            n = spans.recv_many(&mut batch, max) => {
                if n == 0 {
                    return;
                }
            }
            Some(done) = flushes.recv() => flush = Some(done),
        }
        let mut closed = false;
        if flush.is_none() {
            let deadline = Instant::now() + config.batch_interval;
            while batch.len() < max {
                let room = max - batch.len();
                tokio::select! {
                    r = time::timeout_at(deadline, spans.recv_many(&mut batch, room)) => {
                        match r {
                            Ok(0) => closed = true,
                            Ok(_) => continue,
                            Err(_elapsed) => {}
                        }
                        break;
                    }
                    Some(done) = flushes.recv() => {
                        flush = Some(done);
                        break;
                    }
                }
            }
        }
        exporter.export(&mut batch).await;
        if let Some(done) = flush {
            // What was queued when the flush was asked for, not what keeps arriving.
            let mut pending = spans.len();
            while pending > 0 {
                let n = spans.recv_many(&mut batch, pending.min(max)).await;
                if n == 0 {
                    break;
                }
                pending = pending.saturating_sub(n);
                exporter.export(&mut batch).await;
            }
            let _ = done.send(());
        }
        if closed {
            return;
        }
    }
}

struct Exporter {
    client: TraceServiceClient<Channel>,
    endpoint: Endpoint,
    resource: ProtoResource,
    scope: InstrumentationScope,
    timeout: Duration,
    stats: Arc<Stats>,
    /// Logs only on a change between working and failing, not once per batch.
    failing: bool,
}

impl Exporter {
    /// Sends and empties `batch`. Awaited inline by the task, so exports never overlap.
    async fn export(&mut self, batch: &mut Vec<SpanRecord>) {
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(self.scope.clone()),
                    spans: batch.drain(..).map(|s| s.to_proto()).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let failure = match time::timeout(self.timeout, self.client.export(request)).await {
            Ok(Ok(response)) => {
                let rejected = response
                    .into_inner()
                    .partial_success
                    .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
                    .min(count);
                self.stats.exported.fetch_add(count - rejected, Relaxed);
                self.stats.failed.fetch_add(rejected, Relaxed);
                None
            }
            Ok(Err(status)) => Some(status.to_string()),
            Err(_elapsed) => {
                // A connection that holds requests unanswered keeps per-stream state for
                // each one given up on; start over on a fresh one instead of piling up.
                self.client = TraceServiceClient::new(self.endpoint.connect_lazy());
                Some(format!("no answer within {:?}", self.timeout))
            }
        };
        match failure {
            Some(reason) => {
                self.stats.failed.fetch_add(count, Relaxed);
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(%reason, "span export failed; spans are dropped until the collector answers");
                }
            }
            None if self.failing => {
                self.failing = false;
                tracing::info!("span export works again");
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Instant as StdInstant, UNIX_EPOCH};

    use super::*;
    use crate::span::SpanKind;

    fn span() -> SpanRecord {
        let ctx = crate::start_or_continue(&http::HeaderMap::new(), 1.0, 1);
        SpanRecord::new(&ctx, SpanKind::Server, http::Method::GET, UNIX_EPOCH)
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        // Nobody reads the receiver: the queue stays full after 8 spans.
        let (tracer, _spans, _flushes) = Tracer::channel(8);
        let started = StdInstant::now();
        for _ in 0..10_000 {
            tracer.record(span());
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(tracer.queued(), 8);
        assert_eq!(tracer.dropped(), 10_000 - 8);
    }

    #[test]
    fn a_disabled_tracer_does_nothing() {
        let tracer = Tracer::disabled();
        tracer.record(span());
        assert!(!tracer.is_enabled());
        assert_eq!(
            (tracer.dropped(), tracer.exported(), tracer.queued()),
            (0, 0, 0)
        );
    }

    #[tokio::test]
    async fn start_refuses_bad_endpoints_and_config() {
        for bad in ["jaeger:4317", "https://jaeger:4317", "http://", "not a url"] {
            let err = Tracer::start(bad, Resource::default(), ExportConfig::default()).unwrap_err();
            assert!(matches!(err, Error::Endpoint { .. }), "{bad}: {err}");
        }
        let config = ExportConfig {
            queue_capacity: 0,
            ..ExportConfig::default()
        };
        let err = Tracer::start("http://127.0.0.1:4317", Resource::default(), config).unwrap_err();
        assert!(matches!(err, Error::Config("queue_capacity")));
    }

    #[test]
    fn start_outside_a_runtime_is_an_error_not_a_panic() {
        let err = Tracer::start(
            "http://127.0.0.1:4317",
            Resource::default(),
            ExportConfig::default(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::NoRuntime));
    }

    #[tokio::test]
    async fn a_refused_connection_fails_exports_fast() {
        // Bind then drop: nothing listens on the port any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let tracer = Tracer::start(
            &format!("http://127.0.0.1:{port}"),
            Resource::default(),
            ExportConfig::default(),
        )
        .unwrap();
        for _ in 0..3 {
            tracer.record(span());
        }
        time::timeout(Duration::from_secs(3), tracer.flush())
            .await
            .unwrap();
        assert_eq!(
            (tracer.export_failed(), tracer.exported(), tracer.dropped()),
            (3, 0, 0)
        );
    }
}
