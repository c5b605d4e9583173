//! ServicePolicy: how callers treat one service (timeouts, retries, breaker, limits, faults,
//! authorization). Routes live in `routes`.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::routes::Route;
use crate::duration::Duration;
use crate::meta::Metadata;
use crate::wire::{Wire, impl_kind};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Wire<ServicePolicySpec>", into = "Wire<ServicePolicySpec>")]
pub struct ServicePolicy {
    pub metadata: Metadata,
    pub spec: ServicePolicySpec,
}

impl_kind!(
    ServicePolicy,
    ServicePolicySpec,
    "ServicePolicy",
    |metadata, spec| {
        let spec = spec.ok_or("missing field `spec`")?;
        Ok(ServicePolicy { metadata, spec })
    }
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePolicySpec {
    /// The callee this policy governs.
    pub service: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulkhead: Option<Bulkhead>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// First match wins; a route without `match` matches everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    /// Services this one calls (`name` in its namespace, or `name.namespace`): their policies
    /// and endpoints reach its proxies before the first call, so that call never waits for
    /// discovery.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Timeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retries {
    /// Retries after the first try (so 2 means up to 3 tries).
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<RetryOn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudget>,
    /// POST/PATCH are never retried unless true.
    #[serde(default)]
    pub non_idempotent: bool,
}

/// A retry condition. Written as `connect-failure`, `5xx`, … or a status code (`"503"` or `503`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOn {
    ConnectFailure,
    RefusedStream,
    Reset,
    Unavailable,
    /// Any 5xx status.
    Status5xx,
    /// 502, 503 and 504.
    GatewayError,
    /// One explicit status code, 100..=599.
    Status(u16),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries may add at most this percentage of the request rate…
    pub percent: u32,
    /// …plus this many retries per second.
    #[serde(default)]
    pub min_per_second: u32,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CircuitBreaker {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<FailureRate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejection: Option<Ejection>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FailureRate {
    pub percent: u32,
    pub min_requests: u32,
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ejection {
    pub base: Duration,
    pub max: Duration,
    pub max_percent: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Bulkhead {
    pub max_concurrent: u32,
    /// Requests that may wait for a slot; none by default (a full bulkhead answers at once).
    #[serde(default)]
    pub max_pending: u32,
    /// How long a pending request waits; only matters with `maxPending` above 0.
    #[serde(default = "default_pending_timeout")]
    pub pending_timeout: Duration,
}

/// Long enough to ride out a burst, short against the usual request timeouts.
pub const DEFAULT_PENDING_TIMEOUT: Duration = Duration(std::time::Duration::from_secs(1));

fn default_pending_timeout() -> Duration {
    DEFAULT_PENDING_TIMEOUT
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimit {
    pub requests_per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultDelay {
    pub percent: u32,
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultAbort {
    pub percent: u32,
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Authorization {
    pub mode: AuthzMode,
    /// SPIFFE ids; `…/ns/shop/*` or `spiffe://td/*` allow a whole namespace or trust domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AuthzMode {
    AllowList,
    AllowAll,
}

// === impl RetryOn ===

impl RetryOn {
    const NAMED: [(&'static str, RetryOn); 6] = [
        ("connect-failure", RetryOn::ConnectFailure),
        ("refused-stream", RetryOn::RefusedStream),
        ("reset", RetryOn::Reset),
        ("unavailable", RetryOn::Unavailable),
        ("5xx", RetryOn::Status5xx),
        ("gateway-error", RetryOn::GatewayError),
    ];

    fn from_status(code: u64) -> Result<Self, String> {
        match u16::try_from(code) {
            Ok(code @ 100..=599) => Ok(RetryOn::Status(code)),
            _ => Err(format!("status code must be 100..=599, got {code}")),
        }
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let RetryOn::Status(code) = self {
            return write!(f, "{code}");
        }
        let name = RetryOn::NAMED
            .iter()
            .find(|(_, v)| v == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Status codes stay strings, as in the design example (`"503"`).
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RetryOnVisitor;

        impl Visitor<'_> for RetryOnVisitor {
            type Value = RetryOn;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a retry condition (")?;
                for (name, _) in RetryOn::NAMED {
                    write!(f, "{name}, ")?;
                }
                f.write_str("or a status code such as 503)")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RetryOn, E> {
                if let Some((_, on)) = RetryOn::NAMED.iter().find(|(name, _)| *name == v) {
                    return Ok(*on);
                }
                match v.parse::<u64>() {
                    Ok(code) => RetryOn::from_status(code).map_err(E::custom),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RetryOn, E> {
                RetryOn::from_status(v).map_err(E::custom)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RetryOn, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("status code must be 100..=599, got {v}"))),
                }
            }
        }

        deserializer.deserialize_any(RetryOnVisitor)
    }
}
