//! The policy store: every document by kind/namespace/name in one redb file, with per-object
//! revisions, the last [`HISTORY_LEN`] revisions of each object, and the snapshot version clock.
//!
//! Every write is one redb write transaction, so a crash leaves either all of an apply or none
//! of it. Deleted objects keep a tombstone so their revision numbers keep counting up when they
//! are created again, and `history` still works after a delete.

mod identity;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use weir_policy::{Document, Errors, PolicyError};

pub use identity::TokenRecord;

/// Revisions kept per object, deletions included.
pub const HISTORY_LEN: u64 = 20;

/// How far ahead of the last issued version the persisted ceiling is moved. Versions are also
/// bumped in memory by registrations, which are not worth a disk write each; after a restart the
/// clock resumes from the persisted ceiling, so it never repeats a version a proxy has seen.
const VERSION_BLOCK: u64 = 100_000;

type Key3<'a> = (&'a str, &'a str, &'a str);
type Key4<'a> = (&'a str, &'a str, &'a str, u64);

const OBJECTS: TableDefinition<Key3, &str> = TableDefinition::new("objects");
const HISTORY: TableDefinition<Key4, &str> = TableDefinition::new("history");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Version of the last committed change.
const META_VERSION: &str = "version";
/// No version above this has been handed out; restart resumes from here.
const META_CEILING: &str = "version_ceiling";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    #[error("store record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Invalid(Errors),
    #[error("cannot make the store file {path} private (0600): {source}")]
    Private {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

macro_rules! redb_errors {
    ($($t:ident),*) => {$(
        impl From<redb::$t> for StoreError {
            fn from(err: redb::$t) -> Self {
                StoreError::Db(err.into())
            }
        }
    )*};
}
redb_errors!(
    DatabaseError,
    TransactionError,
    TableError,
    StorageError,
    CommitError
);

/// One revision of one object, as returned to callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub revision: u64,
    /// weir-policy JSON; empty for a deletion.
    pub json: String,
    pub updated_unix_ms: i64,
    pub deleted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    Deleted,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
            Action::Deleted => "deleted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub object: Object,
    pub action: Action,
}

/// What is stored under each key; the key itself carries kind/namespace/name.
#[derive(Serialize, Deserialize)]
struct Record {
    revision: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    json: String,
    updated_unix_ms: i64,
    #[serde(default)]
    deleted: bool,
}

struct Clock {
    current: u64,
    ceiling: u64,
}

pub struct Store {
    db: Database,
    clock: Mutex<Clock>,
}

// === impl Store ===

impl Store {
    /// Opens (or creates) the store file and moves the version ceiling past anything a previous
    /// run may have handed out.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path)?;
        // The store holds the CA key and the token HMAC key (see `identity`).
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
            |source| StoreError::Private {
                path: path.to_path_buf(),
                source,
            },
        )?;
        let txn = db.begin_write()?;
        let current = {
            // Opening every table here means read transactions never meet a missing table.
            txn.open_table(OBJECTS)?;
            txn.open_table(HISTORY)?;
            identity::create_tables(&txn)?;
            let mut meta = txn.open_table(META)?;
            let ceiling = meta.get(META_CEILING)?.map_or(0, |v| v.value());
            let version = meta.get(META_VERSION)?.map_or(0, |v| v.value());
            let current = ceiling.max(version);
            meta.insert(META_CEILING, current + VERSION_BLOCK)?;
            current
        };
        txn.commit()?;
        Ok(Store {
            db,
            clock: Mutex::new(Clock {
                current,
                ceiling: current + VERSION_BLOCK,
            }),
        })
    }

    /// The newest snapshot version handed out.
    pub fn version(&self) -> u64 {
        self.lock_clock().current
    }

    /// A new, higher version for an in-memory change (a registration). Persists a new ceiling
    /// once every [`VERSION_BLOCK`] versions.
    pub fn bump_version(&self) -> Result<u64, StoreError> {
        let mut clock = self.lock_clock();
        let next = clock.current + 1;
        if next > clock.ceiling {
            let ceiling = next + VERSION_BLOCK;
            let txn = self.db.begin_write()?;
            txn.open_table(META)?.insert(META_CEILING, ceiling)?;
            txn.commit()?;
            clock.ceiling = ceiling;
        }
        clock.current = next;
        Ok(next)
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
        self.write(dry_run, |txn| {
            let mut results = Vec::with_capacity(encoded.len());
            for (kind, ns, name, json) in &encoded {
                results.push(put(txn, kind, ns, name, json, now)?);
            }
            check_single_mesh_config(
                txn,
                docs.iter().find_map(|d| match d {
                    Document::MeshConfig(m) => Some(m.metadata.name.as_str()),
                    _ => None,
                }),
            )?;
            Ok(results)
        })
    }

    /// Records a deletion as a new revision. `NotFound` when there is no live object.
    pub fn delete(&self, kind: &str, ns: &str, name: &str) -> Result<(Applied, u64), StoreError> {
        let now = now_unix_ms();
        self.write(false, |txn| {
            let current = current_record(txn, kind, ns, name)?;
            let Some(current) = current.filter(|r| !r.deleted) else {
                return Err(StoreError::NotFound(display_key(kind, ns, name)));
            };
            let record = Record {
                revision: current.revision + 1,
                json: String::new(),
                updated_unix_ms: now,
                deleted: true,
            };
            let object = write_revision(txn, kind, ns, name, record)?;
            Ok(Applied {
                object,
                action: Action::Deleted,
            })
        })
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
        let key = display_key(kind, ns, name);
        self.write(false, |txn| {
            let old = {
                let history = txn.open_table(HISTORY)?;
                let value = history.get((kind, ns, name, to_revision))?;
                match value {
                    Some(v) => decode(&key, v.value())?,
                    None => {
                        return Err(StoreError::Precondition(format!(
                            "{key} has no revision {to_revision} in its history \
                             (see `weirctl history`; the last {HISTORY_LEN} revisions are kept)"
                        )));
                    }
                }
            };
            if old.deleted {
                return Err(StoreError::Precondition(format!(
                    "revision {to_revision} of {key} is a deletion; roll back to a revision with content, \
                     or use `weirctl delete`"
                )));
            }
            // The rules may have tightened since that revision was written.
            let doc: Document = serde_json::from_str(&old.json).map_err(|err| {
                StoreError::Precondition(format!("revision {to_revision} of {key} no longer parses: {err}"))
            })?;
            if let Err(errors) = weir_policy::validate("", &doc) {
                return Err(StoreError::Precondition(format!(
                    "revision {to_revision} of {key} is no longer valid:\n{errors}"
                )));
            }
            let applied = put(txn, kind, ns, name, &old.json, now)?;
            if kind == "MeshConfig" {
                check_single_mesh_config(txn, Some(name))?;
            }
            Ok(applied)
        })
    }

    /// Live objects of `kind` (every kind when `None`), optionally filtered by namespace and
    /// name, ordered by kind, namespace and name.
    pub fn get(
        &self,
        kind: Option<&str>,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Result<Vec<Object>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OBJECTS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let (k_kind, k_ns, k_name) = k.value();
            if kind.is_some_and(|want| want != k_kind)
                || namespace.is_some_and(|want| want != k_ns)
                || name.is_some_and(|want| want != k_name)
            {
                continue;
            }
            let record = decode(&display_key(k_kind, k_ns, k_name), v.value())?;
            if !record.deleted {
                out.push(object(k_kind, k_ns, k_name, record));
            }
        }
        Ok(out)
    }

    /// Every kept revision of one object, oldest first; `NotFound` if it never existed.
    pub fn history(&self, kind: &str, ns: &str, name: &str) -> Result<Vec<Object>, StoreError> {
        let key = display_key(kind, ns, name);
        let txn = self.db.begin_read()?;
        let table = txn.open_table(HISTORY)?;
        let mut out = Vec::new();
        for item in table.range((kind, ns, name, 0)..=(kind, ns, name, u64::MAX))? {
            let (_, v) = item?;
            out.push(object(kind, ns, name, decode(&key, v.value())?));
        }
        if out.is_empty() {
            return Err(StoreError::NotFound(key));
        }
        Ok(out)
    }

    fn lock_clock(&self) -> MutexGuard<'_, Clock> {
        // The clock holds two integers that are always consistent; a panic elsewhere cannot
        // leave it half-written.
        self.clock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` in one write transaction. On a change that is committed, the new version is
    /// written in the same transaction, so the persisted counter and the data agree.
    fn write<T: ResultsChanged>(
        &self,
        dry_run: bool,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<(T, u64), StoreError> {
        // Held across the commit so versions are issued in commit order.
        let mut clock = self.lock_clock();
        let txn = self.db.begin_write()?;
        let result = f(&txn);
        let result = match result {
            Ok(result) if !dry_run && result.changed() => result,
            other => {
                txn.abort()?;
                return other.map(|r| (r, clock.current));
            }
        };
        let next = clock.current + 1;
        let ceiling = clock.ceiling.max(next);
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(META_VERSION, next)?;
            meta.insert(META_CEILING, ceiling)?;
        }
        txn.commit()?;
        clock.current = next;
        clock.ceiling = ceiling;
        Ok((result, next))
    }
}

trait ResultsChanged {
    fn changed(&self) -> bool;
}

impl ResultsChanged for Applied {
    fn changed(&self) -> bool {
        self.action != Action::Unchanged
    }
}

impl ResultsChanged for Vec<Applied> {
    fn changed(&self) -> bool {
        self.iter().any(ResultsChanged::changed)
    }
}

// === transaction helpers ===

fn put(
    txn: &WriteTransaction,
    kind: &str,
    ns: &str,
    name: &str,
    json: &str,
    now: i64,
) -> Result<Applied, StoreError> {
    let current = current_record(txn, kind, ns, name)?;
    let (revision, action) = match current {
        Some(r) if !r.deleted && r.json == json => {
            return Ok(Applied {
                object: object(kind, ns, name, r),
                action: Action::Unchanged,
            });
        }
        Some(r) if !r.deleted => (r.revision + 1, Action::Configured),
        Some(r) => (r.revision + 1, Action::Created),
        None => (1, Action::Created),
    };
    let record = Record {
        revision,
        json: json.to_string(),
        updated_unix_ms: now,
        deleted: false,
    };
    let object = write_revision(txn, kind, ns, name, record)?;
    Ok(Applied { object, action })
}

fn write_revision(
    txn: &WriteTransaction,
    kind: &str,
    ns: &str,
    name: &str,
    record: Record,
) -> Result<Object, StoreError> {
    let value = serde_json::to_string(&record).map_err(|err| StoreError::Corrupt {
        key: display_key(kind, ns, name),
        reason: err.to_string(),
    })?;
    txn.open_table(OBJECTS)?
        .insert((kind, ns, name), value.as_str())?;
    let mut history = txn.open_table(HISTORY)?;
    history.insert((kind, ns, name, record.revision), value.as_str())?;
    // Revisions are consecutive, so dropping the one that fell out of the window keeps exactly
    // the last HISTORY_LEN.
    if record.revision > HISTORY_LEN {
        history.remove((kind, ns, name, record.revision - HISTORY_LEN))?;
    }
    Ok(object(kind, ns, name, record))
}

fn current_record(
    txn: &WriteTransaction,
    kind: &str,
    ns: &str,
    name: &str,
) -> Result<Option<Record>, StoreError> {
    let table = txn.open_table(OBJECTS)?;
    let value = table.get((kind, ns, name))?;
    value
        .map(|v| decode(&display_key(kind, ns, name), v.value()))
        .transpose()
}

/// The store-wide half of "at most one MeshConfig": a request may replace the stored one under
/// the same name, not add a second.
fn check_single_mesh_config(
    txn: &WriteTransaction,
    written: Option<&str>,
) -> Result<(), StoreError> {
    let Some(written) = written else {
        return Ok(());
    };
    let table = txn.open_table(OBJECTS)?;
    for item in table.range(("MeshConfig", "", "")..)? {
        let (k, v) = item?;
        let (kind, ns, name) = k.value();
        if kind != "MeshConfig" {
            break;
        }
        if name != written && !decode(&display_key(kind, ns, name), v.value())?.deleted {
            return Err(StoreError::Invalid(Errors(vec![PolicyError {
                source: String::new(),
                document: Some(format!("MeshConfig {written}")),
                path: "metadata.name".into(),
                reason: format!(
                    "only one MeshConfig is allowed; MeshConfig {name} is already stored \
                     (apply under that name, or delete it first)"
                ),
            }])));
        }
    }
    Ok(())
}

fn decode(key: &str, value: &str) -> Result<Record, StoreError> {
    serde_json::from_str(value).map_err(|err| StoreError::Corrupt {
        key: key.to_string(),
        reason: err.to_string(),
    })
}

fn object(kind: &str, ns: &str, name: &str, record: Record) -> Object {
    Object {
        kind: kind.to_string(),
        namespace: ns.to_string(),
        name: name.to_string(),
        revision: record.revision,
        json: record.json,
        updated_unix_ms: record.updated_unix_ms,
        deleted: record.deleted,
    }
}

/// `ServicePolicy shop/payments`, as weir-policy names documents.
pub fn display_key(kind: &str, ns: &str, name: &str) -> String {
    if ns.is_empty() {
        format!("{kind} {name}")
    } else {
        format!("{kind} {ns}/{name}")
    }
}

pub(crate) fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
