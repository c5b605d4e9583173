//! The snapshot as JSON, for the admin `/config` endpoint.
use serde::Serialize;
use weir_policy::{Document, MtlsMode};

use super::{LocalIdentity, Snapshot};

#[derive(Serialize)]
struct ServiceView<'a> {
    name: &'a str,
    namespace: &'a str,
    endpoints: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<&'a str>,
    routes: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    breakers: Vec<super::report::BreakerState>,
}

#[derive(Serialize)]
struct LocalView<'a> {
    service: &'a str,
    namespace: &'a str,
    service_account: &'a str,
}

#[derive(Serialize)]
struct SnapshotView<'a> {
    version: u64,
    control_plane_version: u64,
    proxy: LocalView<'a>,
    mtls: MtlsMode,
    services: Vec<ServiceView<'a>>,
    documents: &'a [Document],
}

impl Snapshot {
    pub fn to_json(&self, local: &LocalIdentity) -> String {
        let view = SnapshotView {
            version: self.version,
            control_plane_version: self.control_plane_version,
            proxy: LocalView {
                service: &local.service,
                namespace: &local.namespace,
                service_account: &local.service_account,
            },
            mtls: self.mtls,
            services: self
                .services
                .iter()
                .map(|s| ServiceView {
                    name: &s.name,
                    namespace: &s.namespace,
                    endpoints: s.own.endpoints.iter().map(|e| e.addr.to_string()).collect(),
                    identity: s.own.identity.as_deref(),
                    routes: s.routes.iter().map(|r| r.name.as_str()).collect(),
                    breakers: super::report::breakers(s, tokio::time::Instant::now()),
                })
                .collect(),
            documents: &self.documents,
        };
        serde_json::to_string_pretty(&view).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}
