//! ServicePolicy's resilience sections: timeouts, retries, circuit breaker, bulkhead, rate
//! limit and fault injection.

use std::collections::HashSet;

use super::findings::Findings;
use crate::model::*;

/// Upper bound on retries: beyond this a retry storm is a certainty, not a risk.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;

pub(super) fn timeouts(f: &mut Findings, t: &Timeouts) {
    let fields = [
        ("request", t.request),
        ("perTry", t.per_try),
        ("connect", t.connect),
        ("idle", t.idle),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            f.positive(format_args!("spec.timeouts.{name}"), value);
        }
    }
    if let (Some(per_try), Some(request)) = (t.per_try, t.request) {
        f.not_above("spec.timeouts.perTry", per_try, "request", request);
    }
}

pub(super) fn retries(f: &mut Findings, r: &Retries) {
    if r.attempts > MAX_RETRY_ATTEMPTS {
        f.add(
            "spec.retries.attempts",
            format!("must be 0..={MAX_RETRY_ATTEMPTS}, got {}", r.attempts),
        );
    }
    if r.attempts > 0 && r.on.is_empty() {
        f.add(
            "spec.retries.on",
            "must list at least one retry condition when attempts > 0",
        );
    }
    let mut seen = HashSet::new();
    for (i, on) in r.on.iter().enumerate() {
        if !seen.insert(on) {
            f.add(
                format_args!("spec.retries.on[{i}]"),
                format!("{on} is listed twice"),
            );
        }
    }
    if let Some(b) = &r.backoff {
        f.positive("spec.retries.backoff.base", b.base);
        f.positive("spec.retries.backoff.max", b.max);
        f.not_above("spec.retries.backoff.base", b.base, "max", b.max);
    }
    if let Some(b) = &r.budget {
        f.percent("spec.retries.budget.percent", b.percent, 0);
    }
}

pub(super) fn circuit_breaker(f: &mut Findings, cb: &CircuitBreaker) {
    if cb.consecutive_failures.is_none() && cb.failure_rate.is_none() {
        f.add(
            "spec.circuitBreaker",
            "set consecutiveFailures or failureRate (or both)",
        );
    }
    if let Some(n) = cb.consecutive_failures {
        f.at_least_one("spec.circuitBreaker.consecutiveFailures", n);
    }
    if let Some(fr) = &cb.failure_rate {
        // 0% would eject every endpoint that has seen minRequests requests.
        f.percent("spec.circuitBreaker.failureRate.percent", fr.percent, 1);
        f.positive("spec.circuitBreaker.failureRate.window", fr.window);
    }
    if let Some(e) = &cb.ejection {
        f.positive("spec.circuitBreaker.ejection.base", e.base);
        f.positive("spec.circuitBreaker.ejection.max", e.max);
        f.not_above("spec.circuitBreaker.ejection.base", e.base, "max", e.max);
        f.percent("spec.circuitBreaker.ejection.maxPercent", e.max_percent, 0);
    }
}

pub(super) fn bulkhead(f: &mut Findings, b: &Bulkhead) {
    f.at_least_one("spec.bulkhead.maxConcurrent", b.max_concurrent);
    f.positive("spec.bulkhead.pendingTimeout", b.pending_timeout);
}

pub(super) fn rate_limit(f: &mut Findings, rl: &RateLimit) {
    f.at_least_one("spec.rateLimit.requestsPerSecond", rl.requests_per_second);
}

pub(super) fn fault(f: &mut Findings, fault: &Fault) {
    if let Some(d) = &fault.delay {
        f.percent("spec.fault.delay.percent", d.percent, 0);
    }
    if let Some(a) = &fault.abort {
        f.percent("spec.fault.abort.percent", a.percent, 0);
        if !(200..=599).contains(&a.status) {
            f.add(
                "spec.fault.abort.status",
                format!("must be a status code 200..=599, got {}", a.status),
            );
        }
    }
}
