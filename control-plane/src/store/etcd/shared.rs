//! What the etcd store keeps besides documents: each replica's registrations (under its lease),
//! the identity secrets and the workload tokens.

use std::net::SocketAddr;

use weir_proto::etcd::etcdserverpb as pb;

use super::ops::{absent, delete_op, first_value, holds, put_op, range_op, unchanged_since};
use super::{Etcd, WRITE_ATTEMPTS, text};
use crate::registry::{Registered, ServiceKey};
use crate::store::StoreError;

/// A registration as other replicas read it.
#[derive(serde::Serialize, serde::Deserialize)]
struct SharedRegistration {
    address: SocketAddr,
    identity: String,
}

impl Etcd {
    fn registration_key(&self, (ns, service): &ServiceKey, stream: u64) -> Vec<u8> {
        let stream = stream.to_string();
        self.key(&["registrations", ns, service, &self.replica, &stream])
    }

    pub(in crate::store) fn register(
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

    pub(in crate::store) fn unregister(
        &self,
        service: &ServiceKey,
        stream: u64,
    ) -> Result<u64, StoreError> {
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

    pub(in crate::store) fn registrations(
        &self,
    ) -> Result<Vec<(ServiceKey, Registered)>, StoreError> {
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

    pub(in crate::store) fn insert_secret(
        &self,
        name: &str,
        value: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
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

    pub(in crate::store) fn put_secrets_if(
        &self,
        (guard, expected): (&str, Option<&[u8]>),
        secrets: &[(&str, &[u8])],
    ) -> Result<bool, StoreError> {
        let guard = self.key(&["secrets", guard]);
        let compare = match expected {
            Some(value) => holds(&guard, value),
            None => absent(&guard),
        };
        let success = secrets
            .iter()
            .map(|(name, value)| put_op(&self.key(&["secrets", name]), value))
            .collect();
        self.txn(pb::TxnRequest {
            compare: vec![compare],
            success,
            failure: Vec::new(),
        })
        .map(|response| response.succeeded)
    }

    pub(in crate::store) fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let response = self.read(self.key(&["secrets", name]), false)?;
        Ok(response.kvs.into_iter().next().map(|kv| kv.value))
    }

    pub(in crate::store) fn insert_token(&self, id: &str, value: &str) -> Result<bool, StoreError> {
        let key = self.key(&["tokens", id]);
        let response = self.txn(pb::TxnRequest {
            compare: vec![absent(&key)],
            success: vec![put_op(&key, value.as_bytes())],
            failure: Vec::new(),
        })?;
        Ok(response.succeeded)
    }

    pub(in crate::store) fn update_token(
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

    pub(in crate::store) fn token(&self, id: &str) -> Result<Option<String>, StoreError> {
        let response = self.read(self.key(&["tokens", id]), false)?;
        response
            .kvs
            .into_iter()
            .next()
            .map(|kv| text(&format!("token {id}"), &kv.value).map(str::to_string))
            .transpose()
    }

    pub(in crate::store) fn tokens(&self) -> Result<Vec<(String, String)>, StoreError> {
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
