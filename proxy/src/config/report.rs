//! Resilience state for people: breaker states, ejections and bulkhead occupancy in `/metrics`
//! (appended to the counters at scrape time, read from the snapshot in force) and `/config`.
use std::fmt::Write as _;

use serde::Serialize;
use tokio::time::Instant;

use super::{Service, Snapshot};

/// One endpoint's breaker as `/config` shows it.
#[derive(Serialize)]
pub struct BreakerState {
    pub endpoint: String,
    pub state: &'static str,
    pub ejections: u32,
    pub consecutive_failures: u32,
}

/// Every endpoint of `svc`'s own backend that has a breaker.
pub fn breakers(svc: &Service, now: Instant) -> Vec<BreakerState> {
    svc.own
        .endpoints
        .iter()
        .filter_map(|ep| {
            let b = ep.breaker.load_full()?;
            let view = b.inner.snapshot(now);
            Some(BreakerState {
                endpoint: ep.addr.to_string(),
                state: view.state,
                ejections: view.ejections,
                consecutive_failures: view.consecutive_failures,
            })
        })
        .collect()
}

/// Prometheus lines for breakers and bulkheads. Labels are services and endpoint addresses:
/// bounded by the mesh's size, never by traffic.
pub fn render(snapshot: &Snapshot, out: &mut String) {
    let now = Instant::now();
    out.push_str("# HELP weir_breaker_open Whether an endpoint is ejected by its circuit breaker (1 open or half-open, 0 closed).\n");
    out.push_str("# TYPE weir_breaker_open gauge\n");
    let mut ejections = String::new();
    for svc in snapshot.services() {
        for b in breakers(svc, now) {
            let labels = format!(
                "dst=\"{}\",dst_ns=\"{}\",endpoint=\"{}\"",
                svc.name, svc.namespace, b.endpoint
            );
            let _ = writeln!(
                out,
                "weir_breaker_open{{{labels}}} {}",
                u8::from(b.state != "closed")
            );
            let _ = writeln!(
                ejections,
                "weir_breaker_ejections_total{{{labels}}} {}",
                b.ejections
            );
        }
    }
    out.push_str(
        "# HELP weir_breaker_ejections_total Ejections of an endpoint by its circuit breaker.\n",
    );
    out.push_str("# TYPE weir_breaker_ejections_total counter\n");
    out.push_str(&ejections);
    out.push_str("# HELP weir_bulkhead_in_flight Calls holding a bulkhead slot, by destination.\n");
    out.push_str("# TYPE weir_bulkhead_in_flight gauge\n");
    let mut pending = String::new();
    for svc in snapshot.services() {
        if let Some(b) = &svc.policy.bulkhead {
            let labels = format!("dst=\"{}\",dst_ns=\"{}\"", svc.name, svc.namespace);
            let _ = writeln!(out, "weir_bulkhead_in_flight{{{labels}}} {}", b.in_flight());
            let _ = writeln!(pending, "weir_bulkhead_pending{{{labels}}} {}", b.pending());
        }
    }
    out.push_str(
        "# HELP weir_bulkhead_pending Calls waiting for a bulkhead slot, by destination.\n",
    );
    out.push_str("# TYPE weir_bulkhead_pending gauge\n");
    out.push_str(&pending);
}
