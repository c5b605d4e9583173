//! A rolling restart of one service's proxies: each drops its stream and comes back with a new
//! address, a few at a time. Its callers see the new addresses at once and the old ones leave
//! after the lease grace, so the phase lasts until those expiries have been sent too.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use weir_tests::bench::{diff, ms, proc_cpu_s};

use crate::phase::{Ctx, settle};
use crate::proxy::{Dial, Spec, address, open};

pub struct Roll<'a> {
    pub phase: u64,
    pub target: String,
    pub spec: Spec,
    /// The restarted proxies' slots.
    pub slots: Vec<usize>,
    /// Slots that call the service.
    pub callers: Vec<usize>,
    pub handles: &'a mut [Option<JoinHandle<()>>],
    pub generations: &'a mut [u64],
    /// Next unused address number.
    pub next_address: &'a mut u64,
    /// Restarts in flight at once.
    pub batch: usize,
    pub grace: Duration,
    /// For the restarts themselves; the grace and settling come on top.
    pub timeout: Duration,
}

pub async fn roll(ctx: &Ctx, dial: &Dial, r: Roll<'_>) -> Value {
    let shared = &ctx.shared;
    let before = shared.counters();
    shared.set_target(r.phase, &r.target);
    let cpu_before = ctx.cpu_s();
    let client_before = proc_cpu_s(std::process::id());
    let mut rss_peak = ctx.rss_kb();
    let t0 = Instant::now();
    let (mut restarted, mut failed) = (0usize, 0usize);
    let mut first_error = None;
    for chunk in r.slots.chunks(r.batch.max(1)) {
        if t0.elapsed() >= r.timeout {
            break;
        }
        let mut restarts = Vec::with_capacity(chunk.len());
        for &i in chunk {
            if let Some(old) = r.handles[i].take() {
                old.abort();
            }
            r.generations[i] += 1;
            let generation = r.generations[i];
            let addr = address(*r.next_address);
            *r.next_address += 1;
            let spec = r.spec.clone();
            let shared = shared.clone();
            let dial = dial.clone();
            restarts.push(async move {
                let handle = open(i, generation, &spec, addr, &dial, &shared).await?;
                let deadline = Instant::now() + Duration::from_secs(10);
                while shared.slots[i].ready.load(Ordering::Acquire) < generation {
                    if Instant::now() >= deadline {
                        handle.abort();
                        anyhow::bail!("proxy {i}: no first response within 10 s");
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Ok(handle)
            });
        }
        let results = futures_util::future::join_all(restarts).await;
        for (&i, result) in chunk.iter().zip(results) {
            match result {
                Ok(handle) => {
                    r.handles[i] = Some(handle);
                    restarted += 1;
                }
                Err(err) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| format!("{err:#}"));
                }
            }
        }
        rss_peak = rss_peak.max(ctx.rss_kb());
    }
    let rolled = t0.elapsed();
    // The last stream dropped leaves its address registered for the grace; its expiry is
    // part of the restart's cost.
    let expiries_until = Instant::now() + r.grace + Duration::from_secs(1);
    while Instant::now() < expiries_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        rss_peak = rss_peak.max(ctx.rss_kb());
    }
    settle(ctx, &mut rss_peak).await;
    let settled = t0.elapsed();
    let cpu_after = ctx.cpu_s();
    let client_after = proc_cpu_s(std::process::id());
    shared.set_target(0, "");

    let after = shared.counters();
    let sum = |slots: &[usize], field: fn(&(u64, u64)) -> u64| -> u64 {
        slots
            .iter()
            .map(|&i| field(&after[i]) - field(&before[i]))
            .sum()
    };
    let total: u64 =
        after.iter().map(|c| c.0).sum::<u64>() - before.iter().map(|c| c.0).sum::<u64>();
    let to_callers = sum(&r.callers, |c| c.0);
    let to_restarted = sum(&r.slots, |c| c.0);
    // What the callers hold at the end: every caller should list exactly the new addresses.
    let finals: Vec<(u64, u64)> = r
        .callers
        .iter()
        .map(|&i| &shared.slots[i])
        .filter(|s| s.reach_phase.load(Ordering::Acquire) == r.phase)
        .map(|s| {
            (
                s.reach_version.load(Ordering::Relaxed),
                s.reach_addresses.load(Ordering::Relaxed),
            )
        })
        .collect();
    let mut versions: Vec<u64> = finals.iter().map(|f| f.0).collect();
    versions.sort_unstable();
    versions.dedup();
    let json = json!({
        "event": "roll",
        "target": r.target,
        "proxies": r.slots.len(),
        "restarted": restarted,
        "failed": failed,
        "first_error": first_error,
        "batch": r.batch,
        "callers": r.callers.len(),
        "callers_reached": finals.len(),
        "callers_final_versions": versions.len(),
        "callers_final_addresses_min": finals.iter().map(|f| f.1).min(),
        "callers_final_addresses_max": finals.iter().map(|f| f.1).max(),
        "duration_s": ms(rolled) / 1e3,
        "settled_s": ms(settled) / 1e3,
        "bytes_to_callers": to_callers,
        "responses_to_callers": sum(&r.callers, |c| c.1),
        "bytes_to_restarted": to_restarted,
        "bytes_to_others": total - to_callers - to_restarted,
        "bytes_total": total,
        "cp_cpu_s": diff(cpu_after, cpu_before),
        "client_cpu_s": diff(client_after, client_before),
        "cp_rss_peak_kb": rss_peak,
    });
    println!("{json}");
    json
}
