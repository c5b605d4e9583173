//! This replica's etcd lease: the registrations of the proxies connected to it live under it,
//! so when the replica dies (no keep-alive within the TTL) etcd drops them and every other
//! replica's watch sees the endpoints go; its proxies' status rows and its name go too. A lease
//! lost while etcd was unreachable is replaced and everything held is written again under the
//! new one, with the newest values (also after a failed write, once etcd answers).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use weir_proto::etcd::etcdserverpb as pb;
use weir_proto::etcd::etcdserverpb::lease_client::LeaseClient;

use super::client::Client;
use super::ops::{delete_op, put_leased_op};
use crate::store::StoreError;

/// etcd's default `--max-txn-ops` is 128: batches are cut below it.
pub(super) const MAX_TXN_OPS: usize = 100;

/// The lease and what lives under it.
#[derive(Default)]
pub(super) struct Lease {
    id: AtomicI64,
    /// Key → newest value of everything this replica holds (registrations, proxy status, its
    /// name), to rewrite under a new lease or after a failed write.
    own: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    /// Keys let go of whose delete failed: deleted again by the rewrite.
    gone: Mutex<std::collections::BTreeSet<Vec<u8>>>,
    /// A write of a held key failed (etcd was away): rewrite them all once it answers.
    dirty: std::sync::atomic::AtomicBool,
    /// Held by a batch write and by the rewrite, so a rewrite that read older values cannot
    /// land after a batch that wrote newer ones.
    pub(super) writes: tokio::sync::Mutex<()>,
}

impl Lease {
    pub(super) fn id(&self) -> i64 {
        self.id.load(Ordering::Acquire)
    }

    pub(super) fn hold(&self, key: Vec<u8>, value: Vec<u8>) {
        lock(&self.gone).remove(&key);
        lock(&self.own).insert(key, value);
    }

    pub(super) fn release(&self, key: &[u8]) {
        lock(&self.own).remove(key);
    }

    /// A released key whose delete did not reach etcd: the rewrite deletes it.
    pub(super) fn forget_later(&self, key: Vec<u8>) {
        if !lock(&self.own).contains_key(&key) {
            lock(&self.gone).insert(key);
        }
    }

    pub(super) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    fn held(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let own = lock(&self.own);
        own.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) async fn grant(client: &Client, ttl: Duration) -> Result<i64, StoreError> {
    let request = pb::LeaseGrantRequest {
        ttl: i64::try_from(ttl.as_secs().max(2)).unwrap_or(i64::MAX),
        id: 0,
    };
    let mut failures = Vec::new();
    for (at, url, channel) in client.order() {
        match LeaseClient::new(channel).lease_grant(request).await {
            Ok(response) if response.get_ref().error.is_empty() => {
                client.prefer(at);
                return Ok(response.into_inner().id);
            }
            Ok(response) => failures.push(format!("{url}: {}", response.get_ref().error)),
            Err(status) => failures.push(format!("{url}: {}", client.describe(url, &status))),
        }
    }
    Err(StoreError::Unavailable(format!(
        "etcd store ({}): cannot grant this replica's lease ({})",
        client.urls(),
        failures.join("; ")
    )))
}

/// Keeps the lease alive every third of its TTL until the store is dropped (the runtime that
/// runs this goes with it).
pub(super) async fn keep_alive(client: Client, lease: Arc<Lease>, ttl: Duration) {
    let every = (ttl / 3).max(Duration::from_millis(500));
    loop {
        for (at, url, channel) in client.order() {
            let id = lease.id();
            let requests = futures_util::stream::unfold((), move |()| async move {
                tokio::time::sleep(every).await;
                Some((pb::LeaseKeepAliveRequest { id }, ()))
            });
            let first = futures_util::stream::once(async move { pb::LeaseKeepAliveRequest { id } });
            let stream = LeaseClient::new(channel)
                .lease_keep_alive(first.chain(requests))
                .await;
            let mut stream = match stream {
                Ok(stream) => stream.into_inner(),
                Err(status) => {
                    tracing::warn!(
                        etcd = url,
                        reason = %client.describe(url, &status),
                        "lease keep-alive failed"
                    );
                    continue;
                }
            };
            loop {
                let answer = tokio::time::timeout(every * 2, stream.next()).await;
                match answer {
                    Ok(Some(Ok(response))) if response.ttl > 0 => {
                        client.prefer(at);
                        if lease.dirty.swap(false, Ordering::AcqRel) {
                            rewrite(&client, &lease).await;
                        }
                    }
                    Ok(Some(Ok(_))) => {
                        tracing::warn!("this replica's etcd lease expired; registering again");
                        renew(&client, &lease, ttl).await;
                        break;
                    }
                    Ok(Some(Err(status))) => {
                        tracing::warn!(
                            etcd = url,
                            reason = %client.describe(url, &status),
                            "lease keep-alive ended"
                        );
                        break;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        tracing::warn!(etcd = url, "lease keep-alive unanswered");
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A new lease, and every held registration written again under it.
async fn renew(client: &Client, lease: &Lease, ttl: Duration) {
    let id = match grant(client, ttl).await {
        Ok(id) => id,
        Err(err) => {
            tracing::warn!(%err, "cannot renew the lease yet");
            return;
        }
    };
    lease.id.store(id, Ordering::Release);
    rewrite(client, lease).await;
}

/// Writes the newest value of every held key (and deletes the keys let go of meanwhile) in
/// batches. Not a version by itself: the registrations among them reach every replica's
/// publisher through the watch.
async fn rewrite(client: &Client, lease: &Lease) {
    let _writing = lease.writes.lock().await;
    let id = lease.id();
    let gone: Vec<Vec<u8>> = lock(&lease.gone).iter().cloned().collect();
    let mut ops: Vec<pb::RequestOp> = lease
        .held()
        .into_iter()
        .map(|(key, value)| put_leased_op(&key, &value, id))
        .collect();
    ops.extend(gone.iter().cloned().map(delete_op));
    for chunk in ops.chunks(MAX_TXN_OPS) {
        let request = pb::TxnRequest {
            compare: Vec::new(),
            success: chunk.to_vec(),
            failure: Vec::new(),
        };
        if let Err(err) = client.txn_unversioned(request).await {
            tracing::warn!(%err, "cannot write what this replica holds under its lease");
            lease.mark_dirty();
            return;
        }
    }
    let mut still_gone = lock(&lease.gone);
    for key in &gone {
        still_gone.remove(key);
    }
}

pub(super) fn install(lease: &Lease, id: i64) {
    lease.id.store(id, Ordering::Release);
}
