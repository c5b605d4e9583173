//! The etcd backend: several `weir-control` replicas share one mesh through it.
//!
//! Keys live under a prefix (`/weir/` by default): `objects/KIND/NS/NAME`,
//! `history/KIND/NS/NAME/REVISION`, `secrets/NAME`, `tokens/ID`. The snapshot version is the
//! etcd revision, so every replica agrees on it. A write reads what it needs, then commits in one
//! etcd transaction that checks nothing it read has changed since (and starts over if it has),
//! which makes concurrent applies through different replicas as safe as applies through one.
//!
//! The rest of the server calls the store synchronously (from the blocking pool), so etcd's
//! async client runs on a small runtime of its own and each call waits for its answer.

mod client;
mod lease;
mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use weir_proto::etcd::etcdserverpb::{self as pb, compare, request_op};

use super::tables::Tables;
use super::{ObjectKey, Record, ResultsChanged, StoreError, decode, display_key, encode};
use crate::registry::{Registered, ServiceKey};
use client::{Client, prefix_end};

/// `(key, value)` as read.
type KeyValue = (Vec<u8>, Vec<u8>);

/// How often a write starts over after losing a race with another writer before giving up.
const WRITE_ATTEMPTS: usize = 16;

/// Where the etcd store is and how to talk to it (`--store etcd:URL,URL…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// Every key starts with it; several meshes can share one etcd under different prefixes.
    pub prefix: String,
    /// Per request, per endpoint.
    pub request_timeout: Duration,
    /// How long this replica's registrations outlive it (its etcd lease's TTL).
    pub lease_ttl: Duration,
}

impl EtcdConfig {
    /// `etcd:http://h1:2379,http://h2:2379`. Only `http://` for now: the endpoints are expected
    /// on a private network or loopback.
    pub fn parse(spec: &str) -> Result<EtcdConfig, String> {
        let Some(list) = spec.strip_prefix("etcd:") else {
            return Err(format!(
                "unknown store {spec:?}: use `embedded` or `etcd:http://HOST:PORT[,http://HOST:PORT…]`"
            ));
        };
        let endpoints: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return Err(
                "--store etcd: needs at least one endpoint, e.g. etcd:http://127.0.0.1:2379".into(),
            );
        }
        for url in &endpoints {
            let rest = url.strip_prefix("http://").ok_or_else(|| {
                format!("etcd endpoint {url:?} must start with http:// (TLS to etcd is not supported yet)")
            })?;
            if rest.is_empty() || rest.contains('/') {
                return Err(format!("etcd endpoint {url:?} must be http://HOST:PORT"));
            }
        }
        Ok(EtcdConfig {
            endpoints,
            prefix: "/weir/".into(),
            request_timeout: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(10),
        })
    }
}

pub(super) struct Etcd {
    client: Client,
    prefix: String,
    /// Owned here so the store works from any thread; see the module comment.
    runtime: Option<tokio::runtime::Runtime>,
    changes: tokio::sync::watch::Receiver<u64>,
    lease: std::sync::Arc<lease::Lease>,
    /// Tells this replica's registrations apart from the others'.
    replica: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which an async caller must not do.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

// === impl Etcd ===

impl Etcd {
    pub(super) fn open(config: EtcdConfig) -> Result<Etcd, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-store")
            .enable_all()
            .build()
            .map_err(|err| {
                StoreError::Unavailable(format!("cannot start the etcd client: {err}"))
            })?;
        let client = {
            let _guard = runtime.enter();
            Client::new(&config.endpoints, config.request_timeout)?
        };
        let (tx, changes) = tokio::sync::watch::channel(0);
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|err| {
            StoreError::Unavailable(format!("no randomness for a replica id: {err}"))
        })?;
        let store = Etcd {
            client,
            prefix: config.prefix,
            runtime: Some(runtime),
            changes,
            lease: Default::default(),
            replica: hex::encode(id),
        };
        // Fails here, at start, when no member answers: better than a server that looks up but
        // cannot read its policy.
        let start = store.block(|c, prefix| async move {
            let probe = c
                .range(pb::RangeRequest {
                    key: prefix.into_bytes(),
                    count_only: true,
                    ..Default::default()
                })
                .await?;
            Ok::<_, StoreError>(probe)
        })?;
        // Nothing under the prefix changed after this revision, so it is a version no proxy can
        // have seen ahead of.
        store.client.saw(start.header.as_ref());
        let from = store.client.revision();
        let ttl = config.lease_ttl;
        let id = store.block(move |c, _| async move { lease::grant(&c, ttl).await })?;
        lease::install(&store.lease, id);
        if let Some(runtime) = &store.runtime {
            runtime.spawn(watch::run(
                store.client.clone(),
                store.prefix.clone(),
                from,
                tx,
            ));
            runtime.spawn(lease::keep_alive(
                store.client.clone(),
                store.lease.clone(),
                ttl,
            ));
        }
        Ok(store)
    }

    /// Runs an etcd call on the store's runtime and waits for it, from any thread.
    fn block<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Client, String) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let Some(runtime) = &self.runtime else {
            return Err(StoreError::Unavailable("etcd store is shut down".into()));
        };
        let (tx, rx) = mpsc::sync_channel(1);
        let fut = call(self.client.clone(), self.prefix.clone());
        runtime.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| StoreError::Unavailable("etcd store call was dropped".into()))?
    }

    fn key(&self, parts: &[&str]) -> Vec<u8> {
        let mut key = self.prefix.clone();
        key.push_str(&parts.join("/"));
        key.into_bytes()
    }

    fn read(&self, key: Vec<u8>, range: bool) -> Result<pb::RangeResponse, StoreError> {
        self.block(move |c, _| async move {
            let range_end = if range { prefix_end(&key) } else { Vec::new() };
            c.range(pb::RangeRequest {
                key,
                range_end,
                ..Default::default()
            })
            .await
        })
    }

    fn txn(&self, request: pb::TxnRequest) -> Result<pb::TxnResponse, StoreError> {
        self.block(move |c, _| async move { c.txn(request).await })
    }

    pub(super) fn describe(&self) -> String {
        format!("etcd ({})", self.client.urls())
    }

    pub(super) fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.clone()
    }

    /// A linearizable read: answers only when the cluster has a quorum.
    pub(super) fn healthy(&self) -> Result<(), StoreError> {
        let key = self.key(&["health"]);
        self.read(key, false).map(|_| ())
    }

    pub(super) fn version(&self) -> u64 {
        self.client.revision()
    }

    /// A write that changes nothing proxies read, so its revision is a new version for changes
    /// that live in memory (registrations, roots).
    pub(super) fn bump_version(&self) -> Result<u64, StoreError> {
        let key = self.key(&["version-bump"]);
        self.block(move |c, _| async move { c.put(key, Vec::new(), 0).await })
    }

    pub(super) fn write<T: ResultsChanged>(
        &self,
        dry_run: bool,
        f: &dyn Fn(&mut dyn Tables) -> Result<T, StoreError>,
    ) -> Result<(T, u64), StoreError> {
        for _ in 0..WRITE_ATTEMPTS {
            let mut tables = EtcdTables {
                store: self,
                read_revision: 0,
                compares: Vec::new(),
                writes: BTreeMap::new(),
            };
            let result = f(&mut tables)?;
            if dry_run || !result.changed() {
                return Ok((result, self.version()));
            }
            let request = tables.into_txn();
            let response = self.txn(request)?;
            if response.succeeded {
                let version = response
                    .header
                    .and_then(|h| u64::try_from(h.revision).ok())
                    .unwrap_or(0);
                return Ok((result, version));
            }
            // Another replica wrote something this write read: read again and redo it.
        }
        Err(StoreError::Precondition(format!(
            "the objects kept changing under this write ({WRITE_ATTEMPTS} attempts); try again"
        )))
    }

    pub(super) fn objects(
        &self,
        kind: Option<&str>,
    ) -> Result<Vec<(ObjectKey, Record)>, StoreError> {
        let prefix = match kind {
            Some(kind) => self.key(&["objects", kind, ""]),
            None => self.key(&["objects", ""]),
        };
        let base = self.key(&["objects", ""]).len();
        let response = self.read(prefix, true)?;
        let mut out = Vec::with_capacity(response.kvs.len());
        for kv in response.kvs {
            let (key, record) = object_entry(&kv.key[base..], &kv.value)?;
            out.push((key, record));
        }
        Ok(out)
    }

    pub(super) fn history(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
    ) -> Result<Vec<Record>, StoreError> {
        let display = display_key(kind, ns, name);
        let response = self.read(self.key(&["history", kind, ns, name, ""]), true)?;
        response
            .kvs
            .iter()
            .map(|kv| decode(&display, text(&display, &kv.value)?))
            .collect()
    }

    fn registration_key(&self, (ns, service): &ServiceKey, stream: u64) -> Vec<u8> {
        let stream = stream.to_string();
        self.key(&["registrations", ns, service, &self.replica, &stream])
    }

    pub(super) fn register(
        &self,
        service: &ServiceKey,
        stream: u64,
        address: SocketAddr,
        identity: &str,
    ) -> Result<u64, StoreError> {
        let key = self.registration_key(service, stream);
        let value = serde_json::to_vec(&SharedRegistration {
            address,
            identity: identity.to_string(),
        })
        .map_err(|err| StoreError::Corrupt {
            key: String::from_utf8_lossy(&key).into_owned(),
            reason: err.to_string(),
        })?;
        self.lease.hold(key.clone(), value.clone());
        let lease = self.lease.id();
        let written = self.block(move |c, _| async move { c.put(key, value, lease).await });
        if written.is_err() {
            self.lease.mark_dirty();
        }
        written
    }

    pub(super) fn unregister(&self, service: &ServiceKey, stream: u64) -> Result<u64, StoreError> {
        let key = self.registration_key(service, stream);
        self.lease.release(&key);
        let delete = pb::TxnRequest {
            compare: Vec::new(),
            success: vec![delete_op(key)],
            failure: Vec::new(),
        };
        let response = self.txn(delete)?;
        Ok(response
            .header
            .and_then(|h| u64::try_from(h.revision).ok())
            .unwrap_or_else(|| self.version()))
    }

    pub(super) fn registrations(&self) -> Result<Vec<(ServiceKey, Registered)>, StoreError> {
        let prefix = self.key(&["registrations", ""]);
        let base = prefix.len();
        let response = self.read(prefix, true)?;
        let mut out = Vec::with_capacity(response.kvs.len());
        for kv in response.kvs {
            let rest = String::from_utf8_lossy(&kv.key[base..]).into_owned();
            let mut parts = rest.split('/');
            let (Some(ns), Some(service)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(reg) = serde_json::from_slice::<SharedRegistration>(&kv.value) else {
                tracing::warn!(key = rest, "skipping a registration that does not parse");
                continue;
            };
            out.push((
                (ns.to_string(), service.to_string()),
                Registered {
                    address: reg.address,
                    identity: reg.identity,
                },
            ));
        }
        Ok(out)
    }

    pub(super) fn insert_secret(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let key = self.key(&["secrets", name]);
        let response = self.txn(pb::TxnRequest {
            compare: vec![absent(&key)],
            success: vec![put_op(&key, value)],
            failure: vec![range_op(&key)],
        })?;
        if response.succeeded {
            return Ok(value.to_vec());
        }
        first_value(response).ok_or_else(|| StoreError::Corrupt {
            key: format!("secret {name}"),
            reason: "exists but could not be read".into(),
        })
    }

    pub(super) fn put_secrets(&self, secrets: &[(&str, &[u8])]) -> Result<(), StoreError> {
        let success = secrets
            .iter()
            .map(|(name, value)| put_op(&self.key(&["secrets", name]), value))
            .collect();
        self.txn(pb::TxnRequest {
            compare: Vec::new(),
            success,
            failure: Vec::new(),
        })
        .map(|_| ())
    }

    pub(super) fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let response = self.read(self.key(&["secrets", name]), false)?;
        Ok(response.kvs.into_iter().next().map(|kv| kv.value))
    }

    pub(super) fn insert_token(&self, id: &str, value: &str) -> Result<bool, StoreError> {
        let key = self.key(&["tokens", id]);
        let response = self.txn(pb::TxnRequest {
            compare: vec![absent(&key)],
            success: vec![put_op(&key, value.as_bytes())],
            failure: Vec::new(),
        })?;
        Ok(response.succeeded)
    }

    pub(super) fn update_token(
        &self,
        id: &str,
        f: &dyn Fn(&str) -> Result<String, StoreError>,
    ) -> Result<Option<String>, StoreError> {
        let key = self.key(&["tokens", id]);
        for _ in 0..WRITE_ATTEMPTS {
            let response = self.read(key.clone(), false)?;
            let Some(kv) = response.kvs.into_iter().next() else {
                return Ok(None);
            };
            let updated = f(text(&format!("token {id}"), &kv.value)?)?;
            let response = self.txn(pb::TxnRequest {
                compare: vec![unchanged_since(&key, Vec::new(), kv.mod_revision)],
                success: vec![put_op(&key, updated.as_bytes())],
                failure: Vec::new(),
            })?;
            if response.succeeded {
                return Ok(Some(updated));
            }
        }
        Err(StoreError::Precondition(format!(
            "token {id} kept changing under this write; try again"
        )))
    }

    pub(super) fn token(&self, id: &str) -> Result<Option<String>, StoreError> {
        let response = self.read(self.key(&["tokens", id]), false)?;
        response
            .kvs
            .into_iter()
            .next()
            .map(|kv| text(&format!("token {id}"), &kv.value).map(str::to_string))
            .transpose()
    }

    pub(super) fn tokens(&self) -> Result<Vec<(String, String)>, StoreError> {
        let prefix = self.key(&["tokens", ""]);
        let base = prefix.len();
        let response = self.read(prefix, true)?;
        response
            .kvs
            .iter()
            .map(|kv| {
                let id = String::from_utf8_lossy(&kv.key[base..]).into_owned();
                let value = text(&format!("token {id}"), &kv.value)?.to_string();
                Ok((id, value))
            })
            .collect()
    }
}

/// One optimistic write transaction: reads go to etcd at one revision and are remembered as
/// "unchanged since" conditions; writes are buffered and committed together with them.
struct EtcdTables<'a> {
    store: &'a Etcd,
    /// The revision every read of this transaction sees; 0 until the first read.
    read_revision: i64,
    compares: Vec<pb::Compare>,
    /// `None` deletes the key.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl EtcdTables<'_> {
    fn range(&mut self, key: Vec<u8>, range_end: Vec<u8>) -> Result<Vec<KeyValue>, StoreError> {
        let revision = self.read_revision;
        let (k, end) = (key.clone(), range_end.clone());
        let response = self.store.block(move |c, _| async move {
            c.range(pb::RangeRequest {
                key: k,
                range_end: end,
                revision,
                ..Default::default()
            })
            .await
        })?;
        if self.read_revision == 0 {
            self.read_revision = response.header.as_ref().map_or(0, |h| h.revision);
        }
        self.compares
            .push(unchanged_since(&key, range_end.clone(), self.read_revision));
        let mut found: BTreeMap<Vec<u8>, Vec<u8>> = response
            .kvs
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect();
        // This transaction's own writes win over what etcd holds.
        for (k, v) in &self.writes {
            let inside = if range_end.is_empty() {
                *k == key
            } else {
                *k >= key && *k < range_end
            };
            if inside {
                match v {
                    Some(v) => found.insert(k.clone(), v.clone()),
                    None => found.remove(k),
                };
            }
        }
        Ok(found.into_iter().collect())
    }

    fn get_record(&mut self, key: Vec<u8>, display: &str) -> Result<Option<Record>, StoreError> {
        match self.range(key, Vec::new())?.into_iter().next() {
            Some((_, value)) => decode(display, text(display, &value)?).map(Some),
            None => Ok(None),
        }
    }

    fn into_txn(self) -> pb::TxnRequest {
        let success = self
            .writes
            .into_iter()
            .map(|(key, value)| match value {
                Some(value) => put_op(&key, &value),
                None => delete_op(key),
            })
            .collect();
        pb::TxnRequest {
            compare: self.compares,
            success,
            failure: Vec::new(),
        }
    }
}

impl Tables for EtcdTables<'_> {
    fn object(&mut self, kind: &str, ns: &str, name: &str) -> Result<Option<Record>, StoreError> {
        let key = self.store.key(&["objects", kind, ns, name]);
        self.get_record(key, &display_key(kind, ns, name))
    }

    fn revision(
        &mut self,
        kind: &str,
        ns: &str,
        name: &str,
        revision: u64,
    ) -> Result<Option<Record>, StoreError> {
        let key = self
            .store
            .key(&["history", kind, ns, name, &revision_key(revision)]);
        self.get_record(key, &display_key(kind, ns, name))
    }

    fn of_kind(&mut self, kind: &str) -> Result<Vec<(String, String, Record)>, StoreError> {
        let prefix = self.store.key(&["objects", kind, ""]);
        let base = self.store.key(&["objects", ""]).len();
        let end = prefix_end(&prefix);
        let mut out = Vec::new();
        for (key, value) in self.range(prefix, end)? {
            let ((_, ns, name), record) = object_entry(&key[base..], &value)?;
            out.push((ns, name, record));
        }
        Ok(out)
    }

    fn write_revision(
        &mut self,
        kind: &str,
        ns: &str,
        name: &str,
        record: &Record,
        drop_revision: Option<u64>,
    ) -> Result<(), StoreError> {
        let value = encode(&display_key(kind, ns, name), record)?.into_bytes();
        let object = self.store.key(&["objects", kind, ns, name]);
        let history = self
            .store
            .key(&["history", kind, ns, name, &revision_key(record.revision)]);
        self.writes.insert(object, Some(value.clone()));
        self.writes.insert(history, Some(value));
        if let Some(old) = drop_revision {
            let old = self
                .store
                .key(&["history", kind, ns, name, &revision_key(old)]);
            self.writes.insert(old, None);
        }
        Ok(())
    }
}

/// A registration as other replicas read it.
#[derive(serde::Serialize, serde::Deserialize)]
struct SharedRegistration {
    address: SocketAddr,
    identity: String,
}

/// Zero-padded so history keys sort by revision.
fn revision_key(revision: u64) -> String {
    format!("{revision:020}")
}

/// `KIND/NS/NAME` (after the `objects/` prefix) and its record.
fn object_entry(rest: &[u8], value: &[u8]) -> Result<(ObjectKey, Record), StoreError> {
    let rest = String::from_utf8_lossy(rest);
    let mut parts = rest.splitn(3, '/');
    let (Some(kind), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(StoreError::Corrupt {
            key: rest.to_string(),
            reason: "object key is not KIND/NAMESPACE/NAME".into(),
        });
    };
    let display = display_key(kind, ns, name);
    let record = decode(&display, text(&display, value)?)?;
    Ok(((kind.into(), ns.into(), name.into()), record))
}

fn text<'a>(key: &str, value: &'a [u8]) -> Result<&'a str, StoreError> {
    std::str::from_utf8(value).map_err(|_| StoreError::Corrupt {
        key: key.to_string(),
        reason: "not UTF-8".into(),
    })
}

/// The key does not exist.
fn absent(key: &[u8]) -> pb::Compare {
    pb::Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::CreateRevision(0)),
        range_end: Vec::new(),
    }
}

/// No key in `key..range_end` (or `key` alone) was written after `revision`. A key that did not
/// exist compares as revision 0, so one created since fails the check too.
fn unchanged_since(key: &[u8], range_end: Vec<u8>, revision: i64) -> pb::Compare {
    pb::Compare {
        result: compare::CompareResult::Less as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.to_vec(),
        target_union: Some(compare::TargetUnion::ModRevision(revision + 1)),
        range_end,
    }
}

fn put_op(key: &[u8], value: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestPut(pb::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })),
    }
}

fn delete_op(key: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest {
                key,
                ..Default::default()
            },
        )),
    }
}

fn range_op(key: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestRange(pb::RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

/// The value read by the first range operation of a transaction's answer.
fn first_value(response: pb::TxnResponse) -> Option<Vec<u8>> {
    use pb::response_op::Response;
    response
        .responses
        .into_iter()
        .find_map(|op| match op.response {
            Some(Response::ResponseRange(range)) => range.kvs.into_iter().next().map(|kv| kv.value),
            _ => None,
        })
}
