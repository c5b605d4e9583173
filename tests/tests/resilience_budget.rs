//! Retry-budget proof (issue 5): with the upstream failing every call, 1,000 requests under
//! `attempts: 3, budget: { percent: 20, minPerSecond: 0 }` cost the upstream at most ~20%
//! extra calls, not the 300% that `attempts: 3` alone would allow.
//!
//! `minPerSecond: 0` is accepted by validation (the field defaults to 0), so the bound has no
//! per-second term: calls ≤ requests × 1.2 (+ a rounding slack of a few calls).

use std::time::{Duration, Instant};

use weir_tests::client;
use weir_tests::resilience::{Single, request, run_workers, status_counts};
use weir_tests::util::within;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
const REQUESTS: usize = 1_000;
const WORKERS: usize = 8;

async fn outage(label: &str, budget: &str) -> (u64, Duration) {
    let spec = format!(
        "retries: {{ attempts: 3, on: [\"503\"], backoff: {{ base: 1ms, max: 4ms }}{budget} }}"
    );
    let mesh = Single::start(label, "payments", 1, &spec).await;
    mesh.app().set_default("status=503").expect("spec");
    let started = Instant::now();
    let replies = within(
        TEST_TIMEOUT,
        "1,000 requests to a failing upstream",
        async {
            run_workers(mesh.entry(), REQUESTS, WORKERS, |_| {
                request("GET", "payments", "/pay", &[], client::empty())
            })
            .await
        },
    )
    .await;
    let took = started.elapsed();
    let statuses = status_counts(&replies);
    assert_eq!(
        statuses.get(&503).copied(),
        Some(REQUESTS),
        "every request ends in the app's 503: {statuses:?}"
    );
    assert!(replies.iter().all(|r| r.weir_error().is_none()));
    (mesh.app().calls("/pay"), took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_caps_retries_at_twenty_percent_during_an_outage() {
    let (calls, took) = outage("budget-20", ", budget: { percent: 20, minPerSecond: 0 }").await;
    let extra = calls as f64 / REQUESTS as f64 - 1.0;
    println!(
        "retry budget 20%: {REQUESTS} requests -> {calls} upstream calls (+{:.1}%) in {took:?}",
        extra * 100.0
    );
    // Deposits and withdrawals count in whole calls; a handful of calls of slack.
    let bound = (REQUESTS as f64 * 1.2).ceil() as u64 + 5;
    assert!(calls <= bound, "{calls} calls > {bound}: the budget leaks");
    // The budget is spent, not just blocking: most of the allowed 200 retries happen.
    assert!(
        calls >= REQUESTS as u64 + 150,
        "{calls}: retries were not made"
    );
}

/// The contrast: the same outage without a budget multiplies the load by 1 + attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_budget_every_request_costs_four_calls() {
    let (calls, took) = outage("budget-none", "").await;
    println!("no budget: {REQUESTS} requests -> {calls} upstream calls in {took:?}");
    assert_eq!(calls, 4 * REQUESTS as u64);
}
