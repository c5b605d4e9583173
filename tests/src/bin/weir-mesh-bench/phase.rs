//! One measured change: who it reached and with how many bytes, how long until the proxies
//! that need it ACKed it, and the control plane's CPU meanwhile.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir_tests::bench::{diff, ms, proc_cpu_s, proc_status_kb};

use crate::proxy::Shared;

#[derive(Clone)]
pub struct Ctx {
    pub shared: Arc<Shared>,
    pub cp_pid: Option<u32>,
    /// Until every proxy that needs the change ACKed it; then partial results.
    pub timeout: Duration,
    /// After that, the change's traffic counts until no byte arrived for this long.
    pub quiet: Duration,
    pub settle_max: Duration,
}

impl Ctx {
    pub fn rss_kb(&self) -> Option<u64> {
        self.cp_pid.and_then(|p| proc_status_kb(p, "VmRSS:"))
    }

    pub fn cpu_s(&self) -> Option<f64> {
        self.cp_pid.and_then(proc_cpu_s)
    }
}

/// What a phase waits for.
pub struct Watch {
    pub kind: &'static str,
    pub round: u32,
    /// Unique per phase (slots remember the last one that reached them).
    pub phase: u64,
    /// Resource name, "Kind/namespace/name".
    pub target: String,
    /// Slots that need the change.
    pub expected: Vec<usize>,
    /// A slot whose bytes are its own connect, not the change's (a newcomer).
    pub exclude: Option<usize>,
}

/// The figures the summary aggregates; `json` is the round's full line.
pub struct Outcome {
    pub json: Value,
    pub p99_s: Option<f64>,
    pub bytes: u64,
    pub reached: usize,
    pub cpu_s: Option<f64>,
    pub timed_out: bool,
}

/// Runs `action` (the change) and measures its effect on every slot.
pub async fn measure<F>(ctx: &Ctx, watch: Watch, action: F) -> Outcome
where
    F: Future<Output = anyhow::Result<Value>>,
{
    let shared = &ctx.shared;
    let before = shared.counters();
    shared.set_target(watch.phase, &watch.target);
    let cpu_before = ctx.cpu_s();
    let client_before = proc_cpu_s(std::process::id());
    let mut rss_peak = ctx.rss_kb();
    let t0_ns = shared.now_ns();
    let t0 = Instant::now();
    let (action_ok, extra) = match tokio::time::timeout(ctx.timeout, action).await {
        Ok(Ok(extra)) => (true, extra),
        Ok(Err(err)) => (false, json!({ "error": format!("{err:#}") })),
        Err(_) => (false, json!({ "error": "the change itself timed out" })),
    };
    let action_ms = ms(t0.elapsed());

    let reached_expected = || {
        watch
            .expected
            .iter()
            .filter(|&&i| shared.slots[i].reach_phase.load(Ordering::Acquire) == watch.phase)
            .count()
    };
    let mut next_rss = Instant::now();
    let mut all_at = None;
    while action_ok && t0.elapsed() < ctx.timeout {
        if reached_expected() == watch.expected.len() {
            all_at = Some(t0.elapsed());
            break;
        }
        if Instant::now() >= next_rss {
            rss_peak = rss_peak.max(ctx.rss_kb());
            next_rss = Instant::now() + Duration::from_millis(10);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let settled = settle(ctx, &mut rss_peak).await;
    let cpu_after = ctx.cpu_s();
    let client_after = proc_cpu_s(std::process::id());
    shared.set_target(0, "");

    let after = shared.counters();
    let mut is_expected = vec![false; after.len()];
    for &i in &watch.expected {
        is_expected[i] = true;
    }
    let (mut bytes, mut responses, mut reached) = (0, 0, 0);
    let (mut bytes_expected, mut own_bytes) = (0, 0);
    for (i, ((b0, r0), (b1, r1))) in before.iter().zip(&after).enumerate() {
        let (b, r) = (b1 - b0, r1 - r0);
        if Some(i) == watch.exclude {
            own_bytes = b;
            continue;
        }
        bytes += b;
        responses += r;
        reached += usize::from(r > 0);
        if is_expected[i] {
            bytes_expected += b;
        }
    }
    let mut lat: Vec<u64> = watch
        .expected
        .iter()
        .map(|&i| &shared.slots[i])
        .filter(|s| s.reach_phase.load(Ordering::Acquire) == watch.phase)
        .map(|s| s.reach_ns.load(Ordering::Relaxed).saturating_sub(t0_ns))
        .collect();
    lat.sort_unstable();
    let n = watch.expected.len();
    let p99_s = percentile(&lat, n, 99);
    let timed_out = lat.len() < n;
    let cpu_s = diff(cpu_after, cpu_before);
    let json = json!({
        "event": watch.kind,
        "round": watch.round,
        "target": watch.target,
        "expected": n,
        "reached_expected": lat.len(),
        "reached": reached,
        "bytes": bytes,
        "responses": responses,
        "bytes_to_expected": bytes_expected,
        "bytes_to_others": bytes - bytes_expected,
        "newcomer_bytes": watch.exclude.map(|_| own_bytes),
        "ack_p50_s": percentile(&lat, n, 50),
        "ack_p99_s": p99_s,
        "ack_max_s": if timed_out { None } else { lat.last().map(|ns| secs(*ns)) },
        "action_ms": action_ms,
        "all_expected_s": all_at.map(|d| ms(d) / 1e3),
        "settled_s": ms(settled) / 1e3,
        "timed_out": timed_out,
        "cp_cpu_s": cpu_s,
        "client_cpu_s": diff(client_after, client_before),
        "cp_rss_peak_kb": rss_peak,
        "extra": extra,
    });
    println!("{json}");
    Outcome {
        json,
        p99_s,
        bytes,
        reached,
        cpu_s,
        timed_out,
    }
}

/// Waits until no response arrived for `ctx.quiet` (at most `ctx.settle_max`): the change's
/// coalesced follow-ups count too. Returns how long after the start of settling.
pub async fn settle(ctx: &Ctx, rss_peak: &mut Option<u64>) -> Duration {
    let start = Instant::now();
    let mut last = ctx.shared.total_bytes();
    let mut last_change = Instant::now();
    while last_change.elapsed() < ctx.quiet && start.elapsed() < ctx.settle_max {
        tokio::time::sleep(Duration::from_millis(50)).await;
        *rss_peak = (*rss_peak).max(ctx.rss_kb());
        let now = ctx.shared.total_bytes();
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
    start.elapsed()
}

/// The p-th percentile over `n` proxies, in seconds; `None` when fewer than that many ACKed.
pub fn percentile(sorted_ns: &[u64], n: usize, p: usize) -> Option<f64> {
    let k = (n * p).div_ceil(100).max(1);
    sorted_ns.get(k - 1).map(|ns| secs(*ns))
}

pub fn secs(ns: u64) -> f64 {
    (ns as f64 / 1e6).round() / 1e3
}

/// Median of the values present.
pub fn median(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let mut v: Vec<f64> = values.into_iter().flatten().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Largest of the values present.
pub fn max(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    values.into_iter().flatten().reduce(f64::max)
}
