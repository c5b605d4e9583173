//! The etcd backend: several `weir-control` replicas share one mesh through it.
//!
//! Keys live under a prefix (`/weir/` by default): `objects/KIND/NS/NAME`,
//! `history/KIND/NS/NAME/REVISION`, `secrets/NAME`, `tokens/ID`, and under each replica's lease
//! `registrations/NS/SVC/REPLICA/STREAM`, `status/REPLICA/STREAM` and `replicas/REPLICA`. The
//! snapshot version is the etcd revision of the last change proxies see (`status/` and
//! `replicas/` are not), so every replica agrees on it. A write reads what it needs, then commits in one
//! etcd transaction that checks nothing it read has changed since (and starts over if it has),
//! which makes concurrent applies through different replicas as safe as applies through one.
//!
//! The rest of the server calls the store synchronously (from the blocking pool), so etcd's
//! async client runs on a small runtime of its own and each call waits for its answer.

mod client;
mod dial;
mod election;
mod lease;
mod ops;
mod optimistic;
mod shared;
mod status;
mod tls;
mod watch;

use std::sync::mpsc;
use std::time::Duration;

use weir_proto::etcd::etcdserverpb as pb;

use super::error::StoreError;
use super::tables::Tables;
use super::types::{ObjectKey, Record, ResultsChanged, decode, display_key};
use client::{Client, prefix_end};
pub use tls::{ClientCert, EtcdTls};

/// How often a write starts over after losing a race with another writer before giving up.
const WRITE_ATTEMPTS: usize = 16;

/// How often a replica checks whether it leads a duty, or can take the lead.
pub const ELECTION_POLL: Duration = election::POLL;

/// How long a stopping replica waits to hand its duties over before leaving them to lapse.
const RESIGN_WITHIN: Duration = Duration::from_secs(1);

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
    /// The name this replica asks for; it gets `NAME-2`, `NAME-3`… when another live replica
    /// holds it.
    pub replica: String,
    /// Tells a previous run of this replica (which may still hold the name) from another
    /// replica; empty: a random one, so the name is never taken over.
    pub instance: String,
    /// For `https://` endpoints (refused with `http://` ones).
    pub tls: EtcdTls,
}

impl EtcdConfig {
    /// `etcd:http://h1:2379,http://h2:2379` or `etcd:https://…`: every endpoint with the same
    /// scheme, since one TLS configuration (see [`EtcdTls`]) serves them all.
    pub fn parse(spec: &str) -> Result<EtcdConfig, String> {
        let usage = "etcd:http://HOST:PORT[,http://HOST:PORT…] (or https://)";
        let Some(list) = spec.strip_prefix("etcd:") else {
            return Err(format!(
                "unknown store {spec:?}: use `embedded` or `{usage}`"
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
            let Some(rest) = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
            else {
                return Err(format!(
                    "etcd endpoint {url:?} must start with http:// or https://"
                ));
            };
            if rest.is_empty() || rest.contains('/') {
                return Err(format!(
                    "etcd endpoint {url:?} must be http://HOST:PORT or https://HOST:PORT"
                ));
            }
        }
        let https = endpoints
            .iter()
            .filter(|url| url.starts_with("https://"))
            .count();
        if https != 0 && https != endpoints.len() {
            return Err(format!(
                "etcd endpoints {list:?} mix http:// and https://: give every member with the \
                 same scheme (https:// when etcd serves TLS)"
            ));
        }
        Ok(EtcdConfig {
            endpoints,
            prefix: "/weir/".into(),
            request_timeout: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(10),
            replica: crate::replica::default_name(),
            instance: String::new(),
            tls: EtcdTls::default(),
        })
    }

    /// The endpoints are `https://` (`parse` makes them all the same scheme).
    pub fn https(&self) -> bool {
        self.endpoints
            .first()
            .is_some_and(|url| url.starts_with("https://"))
    }
}

pub(super) struct Etcd {
    client: Client,
    prefix: String,
    /// Owned here so the store works from any thread; see the module comment.
    runtime: Option<tokio::runtime::Runtime>,
    changes: tokio::sync::watch::Receiver<u64>,
    secret_changes: tokio::sync::watch::Receiver<u64>,
    lease: std::sync::Arc<lease::Lease>,
    /// This replica's name (claimed under `replicas/`): tells its registrations and proxy
    /// status apart from the others'.
    replica: String,
    /// The `leaders/DUTY` keys this replica campaigns for, to resign when it stops.
    duties: std::sync::Mutex<Vec<Vec<u8>>>,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which an async caller must not do.
        if let Some(runtime) = self.runtime.take() {
            self.resign_all(&runtime);
            runtime.shutdown_background();
        }
    }
}

// === impl Etcd ===

impl Etcd {
    pub(super) fn open(config: EtcdConfig) -> Result<Etcd, StoreError> {
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|err| {
            StoreError::Unavailable(format!("no randomness for a replica id: {err}"))
        })?;
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
            Client::new(&config)
        };
        let client = match client {
            Ok(client) => client,
            Err(err) => {
                // Dropping a runtime blocks, and `open` may run in an async context (see Drop).
                runtime.shutdown_background();
                return Err(err);
            }
        };
        let (tx, changes) = tokio::sync::watch::channel(0);
        let (secrets_tx, secret_changes) = tokio::sync::watch::channel(0);
        let instance = if config.instance.is_empty() {
            let mut id = [0u8; 16];
            getrandom::fill(&mut id).map_err(|err| {
                StoreError::Unavailable(format!("no randomness for a replica id: {err}"))
            })?;
            hex::encode(id)
        } else {
            config.instance.clone()
        };
        let mut store = Etcd {
            client,
            prefix: config.prefix,
            runtime: Some(runtime),
            changes,
            secret_changes,
            lease: Default::default(),
            replica: String::new(),
            duties: Default::default(),
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
        store.replica = store.claim(&crate::replica::sanitise(&config.replica), &instance)?;
        if let Some(runtime) = &store.runtime {
            runtime.spawn(watch::run(
                store.client.clone(),
                store.prefix.clone(),
                store.unversioned(),
                from,
                watch::Targets {
                    all: tx,
                    secrets: secrets_tx,
                },
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

    /// This replica's name, unique among the live replicas.
    pub(super) fn replica(&self) -> &str {
        &self.replica
    }

    pub(super) fn describe(&self) -> String {
        format!("etcd ({})", self.client.urls())
    }

    pub(super) fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Whether this replica leads `duty`, kept current by a campaign on the store's runtime.
    pub(super) fn leadership(&self, duty: &str) -> tokio::sync::watch::Receiver<bool> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let key = self.key(&["leaders", duty]);
        if let Some(runtime) = &self.runtime {
            self.duties
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(key.clone());
            runtime.spawn(election::campaign(
                self.client.clone(),
                self.lease.clone(),
                key,
                self.replica.clone(),
                tx,
            ));
        }
        rx
    }

    /// Best effort and bounded: a replica stopping while etcd is away leaves its lead to lapse
    /// with its lease instead of holding up the shutdown.
    fn resign_all(&self, runtime: &tokio::runtime::Runtime) {
        let keys = std::mem::take(&mut *self.duties.lock().unwrap_or_else(|p| p.into_inner()));
        if keys.is_empty() {
            return;
        }
        let (client, me) = (self.client.clone(), self.replica.clone());
        let (tx, rx) = mpsc::sync_channel(1);
        runtime.spawn(async move {
            for key in keys {
                election::resign(&client, key, &me).await;
            }
            let _ = tx.send(());
        });
        let _ = rx.recv_timeout(RESIGN_WITHIN);
    }

    pub(super) fn secret_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.secret_changes.clone()
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
            let mut tables = optimistic::EtcdTables::new(self);
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
