//! Semantic rules: everything serde cannot express. Each check records an error and carries on,
//! so one `weirctl apply` shows every problem in a document instead of one per attempt.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Display;

use crate::duration::Duration;
use crate::error::PolicyError;
use crate::model::*;

/// Upper bound on retries: beyond this a retry storm is a certainty, not a risk.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;

/// Errors as (field path, reason); the caller adds source and document.
#[derive(Default)]
pub(crate) struct Findings(pub(crate) Vec<(String, String)>);

impl Findings {
    fn add(&mut self, path: impl Display, reason: impl Into<String>) {
        self.0.push((path.to_string(), reason.into()));
    }

    fn check(&mut self, path: impl Display, result: Result<(), String>) {
        if let Err(reason) = result {
            self.add(path, reason);
        }
    }

    fn percent(&mut self, path: impl Display, value: u32, min: u32) {
        if !(min..=100).contains(&value) {
            self.add(path, format!("must be {min}..=100, got {value}"));
        }
    }

    fn positive(&mut self, path: impl Display, value: Duration) {
        if value.is_zero() {
            self.add(path, "must be greater than 0s");
        }
    }

    fn at_least_one(&mut self, path: impl Display, value: u32) {
        if value == 0 {
            self.add(path, "must be at least 1, got 0");
        }
    }

    /// `lower` (at `lower_path`) must not exceed `upper`, named `upper_name` in the message.
    fn not_above(
        &mut self,
        lower_path: impl Display,
        lower: Duration,
        upper_name: &str,
        upper: Duration,
    ) {
        if lower > upper {
            self.add(
                lower_path,
                format!("must not exceed {upper_name} ({upper}), got {lower}"),
            );
        }
    }
}

/// Checks one decoded document in isolation.
pub(crate) fn document(doc: &Document) -> Findings {
    let mut f = Findings::default();
    let md = doc.metadata();
    f.check("metadata.name", dns_label(&md.name));
    if !matches!(doc, Document::MeshConfig(_)) {
        f.check("metadata.namespace", dns_label(&md.namespace));
    }
    match doc {
        Document::MeshConfig(d) => mesh_config(&mut f, &d.spec),
        Document::ServicePolicy(d) => service_policy(&mut f, &d.spec),
        Document::Endpoints(d) => endpoints(&mut f, &d.spec),
    }
    f
}

fn mesh_config(f: &mut Findings, spec: &MeshConfigSpec) {
    let sampling = spec.tracing.sampling;
    if !(0.0..=1.0).contains(&sampling) {
        f.add(
            "spec.tracing.sampling",
            format!("must be 0.0..=1.0, got {sampling}"),
        );
    }
}

fn service_policy(f: &mut Findings, spec: &ServicePolicySpec) {
    f.check("spec.service", dns_label(&spec.service));
    if let Some(t) = &spec.timeouts {
        timeouts(f, t);
    }
    if let Some(r) = &spec.retries {
        retries(f, r);
    }
    if let Some(cb) = &spec.circuit_breaker {
        circuit_breaker(f, cb);
    }
    if let Some(b) = &spec.bulkhead {
        f.at_least_one("spec.bulkhead.maxConcurrent", b.max_concurrent);
        f.positive("spec.bulkhead.pendingTimeout", b.pending_timeout);
    }
    if let Some(rl) = &spec.rate_limit {
        f.at_least_one("spec.rateLimit.requestsPerSecond", rl.requests_per_second);
    }
    if let Some(fault) = &spec.fault {
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
    routes(f, &spec.routes);
    if let Some(a) = &spec.authorization {
        authorization(f, a);
    }
}

fn timeouts(f: &mut Findings, t: &Timeouts) {
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

fn retries(f: &mut Findings, r: &Retries) {
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

fn circuit_breaker(f: &mut Findings, cb: &CircuitBreaker) {
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

fn routes(f: &mut Findings, routes: &[Route]) {
    let mut names = HashSet::new();
    for (i, route) in routes.iter().enumerate() {
        let at = format!("spec.routes[{i}]");
        f.check(format_args!("{at}.name"), dns_label(&route.name));
        if !names.insert(route.name.as_str()) {
            f.add(
                format_args!("{at}.name"),
                format!("route name {:?} is used twice", route.name),
            );
        }
        if let Some(m) = &route.r#match {
            route_match(f, &format!("{at}.match"), m);
        }
        if route.backends.is_empty() {
            f.add(
                format_args!("{at}.backends"),
                "must list at least one backend",
            );
            continue;
        }
        let mut services = HashSet::new();
        for (j, backend) in route.backends.iter().enumerate() {
            f.check(
                format_args!("{at}.backends[{j}].service"),
                dns_label(&backend.service),
            );
            if !services.insert(backend.service.as_str()) {
                f.add(
                    format_args!("{at}.backends[{j}].service"),
                    format!(
                        "backend {:?} is listed twice in this route",
                        backend.service
                    ),
                );
            }
        }
        if route.backends.iter().all(|b| b.weight == 0) {
            f.add(
                format_args!("{at}.backends"),
                "weights sum to 0; at least one backend needs a weight > 0",
            );
        }
    }
}

fn route_match(f: &mut Findings, at: &str, m: &RouteMatch) {
    if m.path_exact.is_some() && m.path_prefix.is_some() {
        f.add(at, "set pathExact or pathPrefix, not both");
    }
    for (name, path) in [("pathExact", &m.path_exact), ("pathPrefix", &m.path_prefix)] {
        if let Some(path) = path
            && !path.starts_with('/')
        {
            f.add(
                format_args!("{at}.{name}"),
                format!("must start with '/', got {path:?}"),
            );
        }
    }
    if let Some(method) = &m.method
        && (method.is_empty()
            || !method
                .bytes()
                .all(|b| is_tchar(b) && !b.is_ascii_lowercase()))
    {
        f.add(
            format_args!("{at}.method"),
            format!("must be an uppercase HTTP method such as GET or POST, got {method:?}"),
        );
    }
    for (name, value) in &m.headers {
        if name.is_empty() || !name.bytes().all(|b| is_tchar(b) && !b.is_ascii_uppercase()) {
            f.add(
                format_args!("{at}.headers"),
                format!("header names must be lowercase HTTP tokens, got {name:?}"),
            );
        }
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            f.add(
                format_args!("{at}.headers.{name}"),
                "header values must not contain control characters",
            );
        }
    }
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn authorization(f: &mut Findings, a: &Authorization) {
    match a.mode {
        AuthzMode::AllowAll if !a.allow.is_empty() => f.add(
            "spec.authorization.allow",
            format!(
                "must be empty when mode is allowAll (got {} entries); use mode: allowList to restrict callers",
                a.allow.len()
            ),
        ),
        AuthzMode::AllowAll => {}
        AuthzMode::AllowList => {
            for (i, pattern) in a.allow.iter().enumerate() {
                f.check(format_args!("spec.authorization.allow[{i}]"), spiffe_pattern(pattern));
            }
        }
    }
}

fn endpoints(f: &mut Findings, spec: &EndpointsSpec) {
    // A service with cluster IPs may have no proxy registered yet: its callers then get
    // `no-endpoints` instead of a pass-through to a virtual IP nothing would answer for.
    if spec.addresses.is_empty() && spec.cluster_ips.is_empty() {
        f.add(
            "spec.addresses",
            "must list at least one ip:port address (or clusterIPs)",
        );
    }
    let mut seen = HashSet::new();
    for (i, addr) in spec.addresses.iter().enumerate() {
        if addr.port() == 0 {
            f.add(
                format_args!("spec.addresses[{i}]"),
                format!("port must not be 0, got {addr}"),
            );
        }
        if !seen.insert(addr) {
            f.add(
                format_args!("spec.addresses[{i}]"),
                format!("{addr} is listed twice"),
            );
        }
    }
    if let Some(id) = &spec.identity {
        f.check("spec.identity", spiffe_id(id));
    }
    let mut seen_ips = HashSet::new();
    for (i, ip) in spec.cluster_ips.iter().enumerate() {
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
            f.add(
                format_args!("spec.clusterIPs[{i}]"),
                format!("must be a routable unicast address, got {ip}"),
            );
        }
        if !seen_ips.insert(ip) {
            f.add(
                format_args!("spec.clusterIPs[{i}]"),
                format!("{ip} is listed twice"),
            );
        }
    }
    if !spec.ports.is_empty() && spec.cluster_ips.is_empty() {
        f.add(
            "spec.ports",
            "ports describe clusterIPs; list clusterIPs too",
        );
    }
    let mut seen_ports = HashSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        if p.port == 0 {
            f.add(
                format_args!("spec.ports[{i}].port"),
                "must be 1..=65535, got 0",
            );
        }
        if p.target_port == Some(0) {
            f.add(
                format_args!("spec.ports[{i}].targetPort"),
                "must be 1..=65535, got 0",
            );
        }
        if !seen_ports.insert(p.port) {
            f.add(
                format_args!("spec.ports[{i}].port"),
                format!("port {} is listed twice", p.port),
            );
        }
    }
}

// === names and identities ===

/// DNS-1123 label: what Kubernetes allows for namespaces and service names.
pub fn dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters, \
             starting and ending with a letter or digit), got {s:?}"
        ))
    }
}

const SPIFFE_FORM: &str = "spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>";

/// A workload identity: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
pub fn spiffe_id(id: &str) -> Result<(), String> {
    let bad = || format!("must be a SPIFFE id {SPIFFE_FORM}, got {id:?}");
    let rest = id.strip_prefix("spiffe://").ok_or_else(bad)?;
    let (trust_domain, path) = rest.split_once('/').ok_or_else(bad)?;
    match path.split('/').collect::<Vec<_>>()[..] {
        ["ns", ns, "sa", sa]
            if trust_domain_ok(trust_domain) && dns_label(ns).is_ok() && service_account_ok(sa) =>
        {
            Ok(())
        }
        _ => Err(bad()),
    }
}

/// An allow-list entry: a SPIFFE id, or `spiffe://td/ns/<ns>/*` (also `…/ns/<ns>/sa/*`) for a
/// namespace, or `spiffe://td/*` for a whole trust domain.
fn spiffe_pattern(pattern: &str) -> Result<(), String> {
    let Some(prefix) = pattern.strip_suffix("/*") else {
        return spiffe_id(pattern);
    };
    let bad = || {
        format!(
            "must be a SPIFFE id {SPIFFE_FORM}, or end in /* after a trust domain or namespace \
             (spiffe://weir.local/ns/shop/*), got {pattern:?}"
        )
    };
    let rest = prefix.strip_prefix("spiffe://").ok_or_else(bad)?;
    let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path_ok = match path.split('/').collect::<Vec<_>>()[..] {
        [""] => true,
        // `…/ns/shop/sa/*` reads naturally and means the same as `…/ns/shop/*`.
        ["ns", ns] | ["ns", ns, "sa"] => dns_label(ns).is_ok(),
        _ => false,
    };
    if trust_domain_ok(trust_domain) && path_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// SPIFFE trust domains: lowercase letters, digits, '.', '-' and '_'.
fn trust_domain_ok(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Kubernetes service-account names are DNS subdomains (labels joined by '.').
fn service_account_ok(sa: &str) -> bool {
    sa.len() <= 253 && sa.split('.').all(|label| dns_label(label).is_ok())
}

impl Authorization {
    /// Whether a peer with this SPIFFE id may call. Assumes the policy passed validation.
    pub fn allows(&self, peer_id: &str) -> bool {
        match self.mode {
            AuthzMode::AllowAll => true,
            AuthzMode::AllowList => {
                self.allow
                    .iter()
                    .any(|pattern| match pattern.strip_suffix('*') {
                        Some(prefix) => peer_id.starts_with(prefix),
                        None => peer_id == pattern,
                    })
            }
        }
    }
}

// === across documents ===

/// A document with where it came from, for cross-document errors.
pub(crate) struct Located<'a> {
    pub source: &'a str,
    pub doc: &'a Document,
}

pub(crate) fn set(docs: &[Located<'_>]) -> Vec<PolicyError> {
    let mut errors = Vec::new();
    let mut first_seen: BTreeMap<String, &str> = BTreeMap::new();
    let mut mesh_config: Option<(String, &str)> = None;
    // One ServicePolicy per service: two would leave the proxy to guess whose timeouts and
    // routes apply.
    let mut governed: BTreeMap<(String, String), (String, &str)> = BTreeMap::new();
    for Located { source, doc } in docs {
        let key = doc.key();
        let error = |path: &str, reason: String| PolicyError {
            source: source.to_string(),
            document: Some(key.clone()),
            path: path.to_string(),
            reason,
        };
        if let Some(first) = first_seen.get(&key) {
            errors.push(error(
                "metadata.name",
                format!("duplicate: {key} is already defined{}", from(first)),
            ));
            continue;
        }
        first_seen.insert(key.clone(), source);
        if let Document::ServicePolicy(p) = doc {
            let service = (p.metadata.namespace.clone(), p.spec.service.clone());
            match governed.get(&service) {
                Some((other, other_source)) => errors.push(error(
                    "spec.service",
                    format!(
                        "service {}/{} is already governed by {other}{}",
                        service.0,
                        service.1,
                        from(other_source)
                    ),
                )),
                None => {
                    governed.insert(service, (key.clone(), source));
                }
            }
        }
        if let Document::MeshConfig(_) = doc {
            match &mesh_config {
                Some((other, other_source)) => errors.push(error(
                    "",
                    format!(
                        "only one MeshConfig is allowed; {other} is already defined{}",
                        from(other_source)
                    ),
                )),
                None => mesh_config = Some((key.clone(), source)),
            }
        }
    }
    errors
}

fn from(source: &str) -> String {
    if source.is_empty() {
        String::new()
    } else {
        format!(" in {source}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "payments", "payments-v2", "x1", &"a".repeat(63)] {
            assert_eq!(dns_label(ok), Ok(()), "{ok}");
        }
        for bad in ["", "-a", "a-", "Pay", "pay_ments", "a.b", &"a".repeat(64)] {
            assert!(dns_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spiffe_ids_and_patterns() {
        assert_eq!(spiffe_id("spiffe://weir.local/ns/shop/sa/orders"), Ok(()));
        assert_eq!(
            spiffe_id("spiffe://weir.local/ns/shop/sa/orders.v1"),
            Ok(())
        );
        for bad in [
            "spiffe://weir.local/ns/shop",
            "spiffe://weir.local/ns/shop/sa/",
            "spiffe://Weir/ns/shop/sa/orders",
            "http://weir.local/ns/shop/sa/orders",
            "spiffe://weir.local/ns/shop/sa/orders/extra",
            "spiffe:///ns/shop/sa/orders",
        ] {
            assert!(spiffe_id(bad).is_err(), "{bad}");
        }
        for ok in [
            "spiffe://weir.local/ns/shop/*",
            "spiffe://weir.local/ns/shop/sa/*",
            "spiffe://weir.local/*",
            "spiffe://weir.local/ns/a/sa/b",
        ] {
            assert_eq!(spiffe_pattern(ok), Ok(()), "{ok}");
        }
        for bad in [
            "spiffe://weir.local/ns/*",
            "spiffe://weir.local/ns/shop/sa/*x",
            "*",
            "spiffe:///*",
        ] {
            assert!(spiffe_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn authorization_allows() {
        let a = Authorization {
            mode: AuthzMode::AllowList,
            allow: vec![
                "spiffe://weir.local/ns/shop/*".into(),
                "spiffe://weir.local/ns/ops/sa/cron".into(),
            ],
        };
        assert!(a.allows("spiffe://weir.local/ns/shop/sa/orders"));
        assert!(a.allows("spiffe://weir.local/ns/ops/sa/cron"));
        assert!(!a.allows("spiffe://weir.local/ns/ops/sa/cron2"));
        assert!(!a.allows("spiffe://weir.local/ns/shopping/sa/x"));
        assert!(!a.allows("spiffe://other/ns/shop/sa/orders"));
        let all = Authorization {
            mode: AuthzMode::AllowAll,
            allow: vec![],
        };
        assert!(all.allows("spiffe://anything/ns/a/sa/b"));
    }
}
