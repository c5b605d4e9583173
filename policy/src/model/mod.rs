//! The typed policy documents of design §6. Field names are the YAML names in snake_case.
//!
//! Serde derives here only check shape (types, unknown fields); ranges and cross-field rules live
//! in `validate` so that every violation in a document can be reported at once.

mod endpoints;
mod mesh;
mod routes;
mod service;

use serde::de;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::meta::Metadata;

pub use endpoints::*;
pub use mesh::*;
pub use routes::*;
pub use service::*;

/// The kinds this crate understands, in the order error messages list them.
pub const KINDS: [&str; 3] = ["MeshConfig", "ServicePolicy", "Endpoints"];

/// One YAML document of any kind. Serialises with `apiVersion` and `kind` like the input.
// Unboxed on purpose: documents are few and built at config time, and plain variants keep
// `Document::ServicePolicy(p)` patterns and construction simple for every caller.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    MeshConfig(MeshConfig),
    ServicePolicy(ServicePolicy),
    Endpoints(Endpoints),
}

impl Document {
    pub fn kind(&self) -> &'static str {
        match self {
            Document::MeshConfig(_) => "MeshConfig",
            Document::ServicePolicy(_) => "ServicePolicy",
            Document::Endpoints(_) => "Endpoints",
        }
    }

    pub fn metadata(&self) -> &Metadata {
        match self {
            Document::MeshConfig(d) => &d.metadata,
            Document::ServicePolicy(d) => &d.metadata,
            Document::Endpoints(d) => &d.metadata,
        }
    }

    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    /// Empty for MeshConfig, which is cluster-wide.
    pub fn namespace(&self) -> &str {
        &self.metadata().namespace
    }

    /// `ServicePolicy shop/payments`, or `MeshConfig default` for cluster-wide kinds.
    pub fn key(&self) -> String {
        document_key(self.kind(), self.namespace(), self.name())
    }
}

pub(crate) fn document_key(kind: &str, namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        format!("{kind} {name}")
    } else {
        format!("{kind} {namespace}/{name}")
    }
}

impl Serialize for Document {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Document::MeshConfig(d) => d.serialize(serializer),
            Document::ServicePolicy(d) => d.serialize(serializer),
            Document::Endpoints(d) => d.serialize(serializer),
        }
    }
}

/// Shape-only: kind dispatch, types and unknown fields. Use [`crate::validate`] for the rules.
impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Buffer once so `kind` can be read before choosing the type; any serde format works.
        let value = serde_norway::Value::deserialize(deserializer)?;
        let Some(kind) = value.get("kind").and_then(serde_norway::Value::as_str) else {
            return Err(de::Error::missing_field("kind"));
        };
        let result = match kind {
            "MeshConfig" => serde_norway::from_value(value).map(Document::MeshConfig),
            "ServicePolicy" => serde_norway::from_value(value).map(Document::ServicePolicy),
            "Endpoints" => serde_norway::from_value(value).map(Document::Endpoints),
            other => return Err(de::Error::custom(unknown_kind(other))),
        };
        result.map_err(de::Error::custom)
    }
}

pub(crate) fn unknown_kind(kind: &str) -> String {
    format!(
        "unknown kind {kind:?}; expected one of {}",
        KINDS.join(", ")
    )
}
