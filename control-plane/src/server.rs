//! Wiring: open the store, make or read the admin token, open the identity CA, bind, and serve
//! Discovery, Identity and Admin on one port until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use weir_proto::admin::v1::admin_server::AdminServer;
use weir_proto::discovery::v1::discovery_server::DiscoveryServer;
use weir_proto::identity::v1::identity_server::IdentityServer;

use crate::admin::AdminService;
use crate::discovery::DiscoveryService;
use crate::hub::Hub;
use crate::identity::jwt::{JwksError, KubernetesConfig, KubernetesTokens};
use crate::identity::{Authority, AuthorityError, CaFiles, IdentityService};
use crate::serving::{DEFAULT_SERVER_NAMES, ServingError, ServingTls};
use crate::store::{EtcdConfig, Store, StoreError};
use crate::token::{AdminToken, TokenError};

pub const STORE_FILE: &str = "store.redb";
/// How often `/ready` re-checks a shared store.
const STORE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Where the admin token lives in a shared (etcd) store.
const ADMIN_TOKEN_SECRET: &str = "admin-token";
/// The mesh's trust bundle, written at start and whenever it changes, for local proxies and
/// weirctl (`--trust-bundle DATA_DIR/trust-bundle.pem`).
pub const TRUST_BUNDLE_FILE: &str = "trust-bundle.pem";

/// Default lifetime of a workload certificate; proxies renew at ~70% of it (design §5).
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

const MAX_STREAMS_PER_CONNECTION: u32 = 16_384;

/// How long shutdown waits for streams and in-flight calls before giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub trust_domain: String,
    /// How long a proxy's endpoint stays registered after its stream ends.
    pub lease_grace: Duration,
    /// A CA from the user's PKI (`--ca-cert`/`--ca-key`); `None`: the root generated on first
    /// start and kept in the store.
    pub ca: Option<CaFiles>,
    /// Lifetime of workload certificates (`--cert-ttl`).
    pub cert_ttl: Duration,
    /// DNS names and IP addresses in the serving certificate (`--server-name`).
    pub server_names: Vec<String>,
    /// `--kubernetes`: the API server to watch Services and EndpointSlices on and to write
    /// the trust-bundle ConfigMaps to (see [`crate::kubernetes`]).
    pub kubernetes: Option<kube::Config>,
    /// Certify accepts Kubernetes service-account tokens (`--kubernetes-issuer`).
    pub kubernetes_tokens: Option<KubernetesConfig>,
    /// `--store etcd:…`: documents, tokens and the CA live in etcd, shared by every replica;
    /// `None`: the embedded store file in `data_dir`.
    pub etcd: Option<EtcdConfig>,
    /// This replica's name (`--replica-name`); `None`: the hostname. With etcd, a name another
    /// live replica holds gets a `-2`, `-3`… suffix.
    pub replica: Option<String>,
}

impl ServerConfig {
    /// Defaults of design §3 with the given data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8090)),
            data_dir: data_dir.into(),
            trust_domain: "weir.local".into(),
            lease_grace: Duration::from_secs(10),
            ca: None,
            cert_ttl: DEFAULT_CERT_TTL,
            server_names: DEFAULT_SERVER_NAMES.iter().map(|n| n.to_string()).collect(),
            kubernetes: None,
            kubernetes_tokens: None,
            etcd: None,
            replica: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("cannot open store {path}: {source}")]
    Store { path: PathBuf, source: StoreError },
    #[error("cannot open the etcd store: {0}")]
    Etcd(StoreError),
    #[error("cannot keep this replica's id in {path}: {source}")]
    ReplicaId {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] AuthorityError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Serving(#[from] ServingError),
    #[error("cannot write the trust bundle to {path}: {source}")]
    TrustBundle {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--kubernetes: cannot build a client for {url}: {source}")]
    Kubernetes { url: String, source: kube::Error },
    #[error("--kubernetes-jwks: {0}")]
    KubernetesKeys(#[from] JwksError),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A server with its store open and its port bound, not yet serving. Binding first lets tests
/// and benchmarks use port 0 and learn the address before anything connects.
pub struct Bound {
    listener: TcpListener,
    local_addr: SocketAddr,
    token: AdminToken,
    hub: Arc<Hub>,
    authority: Arc<Authority>,
    tls: Arc<ServingTls>,
    data_dir: PathBuf,
    kubernetes: Option<kube::Client>,
    kubernetes_tokens: Option<Arc<KubernetesTokens>>,
}

/// Opens the data directory (store, admin token) and binds the listener.
pub async fn bind(config: ServerConfig) -> Result<Bound, ServerError> {
    // First: it creates the data directory the embedded store goes in.
    let local_token = match &config.etcd {
        None => Some(AdminToken::load_or_create(&config.data_dir)?),
        Some(_) => None,
    };
    let replica = config
        .replica
        .as_deref()
        .map_or_else(crate::replica::default_name, crate::replica::sanitise);
    let hub = match &config.etcd {
        None => {
            let path = config.data_dir.join(STORE_FILE);
            let open = |path: &Path| -> Result<Arc<Hub>, StoreError> {
                let store = Store::open(path)?;
                Hub::new(
                    store,
                    replica.clone(),
                    config.trust_domain.clone(),
                    config.lease_grace,
                )
            };
            open(&path).map_err(|source| ServerError::Store {
                path: path.clone(),
                source,
            })?
        }
        Some(etcd) => {
            let instance = crate::replica::instance_id(&config.data_dir).map_err(|source| {
                ServerError::ReplicaId {
                    path: config.data_dir.join(crate::replica::INSTANCE_FILE),
                    source,
                }
            })?;
            let open = || -> Result<Arc<Hub>, StoreError> {
                let store = Store::open_etcd(EtcdConfig {
                    lease_ttl: config.lease_grace,
                    replica: replica.clone(),
                    instance,
                    ..etcd.clone()
                })?;
                Hub::new(
                    store,
                    replica.clone(),
                    config.trust_domain.clone(),
                    config.lease_grace,
                )
            };
            open().map_err(ServerError::Etcd)?
        }
    };
    let token = match local_token {
        Some(token) => token,
        // Every replica must accept the same admin token: it lives in the shared store and is
        // written to each replica's DATA_DIR for local weirctl use.
        None => {
            let shared = hub
                .store
                .secret_or_insert_with(ADMIN_TOKEN_SECRET, || {
                    AdminToken::generate().map(String::into_bytes)
                })
                .map_err(ServerError::Etcd)??;
            AdminToken::install(&config.data_dir, &String::from_utf8_lossy(&shared))?
        }
    };
    let authority = Arc::new(Authority::open(
        hub.clone(),
        config.ca.as_ref(),
        config.cert_ttl,
    )?);
    let tls = ServingTls::new(authority.clone(), &config.server_names)?;
    let kubernetes_tokens = match &config.kubernetes_tokens {
        Some(k) => Some(Arc::new(KubernetesTokens::open(k).await?)),
        None => None,
    };
    write_trust_bundle(&config.data_dir, authority.ca().trust_bundle_pem())?;
    let kubernetes = config
        .kubernetes
        .map(|k| {
            let url = k.cluster_url.to_string();
            kube::Client::try_from(k).map_err(|source| ServerError::Kubernetes { url, source })
        })
        .transpose()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;
    Ok(Bound {
        listener,
        local_addr,
        token,
        hub,
        authority,
        tls,
        data_dir: config.data_dir,
        kubernetes,
        kubernetes_tokens,
    })
}

/// Writes the bundle next to the store (atomically, world-readable: roots are public).
pub fn write_trust_bundle(data_dir: &Path, pem: &str) -> Result<(), ServerError> {
    let path = data_dir.join(TRUST_BUNDLE_FILE);
    let tmp = data_dir.join(format!(".{TRUST_BUNDLE_FILE}.tmp"));
    std::fs::write(&tmp, pem)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| ServerError::TrustBundle { path, source })
}

/// Binds and serves until `shutdown` completes.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    bind(config).await?.serve(shutdown).await
}

impl Bound {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Checks a shared store every [`STORE_CHECK_INTERVAL`] into `health` (for `/ready` and
    /// `/metrics`); the embedded store needs no check.
    pub fn watch_store(&self, health: Arc<crate::health::StoreHealth>) {
        if !self.hub.store.shared() {
            return;
        }
        // Weak: the checker must not keep the hub alive through shutdown.
        let hub = Arc::downgrade(&self.hub);
        tokio::spawn(async move {
            loop {
                let Some(strong) = hub.upgrade() else { return };
                let check = tokio::task::spawn_blocking(move || strong.store.healthy()).await;
                let result = match check {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(err)) => Err(err.to_string()),
                    Err(err) => Err(format!("store check failed: {err}")),
                };
                if let Err(err) = &result {
                    tracing::warn!(%err, "store check failed; /ready answers 503");
                }
                health.record(result);
                tokio::time::sleep(STORE_CHECK_INTERVAL).await;
            }
        });
    }

    pub fn token(&self) -> &AdminToken {
        &self.token
    }

    /// The identity CA and token issuer, e.g. for a test to read the trust bundle.
    pub fn authority(&self) -> &Arc<Authority> {
        &self.authority
    }

    /// Where the trust bundle that verifies this server was written.
    pub fn trust_bundle_path(&self) -> PathBuf {
        self.data_dir.join(TRUST_BUNDLE_FILE)
    }

    /// Serves until `shutdown` completes, then ends every discovery stream (so the graceful
    /// drain is not held open by streams that never end on their own) and waits up to
    /// [`DRAIN_TIMEOUT`] for in-flight calls.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let Bound {
            listener,
            local_addr,
            token,
            hub,
            authority,
            tls,
            data_dir,
            kubernetes,
            kubernetes_tokens,
        } = self;
        let publisher = tokio::spawn(hub.clone().publish());
        // Weak: the writer must not keep the hub alive through shutdown.
        let status_writer = hub.store.shared().then(|| {
            let changes = hub.registry.status_changes();
            tokio::spawn(crate::status::share(Arc::downgrade(&hub), changes))
        });
        let shared = hub
            .store
            .changes()
            .map(|changes| tokio::spawn(forward_changes(hub.clone(), changes)));
        let shared_ca = hub
            .store
            .secret_changes()
            .map(|changes| tokio::spawn(follow_shared_ca(authority.clone(), changes)));
        let renewer = tokio::spawn(tls.clone().renew());
        let follower = tokio::spawn(follow_rotation(authority.clone(), tls.clone(), data_dir));
        let kube_tasks = kubernetes.map_or_else(Vec::new, |client| {
            let status = Arc::new(crate::kubernetes::Status::default());
            crate::kubernetes::spawn(client, hub.clone(), authority.clone(), status)
        });
        let key_refresher = kubernetes_tokens
            .as_ref()
            .map(|k| tokio::spawn(k.keys().clone().run()));
        let token = Arc::new(token);
        let check = move |request: tonic::Request<()>| token.check(&request).map(|()| request);
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            // Finds proxies that vanished without closing their connection, so their leases
            // start instead of lingering until the kernel gives up on the socket.
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            // hyper's default of 200 streams per connection would stall a client (a benchmark,
            // a node agent) that multiplexes many proxies' streams over one connection.
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .add_service(DiscoveryServer::new(DiscoveryService::new(hub.clone())))
            // No admin token here: the workload token in the request is the credential.
            .add_service(IdentityServer::new(IdentityService::new(
                authority.clone(),
                kubernetes_tokens,
            )))
            .add_service(AdminServer::with_interceptor(
                AdminService::new(hub.clone(), authority),
                check,
            ));
        tracing::info!(
            replica = hub.replica,
            store = hub.store.describe(),
            "weir-control replica {}",
            hub.replica
        );
        tracing::info!("weir-control listening on {local_addr}");
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
        let closing_hub = hub.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down");
            closing_hub.close();
            let _ = drained_tx.send(());
        };
        let server = router.serve_with_incoming_shutdown(tls.incoming(listener), signal);
        tokio::pin!(server);
        let deadline = async {
            if drained_rx.await.is_ok() {
                tokio::time::sleep(DRAIN_TIMEOUT).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let result = tokio::select! {
            result = &mut server => result,
            () = deadline => {
                tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; closing them");
                Ok(())
            }
        };
        publisher.abort();
        if let Some(writer) = &status_writer {
            writer.abort();
        }
        for task in shared.iter().chain(&shared_ca) {
            task.abort();
        }
        renewer.abort();
        follower.abort();
        for task in &kube_tasks {
            task.abort();
        }
        for task in kube_tasks {
            let _ = task.await;
        }
        if let Some(task) = key_refresher {
            task.abort();
        }
        let _ = publisher.await;
        release(hub).await;
        result.map_err(ServerError::from)
    }
}

/// After each root rotation step: a serving certificate from the signing root and the new
/// bundle on disk.
async fn follow_rotation(authority: Arc<Authority>, tls: Arc<ServingTls>, data_dir: PathBuf) {
    let mut changes = authority.subscribe();
    while changes.changed().await.is_ok() {
        let (generation, bundle) = changes.borrow_and_update().clone();
        if let Err(err) = write_trust_bundle(&data_dir, &bundle) {
            tracing::error!(%err, generation, "cannot write the new trust bundle");
        }
        if let Err(err) = tls.reissue() {
            tracing::error!(%err, generation, "cannot reissue the serving certificate");
        }
    }
}

/// Changes written to the shared store by any replica (this one included) wake the publisher,
/// which rebuilds from the store; a burst of them is one build.
async fn forward_changes(hub: Arc<Hub>, mut changes: tokio::sync::watch::Receiver<u64>) {
    while changes.changed().await.is_ok() {
        hub.changed();
    }
}

/// A rotation step run through another replica changes the secrets in the shared store: take
/// it up here too (signing root, bundle for this replica's proxies, serving certificate and
/// bundle file, through [`follow_rotation`]). While the store is away, retried until it answers.
async fn follow_shared_ca(
    authority: Arc<Authority>,
    mut changes: tokio::sync::watch::Receiver<u64>,
) {
    const RETRY: Duration = Duration::from_secs(2);
    while changes.changed().await.is_ok() {
        loop {
            let authority = authority.clone();
            match tokio::task::spawn_blocking(move || authority.reload()).await {
                Ok(Ok(_)) => break,
                Ok(Err(err)) => {
                    tracing::warn!(%err, "cannot read the CA rotation from the store; retrying");
                    tokio::time::sleep(RETRY).await;
                }
                Err(_) => return,
            }
        }
    }
}

/// Waits briefly for stream tasks to drop their handles, so the store file is closed when
/// `serve` returns and the same process (a test, a benchmark) can open it again.
async fn release(hub: Arc<Hub>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while Arc::strong_count(&hub) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
