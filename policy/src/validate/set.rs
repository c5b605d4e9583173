//! Checks across documents: duplicates, one ServicePolicy per service, one MeshConfig.

use std::collections::BTreeMap;

use crate::error::PolicyError;
use crate::model::*;

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
