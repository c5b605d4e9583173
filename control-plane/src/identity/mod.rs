//! Workload identity: `weir.identity.v1.Identity.Certify` and the workload tokens behind it.
//!
//! [`Authority`] holds the CA, the token key and the policy (trust domain, certificate
//! lifetime); the Admin API uses it to mint tokens and [`IdentityService`] to certify. Certify
//! needs no admin token: the workload token is the credential.

pub mod jwt;
pub mod rotation;
pub mod token;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use tonic::{Request, Response, Status};
use weir_proto::admin::v1 as pb_admin;
use weir_proto::identity::v1 as pb;
use weir_proto::identity::v1::identity_server::Identity;

use crate::ca::{Ca, CaError, CaPem, Csr, CsrError};
use crate::hub::Hub;
use crate::store::{StoreError, TokenRecord};
use token::{Claims, TokenError, TokenKey};

/// Store key of the generated root (JSON [`CaPem`]).
const CA_SECRET: &str = "ca";
/// Store key of the workload-token HMAC key.
const TOKEN_KEY_SECRET: &str = "token-hmac-key";

/// `--ca-cert`, `--ca-key` and `--trust-bundle`.
#[derive(Debug, Clone)]
pub struct CaFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trust_bundle: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("identity CA: {0}")]
    Ca(#[from] CaError),
    #[error("identity: {0}")]
    Store(#[from] StoreError),
    #[error("stored CA record is corrupt: {0}")]
    CorruptCa(String),
    #[error("no randomness for the token key: {0}")]
    Random(getrandom::Error),
}

pub struct Authority {
    hub: Arc<Hub>,
    ca: ArcSwap<Ca>,
    /// Rotation state of the generated root; `None` for a CA from files.
    trust: Option<Mutex<rotation::CaTrust>>,
    /// (generation, bundle) after every change, for the serving certificate and the bundle file.
    changes: watch::Sender<(u64, Arc<str>)>,
    key: TokenKey,
    cert_ttl: Duration,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("ca", &self.ca)
            .field("cert_ttl", &self.cert_ttl)
            .finish_non_exhaustive()
    }
}

// === impl Authority ===

impl Authority {
    /// Loads the CA from `files`, or the root kept in the store (generating it on first start),
    /// and the token key (likewise generated once).
    pub fn open(
        hub: Arc<Hub>,
        files: Option<&CaFiles>,
        cert_ttl: Duration,
    ) -> Result<Authority, AuthorityError> {
        let store = &hub.store;
        let (ca, trust) = match files {
            Some(f) => (Ca::load(&f.cert, &f.key, f.trust_bundle.as_deref())?, None),
            None => {
                let trust_domain = hub.trust_domain.clone();
                let signer = store.secret_or_insert_with(CA_SECRET, || {
                    let root = crate::ca::generate_root(&trust_domain)?;
                    tracing::info!(trust_domain, "generated the mesh root CA");
                    serde_json::to_vec(&root).map_err(|err| CaError::Generate(err.to_string()))
                })??;
                let stored = Stored::parse(&signer, store.secret(rotation::CA_TRUST_SECRET)?)?;
                (
                    signing_ca(&stored.signer, &stored.trust)?,
                    Some(stored.trust),
                )
            }
        };
        let generation = trust.as_ref().map_or(0, |t| t.generation);
        let (changes, _) = watch::channel((generation, Arc::from(ca.trust_bundle_pem())));
        hub.set_trust(ca.trust_bundle_pem().as_bytes(), generation);
        let secret = store.secret_or_insert_with(TOKEN_KEY_SECRET, || {
            let mut bytes = vec![0u8; token::KEY_LEN];
            getrandom::fill(&mut bytes).map(|()| bytes)
        })?;
        let secret = secret.map_err(AuthorityError::Random)?;
        Ok(Authority {
            hub,
            ca: ArcSwap::from_pointee(ca),
            trust: trust.map(Mutex::new),
            changes,
            key: TokenKey::new(&secret),
            cert_ttl,
        })
    }

    /// The CA signing now (it changes on `activate`).
    pub fn ca(&self) -> Arc<Ca> {
        self.ca.load_full()
    }

    /// Root generation and trust bundle, after every rotation step.
    pub fn subscribe(&self) -> watch::Receiver<(u64, Arc<str>)> {
        self.changes.subscribe()
    }

    /// The CA's roots and rotation phase.
    pub fn info(&self) -> pb_admin::CaInfo {
        // The CA is read under the lock, so a rotation step taken up meanwhile cannot pair the
        // old roots with the new phase.
        let (ca, trust) = match &self.trust {
            Some(lock) => {
                let trust = lock.lock().unwrap_or_else(|p| p.into_inner());
                (self.ca(), Some(trust.clone()))
            }
            None => (self.ca(), None),
        };
        let signing = crate::ca::summarize(ca.trust_bundle_pem())
            .into_iter()
            .next()
            .map(|s| s.sha256);
        let next = trust
            .as_ref()
            .and_then(|t| t.next.as_ref())
            .and_then(|n| crate::ca::summarize(&n.cert_pem).into_iter().next())
            .map(|s| s.sha256);
        let roots = crate::ca::summarize(ca.trust_bundle_pem())
            .into_iter()
            .map(|s| {
                let role = if trust.is_none() {
                    "trusted"
                } else if Some(&s.sha256) == signing.as_ref() {
                    "signing"
                } else if Some(&s.sha256) == next.as_ref() {
                    "next"
                } else {
                    "previous"
                };
                pb_admin::CaRoot {
                    subject: s.subject,
                    sha256: s.sha256,
                    not_after_unix_ms: s.not_after_unix_ms,
                    role: role.into(),
                }
            })
            .collect();
        pb_admin::CaInfo {
            generation: trust.as_ref().map_or(0, |t| t.generation),
            phase: trust.as_ref().map_or("idle", |t| t.phase()).into(),
            roots,
            from_files: trust.is_none(),
            activated_unix_ms: trust.as_ref().map_or(0, |t| t.activated_unix_ms),
        }
    }

    /// Runs one rotation phase (see [`rotation`]) on the state in the store, which another
    /// replica may have moved on: persists it only if nobody changed it meanwhile, then swaps
    /// the signing CA and pushes the new bundle and generation to this replica's proxies (the
    /// other replicas see the change through the store and reload, see [`Authority::reload`]).
    pub fn rotate(&self, phase: rotation::Phase, force: bool) -> Result<pb_admin::CaInfo, Status> {
        let Some(lock) = &self.trust else {
            return Err(Status::failed_precondition(
                "this control plane signs with a CA from --ca-cert/--ca-key: rotate it in your \
                 PKI (new files whose --trust-bundle holds the old and new roots, then restart)",
            ));
        };
        {
            let mut local = lock.lock().unwrap_or_else(|p| p.into_inner());
            let stored = Stored::read(&self.hub.store).map_err(|err| match err {
                AuthorityError::Store(err) => crate::store::grpc_status(err),
                err => Status::internal(err.to_string()),
            })?;
            let now = rotation::now_ms();
            rotation::check(&stored.trust, phase, force, now)
                .map_err(Status::failed_precondition)?;
            let mut next_trust = stored.trust.clone();
            let mut signer = stored.signer.clone();
            match phase {
                rotation::Phase::Prepare => {
                    let root = crate::ca::generate_root(self.trust_domain())
                        .map_err(|e| Status::internal(e.to_string()))?;
                    next_trust.next = Some(root);
                }
                rotation::Phase::Activate => {
                    signer = next_trust
                        .next
                        .take()
                        .ok_or_else(|| Status::internal("no prepared root"))?;
                    next_trust.previous_cert_pem = Some(stored.signer.cert_pem.clone());
                    next_trust.generation += 1;
                    next_trust.activated_unix_ms = now;
                }
                rotation::Phase::Finish => next_trust.previous_cert_pem = None,
            }
            let ca =
                signing_ca(&signer, &next_trust).map_err(|e| Status::internal(e.to_string()))?;
            let signer_json = to_json(&signer)?;
            let trust_json = to_json(&next_trust)?;
            let written = self
                .hub
                .store
                .put_secrets_if(
                    (rotation::CA_TRUST_SECRET, stored.trust_json.as_deref()),
                    &[
                        (CA_SECRET, signer_json.as_slice()),
                        (rotation::CA_TRUST_SECRET, trust_json.as_slice()),
                    ],
                )
                .map_err(crate::store::grpc_status)?;
            if !written {
                return Err(Status::aborted(
                    "another control-plane replica ran a rotation step at the same time; \
                     check `weirctl ca info` and run the step again if it is still due",
                ));
            }
            self.install(&mut local, ca, next_trust);
            tracing::info!(
                ?phase,
                generation = local.generation,
                "root rotation step done"
            );
        }
        Ok(self.info())
    }

    /// Takes up the roots and rotation state in the store when another replica changed them,
    /// so every replica signs with the same root and hands out the same bundle. A CA from
    /// files has nothing to reload.
    pub fn reload(&self) -> Result<bool, AuthorityError> {
        let Some(lock) = &self.trust else {
            return Ok(false);
        };
        // Held across the read, so an older read cannot overwrite a newer local step.
        let mut local = lock.lock().unwrap_or_else(|p| p.into_inner());
        let stored = Stored::read(&self.hub.store)?;
        let bundle = stored.trust.bundle(&stored.signer.cert_pem);
        if stored.trust.generation == local.generation
            && bundle == self.ca.load().trust_bundle_pem()
        {
            return Ok(false);
        }
        let ca = signing_ca(&stored.signer, &stored.trust)?;
        let (generation, phase) = (stored.trust.generation, stored.trust.phase());
        self.install(&mut local, ca, stored.trust);
        tracing::info!(
            generation,
            phase,
            "took up the CA rotation another replica made"
        );
        Ok(true)
    }

    fn install(&self, local: &mut rotation::CaTrust, ca: Ca, trust: rotation::CaTrust) {
        let bundle: Arc<str> = Arc::from(ca.trust_bundle_pem());
        self.ca.store(Arc::new(ca));
        *local = trust;
        self.hub.set_trust(bundle.as_bytes(), local.generation);
        self.changes.send_replace((local.generation, bundle));
    }

    pub fn trust_domain(&self) -> &str {
        &self.hub.trust_domain
    }

    /// Mints a token for `namespace`/`service_account` valid for `ttl`, recording its id.
    /// Returns the token (the only time it exists outside the caller) and its record.
    pub fn create_token(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: Duration,
    ) -> Result<(String, TokenRecord), Status> {
        token::check_segment("namespace", namespace).map_err(Status::invalid_argument)?;
        token::check_segment("service account", service_account)
            .map_err(Status::invalid_argument)?;
        if ttl.is_zero() {
            return Err(Status::invalid_argument("token ttl must be positive"));
        }
        let mut id = [0u8; 8];
        getrandom::fill(&mut id)
            .map_err(|err| Status::internal(format!("no randomness: {err}")))?;
        let now = SystemTime::now();
        let exp = now
            .checked_add(ttl)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .ok_or_else(|| Status::invalid_argument("token ttl is too large"))?;
        let claims = Claims {
            id: hex::encode(id),
            ns: namespace.into(),
            sa: service_account.into(),
            td: self.trust_domain().into(),
            exp,
        };
        let token = self
            .key
            .mint(&claims)
            .map_err(|err| Status::internal(format!("cannot encode the token: {err}")))?;
        let record = TokenRecord {
            id: claims.id,
            namespace: claims.ns,
            service_account: claims.sa,
            trust_domain: claims.td,
            created_unix_ms: unix_ms(now),
            expires_unix_ms: i64::try_from(exp.saturating_mul(1000)).unwrap_or(i64::MAX),
            revoked: false,
        };
        self.hub
            .store
            .insert_token(&record)
            .map_err(crate::store::grpc_status)?;
        Ok((token, record))
    }

    /// The whole of Certify for a workload token, synchronously (it reads the store and signs):
    /// token, then CSR, then identity, so an unauthenticated caller learns nothing about its CSR.
    pub fn certify(&self, token: &str, csr_pem: &str) -> Result<pb::CertifyResponse, Status> {
        let claims = self.authenticate(token)?;
        if claims.td != self.trust_domain() {
            return Err(Status::permission_denied(format!(
                "token {} is for trust domain {:?} but this control plane serves {:?}",
                claims.id,
                claims.td,
                self.trust_domain()
            )));
        }
        self.issue(&claims.identity(), &format!("token {}", claims.id), csr_pem)
    }

    /// Certify for a verified Kubernetes service-account token: the certificate is for the
    /// token's service account in this control plane's trust domain, nothing else.
    pub fn certify_service_account(
        &self,
        account: &jwt::ServiceAccount,
        csr_pem: &str,
    ) -> Result<pb::CertifyResponse, Status> {
        let credential = format!(
            "the service-account token of {}/{}",
            account.namespace, account.name
        );
        self.issue(
            &account.spiffe_id(self.trust_domain()),
            &credential,
            csr_pem,
        )
    }

    /// Signs `csr_pem` if it asks for exactly `identity`, which `credential` proved.
    fn issue(
        &self,
        identity: &str,
        credential: &str,
        csr_pem: &str,
    ) -> Result<pb::CertifyResponse, Status> {
        let csr = Csr::parse(csr_pem).map_err(csr_status)?;
        if csr.uri != identity {
            return Err(Status::permission_denied(format!(
                "CSR asks for {:?} but {credential} is for {identity:?}",
                csr.uri
            )));
        }
        let generation = self.trust.as_ref().map_or(0, |t| {
            t.lock().unwrap_or_else(|p| p.into_inner()).generation
        });
        let issued = self
            .ca()
            .sign(&csr, identity, self.cert_ttl)
            .map_err(csr_status)?;
        tracing::info!(identity, credential, "certified");
        Ok(pb::CertifyResponse {
            cert_chain_pem: issued.chain_pem,
            trust_bundle_pem: issued.trust_bundle_pem,
            not_after_unix_ms: unix_ms(issued.not_after),
            spiffe_id: identity.to_owned(),
            ca_generation: generation,
        })
    }

    /// Signature and expiry, then the store: a token must have been recorded (so a reset store
    /// invalidates old tokens) and not revoked.
    fn authenticate(&self, token: &str) -> Result<Claims, Status> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = self.key.verify(token, now).map_err(|err| match err {
            TokenError::Malformed(_) | TokenError::BadSignature | TokenError::Expired { .. } => {
                Status::unauthenticated(err.to_string())
            }
        })?;
        match self
            .hub
            .store
            .token(&claims.id)
            .map_err(crate::store::grpc_status)?
        {
            None => Err(Status::unauthenticated(format!(
                "workload token {} is unknown to this control plane (was its store reset?); \
                 make a new one with `weirctl token create`",
                claims.id
            ))),
            Some(record) if record.revoked => Err(Status::unauthenticated(format!(
                "workload token {} was revoked; make a new one with `weirctl token create`",
                claims.id
            ))),
            Some(_) => Ok(claims),
        }
    }
}

/// The generated CA as the store holds it now.
struct Stored {
    signer: CaPem,
    trust: rotation::CaTrust,
    /// The stored rotation state as written, to check nobody changed it before writing anew.
    trust_json: Option<Vec<u8>>,
}

impl Stored {
    fn read(store: &crate::store::Store) -> Result<Stored, AuthorityError> {
        let signer = store
            .secret(CA_SECRET)?
            .ok_or_else(|| AuthorityError::CorruptCa("the stored CA record is missing".into()))?;
        Stored::parse(&signer, store.secret(rotation::CA_TRUST_SECRET)?)
    }

    /// From the stored JSON of the signing root and of the rotation state (`None`: none yet).
    fn parse(signer: &[u8], trust_json: Option<Vec<u8>>) -> Result<Stored, AuthorityError> {
        let corrupt = |err: serde_json::Error| AuthorityError::CorruptCa(err.to_string());
        let signer: CaPem = serde_json::from_slice(signer).map_err(corrupt)?;
        let trust = match &trust_json {
            Some(json) => serde_json::from_slice(json).map_err(corrupt)?,
            None => rotation::CaTrust::default(),
        };
        Ok(Stored {
            signer,
            trust,
            trust_json,
        })
    }
}

/// The CA that signs with `signer` and hands out the bundle of `trust`.
fn signing_ca(signer: &CaPem, trust: &rotation::CaTrust) -> Result<Ca, CaError> {
    Ca::from_pem(
        &signer.cert_pem,
        &signer.key_pem,
        Some(&trust.bundle(&signer.cert_pem)),
    )
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(value).map_err(|e| Status::internal(e.to_string()))
}

fn csr_status(err: CsrError) -> Status {
    match err {
        CsrError::Unparseable(_)
        | CsrError::BadSignature(_)
        | CsrError::UriSans(_)
        | CsrError::UnsupportedKey(_) => Status::invalid_argument(err.to_string()),
        CsrError::CaExpired(_) => Status::failed_precondition(err.to_string()),
        CsrError::Sign(_) => {
            tracing::error!(%err, "signing failed");
            Status::internal(err.to_string())
        }
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

// === impl IdentityService ===

pub struct IdentityService {
    authority: Arc<Authority>,
    /// `--kubernetes-issuer`: service-account tokens are accepted too.
    kubernetes: Option<Arc<jwt::KubernetesTokens>>,
}

impl IdentityService {
    pub fn new(authority: Arc<Authority>, kubernetes: Option<Arc<jwt::KubernetesTokens>>) -> Self {
        IdentityService {
            authority,
            kubernetes,
        }
    }

    /// A JWT goes to the service-account verifier (async: it may reload the issuer's keys),
    /// anything else is a workload token; then the store read and signing, off the runtime
    /// that carries the discovery streams.
    async fn certify(&self, req: pb::CertifyRequest) -> Result<pb::CertifyResponse, Status> {
        let account = if jwt::looks_like_jwt(&req.token) {
            let Some(kubernetes) = &self.kubernetes else {
                return Err(Status::unauthenticated(
                    "this control plane does not accept Kubernetes service-account tokens: \
                     start weir-control with --kubernetes-issuer and --kubernetes-jwks, or give \
                     the proxy a token from `weirctl token create`",
                ));
            };
            let account = kubernetes
                .verify(&req.token)
                .await
                .map_err(|err| Status::unauthenticated(err.to_string()))?;
            Some(account)
        } else {
            None
        };
        let authority = self.authority.clone();
        tokio::task::spawn_blocking(move || match account {
            Some(account) => authority.certify_service_account(&account, &req.csr_pem),
            None => authority.certify(&req.token, &req.csr_pem),
        })
        .await
        .map_err(|err| {
            tracing::error!(%err, "certify task failed");
            Status::internal("certify task failed; see the control plane's log")
        })?
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<pb::CertifyRequest>,
    ) -> Result<Response<pb::CertifyResponse>, Status> {
        let peer = request.remote_addr();
        let result = IdentityService::certify(self, request.into_inner()).await;
        if let Err(status) = &result
            && status.code() != tonic::Code::Internal
        {
            tracing::warn!(
                peer = ?peer,
                code = ?status.code(),
                reason = %status.message(),
                "certify refused"
            );
        }
        result.map(Response::new)
    }
}
