//! One optimistic write transaction on etcd: reads at one revision, remembered as conditions;
//! writes buffered and committed with them in one etcd transaction.

use std::collections::BTreeMap;

use weir_proto::etcd::etcdserverpb as pb;

use super::client::prefix_end;
use super::ops::{delete_op, put_op, unchanged_since};
use super::{Etcd, object_entry, revision_key, text};
use crate::store::StoreError;
use crate::store::tables::Tables;
use crate::store::types::{Record, decode, display_key, encode};

/// `(key, value)` as read.
type KeyValue = (Vec<u8>, Vec<u8>);

/// One optimistic write transaction: reads go to etcd at one revision and are remembered as
/// "unchanged since" conditions; writes are buffered and committed together with them.
pub(super) struct EtcdTables<'a> {
    store: &'a Etcd,
    /// The revision every read of this transaction sees; 0 until the first read.
    read_revision: i64,
    compares: Vec<pb::Compare>,
    /// `None` deletes the key.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> EtcdTables<'a> {
    pub(super) fn new(store: &'a Etcd) -> Self {
        EtcdTables {
            store,
            read_revision: 0,
            compares: Vec::new(),
            writes: BTreeMap::new(),
        }
    }

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

    pub(super) fn into_txn(self) -> pb::TxnRequest {
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
