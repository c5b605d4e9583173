//! What the identity CA keeps in the store besides its secrets: the issued workload tokens
//! (never the tokens themselves, only their id, identity and expiry, plus whether they were
//! revoked).
//!
//! Secrets and tokens live in the store rather than as files in DATA_DIR because the store is
//! the unit the control plane backs up and, with etcd, the unit replicas share: every replica
//! must sign with the same root and accept the same tokens.

use serde::{Deserialize, Serialize};

use super::StoreError;

/// One issued workload token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub namespace: String,
    pub service_account: String,
    pub trust_domain: String,
    pub created_unix_ms: i64,
    pub expires_unix_ms: i64,
    #[serde(default)]
    pub revoked: bool,
}

pub(super) fn encode(record: &TokenRecord) -> Result<String, StoreError> {
    serde_json::to_string(record).map_err(|err| StoreError::Corrupt {
        key: format!("token {}", record.id),
        reason: err.to_string(),
    })
}

pub(super) fn decode(id: &str, value: &str) -> Result<TokenRecord, StoreError> {
    serde_json::from_str(value).map_err(|err| StoreError::Corrupt {
        key: format!("token {id}"),
        reason: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn record(id: &str, created: i64) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            namespace: "shop".into(),
            service_account: "orders".into(),
            trust_domain: "weir.local".into(),
            created_unix_ms: created,
            expires_unix_ms: created + 1000,
            revoked: false,
        }
    }

    #[test]
    fn secrets_are_made_once_and_tokens_revoke() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.redb");
        {
            let store = Store::open(&path).expect("open");
            let first = store
                .secret_or_insert_with("k", || Ok::<_, ()>(vec![1, 2, 3]))
                .expect("store")
                .expect("init");
            assert_eq!(first, [1, 2, 3]);
            store.insert_token(&record("b", 2)).expect("insert");
            store.insert_token(&record("a", 1)).expect("insert");
            assert!(matches!(
                store.insert_token(&record("a", 3)),
                Err(StoreError::Precondition(_))
            ));
        }
        let store = Store::open(&path).expect("reopen");
        let again = store
            .secret_or_insert_with("k", || Err::<Vec<u8>, _>("must not be called"))
            .expect("store")
            .expect("existing");
        assert_eq!(again, [1, 2, 3]);
        let ids: Vec<_> = store
            .tokens()
            .expect("list")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(store.revoke_token("a").expect("revoke").revoked);
        assert!(store.token("a").expect("get").is_some_and(|r| r.revoked));
        assert!(store.revoke_token("a").is_ok(), "idempotent");
        assert!(matches!(
            store.revoke_token("zz"),
            Err(StoreError::NotFound(_))
        ));
    }
}
