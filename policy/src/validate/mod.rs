//! Semantic rules: everything serde cannot express. Each check records an error and carries on,
//! so one `weirctl apply` shows every problem in a document instead of one per attempt.

mod authorization;
mod endpoints;
mod findings;
mod names;
mod resilience;
mod routes;
mod set;

pub(crate) use findings::Findings;
pub use names::{dns_label, spiffe_id};
pub use resilience::MAX_RETRY_ATTEMPTS;
pub(crate) use set::{Located, set};

use crate::model::*;

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
        Document::Endpoints(d) => endpoints::endpoints(&mut f, &d.spec),
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

/// Sections in the spec's field order, so a document's errors always come out in that order.
fn service_policy(f: &mut Findings, spec: &ServicePolicySpec) {
    f.check("spec.service", dns_label(&spec.service));
    if let Some(t) = &spec.timeouts {
        resilience::timeouts(f, t);
    }
    if let Some(r) = &spec.retries {
        resilience::retries(f, r);
    }
    if let Some(cb) = &spec.circuit_breaker {
        resilience::circuit_breaker(f, cb);
    }
    if let Some(b) = &spec.bulkhead {
        resilience::bulkhead(f, b);
    }
    if let Some(rl) = &spec.rate_limit {
        resilience::rate_limit(f, rl);
    }
    if let Some(fault) = &spec.fault {
        resilience::fault(f, fault);
    }
    routes::routes(f, &spec.routes);
    if let Some(a) = &spec.authorization {
        authorization::authorization(f, a);
    }
    for (i, dep) in spec.dependencies.iter().enumerate() {
        f.check(format_args!("spec.dependencies[{i}]"), service_ref(dep));
    }
}

/// `name` or `name.namespace`, each a DNS label.
fn service_ref(s: &str) -> Result<(), String> {
    let mut parts = s.split('.');
    let (name, ns) = (parts.next().unwrap_or(""), parts.next());
    if parts.next().is_some() {
        return Err(format!("must be `name` or `name.namespace`, got {s:?}"));
    }
    dns_label(name)?;
    ns.map_or(Ok(()), dns_label)
}
