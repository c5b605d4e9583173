//! Prometheus metrics as plain atomics. Every handle the data path touches is resolved when a
//! config snapshot is compiled (one `Arc<TrafficMetrics>` per destination service), so a request
//! only does relaxed atomic adds: no label lookup, no lock, no allocation. Label sets are
//! bounded by the configured services plus `passthrough`.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1 = 0,
    H2 = 1,
    Opaque = 2,
}

const PROTOCOLS: [&str; 3] = ["http1", "h2", "opaque"];

/// Status classes; `error` is a stream that ended without any response.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// Latency bucket upper bounds in microseconds (rendered in seconds).
const BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Per-bucket (not cumulative) counts; the last slot is +Inf.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKETS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }
}

/// Request/response counters and latency for one (direction, destination) pair.
#[derive(Debug, Default)]
pub struct TrafficMetrics {
    requests: AtomicU64,
    /// Opaque connections and CONNECT tunnels open now: they carry no requests, and the idle
    /// sweep must not drop a destination they still use.
    tunnels: AtomicU64,
    responses: [AtomicU64; CLASSES.len()],
    latency: Histogram,
}

impl TrafficMetrics {
    #[inline]
    pub fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    /// Requests so far: the idle sweep of subscriptions reads whether it moved.
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    /// Counts an opaque connection or tunnel as open until the guard drops.
    pub fn tunnel(self: &Arc<Self>) -> OpenTunnel {
        self.tunnels.fetch_add(1, Relaxed);
        OpenTunnel(self.clone())
    }

    pub fn tunnels(&self) -> u64 {
        self.tunnels.load(Relaxed)
    }

    /// Records the response head (or its absence) and the time it took to arrive.
    #[inline]
    pub fn response(&self, status: Option<u16>, elapsed: Duration) {
        let class = match status {
            Some(s @ 100..=599) => usize::from(s / 100 - 1),
            _ => CLASSES.len() - 1,
        };
        self.responses[class].fetch_add(1, Relaxed);
        self.latency.observe(elapsed);
    }
}

#[derive(Debug, Default)]
pub struct ConnectionMetrics {
    total: [AtomicU64; PROTOCOLS.len()],
    open: AtomicI64,
}

impl ConnectionMetrics {
    /// Counts a connection as open until the returned guard drops.
    pub fn open(self: &Arc<Self>) -> OpenConnection {
        self.open.fetch_add(1, Relaxed);
        OpenConnection(self.clone())
    }

    pub fn protocol(&self, p: Protocol) {
        self.total[p as usize].fetch_add(1, Relaxed);
    }
}

pub struct OpenConnection(Arc<ConnectionMetrics>);

pub struct OpenTunnel(Arc<TrafficMetrics>);

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.tunnels.fetch_sub(1, Relaxed);
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// Every metric of the process. Lookups by label take a lock, but only on config compile and
/// scrape, never per request.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Keyed by direction and the rendered destination labels.
    traffic: Mutex<BTreeMap<(Direction, String), Arc<TrafficMetrics>>>,
    pub inbound_connections: Arc<ConnectionMetrics>,
    pub outbound_connections: Arc<ConnectionMetrics>,
    pub config_version: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_error: AtomicU64,
    /// Inbound connections refused by policy (plaintext under strict mTLS).
    pub inbound_refused: AtomicU64,
    /// Certificates obtained from the control plane (first one and renewals).
    pub identity_renewals: AtomicU64,
    /// Requests that waited for the control plane to resolve a new destination, and those
    /// whose wait ran out.
    pub discovery_waits: AtomicU64,
    pub discovery_timeouts: AtomicU64,
    /// The span exporter, whose own counters are rendered; unset until it starts.
    pub tracer: std::sync::OnceLock<weir_trace::Tracer>,
}

impl Metrics {
    /// The handle for traffic to `dst` (a service name, or `passthrough`) in namespace `ns`.
    pub fn traffic(&self, dir: Direction, dst: &str, ns: Option<&str>) -> Arc<TrafficMetrics> {
        self.traffic_labeled(dir, dst, ns, "")
    }

    /// Like [`Metrics::traffic`] with one more rendered label pair, e.g. `tls="true"`.
    pub fn traffic_labeled(
        &self,
        dir: Direction,
        dst: &str,
        ns: Option<&str>,
        extra: &str,
    ) -> Arc<TrafficMetrics> {
        let mut labels = match ns {
            Some(ns) => format!("dst=\"{dst}\",dst_ns=\"{ns}\""),
            None => format!("dst=\"{dst}\""),
        };
        if !extra.is_empty() {
            labels.push(',');
            labels.push_str(extra);
        }
        let mut map = self.traffic.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((dir, labels)).or_default().clone()
    }

    pub fn connections(&self, dir: Direction) -> &Arc<ConnectionMetrics> {
        match dir {
            Direction::Inbound => &self.inbound_connections,
            Direction::Outbound => &self.outbound_connections,
        }
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let traffic: Vec<_> = {
            let map = self.traffic.lock().unwrap_or_else(|e| e.into_inner());
            map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };

        out.push_str(
            "# HELP weir_requests_total Requests received, by direction and destination service.\n",
        );
        out.push_str("# TYPE weir_requests_total counter\n");
        for ((dir, dst), m) in &traffic {
            let _ = writeln!(
                out,
                "weir_requests_total{{direction=\"{}\",{}}} {}",
                dir.as_str(),
                dst,
                m.requests.load(Relaxed)
            );
        }

        out.push_str("# HELP weir_responses_total Responses, by direction, destination service and status class.\n");
        out.push_str("# TYPE weir_responses_total counter\n");
        for ((dir, dst), m) in &traffic {
            for (i, class) in CLASSES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "weir_responses_total{{direction=\"{}\",{},class=\"{}\"}} {}",
                    dir.as_str(),
                    dst,
                    class,
                    m.responses[i].load(Relaxed)
                );
            }
        }

        out.push_str("# HELP weir_response_latency_seconds Time from request to response head.\n");
        out.push_str("# TYPE weir_response_latency_seconds histogram\n");
        for ((dir, dst), m) in &traffic {
            let labels = format!("direction=\"{}\",{}", dir.as_str(), dst);
            let mut cumulative = 0;
            for (i, b) in m.latency.buckets.iter().enumerate() {
                cumulative += b.load(Relaxed);
                let le = BUCKETS_US
                    .get(i)
                    .map(|us| format!("{}", *us as f64 / 1e6))
                    .unwrap_or_else(|| "+Inf".to_owned());
                let _ = writeln!(
                    out,
                    "weir_response_latency_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "weir_response_latency_seconds_sum{{{labels}}} {}",
                m.latency.sum_us.load(Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "weir_response_latency_seconds_count{{{labels}}} {cumulative}"
            );
        }

        out.push_str("# HELP weir_connections_total Connections accepted, by direction and detected protocol.\n");
        out.push_str("# TYPE weir_connections_total counter\n");
        for dir in [Direction::Inbound, Direction::Outbound] {
            for (i, p) in PROTOCOLS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "weir_connections_total{{direction=\"{}\",protocol=\"{}\"}} {}",
                    dir.as_str(),
                    p,
                    self.connections(dir).total[i].load(Relaxed)
                );
            }
        }

        out.push_str("# HELP weir_open_connections Connections currently open, by direction.\n");
        out.push_str("# TYPE weir_open_connections gauge\n");
        for dir in [Direction::Inbound, Direction::Outbound] {
            let _ = writeln!(
                out,
                "weir_open_connections{{direction=\"{}\"}} {}",
                dir.as_str(),
                self.connections(dir).open.load(Relaxed)
            );
        }

        out.push_str("# HELP weir_inbound_refused_total Inbound connections refused (plaintext under strict mTLS).\n");
        out.push_str("# TYPE weir_inbound_refused_total counter\n");
        let _ = writeln!(
            out,
            "weir_inbound_refused_total {}",
            self.inbound_refused.load(Relaxed)
        );

        out.push_str("# HELP weir_identity_certificates_total Certificates obtained from the control plane.\n");
        out.push_str("# TYPE weir_identity_certificates_total counter\n");
        let _ = writeln!(
            out,
            "weir_identity_certificates_total {}",
            self.identity_renewals.load(Relaxed)
        );

        out.push_str("# HELP weir_config_version Version of the config snapshot in force.\n");
        out.push_str("# TYPE weir_config_version gauge\n");
        let _ = writeln!(
            out,
            "weir_config_version {}",
            self.config_version.load(Relaxed)
        );

        out.push_str("# HELP weir_config_reloads_total Config reloads, by result.\n");
        out.push_str("# TYPE weir_config_reloads_total counter\n");
        let _ = writeln!(
            out,
            "weir_config_reloads_total{{result=\"ok\"}} {}",
            self.reloads_ok.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "weir_config_reloads_total{{result=\"error\"}} {}",
            self.reloads_error.load(Relaxed)
        );
        out.push_str("# HELP weir_discovery_waits_total Requests that waited for the control plane to resolve a new destination, by result.\n");
        out.push_str("# TYPE weir_discovery_waits_total counter\n");
        let timeouts = self.discovery_timeouts.load(Relaxed);
        let _ = writeln!(
            out,
            "weir_discovery_waits_total{{result=\"answered\"}} {}",
            self.discovery_waits.load(Relaxed).saturating_sub(timeouts)
        );
        let _ = writeln!(
            out,
            "weir_discovery_waits_total{{result=\"timeout\"}} {timeouts}"
        );
        self.render_trace(&mut out);
        out
    }

    /// Rendered (as zeros) without a collector too, so dashboards and alerts need no
    /// special case.
    fn render_trace(&self, out: &mut String) {
        let tracer = self.tracer.get();
        let get = |f: fn(&weir_trace::Tracer) -> u64| tracer.map_or(0, f);
        let series: [(&str, &str, &str, u64); 6] = [
            (
                "weir_trace_spans_exported_total",
                "counter",
                "Spans the OTLP collector accepted.",
                get(weir_trace::Tracer::exported),
            ),
            (
                "weir_trace_spans_dropped_total",
                "counter",
                "Spans dropped because the export queue was full (collector slow, dead or unreachable).",
                get(weir_trace::Tracer::dropped),
            ),
            (
                "weir_trace_export_failures_total",
                "counter",
                "Spans lost in exports that failed, timed out or were rejected by the collector.",
                get(weir_trace::Tracer::export_failed),
            ),
            (
                "weir_trace_file_spans_written_total",
                "counter",
                "Spans appended to --trace-file.",
                get(weir_trace::Tracer::file_written),
            ),
            (
                "weir_trace_file_write_failures_total",
                "counter",
                "Spans not written to --trace-file: write errors (disk full, directory gone); the next batch retries.",
                get(weir_trace::Tracer::file_failed),
            ),
            (
                "weir_trace_spans_queued",
                "gauge",
                "Spans waiting for export (at most --trace-queue-size).",
                get(|t| t.queued() as u64),
            ),
        ];
        for (name, kind, help, value) in series {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_in_text() {
        let m = Metrics::default();
        let t = m.traffic(Direction::Outbound, "echo", Some("shop"));
        t.request();
        t.response(Some(200), Duration::from_micros(300));
        t.response(Some(503), Duration::from_millis(20));
        t.response(None, Duration::from_secs(60));
        let text = m.render();
        assert!(text.contains(
            "weir_requests_total{direction=\"outbound\",dst=\"echo\",dst_ns=\"shop\"} 1"
        ));
        assert!(text.contains("class=\"2xx\"} 1"));
        assert!(text.contains("class=\"5xx\"} 1"));
        assert!(text.contains("class=\"error\"} 1"));
        assert!(text.contains("le=\"0.0005\"} 1"));
        assert!(text.contains("le=\"0.025\"} 2"));
        assert!(text.contains("le=\"+Inf\"} 3"));
    }

    #[test]
    fn trace_counters_render_without_a_tracer() {
        let m = Metrics::default();
        let text = m.render();
        assert!(text.contains("weir_trace_spans_dropped_total 0\n"));
        m.tracer
            .set(weir_trace::Tracer::disabled())
            .expect("first set");
        let text = m.render();
        assert!(text.contains("weir_trace_export_failures_total 0\n"));
        assert!(text.contains("weir_trace_file_write_failures_total 0\n"));
    }

    #[test]
    fn open_connections_gauge_follows_guards() {
        let m = Metrics::default();
        let g1 = m.inbound_connections.open();
        let g2 = m.inbound_connections.open();
        assert_eq!(m.inbound_connections.open.load(Relaxed), 2);
        drop(g1);
        drop(g2);
        assert_eq!(m.inbound_connections.open.load(Relaxed), 0);
    }
}
