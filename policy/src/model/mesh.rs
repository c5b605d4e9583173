//! MeshConfig: the one cluster-wide document (mTLS mode, tracing).

use serde::{Deserialize, Serialize};

use crate::meta::Metadata;
use crate::wire::{Wire, impl_kind};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Wire<MeshConfigSpec>", into = "Wire<MeshConfigSpec>")]
pub struct MeshConfig {
    pub metadata: Metadata,
    pub spec: MeshConfigSpec,
}

impl_kind!(
    MeshConfig,
    MeshConfigSpec,
    "MeshConfig",
    |metadata, spec| {
        // Cluster-wide: a namespace written by the user is ignored rather than half-honoured.
        let metadata = Metadata {
            namespace: String::new(),
            ..metadata
        };
        Ok(MeshConfig {
            metadata,
            spec: spec.unwrap_or_default(),
        })
    }
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    #[default]
    Strict,
    Permissive,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshConfigSpec {
    pub mtls: MtlsMode,
    pub tracing: TracingSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TracingSpec {
    /// Head-sampling probability, 0.0..=1.0.
    pub sampling: f64,
}

impl Default for TracingSpec {
    fn default() -> Self {
        TracingSpec { sampling: 0.05 }
    }
}
