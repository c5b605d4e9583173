//! The policy store: every document by kind/namespace/name, with per-object revisions, the last
//! [`HISTORY_LEN`] revisions of each object, the snapshot version clock, and the identity
//! secrets and tokens.
//!
//! Two backends keep the same data with the same rules: an embedded redb file (one machine, the
//! default) and etcd (several `weir-control` replicas sharing one mesh). Every write is one
//! transaction on either, so a crash leaves either all of an apply or none of it. Deleted objects
//! keep a tombstone so their revision numbers keep counting up when they are created again, and
//! `history` still works after a delete. The rules themselves live once, in [`tables`].

mod embedded;
mod error;
pub mod etcd;
mod identity;
mod tables;
mod types;

use std::path::Path;

use weir_policy::Document;

use crate::registry::{Registered, ServiceKey};
use crate::status::SharedProxy;
use types::object;

pub use error::StoreError;
pub(crate) use error::grpc_status;
pub use etcd::EtcdConfig;
pub use identity::TokenRecord;
pub(crate) use types::now_unix_ms;
pub use types::{Action, Applied, HISTORY_LEN, Object, display_key};

pub struct Store {
    backend: Backend,
}

enum Backend {
    Embedded(embedded::Embedded),
    // Boxed: the etcd client is several times the size of a redb handle.
    Etcd(Box<etcd::Etcd>),
}

/// Runs the same expression on whichever backend is open; both have the same methods.
macro_rules! on_backend {
    ($store:expr, $b:ident => $e:expr) => {
        match &$store.backend {
            Backend::Embedded($b) => $e,
            Backend::Etcd($b) => $e,
        }
    };
}

// === impl Store ===

impl Store {
    /// Opens (or creates) the embedded store file.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Embedded(embedded::Embedded::open(path)?),
        })
    }

    /// Connects to etcd and reads the current revision; fails when no endpoint answers.
    pub fn open_etcd(config: EtcdConfig) -> Result<Store, StoreError> {
        Ok(Store {
            backend: Backend::Etcd(Box::new(etcd::Etcd::open(config)?)),
        })
    }

    /// `etcd (http://a:2379,…)` or `embedded (path)`, for messages and `/ready`.
    pub fn describe(&self) -> String {
        on_backend!(self, b => b.describe())
    }

    /// Changes made by anyone to the shared store (other replicas included), as the newest
    /// version seen. `None` for the embedded store, which only this process writes.
    pub fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match &self.backend {
            Backend::Embedded(_) => None,
            Backend::Etcd(b) => Some(b.changes()),
        }
    }

    /// Changes to the secrets (CA roots, rotation state) made by anyone, this replica included.
    /// `None` for the embedded store.
    pub fn secret_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match &self.backend {
            Backend::Embedded(_) => None,
            Backend::Etcd(b) => Some(b.secret_changes()),
        }
    }

    /// Whether this replica leads `duty` now, and later (one replica at a time does it). With
    /// the embedded store this process is the only one: always.
    pub fn leadership(&self, duty: &str) -> tokio::sync::watch::Receiver<bool> {
        match &self.backend {
            Backend::Embedded(_) => tokio::sync::watch::channel(true).1,
            Backend::Etcd(b) => b.leadership(duty),
        }
    }

    /// Whether other replicas share this store (etcd).
    pub fn shared(&self) -> bool {
        matches!(self.backend, Backend::Etcd(_))
    }

    /// Records a proxy's endpoint for every replica (shared store: under this replica's lease,
    /// so it vanishes when the replica dies); returns the version that includes it.
    pub fn register(
        &self,
        service: &ServiceKey,
        stream: u64,
        address: std::net::SocketAddr,
        identity: &str,
    ) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Embedded(b) => b.bump_version(),
            Backend::Etcd(b) => b.register(service, stream, address, identity),
        }
    }

    /// Removes what [`Store::register`] recorded; returns the version without it.
    pub fn unregister(&self, service: &ServiceKey, stream: u64) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Embedded(b) => b.bump_version(),
            Backend::Etcd(b) => b.unregister(service, stream),
        }
    }

    /// Every replica's registrations in a shared store; none for the embedded one (the
    /// registry holds them).
    pub fn registrations(&self) -> Result<Vec<(ServiceKey, Registered)>, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(Vec::new()),
            Backend::Etcd(b) => b.registrations(),
        }
    }

    /// This replica's name as claimed in a shared store; `None` for the embedded one.
    pub fn replica(&self) -> Option<&str> {
        match &self.backend {
            Backend::Embedded(_) => None,
            Backend::Etcd(b) => Some(b.replica()),
        }
    }

    /// Writes changed status rows of this replica's proxies (`None`: the row is gone) for the
    /// other replicas; nothing to do for the embedded store.
    pub fn share_status(&self, changes: &[(u64, Option<SharedProxy>)]) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(()),
            Backend::Etcd(b) => b.share_status(changes),
        }
    }

    /// The other replicas' proxies in a shared store; none for the embedded one.
    pub fn remote_proxies(&self) -> Result<Vec<SharedProxy>, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(Vec::new()),
            Backend::Etcd(b) => b.remote_proxies(),
        }
    }

    /// Whether the store answers now (etcd: a quorum read). The embedded store always does.
    pub fn healthy(&self) -> Result<(), StoreError> {
        on_backend!(self, b => b.healthy())
    }

    /// The newest snapshot version handed out (or, on etcd, seen).
    pub fn version(&self) -> u64 {
        on_backend!(self, b => b.version())
    }

    /// A new, higher version for an in-memory change (a registration, new roots).
    pub fn bump_version(&self) -> Result<u64, StoreError> {
        on_backend!(self, b => b.bump_version())
    }

    /// Writes every document or none. An identical document is `Unchanged` and gets no new
    /// revision. A dry run reports the same actions and revisions and commits nothing.
    /// Returns the results and the version carrying the change.
    pub fn apply(
        &self,
        docs: &[Document],
        dry_run: bool,
    ) -> Result<(Vec<Applied>, u64), StoreError> {
        let now = now_unix_ms();
        let mut encoded = Vec::with_capacity(docs.len());
        for doc in docs {
            let json = serde_json::to_string(doc).map_err(|err| StoreError::Corrupt {
                key: doc.key(),
                reason: format!("cannot serialise: {err}"),
            })?;
            encoded.push((doc.kind(), doc.namespace(), doc.name(), json));
        }
        let mesh_config = docs.iter().find_map(|d| match d {
            Document::MeshConfig(m) => Some(m.metadata.name.as_str()),
            _ => None,
        });
        let f = |t: &mut dyn tables::Tables| tables::apply(t, &encoded, mesh_config, now);
        on_backend!(self, b => b.write(dry_run, &f))
    }

    /// Records a deletion as a new revision. `NotFound` when there is no live object.
    pub fn delete(&self, kind: &str, ns: &str, name: &str) -> Result<(Applied, u64), StoreError> {
        let now = now_unix_ms();
        let f = |t: &mut dyn tables::Tables| tables::delete(t, kind, ns, name, now);
        on_backend!(self, b => b.write(false, &f))
    }

    /// Re-applies the content of an earlier revision as a new revision (or `Unchanged` when the
    /// object already has that content).
    pub fn rollback(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
        to_revision: u64,
    ) -> Result<(Applied, u64), StoreError> {
        let now = now_unix_ms();
        let f = |t: &mut dyn tables::Tables| tables::rollback(t, kind, ns, name, to_revision, now);
        on_backend!(self, b => b.write(false, &f))
    }

    /// Live objects of `kind` (every kind when `None`), optionally filtered by namespace and
    /// name, ordered by kind, namespace and name.
    pub fn get(
        &self,
        kind: Option<&str>,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<Object>, StoreError> {
        let mut all = on_backend!(self, b => b.objects(kind))?;
        all.retain(|((_, k_ns, k_name), record)| {
            !record.deleted
                && namespace.is_none_or(|want| want == k_ns)
                && name.is_none_or(|want| want == k_name)
        });
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all
            .into_iter()
            .map(|((kind, ns, name), record)| object(&kind, &ns, &name, record))
            .collect())
    }

    /// Every kept revision of one object, oldest first; `NotFound` if it never existed.
    pub fn history(&self, kind: &str, ns: &str, name: &str) -> Result<Vec<Object>, StoreError> {
        let mut records = on_backend!(self, b => b.history(kind, ns, name))?;
        if records.is_empty() {
            return Err(StoreError::NotFound(display_key(kind, ns, name)));
        }
        records.sort_by_key(|r| r.revision);
        Ok(records
            .into_iter()
            .map(|r| object(kind, ns, name, r))
            .collect())
    }

    /// The secret `name`, made with `init` and stored if there is none yet. One transaction, so
    /// a secret is created exactly once, by whichever replica comes first.
    pub fn secret_or_insert_with<E>(
        &self,
        name: &str,
        init: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<Result<Vec<u8>, E>, StoreError> {
        if let Some(existing) = self.secret(name)? {
            return Ok(Ok(existing));
        }
        let value = match init() {
            Ok(value) => value,
            Err(err) => return Ok(Err(err)),
        };
        // Another writer may have got there between the read and now: the stored value wins.
        on_backend!(self, b => b.insert_secret(name, &value)).map(Ok)
    }

    /// Writes several secrets in one transaction, so readers never see half of a change (e.g.
    /// a new signing root without the trust state that goes with it), if the secret `guard`
    /// still holds `expected` (`None`: absent). `false`: another writer changed it first, so
    /// two replicas cannot both run the same step on the state they each read.
    pub fn put_secrets_if(
        &self,
        guard: (&str, Option<&[u8]>),
        secrets: &[(&str, &[u8])],
    ) -> Result<bool, StoreError> {
        on_backend!(self, b => b.put_secrets_if(guard, secrets))
    }

    /// The secret `name`, if stored.
    pub fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        on_backend!(self, b => b.secret(name))
    }

    /// Records a new token; an id that exists already is refused rather than overwritten.
    pub fn insert_token(&self, record: &TokenRecord) -> Result<(), StoreError> {
        let value = identity::encode(record)?;
        let inserted = on_backend!(self, b => b.insert_token(&record.id, &value))?;
        if !inserted {
            return Err(StoreError::Precondition(format!(
                "token id {} exists already; try again",
                record.id
            )));
        }
        Ok(())
    }

    /// Marks a token revoked (again, if it was). `NotFound` for an unknown id.
    pub fn revoke_token(&self, id: &str) -> Result<TokenRecord, StoreError> {
        let revoke = |value: &str| -> Result<String, StoreError> {
            let mut record = identity::decode(id, value)?;
            record.revoked = true;
            identity::encode(&record)
        };
        match on_backend!(self, b => b.update_token(id, &revoke))? {
            Some(value) => identity::decode(id, &value),
            None => Err(StoreError::NotFound(format!("token {id}"))),
        }
    }

    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        on_backend!(self, b => b.token(id))?
            .map(|value| identity::decode(id, &value))
            .transpose()
    }

    /// Every token, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let mut out = on_backend!(self, b => b.tokens())?
            .into_iter()
            .map(|(id, value)| identity::decode(&id, &value))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| (a.created_unix_ms, &a.id).cmp(&(b.created_unix_ms, &b.id)));
        Ok(out)
    }
}
