//! What each replica keeps under its lease besides registrations: its name
//! (`replicas/NAME`) and the status of its proxies (`status/REPLICA/STREAM`, JSON), neither of
//! which is a snapshot version.

use weir_proto::etcd::etcdserverpb as pb;

use super::Etcd;
use super::lease::MAX_TXN_OPS;
use super::ops::{absent, delete_op, holds, put_leased_op};
use crate::status::SharedProxy;
use crate::store::StoreError;

/// `NAME`, then `NAME-2` … `NAME-MAX_NAMES` when taken.
const MAX_NAMES: u32 = 100;

impl Etcd {
    /// Key prefixes whose changes are no new version (see the watch).
    pub(super) fn unversioned(&self) -> Vec<Vec<u8>> {
        vec![
            self.key(&["status", ""]),
            self.key(&["replicas", ""]),
            self.key(&["leaders", ""]),
        ]
    }

    /// Takes the first of `wanted`, `wanted-2`, … that no live replica holds, under this
    /// replica's lease. A name held with this `instance` is an earlier run of this replica
    /// whose lease has not lapsed yet: it is taken over.
    pub(super) fn claim(&self, wanted: &str, instance: &str) -> Result<String, StoreError> {
        let lease = self.lease.id();
        let value = instance.as_bytes().to_vec();
        for n in 1..=MAX_NAMES {
            let name = match n {
                1 => wanted.to_string(),
                n => format!("{wanted}-{n}"),
            };
            let key = self.key(&["replicas", &name]);
            let put = put_leased_op(&key, &value, lease);
            let mut taken = false;
            for compare in [absent(&key), holds(&key, &value)] {
                let request = pb::TxnRequest {
                    compare: vec![compare],
                    success: vec![put.clone()],
                    failure: Vec::new(),
                };
                taken = self.quiet_txn(request)?.succeeded;
                if taken {
                    break;
                }
            }
            if taken {
                self.lease.hold(key, value);
                return Ok(name);
            }
        }
        Err(StoreError::Precondition(format!(
            "no free replica name: {wanted} to {wanted}-{MAX_NAMES} are held by live replicas; \
             give this one a name of its own with --replica-name"
        )))
    }

    /// Writes changed rows and deletes removed ones, in as few transactions as etcd allows.
    /// Every value is held first, so whatever fails here is rewritten by the lease once etcd
    /// answers again, with the newest values.
    pub(in crate::store) fn share_status(
        &self,
        changes: &[(u64, Option<SharedProxy>)],
    ) -> Result<(), StoreError> {
        let mut writes = Vec::with_capacity(changes.len());
        for (stream, row) in changes {
            let key = self.key(&["status", &self.replica, &stream.to_string()]);
            let value = row
                .as_ref()
                .map(|row| {
                    serde_json::to_vec(row).map_err(|err| StoreError::Corrupt {
                        key: String::from_utf8_lossy(&key).into_owned(),
                        reason: err.to_string(),
                    })
                })
                .transpose()?;
            writes.push((key, value));
        }
        let lease = self.lease.clone();
        self.block(move |c, _| async move {
            let _writing = lease.writes.lock().await;
            for (key, value) in &writes {
                match value {
                    Some(value) => lease.hold(key.clone(), value.clone()),
                    None => lease.release(key),
                }
            }
            let id = lease.id();
            for chunk in writes.chunks(MAX_TXN_OPS) {
                let success = chunk
                    .iter()
                    .map(|(key, value)| match value {
                        Some(value) => put_leased_op(key, value, id),
                        None => delete_op(key.clone()),
                    })
                    .collect();
                let request = pb::TxnRequest {
                    compare: Vec::new(),
                    success,
                    failure: Vec::new(),
                };
                if let Err(err) = c.txn_unversioned(request).await {
                    lease.mark_dirty();
                    for (key, value) in &writes {
                        if value.is_none() {
                            lease.forget_later(key.clone());
                        }
                    }
                    return Err(err);
                }
            }
            Ok(())
        })
    }

    /// The status rows of every other replica's proxies. Rows under this replica's name
    /// (its own, or a previous run's that lapse with its old lease) are left out: memory has
    /// the fresh ones.
    pub(in crate::store) fn remote_proxies(&self) -> Result<Vec<SharedProxy>, StoreError> {
        let prefix = self.key(&["status", ""]);
        let base = prefix.len();
        let response = self.read(prefix, true)?;
        let mut out = Vec::with_capacity(response.kvs.len());
        for kv in response.kvs {
            let rest = String::from_utf8_lossy(&kv.key[base..]).into_owned();
            let Some((replica, _stream)) = rest.split_once('/') else {
                continue;
            };
            if replica == self.replica {
                continue;
            }
            let Ok(mut row) = serde_json::from_slice::<SharedProxy>(&kv.value) else {
                tracing::warn!(key = rest, "skipping a proxy status that does not parse");
                continue;
            };
            if row.replica.is_empty() {
                row.replica = replica.to_string();
            }
            out.push(row);
        }
        Ok(out)
    }

    fn quiet_txn(&self, request: pb::TxnRequest) -> Result<pb::TxnResponse, StoreError> {
        self.block(move |c, _| async move { c.txn_unversioned(request).await })
    }
}
