//! What the identity CA keeps in the store: the generated root, the workload-token HMAC key and
//! the issued tokens (never the tokens themselves, only their id, identity and expiry, plus
//! whether they were revoked).
//!
//! Secrets live in the store rather than as files in DATA_DIR because the store is the unit the
//! control plane backs up and, with a shared store, the unit replicas share: every replica must
//! sign with the same root and accept the same tokens. The store file is made 0600 for it.

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// Named secrets: raw bytes, written once.
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// Workload tokens by id, as JSON [`TokenRecord`]s.
const TOKENS: TableDefinition<&str, &str> = TableDefinition::new("tokens");

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

/// Opens the tables in the transaction that opens the store, so reads never meet a missing one.
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(SECRETS)?;
    txn.open_table(TOKENS)?;
    Ok(())
}

// === impl Store ===

impl Store {
    /// The secret `name`, made with `init` and stored if there is none yet. One write
    /// transaction, so a secret is created exactly once.
    pub fn secret_or_insert_with<E>(
        &self,
        name: &str,
        init: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<Result<Vec<u8>, E>, StoreError> {
        let txn = self.db.begin_write()?;
        let value = {
            let mut table = txn.open_table(SECRETS)?;
            let existing = table.get(name)?.map(|v| v.value().to_vec());
            match existing {
                Some(value) => value,
                None => match init() {
                    Ok(value) => {
                        table.insert(name, value.as_slice())?;
                        value
                    }
                    Err(err) => return Ok(Err(err)),
                },
            }
        };
        txn.commit()?;
        Ok(Ok(value))
    }

    /// Writes several secrets in one transaction, so readers never see half of a change (e.g.
    /// a new signing root without the trust state that goes with it).
    pub fn put_secrets(&self, secrets: &[(&str, &[u8])]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(SECRETS)?;
            for (name, value) in secrets {
                table.insert(*name, *value)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The secret `name`, if stored.
    pub fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SECRETS)?;
        Ok(table.get(name)?.map(|v| v.value().to_vec()))
    }

    /// Records a new token; an id that exists already is refused rather than overwritten.
    pub fn insert_token(&self, record: &TokenRecord) -> Result<(), StoreError> {
        let value = encode(record)?;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(TOKENS)?;
            if table.get(record.id.as_str())?.is_some() {
                return Err(StoreError::Precondition(format!(
                    "token id {} exists already; try again",
                    record.id
                )));
            }
            table.insert(record.id.as_str(), value.as_str())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Marks a token revoked (again, if it was). `NotFound` for an unknown id.
    pub fn revoke_token(&self, id: &str) -> Result<TokenRecord, StoreError> {
        let txn = self.db.begin_write()?;
        let record = {
            let mut table = txn.open_table(TOKENS)?;
            let current = table.get(id)?.map(|v| decode(id, v.value())).transpose()?;
            let Some(mut record) = current else {
                return Err(StoreError::NotFound(format!("token {id}")));
            };
            record.revoked = true;
            table.insert(id, encode(&record)?.as_str())?;
            record
        };
        txn.commit()?;
        Ok(record)
    }

    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TOKENS)?;
        let value = table.get(id)?;
        value.map(|v| decode(id, v.value())).transpose()
    }

    /// Every token, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TOKENS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            out.push(decode(k.value(), v.value())?);
        }
        out.sort_by(|a, b| (a.created_unix_ms, &a.id).cmp(&(b.created_unix_ms, &b.id)));
        Ok(out)
    }
}

fn encode(record: &TokenRecord) -> Result<String, StoreError> {
    serde_json::to_string(record).map_err(|err| StoreError::Corrupt {
        key: format!("token {}", record.id),
        reason: err.to_string(),
    })
}

fn decode(id: &str, value: &str) -> Result<TokenRecord, StoreError> {
    serde_json::from_str(value).map_err(|err| StoreError::Corrupt {
        key: format!("token {id}"),
        reason: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
