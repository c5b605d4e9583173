//! A micro benchmark of one single-service change in a 200-service mesh, through the path a
//! control-plane push takes (`install_pushed`). Ignored by default; run it in release mode:
//! `cargo test -p weir-proxy --release config::bench -- --ignored --nocapture`.
use std::time::{Duration, Instant};

use super::fixtures::store;
use super::{Pushed, PushedResource};

const SERVICES: usize = 200;
const ROUNDS: usize = 200;

/// Every service has Endpoints (two addresses, a cluster IP) and a ServicePolicy with the usual
/// resilience settings and a 90/10 split to the next service.
fn mesh_yaml(i: usize, request_timeout_ms: u64, port: u16) -> String {
    let next = (i + 1) % SERVICES;
    let (hi, lo) = (i / 250, i % 250);
    format!(
        "apiVersion: weir/v1\nkind: Endpoints\nmetadata: {{ name: svc-{i}, namespace: shop }}\nspec:\n  addresses: [\"10.1.{hi}.{lo}:{port}\", \"10.2.{hi}.{lo}:{port}\"]\n  identity: spiffe://weir.local/ns/shop/sa/svc-{i}\n  clusterIPs: [\"10.96.{hi}.{lo}\"]\n  ports: [{{ port: 80, targetPort: 8080 }}]\n---\napiVersion: weir/v1\nkind: ServicePolicy\nmetadata: {{ name: svc-{i}, namespace: shop }}\nspec:\n  service: svc-{i}\n  timeouts: {{ request: {request_timeout_ms}ms, perTry: 500ms }}\n  retries: {{ attempts: 2, on: [connect-failure, \"503\"], budget: {{ percent: 20, minPerSecond: 10 }} }}\n  circuitBreaker: {{ consecutiveFailures: 5 }}\n  bulkhead: {{ maxConcurrent: 100, maxPending: 50, pendingTimeout: 100ms }}\n  routes:\n    - name: split\n      backends: [ {{ service: svc-{i}, weight: 90 }}, {{ service: svc-{next}, weight: 10 }} ]\n"
    )
}

fn resources(i: usize, request_timeout_ms: u64, port: u16) -> Vec<PushedResource> {
    weir_policy::parse_str("bench", &mesh_yaml(i, request_timeout_ms, port))
        .expect("valid")
        .into_iter()
        .map(|document| PushedResource {
            name: format!("{}/{}", document.kind(), document.key()),
            version: 1,
            document,
        })
        .collect()
}

/// Median and mean of `ROUNDS` installs, each after `change` edits service 100's resources.
fn time_changes(
    s: &super::ConfigStore,
    base: &Pushed,
    change: impl Fn(usize) -> Vec<PushedResource>,
) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let mut pushed = base.clone();
        pushed.version += round as u64 + 1;
        pushed.resources.truncate(2 * (SERVICES - 1));
        pushed.resources.extend(change(round));
        let start = Instant::now();
        s.install_pushed(pushed).expect("valid");
        times.push(start.elapsed());
    }
    let mean = times.iter().sum::<Duration>() / ROUNDS as u32;
    times.sort();
    (times[ROUNDS / 2], mean)
}

#[test]
#[ignore = "a benchmark: run with --ignored --nocapture, in release mode"]
fn one_service_change_in_a_large_mesh() {
    let s = store();
    // The changed service goes last, so each round swaps only its resources.
    let order = (0..SERVICES).filter(|&i| i != 100).chain([100]);
    let base = Pushed {
        version: 1,
        resources: order.flat_map(|i| resources(i, 2000, 4143)).collect(),
        ..Pushed::default()
    };
    s.install_pushed(base.clone()).expect("valid");
    let start = Instant::now();
    s.install_pushed(base.clone()).expect("valid");
    let full = start.elapsed();
    let policy = time_changes(&s, &base, |round| {
        resources(100, 2000 + (round as u64 + 1) % 2 * 1000, 4143)
    });
    let endpoints = time_changes(&s, &base, |round| {
        resources(100, 2000, 4143 + (round as u16 + 1) % 2)
    });
    println!("{SERVICES} services, {ROUNDS} rounds: install of the unchanged set {full:?}");
    println!(
        "  policy change of one service:    median {:?}, mean {:?}",
        policy.0, policy.1
    );
    println!(
        "  endpoints change of one service: median {:?}, mean {:?}",
        endpoints.0, endpoints.1
    );
}
