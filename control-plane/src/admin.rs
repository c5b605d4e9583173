//! `weir.admin.v1.Admin`, the API behind `weirctl`. The token check is an interceptor in
//! `server`, so every method here may assume an authenticated caller.

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};
use weir_policy::Document;
use weir_proto::admin::v1 as pb;
use weir_proto::admin::v1::admin_server::Admin;

use crate::hub::Hub;
use crate::identity::Authority;
use crate::status::SharedProxy;
use crate::store::{Object, StoreError, TokenRecord};

/// Lifetime of a workload token when the request leaves it at 0 (`weirctl token create`
/// without `--ttl` sends its own default of the same value).
pub const DEFAULT_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(8760 * 3600);

pub struct AdminService {
    hub: Arc<Hub>,
    authority: Arc<Authority>,
}

impl AdminService {
    pub fn new(hub: Arc<Hub>, authority: Arc<Authority>) -> Self {
        AdminService { hub, authority }
    }

    /// Like [`Self::with_store`], for calls that go through the identity authority (which
    /// writes to the store too).
    async fn with_authority<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Authority) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let authority = self.authority.clone();
        tokio::task::spawn_blocking(move || f(&authority))
            .await
            .map_err(|err| {
                tracing::error!(%err, "token task failed");
                Status::internal("token task failed; see the control plane's log")
            })?
    }

    /// Store calls block on disk (fsync on commit), so they run on the blocking pool rather
    /// than stalling the discovery streams that share the runtime.
    async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Hub) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Status> {
        let hub = self.hub.clone();
        tokio::task::spawn_blocking(move || f(&hub))
            .await
            .map_err(|err| {
                tracing::error!(%err, "store task failed");
                Status::internal("store task failed; see the control plane's log")
            })?
            .map_err(status)
    }
}

/// How long `status` waits for the other replicas' proxies before answering with its own.
const REMOTE_STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

impl AdminService {
    /// The other replicas' proxies from the shared store, or none and a warning saying why.
    async fn remote_proxies(&self) -> (Vec<SharedProxy>, String) {
        let hub = self.hub.clone();
        let read = tokio::task::spawn_blocking(move || hub.store.remote_proxies());
        let failed = match tokio::time::timeout(REMOTE_STATUS_TIMEOUT, read).await {
            Ok(Ok(Ok(rows))) => return (rows, String::new()),
            Ok(Ok(Err(err))) => err.to_string(),
            Ok(Err(err)) => format!("status read failed: {err}"),
            Err(_) => format!("the store did not answer within {REMOTE_STATUS_TIMEOUT:?}"),
        };
        tracing::warn!(err = failed, "status lists only this replica's proxies");
        let warning = format!(
            "only the proxies connected to replica {} are listed; the other replicas' are unknown: {failed}",
            self.hub.replica
        );
        (Vec::new(), warning)
    }
}

/// Canonical kind for what users type: any case, plural, or a short alias.
pub fn resolve_kind(kind: &str) -> Result<&'static str, Status> {
    match kind.to_ascii_lowercase().as_str() {
        "meshconfig" | "meshconfigs" | "mc" | "mesh" => Ok("MeshConfig"),
        "servicepolicy" | "servicepolicies" | "sp" | "policy" | "policies" => Ok("ServicePolicy"),
        "endpoints" | "endpoint" | "ep" | "eps" => Ok("Endpoints"),
        "" => Err(Status::invalid_argument(format!(
            "kind is required: one of {}",
            weir_policy::KINDS.join(", ")
        ))),
        other => Err(Status::invalid_argument(format!(
            "unknown kind {other:?}; expected one of {} (or servicepolicy/sp, meshconfig/mc, endpoints/ep)",
            weir_policy::KINDS.join(", ")
        ))),
    }
}

/// Kind, namespace and name of one object. MeshConfig is cluster-wide, so any namespace is
/// ignored; other kinds default to `default` like documents do.
fn target(
    kind: &str,
    namespace: &str,
    name: &str,
) -> Result<(&'static str, String, String), Status> {
    let kind = resolve_kind(kind)?;
    if name.is_empty() {
        return Err(Status::invalid_argument("name is required"));
    }
    let namespace = match (kind, namespace) {
        ("MeshConfig", _) => String::new(),
        (_, "") => weir_policy::DEFAULT_NAMESPACE.to_string(),
        (_, ns) => ns.to_string(),
    };
    Ok((kind, namespace, name.to_string()))
}

use crate::store::grpc_status as status;

fn token_info(record: TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        identity: crate::identity::token::spiffe_id(
            &record.trust_domain,
            &record.namespace,
            &record.service_account,
        ),
        id: record.id,
        namespace: record.namespace,
        service_account: record.service_account,
        created_unix_ms: record.created_unix_ms,
        expires_unix_ms: record.expires_unix_ms,
        revoked: record.revoked,
    }
}

fn to_pb(obj: Object) -> pb::Object {
    pb::Object {
        kind: obj.kind,
        namespace: obj.namespace,
        name: obj.name,
        revision: obj.revision,
        json: obj.json,
        updated_unix_ms: obj.updated_unix_ms,
        deleted: obj.deleted,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let req = request.into_inner();
        let source = if req.source.is_empty() {
            "<request>"
        } else {
            req.source.as_str()
        };
        // parse_str also runs the set rules (duplicates, one MeshConfig) on the request; the
        // store checks the same rules against what is already stored.
        let docs: Vec<Document> = weir_policy::parse_str(source, &req.yaml)
            .map_err(|errors| Status::invalid_argument(errors.to_string()))?;
        let dry_run = req.dry_run;
        let (applied, version) = self
            .with_store(move |hub| hub.store.apply(&docs, dry_run))
            .await?;
        let changed = applied
            .iter()
            .any(|a| a.action != crate::store::Action::Unchanged);
        if changed && !dry_run {
            self.hub.changed();
        }
        for a in &applied {
            tracing::info!(
                kind = a.object.kind,
                namespace = a.object.namespace,
                name = a.object.name,
                revision = a.object.revision,
                action = a.action.as_str(),
                dry_run,
                "apply"
            );
        }
        Ok(Response::new(pb::ApplyResponse {
            results: applied
                .into_iter()
                .map(|a| pb::ApplyResult {
                    kind: a.object.kind,
                    namespace: a.object.namespace,
                    name: a.object.name,
                    action: a.action.as_str().to_string(),
                    revision: a.object.revision,
                })
                .collect(),
            version,
        }))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let req = request.into_inner();
        let kind = resolve_kind(&req.kind)?;
        // MeshConfig has no namespace; a namespace filter on it would always come back empty.
        let namespace =
            (!req.namespace.is_empty() && kind != "MeshConfig").then_some(req.namespace);
        let name = (!req.name.is_empty()).then_some(req.name);
        let objects = self
            .with_store(move |hub| {
                hub.store
                    .get(Some(kind), namespace.as_deref(), name.as_deref())
            })
            .await?;
        Ok(Response::new(pb::GetResponse {
            objects: objects.into_iter().map(to_pb).collect(),
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let req = request.into_inner();
        let (kind, ns, name) = target(&req.kind, &req.namespace, &req.name)?;
        let (applied, version) = self
            .with_store(move |hub| hub.store.delete(kind, &ns, &name))
            .await?;
        self.hub.changed();
        tracing::info!(
            kind,
            namespace = applied.object.namespace,
            name = applied.object.name,
            revision = applied.object.revision,
            "delete"
        );
        Ok(Response::new(pb::DeleteResponse {
            revision: applied.object.revision,
            version,
        }))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let req = request.into_inner();
        let (kind, ns, name) = target(&req.kind, &req.namespace, &req.name)?;
        let revisions = self
            .with_store(move |hub| hub.store.history(kind, &ns, &name))
            .await?;
        Ok(Response::new(pb::HistoryResponse {
            revisions: revisions.into_iter().map(to_pb).collect(),
        }))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::RollbackResponse>, Status> {
        let req = request.into_inner();
        let (kind, ns, name) = target(&req.kind, &req.namespace, &req.name)?;
        let to = req.to_revision;
        let (applied, version) = self
            .with_store(move |hub| hub.store.rollback(kind, &ns, &name, to))
            .await?;
        if applied.action != crate::store::Action::Unchanged {
            self.hub.changed();
        }
        tracing::info!(
            kind,
            namespace = applied.object.namespace,
            name = applied.object.name,
            to_revision = to,
            revision = applied.object.revision,
            "rollback"
        );
        Ok(Response::new(pb::RollbackResponse {
            object: Some(to_pb(applied.object)),
            version,
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let replica = self.hub.replica.clone();
        let local = self
            .hub
            .registry
            .proxies()
            .iter()
            .map(|p| p.shared(&replica))
            .collect();
        let (remote, warning) = if self.hub.store.shared() {
            self.remote_proxies().await
        } else {
            (Vec::new(), String::new())
        };
        Ok(Response::new(pb::StatusResponse {
            version: self.hub.store.version(),
            proxies: crate::status::merge(local, remote),
            warning,
            replica,
        }))
    }

    async fn endpoints(
        &self,
        request: Request<pb::EndpointsRequest>,
    ) -> Result<Response<pb::EndpointsResponse>, Status> {
        let req = request.into_inner();
        let wanted = |ns: &str, service: &str| {
            (req.namespace.is_empty() || req.namespace == ns)
                && (req.service.is_empty() || req.service == service)
        };
        let mut services: BTreeMap<(String, String), Vec<pb::Endpoint>> = BTreeMap::new();
        for ((ns, service), regs) in self.hub.registry.endpoints() {
            if !wanted(&ns, &service) {
                continue;
            }
            services
                .entry((ns, service))
                .or_default()
                .extend(regs.into_iter().map(|r| pb::Endpoint {
                    address: r.address.to_string(),
                    identity: r.identity,
                    source: "registered".into(),
                }));
        }
        for ((ns, service), derived) in self.hub.derived.all() {
            if !wanted(&ns, &service) {
                continue;
            }
            // Listed even with no pod yet, so a Service the mesh knows shows up.
            let endpoints = services.entry((ns, service)).or_default();
            endpoints.extend(derived.pods.iter().map(|addr| pb::Endpoint {
                address: addr.to_string(),
                identity: String::new(),
                source: derived.source.into(),
            }));
        }
        let stored = self
            .with_store(|hub| hub.store.get(Some("Endpoints"), None, None))
            .await?;
        for obj in stored {
            if !wanted(&obj.namespace, &obj.name) {
                continue;
            }
            let spec = match serde_json::from_str::<Document>(&obj.json) {
                Ok(Document::Endpoints(e)) => e.spec,
                _ => {
                    tracing::error!(
                        namespace = obj.namespace,
                        name = obj.name,
                        "stored Endpoints document does not parse"
                    );
                    continue;
                }
            };
            let identity = spec.identity.unwrap_or_default();
            services
                .entry((obj.namespace, obj.name))
                .or_default()
                .extend(spec.addresses.into_iter().map(|addr| pb::Endpoint {
                    address: addr.to_string(),
                    identity: identity.clone(),
                    source: "static".into(),
                }));
        }
        Ok(Response::new(pb::EndpointsResponse {
            services: services
                .into_iter()
                .map(|((namespace, service), endpoints)| pb::ServiceEndpoints {
                    service,
                    namespace,
                    endpoints,
                })
                .collect(),
        }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let req = request.into_inner();
        let ttl = match req.ttl_seconds {
            0 => DEFAULT_TOKEN_TTL,
            secs => std::time::Duration::from_secs(secs),
        };
        let (token, record) = self
            .with_authority(move |authority| {
                authority.create_token(&req.namespace, &req.service_account, ttl)
            })
            .await?;
        tracing::info!(
            id = record.id,
            namespace = record.namespace,
            service_account = record.service_account,
            expires_unix_ms = record.expires_unix_ms,
            "token created"
        );
        Ok(Response::new(pb::CreateTokenResponse {
            token,
            info: Some(token_info(record)),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let id = request.into_inner().id;
        if id.is_empty() {
            return Err(Status::invalid_argument(
                "token id is required (see `weirctl token list`)",
            ));
        }
        let record = self
            .with_store(move |hub| hub.store.revoke_token(&id))
            .await?;
        tracing::info!(id = record.id, "token revoked");
        Ok(Response::new(pb::RevokeTokenResponse {
            info: Some(token_info(record)),
        }))
    }

    async fn list_tokens(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let tokens = self.with_store(|hub| hub.store.tokens()).await?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: tokens.into_iter().map(token_info).collect(),
        }))
    }

    async fn rotate_ca(
        &self,
        request: Request<pb::RotateCaRequest>,
    ) -> Result<Response<pb::CaInfo>, Status> {
        let req = request.into_inner();
        let phase: crate::identity::rotation::Phase =
            req.phase.parse().map_err(Status::invalid_argument)?;
        let authority = self.authority.clone();
        // Generating a root and writing the store block: off the async workers.
        let info = tokio::task::spawn_blocking(move || authority.rotate(phase, req.force))
            .await
            .map_err(|e| Status::internal(format!("rotation task failed: {e}")))??;
        Ok(Response::new(info))
    }

    async fn get_ca(
        &self,
        _request: Request<pb::GetCaRequest>,
    ) -> Result<Response<pb::CaInfo>, Status> {
        Ok(Response::new(self.authority.info()))
    }

    async fn version(
        &self,
        _request: Request<pb::VersionRequest>,
    ) -> Result<Response<pb::VersionResponse>, Status> {
        Ok(Response::new(pb::VersionResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_resolve_case_insensitively_and_by_alias() {
        for (typed, kind) in [
            ("ServicePolicy", "ServicePolicy"),
            ("servicepolicy", "ServicePolicy"),
            ("SP", "ServicePolicy"),
            ("meshconfig", "MeshConfig"),
            ("endpoints", "Endpoints"),
            ("ep", "Endpoints"),
        ] {
            assert_eq!(resolve_kind(typed).ok(), Some(kind), "{typed}");
        }
        let err = resolve_kind("pods").err().map(|s| s.code());
        assert_eq!(err, Some(tonic::Code::InvalidArgument));
        assert!(resolve_kind("").is_err());
    }
}
