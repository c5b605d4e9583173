//! Span export: a bounded queue the hot path pushes into without waiting, and one
//! background task that batches and sends OTLP/gRPC with a timeout per export, appends
//! OTLP/JSON lines to a file (see [`crate::file`]), or both, each batch to each.
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
//! With a file as well, the file gets each batch as the collector does: a black-holed
//! collector slows the file's batches down to one per `export_timeout` too (the queue fills
//! and drops, for both); a failing file costs the collector nothing.
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant as StdInstant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};

use tokio::sync::{mpsc, oneshot};
use tokio::time::{self, Instant};
use tonic::transport::{Channel, Endpoint};

use crate::Error;
use crate::file::{FileConfig, MIN_FILE_BYTES, SpanFile, Written};
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

/// Where spans go; at least one must be set.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    /// OTLP/gRPC collector, e.g. `http://jaeger:4317`.
    pub otlp: Option<String>,
    /// OTLP/JSON lines appended to a file.
    pub file: Option<FileConfig>,
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
    file_written: AtomicU64,
    file_failed: AtomicU64,
}

// === impl Tracer ===

impl Tracer {
    /// Records nothing: for a proxy without a collector.
    pub fn disabled() -> Tracer {
        Tracer { shared: None }
    }

    /// Starts the export task on the current tokio runtime, exporting over OTLP/gRPC only.
    pub fn start(
        endpoint: &str,
        resource: Resource,
        config: ExportConfig,
    ) -> Result<Tracer, Error> {
        let outputs = Outputs {
            otlp: Some(endpoint.to_owned()),
            file: None,
        };
        Tracer::start_with(&outputs, resource, config)
    }

    /// Starts the export task on the current tokio runtime; every span goes to each of
    /// `outputs`. The gRPC connection is made lazily on the first export, so an unreachable
    /// collector does not fail startup; the span file is opened (created) now, so a path
    /// that cannot be written does.
    pub fn start_with(
        outputs: &Outputs,
        resource: Resource,
        config: ExportConfig,
    ) -> Result<Tracer, Error> {
        if outputs.otlp.is_none() && outputs.file.is_none() {
            return Err(Error::NoOutput);
        }
        if config.queue_capacity == 0 {
            return Err(Error::Config("queue_capacity"));
        }
        if config.max_batch == 0 {
            return Err(Error::Config("max_batch"));
        }
        let otlp = match &outputs.otlp {
            Some(endpoint) => Some(otlp_endpoint(endpoint, config.export_timeout)?),
            None => None,
        };
        let file = match &outputs.file {
            Some(file_config) => {
                if file_config.max_bytes < MIN_FILE_BYTES {
                    return Err(Error::Config("the trace file's max_bytes (4096)"));
                }
                let mut file = SpanFile::new(file_config);
                file.open_now().map_err(|source| Error::File {
                    path: file_config.path.clone(),
                    source,
                })?;
                Some(file)
            }
            None => None,
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let _guard = runtime.enter();

        let (tracer, spans, flushes) = Tracer::channel(config.queue_capacity);
        let exporter = Exporter {
            otlp: otlp.map(|endpoint| Otlp {
                client: TraceServiceClient::new(endpoint.connect_lazy()),
                endpoint,
                timeout: config.export_timeout,
                failing: false,
            }),
            file: file.map(FileSink::new),
            resource: Arc::new(resource.to_proto()),
            scope: Arc::new(InstrumentationScope {
                name: "weir".to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                ..Default::default()
            }),
            stats: tracer.stats(),
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

    /// Spans appended to the span file (`--trace-file`).
    pub fn file_written(&self) -> u64 {
        self.counter(|s| &s.file_written)
    }

    /// Spans that did not reach the span file: write errors (disk full, directory gone).
    pub fn file_failed(&self) -> u64 {
        self.counter(|s| &s.file_failed)
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
            .field("file_written", &self.file_written())
            .field("file_failed", &self.file_failed())
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

/// Where batches go: OTLP/gRPC, the span file, or both (each gets every batch).
struct Exporter {
    otlp: Option<Otlp>,
    file: Option<FileSink>,
    resource: Arc<ProtoResource>,
    scope: Arc<InstrumentationScope>,
    stats: Arc<Stats>,
}

struct Otlp {
    client: TraceServiceClient<Channel>,
    endpoint: Endpoint,
    timeout: Duration,
    /// Logs only on a change between working and failing, not once per batch.
    failing: bool,
}

/// The span file, written on tokio's blocking pool. `None` only while a write is out.
struct FileSink {
    file: Option<SpanFile>,
    /// Warnings at most once per `FILE_WARN_EVERY`; the errors in between are counted.
    last_warning: Option<StdInstant>,
    suppressed: u64,
    /// A warning went out since the file last worked: say when it works again.
    warned: bool,
}

/// A full disk fails every batch (once a second): one warning a minute says enough.
const FILE_WARN_EVERY: Duration = Duration::from_secs(60);

fn otlp_endpoint(endpoint: &str, timeout: Duration) -> Result<Endpoint, Error> {
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
    // No request timeout on the endpoint: the export task's own timeout is the one that
    // also replaces a stuck connection, so it must be the one that fires.
    Ok(Endpoint::from(uri).connect_timeout(timeout))
}

impl Exporter {
    /// Sends and empties `batch` to every output, concurrently. Awaited inline by the task,
    /// so exports never overlap.
    async fn export(&mut self, batch: &mut Vec<SpanRecord>) {
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        let Exporter {
            otlp,
            file,
            resource,
            scope,
            stats,
        } = self;
        let request = otlp.as_ref().map(|_| ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(ProtoResource::clone(resource)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope::clone(scope)),
                    spans: batch.iter().map(SpanRecord::to_proto).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        });
        // The file's conversion happens on the blocking thread with the write, off the
        // (possibly only) worker thread; the records come back emptied for the next batch.
        let records = match file {
            Some(_) => std::mem::take(batch),
            None => {
                batch.clear();
                Vec::new()
            }
        };
        let send = async {
            if let (Some(otlp), Some(request)) = (otlp.as_mut(), request) {
                otlp.send(request, count, stats).await;
            }
        };
        let write = async {
            match file.as_mut() {
                Some(file) => Some(file.write(resource, scope, records, stats).await),
                None => None,
            }
        };
        let ((), emptied) = tokio::join!(send, write);
        if let Some(emptied) = emptied {
            *batch = emptied;
        }
    }
}

impl Otlp {
    async fn send(&mut self, request: ExportTraceServiceRequest, count: u64, stats: &Stats) {
        let failure = match time::timeout(self.timeout, self.client.export(request)).await {
            Ok(Ok(response)) => {
                let rejected = response
                    .into_inner()
                    .partial_success
                    .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
                    .min(count);
                stats.exported.fetch_add(count - rejected, Relaxed);
                stats.failed.fetch_add(rejected, Relaxed);
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
                stats.failed.fetch_add(count, Relaxed);
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

impl FileSink {
    fn new(file: SpanFile) -> FileSink {
        FileSink {
            file: Some(file),
            last_warning: None,
            suppressed: 0,
            warned: false,
        }
    }

    /// Appends `records`; returns the emptied vector.
    async fn write(
        &mut self,
        resource: &Arc<ProtoResource>,
        scope: &Arc<InstrumentationScope>,
        records: Vec<SpanRecord>,
        stats: &Stats,
    ) -> Vec<SpanRecord> {
        let count = records.len() as u64;
        let Some(mut file) = self.file.take() else {
            // Lost with a write task that panicked (see below): nothing to write to.
            stats.file_failed.fetch_add(count, Relaxed);
            return Vec::new();
        };
        let (resource, scope) = (resource.clone(), scope.clone());
        let job = tokio::task::spawn_blocking(move || {
            let mut records = records;
            let spans = records.iter().map(SpanRecord::to_proto).collect();
            let written = file.append(&resource, &scope, spans);
            records.clear();
            (file, written, records)
        });
        let (written, emptied) = match job.await {
            Ok((file, written, emptied)) => {
                self.file = Some(file);
                (written, emptied)
            }
            // Only a bug panics in there; the file is gone with it, and so is the output.
            Err(e) => {
                let written = Written {
                    spans: 0,
                    failed: count,
                    error: Some(format!("the span file writer failed: {e}")),
                };
                (written, Vec::new())
            }
        };
        stats.file_written.fetch_add(written.spans, Relaxed);
        stats.file_failed.fetch_add(written.failed, Relaxed);
        self.report(written.error);
        emptied
    }

    fn report(&mut self, error: Option<String>) {
        let Some(error) = error else {
            if self.warned {
                self.warned = false;
                tracing::info!("the trace file is written again");
            }
            return;
        };
        let now = StdInstant::now();
        if self
            .last_warning
            .is_some_and(|at| now.duration_since(at) < FILE_WARN_EVERY)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            %error,
            errors_not_logged = self.suppressed,
            "spans not written to the trace file (counted in weir_trace_file_write_failures_total); \
             the next batch tries again"
        );
        self.last_warning = Some(now);
        self.suppressed = 0;
        self.warned = true;
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

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

    fn file_outputs(path: std::path::PathBuf, otlp: Option<String>) -> Outputs {
        Outputs {
            otlp,
            file: Some(FileConfig {
                path,
                max_bytes: 1 << 20,
            }),
        }
    }

    #[tokio::test]
    async fn spans_reach_the_file_and_a_dead_collector_too() {
        let dir = crate::file::tests::TempDir::new("both");
        let path = dir.0.join("spans.jsonl");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let outputs = file_outputs(path.clone(), Some(format!("http://127.0.0.1:{port}")));
        let tracer =
            Tracer::start_with(&outputs, Resource::default(), ExportConfig::default()).unwrap();
        for _ in 0..3 {
            tracer.record(span());
        }
        time::timeout(Duration::from_secs(5), tracer.flush())
            .await
            .unwrap();
        assert_eq!((tracer.file_written(), tracer.file_failed()), (3, 0));
        assert_eq!((tracer.export_failed(), tracer.exported()), (3, 0));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "one batch, one line: {text}");
        assert_eq!(crate::file::tests::read_spans(&path).len(), 3);
    }

    #[tokio::test]
    async fn file_write_errors_are_counted_and_the_next_batch_retries() {
        let dir = crate::file::tests::TempDir::new("retry");
        let sub = dir.0.join("sub");
        std::fs::create_dir(&sub).unwrap();
        let outputs = file_outputs(sub.join("spans.jsonl"), None);
        let tracer =
            Tracer::start_with(&outputs, Resource::default(), ExportConfig::default()).unwrap();
        let batch = |n: usize| {
            for _ in 0..n {
                tracer.record(span());
            }
            time::timeout(Duration::from_secs(5), tracer.flush())
        };
        batch(1).await.unwrap();
        std::fs::remove_dir_all(&sub).unwrap();
        batch(2).await.unwrap();
        assert_eq!((tracer.file_written(), tracer.file_failed()), (1, 2));
        std::fs::create_dir(&sub).unwrap();
        batch(4).await.unwrap();
        assert_eq!((tracer.file_written(), tracer.file_failed()), (5, 2));
        assert_eq!(
            crate::file::tests::read_spans(&sub.join("spans.jsonl")).len(),
            4
        );
    }

    #[tokio::test]
    async fn start_refuses_no_output_and_an_unwritable_file() {
        let err = Tracer::start_with(
            &Outputs::default(),
            Resource::default(),
            ExportConfig::default(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::NoOutput), "{err}");
        let outputs = file_outputs("/nonexistent-weir-dir/spans.jsonl".into(), None);
        let err =
            Tracer::start_with(&outputs, Resource::default(), ExportConfig::default()).unwrap_err();
        assert!(matches!(err, Error::File { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("/nonexistent-weir-dir/spans.jsonl")
        );
    }
}
