//! Live state that is not stored: endpoints registered by connected proxies (with their lease
//! after a stream ends) and the status of every proxy seen since start.
//!
//! The snapshot version is bumped only when what proxies see changes (the address set or the
//! agreed identity of a service), so a proxy that reconnects within its lease causes no push.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use weir_proto::discovery::v1::Hello;

use crate::status::{SharedProxy, StatusChanges};
use crate::store::{Store, StoreError, now_unix_ms};

/// `(namespace, service)`.
pub type ServiceKey = (String, String);

/// What one proxy said in its Hello, plus what it has answered since.
#[derive(Debug)]
pub struct ProxyState {
    /// The stream this proxy connected on: keys its shared status row.
    pub stream: u64,
    pub identity: String,
    pub service: String,
    pub namespace: String,
    pub inbound_address: String,
    pub proxy_version: String,
    pub connected_since_unix_ms: i64,
    connected: AtomicBool,
    acked: AtomicU64,
    // Rare, so a lock is fine; ACKs stay lock-free.
    nack: Mutex<Option<(u64, String)>>,
    /// Changed since the status writer last took this row.
    dirty: AtomicBool,
    changes: Arc<StatusChanges>,
}

impl ProxyState {
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn acked_version(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// `(version, errors joined by newlines)` of the last NACK.
    pub fn last_nack(&self) -> Option<(u64, String)> {
        lock(&self.nack).clone()
    }

    pub fn ack(&self, version: u64) {
        if self.acked.fetch_max(version, Ordering::Relaxed) < version {
            self.touch();
        }
    }

    pub fn nack(&self, version: u64, errors: &[String]) {
        *lock(&self.nack) = Some((version, errors.join("\n")));
        self.touch();
    }

    /// This row as the other replicas read it.
    pub fn shared(&self, replica: &str) -> SharedProxy {
        let (last_nack_version, last_nack_error) = self.last_nack().unwrap_or_default();
        SharedProxy {
            identity: self.identity.clone(),
            service: self.service.clone(),
            namespace: self.namespace.clone(),
            inbound_address: self.inbound_address.clone(),
            acked_version: self.acked_version(),
            last_nack_version,
            last_nack_error,
            connected_since_unix_ms: self.connected_since_unix_ms,
            connected: self.connected(),
            proxy_version: self.proxy_version.clone(),
            replica: replica.to_string(),
        }
    }

    /// Marks the row for the next status batch; wakes the writer only on the first change
    /// since the last batch, so a burst of ACKs costs one atomic swap each.
    fn touch(&self) {
        if !self.dirty.swap(true, Ordering::AcqRel) {
            self.changes.notify.notify_one();
        }
    }

    fn same_proxy(&self, other: &ProxyState) -> bool {
        self.identity == other.identity
            && self.service == other.service
            && self.namespace == other.namespace
            && self.inbound_address == other.inbound_address
    }
}

#[derive(Debug, Clone)]
struct Registration {
    stream: u64,
    address: SocketAddr,
    identity: String,
    /// Set when the stream ended; the registration goes away at the next expiry after this.
    leased: bool,
}

/// What proxies see of one registered service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    /// Sorted, without duplicates.
    pub addresses: Vec<SocketAddr>,
    /// Set when every registration names the same, non-empty identity.
    pub identity: Option<String>,
}

/// One registered endpoint, for `weirctl endpoints`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub address: SocketAddr,
    pub identity: String,
}

#[derive(Default)]
struct Inner {
    next_stream: u64,
    services: BTreeMap<ServiceKey, Vec<Registration>>,
    proxies: HashMap<u64, Arc<ProxyState>>,
}

#[derive(Default)]
pub struct Registry {
    inner: Mutex<Inner>,
    changes: Arc<StatusChanges>,
}

/// A registration's handle: the stream id to pass back to [`Registry::disconnect`].
pub struct Connected {
    pub stream: u64,
    pub state: Arc<ProxyState>,
    /// The snapshot version that includes this registration.
    pub version: u64,
}

// === impl Registry ===

impl Registry {
    /// Records a proxy and, when `address` is set, registers it as an endpoint of its service.
    pub fn connect(
        &self,
        hello: &Hello,
        identity: String,
        address: Option<SocketAddr>,
        store: &Store,
    ) -> Result<Connected, StoreError> {
        let mut version = store.version();
        let mut share = None;
        let (stream, state) = {
            let mut inner = self.lock();
            inner.next_stream += 1;
            let stream = inner.next_stream;
            let state = Arc::new(ProxyState {
                stream,
                identity: identity.clone(),
                service: hello.service.clone(),
                namespace: hello.namespace.clone(),
                inbound_address: hello.inbound_address.clone(),
                proxy_version: hello.proxy_version.clone(),
                connected_since_unix_ms: now_unix_ms(),
                connected: AtomicBool::new(true),
                acked: AtomicU64::new(0),
                nack: Mutex::new(None),
                dirty: AtomicBool::new(false),
                changes: self.changes.clone(),
            });
            // One status row per proxy, not per connection: a reconnect replaces the old row.
            let changes = &self.changes;
            inner.proxies.retain(|id, old| {
                let keep = old.connected() || !old.same_proxy(&state);
                if !keep {
                    changes.removed(*id);
                }
                keep
            });
            inner.proxies.insert(stream, state.clone());
            state.touch();
            if let Some(address) = address {
                let key = (hello.namespace.clone(), hello.service.clone());
                let regs = inner.services.entry(key.clone()).or_default();
                let before = view(regs);
                regs.push(Registration {
                    stream,
                    address,
                    identity: identity.clone(),
                    leased: false,
                });
                if store.shared() {
                    // Every registration goes to a shared store, for the other replicas'
                    // proxies, even when this replica's view does not change.
                    share = Some((key, address));
                } else if view(regs) != before {
                    // Under the registry lock: a snapshot built from version >= this one reads
                    // the registry afterwards and so includes the registration.
                    version = store.register(&key, stream, address, &identity)?;
                }
            }
            (stream, state)
        };
        // Written after the lock, so other proxies' connects do not queue behind etcd. The
        // registration is in the registry already, so a snapshot from the version etcd
        // answers with includes it.
        if let Some((key, address)) = share {
            match store.register(&key, stream, address, &identity) {
                Ok(v) => version = v,
                // A store that is away must not keep proxies from their snapshot: the
                // registration is written once the store answers again.
                Err(err) => tracing::warn!(%err, service = %key.1, "registration not yet shared"),
            }
        }
        Ok(Connected {
            stream,
            state,
            version,
        })
    }

    /// Marks the proxy disconnected and starts its registration's lease. Returns whether there
    /// is a registration for [`Registry::expire`] to remove later.
    pub fn disconnect(&self, stream: u64) -> bool {
        let mut inner = self.lock();
        if let Some(state) = inner.proxies.get(&stream).cloned() {
            state.connected.store(false, Ordering::Relaxed);
            state.touch();
            // The proxy already reconnected (the new stream won the race): keep only its row.
            let replaced = inner
                .proxies
                .iter()
                .any(|(id, other)| *id != stream && other.connected() && other.same_proxy(&state));
            if replaced {
                inner.proxies.remove(&stream);
                self.changes.removed(stream);
            }
        }
        let mut leased = false;
        for regs in inner.services.values_mut() {
            for reg in regs.iter_mut().filter(|r| r.stream == stream) {
                reg.leased = true;
                leased = true;
            }
        }
        leased
    }

    /// Removes the leased registration of `stream`. Returns the new version when what proxies
    /// see changed.
    pub fn expire(&self, stream: u64, store: &Store) -> Result<Option<u64>, StoreError> {
        let mut inner = self.lock();
        if store.shared() {
            let removed = remove_leased(&mut inner, stream).1;
            // After the lock, as in `connect`.
            drop(inner);
            let mut version = None;
            for key in &removed {
                version = Some(store.unregister(key, stream)?);
            }
            return Ok(version);
        }
        if remove_leased(&mut inner, stream).0 {
            return store.bump_version().map(Some);
        }
        Ok(None)
    }

    /// Every registered service as proxies should see it: this replica's registrations plus
    /// `shared`, those every replica keeps in a shared store (this replica's own are in there
    /// too, and count once).
    pub fn views(&self, shared: &[(ServiceKey, Registered)]) -> Vec<(ServiceKey, ServiceView)> {
        let inner = self.lock();
        let mut all: BTreeMap<&ServiceKey, Vec<(SocketAddr, &str)>> = BTreeMap::new();
        for (key, regs) in &inner.services {
            all.entry(key)
                .or_default()
                .extend(regs.iter().map(|r| (r.address, r.identity.as_str())));
        }
        for (key, reg) in shared {
            all.entry(key)
                .or_default()
                .push((reg.address, reg.identity.as_str()));
        }
        all.into_iter()
            .map(|(key, regs)| (key.clone(), view_of(regs.into_iter())))
            .collect()
    }

    /// Registered endpoints (leased ones included: proxies still get them), one per address.
    pub fn endpoints(&self) -> Vec<(ServiceKey, Vec<Registered>)> {
        let inner = self.lock();
        inner
            .services
            .iter()
            .map(|(key, regs)| {
                let mut out: Vec<Registered> = regs
                    .iter()
                    .map(|r| Registered {
                        address: r.address,
                        identity: r.identity.clone(),
                    })
                    .collect();
                out.sort_by(|a, b| (a.address, &a.identity).cmp(&(b.address, &b.identity)));
                out.dedup();
                (key.clone(), out)
            })
            .collect()
    }

    /// Every proxy seen since start, connected or not.
    pub fn proxies(&self) -> Vec<Arc<ProxyState>> {
        self.lock().proxies.values().cloned().collect()
    }

    /// The proxies whose status changed since the last call (each is then clean again).
    pub fn take_changed(&self) -> Vec<Arc<ProxyState>> {
        let inner = self.lock();
        inner
            .proxies
            .values()
            .filter(|p| p.dirty.swap(false, Ordering::AcqRel))
            .cloned()
            .collect()
    }

    /// Wakes the status writer and lists the rows removed since it last looked.
    pub fn status_changes(&self) -> Arc<StatusChanges> {
        self.changes.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }
}

/// Drops the leased registrations of `stream`: whether this replica's view changed, and the
/// services they were of.
fn remove_leased(inner: &mut Inner, stream: u64) -> (bool, Vec<ServiceKey>) {
    let mut changed = false;
    let mut removed = Vec::new();
    inner.services.retain(|key, regs| {
        if regs.iter().any(|r| r.stream == stream && r.leased) {
            let before = view(regs);
            regs.retain(|r| !(r.stream == stream && r.leased));
            changed |= view(regs) != before;
            removed.push(key.clone());
        }
        !regs.is_empty()
    });
    (changed, removed)
}

fn view(regs: &[Registration]) -> ServiceView {
    view_of(regs.iter().map(|r| (r.address, r.identity.as_str())))
}

/// Addresses sorted without duplicates; the identity when every registration agrees on one.
fn view_of<'a>(regs: impl Iterator<Item = (SocketAddr, &'a str)> + Clone) -> ServiceView {
    let mut addresses: Vec<SocketAddr> = regs.clone().map(|(a, _)| a).collect();
    addresses.sort();
    addresses.dedup();
    let mut identities = regs.map(|(_, i)| i);
    let first = identities.next().unwrap_or("");
    let agreed = !first.is_empty() && identities.all(|i| i == first);
    ServiceView {
        addresses,
        identity: agreed.then(|| first.to_string()),
    }
}

/// The data behind these locks stays consistent across a panic (single assignments), so a
/// poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
