//! The last line: medians over the rounds of each change, the rolling restart, the control
//! plane's memory, and the goals checked against them.

use serde_json::{Value, json};
use weir_tests::bench::proc_status_kb;

use crate::Args;
use crate::phase::{Ctx, Outcome, max, median};

pub struct Phases<'a> {
    pub policy: &'a [Outcome],
    pub endpoint: &'a [Outcome],
    pub mesh: &'a [Outcome],
    pub roll: Option<&'a Value>,
}

fn med<F: Fn(&Outcome) -> Option<f64>>(outcomes: &[Outcome], f: F) -> Option<f64> {
    median(outcomes.iter().map(f))
}

fn field(outcome: &Outcome, name: &str) -> Option<f64> {
    outcome.json.get(name).and_then(Value::as_f64)
}

fn mb(kb: Option<u64>) -> Option<f64> {
    kb.map(|kb| (kb as f64 / 1024.0 * 10.0).round() / 10.0)
}

pub fn summary(args: &Args, ctx: &Ctx, connected: &Value, phases: &Phases) -> Value {
    let bytes = |o: &Outcome| Some(o.bytes as f64);
    let reached = |o: &Outcome| Some(o.reached as f64);
    let p99 = |o: &Outcome| o.p99_s;
    let cpu = |o: &Outcome| o.cpu_s;
    let peak = [phases.policy, phases.endpoint, phases.mesh]
        .iter()
        .flat_map(|p| p.iter())
        .filter_map(|o| o.json.get("cp_rss_peak_kb").and_then(Value::as_u64))
        .chain(
            phases
                .roll
                .and_then(|r| r.get("cp_rss_peak_kb"))
                .and_then(Value::as_u64),
        )
        .max();
    let rss = mb(connected.get("cp_rss_connected_kb").and_then(Value::as_u64));
    let timed_out: Vec<String> = [
        ("policy", phases.policy),
        ("endpoint", phases.endpoint),
        ("mesh_config", phases.mesh),
    ]
    .iter()
    .flat_map(|(kind, outcomes)| {
        outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| o.timed_out)
            .map(move |(k, _)| format!("{kind}#{}", k + 1))
    })
    .collect();
    let roll = |name: &str| phases.roll.and_then(|r| r.get(name)).cloned();
    let per_service = args.proxies as f64 / args.services as f64;
    let acked_p99 = med(phases.policy, p99);
    let policy_bytes = med(phases.policy, bytes);
    let policy_reached = med(phases.policy, reached);
    let endpoint_bytes = med(phases.endpoint, bytes);
    let callers = args.calls.min(args.services.saturating_sub(1)) as f64 * per_service;
    let goals = json!({
        "acked_p99_le_1s": acked_p99.map(|v| v <= 1.0),
        "rss_le_300mb": rss.map(|v| v <= 300.0),
        // Its callers plus its own proxies, give or take rounding.
        "policy_reach_as_expected": policy_reached
            .map(|v| v <= (callers + per_service) * 1.1 + 2.0),
        "policy_bytes_lt_5mb": policy_bytes.map(|v| v < 5e6),
        "endpoint_bytes_lt_1mb": endpoint_bytes.map(|v| v < 1e6),
    });
    json!({
        "event": "summary",
        "scenario": "mesh",
        "proxies": args.proxies,
        "services": args.services,
        "calls": args.calls,
        "rounds": args.rounds,
        "streams": connected.get("streams"),
        "connected": connected.get("initial_responses"),
        "connect_s": connected.get("connect_s"),
        "acked_p99_s": acked_p99,
        "acked_p99_s_max": max(phases.policy.iter().map(p99)),
        "acked_p50_s": med(phases.policy, |o| field(o, "ack_p50_s")),
        "control_plane_rss_mb": rss,
        "control_plane_rss_peak_mb": mb(peak),
        "control_plane_hwm_mb": mb(ctx.cp_pid.and_then(|p| proc_status_kb(p, "VmHWM:"))),
        "bytes_per_policy_change": policy_bytes,
        "proxies_reached_per_policy_change": policy_reached,
        "callers_per_policy_change": callers,
        "expected_per_policy_change": med(phases.policy, |o| field(o, "expected")),
        "cpu_s_per_policy_change": med(phases.policy, cpu),
        "bytes_per_endpoint_change": endpoint_bytes,
        "proxies_reached_per_endpoint_change": med(phases.endpoint, reached),
        "endpoint_acked_p99_s": med(phases.endpoint, p99),
        "cpu_s_per_endpoint_change": med(phases.endpoint, cpu),
        "newcomer_bytes": med(phases.endpoint, |o| field(o, "newcomer_bytes")),
        "mesh_config_reached": med(phases.mesh, reached),
        "mesh_config_expected": med(phases.mesh, |o| field(o, "expected")),
        "mesh_config_bytes": med(phases.mesh, bytes),
        "mesh_config_acked_p99_s": med(phases.mesh, p99),
        "mesh_config_cpu_s": med(phases.mesh, cpu),
        "roll_proxies": roll("proxies"),
        "roll_restarted": roll("restarted"),
        "roll_failed": roll("failed"),
        "roll_callers": roll("callers"),
        "roll_duration_s": roll("duration_s"),
        "roll_settled_s": roll("settled_s"),
        "roll_bytes_to_callers": roll("bytes_to_callers"),
        "roll_bytes_total": roll("bytes_total"),
        "roll_cpu_s": roll("cp_cpu_s"),
        "roll_callers_final_addresses": roll("callers_final_addresses_min"),
        "closed_streams": ctx.shared.closed.load(std::sync::atomic::Ordering::Relaxed),
        "timed_out": timed_out,
        "client_hwm_mb": mb(proc_status_kb(std::process::id(), "VmHWM:")),
        "goals": goals,
    })
}
