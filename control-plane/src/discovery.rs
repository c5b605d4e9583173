//! `weir.discovery.v1.Discovery`: one long-lived stream per proxy.
//!
//! Per stream the server keeps a watch receiver, the proxy's status entry and one task reading
//! ACKs and NACKs; snapshots themselves are shared, so 10,000 streams cost 10,000 sends of one
//! prebuilt document list, not 10,000 builds.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};
use weir_proto::discovery::v1::discovery_server::Discovery;
use weir_proto::discovery::v1::{Hello, ProxyMessage, Snapshot, proxy_message};

use crate::hub::{Hub, Published};
use crate::registry::ProxyState;

pub struct DiscoveryService {
    hub: Arc<Hub>,
}

impl DiscoveryService {
    pub fn new(hub: Arc<Hub>) -> Self {
        DiscoveryService { hub }
    }
}

/// Nonces only need to differ between sends; a counter is cheaper than randomness.
static NONCE: AtomicU64 = AtomicU64::new(0);

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<Snapshot, Status>> + Send>>;

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type StreamStream = SnapshotStream;
    type DeltaStream = crate::delta::DeltaStream;

    async fn delta(
        &self,
        request: Request<Streaming<weir_proto::discovery::v1::DeltaRequest>>,
    ) -> Result<Response<Self::DeltaStream>, Status> {
        crate::delta::serve(&self.hub, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn stream(
        &self,
        request: Request<Streaming<ProxyMessage>>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(ProxyMessage {
                kind: Some(proxy_message::Kind::Hello(hello)),
            }) => hello,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message on a discovery stream must be Hello",
                ));
            }
            None => {
                return Err(Status::invalid_argument(
                    "stream closed before Hello; the first message must be Hello",
                ));
            }
        };
        let (connected, guard) = register(&self.hub, &hello).await?;
        let snapshots = self.hub.subscribe();
        tokio::spawn(read_answers(
            inbound,
            connected.state,
            guard,
            snapshots.clone(),
        ));
        Ok(Response::new(Box::pin(snapshot_stream(
            snapshots,
            connected.version,
        ))))
    }
}

/// Checks a Hello and registers the proxy (and its endpoint, if it gave an address). The
/// returned guard starts the registration's lease when dropped.
pub(crate) async fn register(
    hub: &Arc<Hub>,
    hello: &Hello,
) -> Result<(crate::registry::Connected, Registration), Status> {
    let (identity, address) = check_hello(hello, &hub.trust_domain)?;
    // A shared store's write waits on etcd: off the runtime's workers. The guard is made
    // there too, so a stream dropped while waiting still unregisters.
    let (registering, announced) = (hub.clone(), hello.clone());
    let registered = tokio::task::spawn_blocking(move || {
        let connected =
            registering
                .registry
                .connect(&announced, identity, address, &registering.store)?;
        let guard = Registration {
            hub: registering,
            stream: connected.stream,
        };
        Ok::<_, crate::store::StoreError>((connected, guard))
    })
    .await
    .map_err(|_| Status::internal("the registration task failed"))?
    .map_err(|err| {
        tracing::error!(%err, "cannot register proxy");
        Status::internal("cannot register the proxy; see the control plane's log")
    })?;
    hub.changed();
    tracing::debug!(
        service = hello.service,
        namespace = hello.namespace,
        address = hello.inbound_address,
        "proxy connected"
    );
    Ok(registered)
}

/// Checks what a proxy says about itself before it becomes an endpoint, so every synthesised
/// Endpoints document passes the same validation as an applied one. Returns the identity
/// (derived from the service account when not given) and the address to register.
fn check_hello(hello: &Hello, trust_domain: &str) -> Result<(String, Option<SocketAddr>), Status> {
    let mut problems = Vec::new();
    let identity = if hello.identity.is_empty() && !hello.service_account.is_empty() {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            hello.namespace, hello.service_account
        )
    } else {
        hello.identity.clone()
    };
    if !identity.is_empty() {
        if let Err(reason) = weir_policy::spiffe_id(&identity) {
            problems.push(format!("identity: {reason}"));
        } else if !identity.starts_with(&format!("spiffe://{trust_domain}/")) {
            problems.push(format!(
                "identity: {identity:?} is not in this mesh's trust domain {trust_domain:?}"
            ));
        }
    }
    let mut address = None;
    if !hello.inbound_address.is_empty() {
        for (field, value) in [("service", &hello.service), ("namespace", &hello.namespace)] {
            if let Err(reason) = weir_policy::dns_label(value) {
                problems.push(format!("{field}: {reason}"));
            }
        }
        match hello.inbound_address.parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => {
                problems.push(format!("inbound_address: port must not be 0, got {addr}"));
            }
            Ok(addr) => address = Some(addr),
            Err(_) => problems.push(format!(
                "inbound_address: not an ip:port address: {:?}",
                hello.inbound_address
            )),
        }
    }
    if problems.is_empty() {
        Ok((identity, address))
    } else {
        Err(Status::invalid_argument(format!(
            "invalid Hello:\n{}",
            problems.join("\n")
        )))
    }
}

/// Starts the lease of the stream's registration when dropped, however the reader ends.
pub(crate) struct Registration {
    hub: Arc<Hub>,
    stream: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.disconnect(self.stream);
    }
}

async fn read_answers(
    mut inbound: Streaming<ProxyMessage>,
    state: Arc<ProxyState>,
    guard: Registration,
    mut closing: watch::Receiver<Arc<Published>>,
) {
    loop {
        // On shutdown the reader lets go of the request side too; otherwise the stream stays
        // half-open until the proxy closes it and holds up the graceful drain.
        let message = tokio::select! {
            message = inbound.message() => message,
            _ = closing.wait_for(|p| p.closing) => break,
        };
        let message = match message {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(%status, "discovery stream ended");
                break;
            }
        };
        match message.kind {
            Some(proxy_message::Kind::Ack(ack)) => state.ack(ack.version),
            Some(proxy_message::Kind::Nack(nack)) => {
                tracing::warn!(
                    service = state.service,
                    namespace = state.namespace,
                    version = nack.version,
                    errors = nack.errors.join("; "),
                    "proxy rejected snapshot"
                );
                state.nack(nack.version, &nack.errors);
            }
            Some(proxy_message::Kind::Hello(_)) => {
                tracing::debug!("ignoring a second Hello on a discovery stream");
            }
            None => {}
        }
    }
    drop(guard);
}

/// The newest snapshot now (once it includes this proxy's registration), then the newest
/// after each change. Nothing is queued per stream: a slow proxy skips intermediate versions.
fn snapshot_stream(
    snapshots: watch::Receiver<Arc<Published>>,
    min_version: u64,
) -> impl Stream<Item = Result<Snapshot, Status>> + Send {
    futures_util::stream::unfold(
        (snapshots, true),
        move |(mut snapshots, first)| async move {
            let ready = if first {
                snapshots
                    .wait_for(|p| p.closing || p.version >= min_version)
                    .await
                    .is_ok()
            } else {
                snapshots.changed().await.is_ok()
            };
            if !ready {
                return None;
            }
            let published = snapshots.borrow_and_update().clone();
            if published.closing {
                return None;
            }
            let snapshot = Snapshot {
                version: published.version,
                nonce: NONCE.fetch_add(1, Ordering::Relaxed).to_string(),
                documents: published.documents.clone(),
                trust_bundle_pem: published.trust_bundle_pem.clone(),
                ca_generation: published.ca_generation,
            };
            Some((Ok(snapshot), (snapshots, false)))
        },
    )
}
