//! A ServicePolicy compiled for the caller's side, with the state that must outlive config
//! swaps (bulkhead slots, retry budget, ejection gates) kept while its settings are unchanged.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use weir_policy::ServicePolicySpec;
use weir_resilience::{
    Backoff, BreakerConfig, Bulkhead, EjectionGate, FailureRate, RateLimiter, RetryBudget,
};

use super::fault::Fault;
use super::retry::{RetryConditions, RetryPolicy};

/// Defaults for parts a policy leaves out (Envoy's outlier-detection defaults, roughly).
const DEFAULT_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(25), Duration::from_millis(250));
const DEFAULT_EJECTION_BASE: Duration = Duration::from_secs(30);
const DEFAULT_EJECTION_MAX: Duration = Duration::from_secs(300);
const DEFAULT_MAX_EJECTION_PERCENT: u32 = 50;

/// How this proxy calls one service.
#[derive(Debug, Default)]
pub struct CallPolicy {
    pub request_timeout: Option<Duration>,
    pub per_try_timeout: Option<Duration>,
    /// Limit on getting a connection to the endpoint's proxy (TCP, TLS, HTTP/2 handshake)
    /// when none is open; running out is a `connect-failure`, which retries may cover.
    pub connect_timeout: Option<Duration>,
    /// How long a try may go without hearing from the callee before its response head; with
    /// `perTry` the smaller wins. (Silence within a streaming body is not bounded yet.)
    pub idle_timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub bulkhead: Option<Arc<Bulkhead>>,
    /// The breaker settings for this service's endpoints, with the spec they came from.
    pub breaker: Option<(weir_policy::CircuitBreaker, Arc<BreakerConfig>)>,
    pub fault: Option<Fault>,
}

impl CallPolicy {
    /// Nothing configured: calls go straight through, as before any policy.
    /// The limit on one try's wait for its response head.
    pub fn try_timeout(&self) -> Option<Duration> {
        match (self.per_try_timeout, self.idle_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn is_plain(&self) -> bool {
        self.request_timeout.is_none()
            && self.per_try_timeout.is_none()
            && self.connect_timeout.is_none()
            && self.idle_timeout.is_none()
            && self.retry.is_none()
            && self.bulkhead.is_none()
            && self.breaker.is_none()
            && self.fault.is_none()
    }
}

/// Stateful parts shared across snapshots, keyed by service and the spec that made them.
#[derive(Default)]
pub struct PolicyCache {
    bulkheads: Mutex<HashMap<ServiceKey, (weir_policy::Bulkhead, Weak<Bulkhead>)>>,
    budgets: Mutex<HashMap<ServiceKey, (weir_policy::RetryBudget, Weak<RetryBudget>)>>,
    gates: Mutex<HashMap<ServiceKey, (u32, Weak<EjectionGate>)>>,
    rate_limits: Mutex<HashMap<ServiceKey, (weir_policy::RateLimit, Weak<RateLimiter>)>>,
}

type ServiceKey = (String, String);

impl PolicyCache {
    pub fn compile(&self, service: &str, namespace: &str, spec: &ServicePolicySpec) -> CallPolicy {
        let key = (service.to_owned(), namespace.to_owned());
        let timeouts = spec.timeouts.as_ref();
        let retry = spec
            .retries
            .as_ref()
            .filter(|r| r.attempts > 0)
            .map(|r| RetryPolicy {
                attempts: r.attempts,
                on: RetryConditions::new(&r.on),
                backoff: r
                    .backoff
                    .as_ref()
                    .map_or(DEFAULT_BACKOFF, |b| Backoff::new(b.base.0, b.max.0)),
                budget: r.budget.as_ref().map(|b| {
                    reuse(&self.budgets, &key, b, || {
                        RetryBudget::new(b.percent, b.min_per_second)
                    })
                }),
                non_idempotent: r.non_idempotent,
            });
        let bulkhead = spec.bulkhead.as_ref().map(|b| {
            reuse(&self.bulkheads, &key, b, || {
                Bulkhead::new(
                    b.max_concurrent as usize,
                    b.max_pending as usize,
                    b.pending_timeout.0,
                )
            })
        });
        let breaker = spec
            .circuit_breaker
            .as_ref()
            .filter(|b| b.consecutive_failures.is_some() || b.failure_rate.is_some())
            .map(|b| {
                let ejection = b.ejection.as_ref();
                let config = BreakerConfig {
                    consecutive_failures: b.consecutive_failures,
                    failure_rate: b.failure_rate.as_ref().map(|f| FailureRate {
                        percent: f.percent,
                        min_requests: f.min_requests,
                        window: f.window.0,
                    }),
                    ejection_base: ejection.map_or(DEFAULT_EJECTION_BASE, |e| e.base.0),
                    ejection_max: ejection.map_or(DEFAULT_EJECTION_MAX, |e| e.max.0),
                    max_percent: ejection.map_or(DEFAULT_MAX_EJECTION_PERCENT, |e| e.max_percent),
                };
                (b.clone(), Arc::new(config))
            });
        CallPolicy {
            request_timeout: timeouts.and_then(|t| t.request.map(|d| d.0)),
            per_try_timeout: timeouts.and_then(|t| t.per_try.map(|d| d.0)),
            connect_timeout: timeouts.and_then(|t| t.connect.map(|d| d.0)),
            idle_timeout: timeouts.and_then(|t| t.idle.map(|d| d.0)),
            retry,
            bulkhead,
            breaker,
            fault: spec.fault.as_ref().and_then(Fault::compile),
        }
    }

    /// The callee-side token bucket of this proxy's own service; kept while its settings stay.
    pub fn rate_limit(
        &self,
        service: &str,
        namespace: &str,
        spec: &weir_policy::RateLimit,
    ) -> Option<Arc<RateLimiter>> {
        let key = (service.to_owned(), namespace.to_owned());
        let mut map = self.rate_limits.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, (_, w)| w.strong_count() > 0);
        if let Some((old, weak)) = map.get(&key)
            && old == spec
            && let Some(live) = weak.upgrade()
        {
            return Some(live);
        }
        // Validation refuses a zero rate or burst; should one get here, no limit beats a panic.
        let live = Arc::new(RateLimiter::new(spec.requests_per_second, spec.burst).ok()?);
        map.insert(key, (spec.clone(), Arc::downgrade(&live)));
        Some(live)
    }

    /// Forgets the gates no endpoint holds any more. Once per compile rather than in every
    /// [`PolicyCache::gate`] call, which a compile makes for every backend of every service.
    pub fn sweep_gates(&self) {
        let mut map = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, (_, w)| w.strong_count() > 0);
    }

    /// The ejection gate of one backend, sized to its endpoint count; kept across snapshots
    /// so ejections in force stay counted.
    pub fn gate(
        &self,
        service: &str,
        namespace: &str,
        max_percent: u32,
        total: usize,
    ) -> Arc<EjectionGate> {
        let key = (service.to_owned(), namespace.to_owned());
        let mut map = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((percent, weak)) = map.get(&key)
            && *percent == max_percent
            && let Some(gate) = weak.upgrade()
        {
            gate.set_total(total);
            return gate;
        }
        let gate = Arc::new(EjectionGate::new(total, max_percent));
        map.insert(key, (max_percent, Arc::downgrade(&gate)));
        gate
    }
}

/// The live object for `key` if it was made from the same spec, else a new one.
fn reuse<S: Clone + PartialEq, T>(
    map: &Mutex<HashMap<ServiceKey, (S, Weak<T>)>>,
    key: &ServiceKey,
    spec: &S,
    make: impl FnOnce() -> T,
) -> Arc<T> {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.retain(|_, (_, w)| w.strong_count() > 0);
    if let Some((old, weak)) = map.get(key)
        && old == spec
        && let Some(live) = weak.upgrade()
    {
        return live;
    }
    let live = Arc::new(make());
    map.insert(key.clone(), (spec.clone(), Arc::downgrade(&live)));
    live
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> ServicePolicySpec {
        let doc = weir_policy::parse_str(
            "t",
            &format!("apiVersion: weir/v1\nkind: ServicePolicy\nmetadata: {{name: p, namespace: shop}}\nspec:\n  service: p\n{yaml}"),
        )
        .expect("valid")
        .remove(0);
        match doc {
            weir_policy::Document::ServicePolicy(p) => p.spec,
            _ => unreachable!("a ServicePolicy"),
        }
    }

    #[test]
    fn state_survives_an_unchanged_policy_and_resets_on_a_change() {
        let cache = PolicyCache::default();
        let a = spec(
            "  bulkhead: { maxConcurrent: 2, maxPending: 1, pendingTimeout: 10ms }\n  retries: { attempts: 2, on: [\"503\"], budget: { percent: 20 } }\n",
        );
        let p1 = cache.compile("p", "shop", &a);
        let p2 = cache.compile("p", "shop", &a);
        let (b1, b2) = (
            p1.bulkhead.as_ref().expect("b"),
            p2.bulkhead.as_ref().expect("b"),
        );
        assert!(Arc::ptr_eq(b1, b2));
        let budget = |p: &CallPolicy| {
            p.retry
                .as_ref()
                .and_then(|r| r.budget.clone())
                .expect("budget")
        };
        assert!(Arc::ptr_eq(&budget(&p1), &budget(&p2)));
        let changed =
            spec("  bulkhead: { maxConcurrent: 3, maxPending: 1, pendingTimeout: 10ms }\n");
        let p3 = cache.compile("p", "shop", &changed);
        assert!(!Arc::ptr_eq(b1, p3.bulkhead.as_ref().expect("b")));
        assert!(p3.retry.is_none());
        assert!(cache.compile("p", "shop", &spec("")).is_plain());
    }
}
