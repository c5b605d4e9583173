//! What every document's envelope carries besides its spec: the api version and `metadata`.
//! Its own module so the serde envelope (`wire`) and the typed kinds (`model`) both build on it.

use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "weir/v1";
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    /// `default` when omitted; always empty for the cluster-wide MeshConfig.
    #[serde(
        default = "default_namespace",
        skip_serializing_if = "String::is_empty"
    )]
    pub namespace: String,
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}
