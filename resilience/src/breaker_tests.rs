use super::*;
use tokio::time::advance;

const SEC: Duration = Duration::from_secs(1);

fn config(consecutive: Option<u32>, rate: Option<FailureRate>) -> Arc<BreakerConfig> {
    Arc::new(BreakerConfig {
        consecutive_failures: consecutive,
        failure_rate: rate,
        ejection_base: 30 * SEC,
        ejection_max: 300 * SEC,
        max_percent: 50,
    })
}

fn breaker(cfg: &Arc<BreakerConfig>, gate: &Arc<EjectionGate>) -> EndpointBreaker {
    EndpointBreaker::new(cfg.clone(), gate.clone())
}

fn fail(b: &EndpointBreaker, n: usize) {
    for _ in 0..n {
        b.record(false, Instant::now());
    }
}

/// Waits out the current ejection, takes the probe and fails it; returns the ejection length.
async fn fail_probe(b: &EndpointBreaker) -> Duration {
    let State::Open { until } = b.state(Instant::now()) else {
        panic!("expected open, got {:?}", b.state(Instant::now()));
    };
    let left = until - Instant::now();
    advance(left).await;
    assert_eq!(b.try_acquire(Instant::now()), Admit::Probe);
    b.record(false, Instant::now());
    let State::Open { until } = b.state(Instant::now()) else {
        panic!("a failed probe must re-eject");
    };
    until - Instant::now()
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_eject_for_the_base_time() {
    let cfg = config(Some(5), None);
    let gate = cfg.gate(4);
    let b = breaker(&cfg, &gate);
    fail(&b, 4);
    assert_eq!(b.try_acquire(Instant::now()), Admit::Yes);
    fail(&b, 1);
    let start = Instant::now();
    assert_eq!(
        b.state(start),
        State::Open {
            until: start + 30 * SEC
        }
    );
    assert_eq!(gate.ejected(), 1);
    advance(30 * SEC - Duration::from_nanos(1)).await;
    assert_eq!(b.try_acquire(Instant::now()), Admit::No);
    advance(Duration::from_nanos(1)).await;
    assert_eq!(b.state(Instant::now()), State::HalfOpen);
    assert_eq!(b.try_acquire(Instant::now()), Admit::Probe);
    assert_eq!(
        b.try_acquire(Instant::now()),
        Admit::No,
        "one probe at a time"
    );
    b.record(true, Instant::now());
    assert_eq!(b.state(Instant::now()), State::Closed);
    assert_eq!(b.try_acquire(Instant::now()), Admit::Yes);
    assert_eq!(gate.ejected(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_success_resets_the_run_of_failures() {
    let cfg = config(Some(3), None);
    let gate = cfg.gate(2);
    let b = breaker(&cfg, &gate);
    fail(&b, 2);
    b.record(true, Instant::now());
    fail(&b, 2);
    assert_eq!(b.state(Instant::now()), State::Closed);
    assert_eq!(b.snapshot(Instant::now()).consecutive_failures, 2);
    fail(&b, 1);
    assert!(matches!(b.state(Instant::now()), State::Open { .. }));
}

#[tokio::test(start_paused = true)]
async fn failed_probes_double_the_ejection_up_to_max_and_success_resets() {
    let cfg = config(Some(1), None);
    let gate = cfg.gate(2);
    let b = breaker(&cfg, &gate);
    fail(&b, 1);
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(fail_probe(&b).await.as_secs());
    }
    assert_eq!(seen, [60, 120, 240, 300, 300]);
    assert_eq!(b.snapshot(Instant::now()).ejections, 6);
    assert_eq!(gate.ejected(), 1, "re-ejection keeps the one slot");

    advance(300 * SEC).await;
    assert_eq!(b.try_acquire(Instant::now()), Admit::Probe);
    b.record(true, Instant::now());
    fail(&b, 1);
    let State::Open { until } = b.state(Instant::now()) else {
        panic!("expected open");
    };
    assert_eq!(
        until - Instant::now(),
        30 * SEC,
        "k reset by the successful probe"
    );
}

#[tokio::test(start_paused = true)]
async fn reports_while_open_are_ignored() {
    let cfg = config(Some(1), None);
    let gate = cfg.gate(2);
    let b = breaker(&cfg, &gate);
    fail(&b, 1);
    b.record(true, Instant::now());
    assert!(matches!(b.state(Instant::now()), State::Open { .. }));
    advance(30 * SEC).await;
    b.record(true, Instant::now());
    assert_eq!(
        b.state(Instant::now()),
        State::HalfOpen,
        "no probe was granted yet"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unreported_probe_expires_after_the_base_ejection() {
    let cfg = config(Some(1), None);
    let gate = cfg.gate(2);
    let b = breaker(&cfg, &gate);
    fail(&b, 1);
    advance(30 * SEC).await;
    assert_eq!(b.try_acquire(Instant::now()), Admit::Probe);
    advance(29 * SEC).await;
    assert_eq!(b.try_acquire(Instant::now()), Admit::No);
    advance(SEC).await;
    assert_eq!(b.try_acquire(Instant::now()), Admit::Probe);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_trips_only_past_min_requests() {
    let rate = FailureRate {
        percent: 50,
        min_requests: 20,
        window: 10 * SEC,
    };
    let cfg = config(None, Some(rate));
    let gate = cfg.gate(2);
    let b = breaker(&cfg, &gate);
    for i in 0..19 {
        b.record(i % 2 == 0, Instant::now());
    }
    // 19 requests, 9 failures: below min_requests.
    assert_eq!(b.state(Instant::now()), State::Closed);
    b.record(false, Instant::now());
    // 20 requests, 10 failures = 50%.
    assert!(matches!(b.state(Instant::now()), State::Open { .. }));
}

#[tokio::test(start_paused = true)]
async fn failure_rate_forgets_failures_older_than_the_window() {
    let rate = FailureRate {
        percent: 50,
        min_requests: 10,
        window: 10 * SEC,
    };
    let cfg = config(None, Some(rate));
    let gate = cfg.gate(2);
    let b = breaker(&cfg, &gate);
    fail(&b, 9);
    advance(10 * SEC).await;
    for _ in 0..9 {
        b.record(true, Instant::now());
    }
    b.record(false, Instant::now());
    // Had the old 9 failures still counted: 10 of 19 failed and it would have opened.
    assert_eq!(b.state(Instant::now()), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn gate_caps_ejections_at_max_percent() {
    let cfg = config(Some(1), None);
    let gate = cfg.gate(4);
    let bs: Vec<_> = (0..4).map(|_| breaker(&cfg, &gate)).collect();
    for b in &bs {
        fail(b, 1);
    }
    let open = bs
        .iter()
        .filter(|b| b.snapshot(Instant::now()).state == "open")
        .count();
    assert_eq!(open, 2);
    assert_eq!(gate.ejected(), 2);
    assert_eq!(
        bs[2].try_acquire(Instant::now()),
        Admit::Yes,
        "refused stays closed"
    );
    assert_eq!(bs[2].snapshot(Instant::now()).consecutive_failures, 1);

    advance(30 * SEC).await;
    assert_eq!(bs[0].try_acquire(Instant::now()), Admit::Probe);
    bs[0].record(true, Instant::now());
    fail(&bs[2], 1);
    assert_eq!(bs[2].snapshot(Instant::now()).state, "open");
}

#[test]
fn at_least_one_endpoint_may_always_be_ejected() {
    assert_eq!(EjectionGate::new(1, 50).limit(), 1);
    assert_eq!(EjectionGate::new(3, 0).limit(), 1);
    assert_eq!(EjectionGate::new(0, 50).limit(), 1);
    assert_eq!(EjectionGate::new(10, 50).limit(), 5);
    assert_eq!(EjectionGate::new(10, 250).limit(), 10);
    let gate = EjectionGate::new(10, 50);
    gate.set_total(4);
    assert_eq!(gate.limit(), 2);
    gate.release();
    assert_eq!(gate.ejected(), 0, "release never underflows");
}

#[tokio::test(start_paused = true)]
async fn dropping_an_ejected_endpoint_frees_its_slot() {
    let cfg = config(Some(1), None);
    let gate = cfg.gate(2);
    let b = breaker(&cfg, &gate);
    fail(&b, 1);
    assert_eq!(gate.ejected(), 1);
    drop(b);
    assert_eq!(gate.ejected(), 0);
    let closed = breaker(&cfg, &gate);
    drop(closed);
    assert_eq!(gate.ejected(), 0);
}

#[tokio::test(start_paused = true)]
async fn snapshot_names_each_state() {
    let cfg = config(Some(1), None);
    let gate = cfg.gate(2);
    let b = breaker(&cfg, &gate);
    assert_eq!(b.snapshot(Instant::now()).state, "closed");
    fail(&b, 1);
    let view = b.snapshot(Instant::now());
    assert_eq!(
        view,
        BreakerView {
            state: "open",
            ejections: 1,
            consecutive_ejections: 1,
            consecutive_failures: 1
        }
    );
    advance(30 * SEC).await;
    assert_eq!(b.snapshot(Instant::now()).state, "half-open");
    assert_eq!(b.try_acquire(Instant::now()), Admit::Probe);
    assert_eq!(b.snapshot(Instant::now()).state, "half-open");
}

#[tokio::test(start_paused = true)]
async fn exactly_one_of_many_threads_gets_the_probe() {
    let cfg = config(Some(1), None);
    let gate = cfg.gate(2);
    let b = breaker(&cfg, &gate);
    fail(&b, 1);
    advance(30 * SEC).await;
    let now = Instant::now();
    let probes: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let b = &b;
                s.spawn(move || {
                    (0..1000)
                        .filter(|_| b.try_acquire(now) == Admit::Probe)
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).sum()
    });
    assert_eq!(probes, 1);
}
