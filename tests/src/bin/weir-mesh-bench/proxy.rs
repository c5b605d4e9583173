//! Simulated proxies on `Discovery.Delta`: each ACKs every response at once and counts what it
//! received, so a phase can tell who was reached, with how many bytes, and when they ACKed.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use prost::Message;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use weir_proto::discovery::v1::discovery_client::DiscoveryClient;
use weir_proto::discovery::v1::{
    DeltaAck, DeltaHello, DeltaRequest, DeltaResponse, Hello, delta_request,
};

pub const NAMESPACE: &str = "mesh";

/// Who one simulated proxy is.
#[derive(Clone, Debug)]
pub struct Spec {
    pub service: String,
    /// Keys "name.namespace".
    pub subscribe: Vec<String>,
}

impl Spec {
    pub fn calls(&self, service: &str) -> bool {
        let key = format!("{service}.{NAMESPACE}");
        self.subscribe.contains(&key)
    }
}

/// A unique inbound address per registration. Never dialled: the control plane only stores it
/// in Endpoints documents, and nothing here connects to anything but the control plane.
pub fn address(k: u64) -> String {
    let k = k + 1;
    format!("10.{}.{}.{}:4143", (k >> 16) & 255, (k >> 8) & 255, k & 255)
}

/// What one proxy slot has received; a rolling restart reuses the slot for the new stream.
#[derive(Default)]
pub struct Slot {
    pub bytes: AtomicU64,
    pub responses: AtomicU64,
    /// Phase whose target resource the last matching response carried, when it was ACKed (ns
    /// since `Shared::base`), its version and, for Endpoints, how many addresses it listed.
    /// `reach_phase` is stored last (Release).
    pub reach_phase: AtomicU64,
    pub reach_ns: AtomicU64,
    pub reach_version: AtomicU64,
    pub reach_addresses: AtomicU64,
    /// Generation of the newest stream that received its first response.
    pub ready: AtomicU64,
}

/// The resource a phase waits for.
pub struct Target {
    pub phase: u64,
    pub name: String,
}

pub struct Shared {
    pub base: Instant,
    pub target: Mutex<Arc<Target>>,
    pub slots: Vec<Slot>,
    /// Streams that received their first response.
    pub initial: AtomicUsize,
    /// Streams that ended without being dropped by the bench.
    pub closed: AtomicUsize,
    /// Resolutions with an empty service (the key named nothing in the mesh at the time).
    pub unresolved: AtomicUsize,
}

impl Shared {
    pub fn new(slots: usize) -> Shared {
        Shared {
            base: Instant::now(),
            target: Mutex::new(Arc::new(Target {
                phase: 0,
                name: String::new(),
            })),
            slots: (0..slots).map(|_| Slot::default()).collect(),
            initial: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            unresolved: AtomicUsize::new(0),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    pub fn set_target(&self, phase: u64, name: &str) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(Target {
            phase,
            name: name.to_string(),
        });
    }

    fn target(&self) -> Arc<Target> {
        self.target
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Bytes and responses of every slot, to diff a phase against.
    pub fn counters(&self) -> Vec<(u64, u64)> {
        self.slots
            .iter()
            .map(|s| {
                (
                    s.bytes.load(Ordering::Relaxed),
                    s.responses.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    pub fn total_bytes(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.bytes.load(Ordering::Relaxed))
            .sum()
    }
}

/// How to reach the control plane.
#[derive(Clone)]
pub struct Dial {
    pub endpoint: Endpoint,
    pub tls: Arc<rustls::ClientConfig>,
}

/// Connects slot `i` as `spec` registering `address` (its own TLS connection, as a real proxy
/// has), sends the DeltaHello and starts the task that ACKs every response.
pub async fn open(
    i: usize,
    generation: u64,
    spec: &Spec,
    address: String,
    dial: &Dial,
    shared: &Arc<Shared>,
) -> anyhow::Result<JoinHandle<()>> {
    let channel = weir_proto::dial::connect(dial.endpoint.clone(), dial.tls.clone())
        .await
        .with_context(|| format!("connect proxy {i}"))?;
    let (tx, rx) = mpsc::channel::<DeltaRequest>(4);
    let hello = DeltaHello {
        hello: Some(Hello {
            service: spec.service.clone(),
            namespace: NAMESPACE.into(),
            // One service account per service; the identity follows from the trust domain.
            service_account: spec.service.clone(),
            identity: String::new(),
            inbound_address: address,
            current_version: 0,
            proxy_version: "weir-mesh-bench".into(),
        }),
        known: Vec::new(),
        subscribe: spec.subscribe.clone(),
    };
    tx.send(DeltaRequest {
        kind: Some(delta_request::Kind::Hello(hello)),
    })
    .await
    .ok()
    .context("queue DeltaHello")?;
    let inbound = DiscoveryClient::new(channel.clone())
        .delta(ReceiverStream::new(rx))
        .await
        .with_context(|| format!("delta stream {i}"))?
        .into_inner();
    Ok(tokio::spawn(read(
        i,
        generation,
        channel,
        inbound,
        tx,
        shared.clone(),
    )))
}

/// ACKs each response, then records it. Aborting the task drops the stream and, with the last
/// handle, the connection: a proxy going away.
async fn read(
    i: usize,
    generation: u64,
    _channel: Channel,
    mut inbound: tonic::Streaming<DeltaResponse>,
    tx: mpsc::Sender<DeltaRequest>,
    shared: Arc<Shared>,
) {
    let slot = &shared.slots[i];
    let mut first = true;
    while let Ok(Some(response)) = inbound.message().await {
        let ack = DeltaRequest {
            kind: Some(delta_request::Kind::Ack(DeltaAck {
                nonce: response.nonce.clone(),
                nacks: Vec::new(),
            })),
        };
        if tx.send(ack).await.is_err() {
            break;
        }
        let now = shared.now_ns();
        slot.bytes
            .fetch_add(response.encoded_len() as u64, Ordering::Relaxed);
        slot.responses.fetch_add(1, Ordering::Relaxed);
        let unresolved = response
            .resolutions
            .iter()
            .filter(|r| r.service.is_empty())
            .count();
        if unresolved > 0 {
            shared.unresolved.fetch_add(unresolved, Ordering::Relaxed);
        }
        let target = shared.target();
        if let Some(r) = response.resources.iter().find(|r| r.name == target.name) {
            let addresses = r
                .document
                .as_ref()
                .filter(|_| r.name.starts_with("Endpoints/"))
                .map_or(0, |d| count(&d.json, b":4143\""));
            slot.reach_ns.store(now, Ordering::Relaxed);
            slot.reach_version.store(r.version, Ordering::Relaxed);
            slot.reach_addresses.store(addresses, Ordering::Relaxed);
            slot.reach_phase.store(target.phase, Ordering::Release);
        }
        if first {
            first = false;
            slot.ready.store(generation, Ordering::Release);
            shared.initial.fetch_add(1, Ordering::Release);
        }
    }
    shared.closed.fetch_add(1, Ordering::Release);
}

fn count(haystack: &[u8], needle: &[u8]) -> u64 {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count() as u64
}
