//! The embedded backend: one redb file in DATA_DIR, written by this process alone.
//!
//! Identity secrets live here rather than as files because the store is the unit the control
//! plane backs up; the file is made 0600 for it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::error::StoreError;
use super::tables::Tables;
use super::types::{ObjectKey, Record, ResultsChanged, decode, display_key, encode};

/// How far ahead of the last issued version the persisted ceiling is moved. Versions are also
/// bumped in memory by registrations, which are not worth a disk write each; after a restart the
/// clock resumes from the persisted ceiling, so it never repeats a version a proxy has seen.
const VERSION_BLOCK: u64 = 100_000;

type Key3<'a> = (&'a str, &'a str, &'a str);
type Key4<'a> = (&'a str, &'a str, &'a str, u64);

const OBJECTS: TableDefinition<Key3, &str> = TableDefinition::new("objects");
const HISTORY: TableDefinition<Key4, &str> = TableDefinition::new("history");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Named secrets: raw bytes, written once.
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// Workload tokens by id, as JSON token records.
const TOKENS: TableDefinition<&str, &str> = TableDefinition::new("tokens");
/// Version of the last committed change.
const META_VERSION: &str = "version";
/// No version above this has been handed out; restart resumes from here.
const META_CEILING: &str = "version_ceiling";

struct Clock {
    current: u64,
    ceiling: u64,
}

pub(super) struct Embedded {
    db: Database,
    path: PathBuf,
    clock: Mutex<Clock>,
}

// === impl Embedded ===

impl Embedded {
    /// Opens (or creates) the store file and moves the version ceiling past anything a previous
    /// run may have handed out.
    pub(super) fn open(path: &Path) -> Result<Embedded, StoreError> {
        let db = Database::create(path)?;
        // The store holds the CA key and the token HMAC key.
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
            txn.open_table(SECRETS)?;
            txn.open_table(TOKENS)?;
            let mut meta = txn.open_table(META)?;
            let ceiling = meta.get(META_CEILING)?.map_or(0, |v| v.value());
            let version = meta.get(META_VERSION)?.map_or(0, |v| v.value());
            let current = ceiling.max(version);
            meta.insert(META_CEILING, current + VERSION_BLOCK)?;
            current
        };
        txn.commit()?;
        Ok(Embedded {
            db,
            path: path.to_path_buf(),
            clock: Mutex::new(Clock {
                current,
                ceiling: current + VERSION_BLOCK,
            }),
        })
    }

    pub(super) fn describe(&self) -> String {
        format!("embedded ({})", self.path.display())
    }

    pub(super) fn healthy(&self) -> Result<(), StoreError> {
        Ok(())
    }

    pub(super) fn version(&self) -> u64 {
        self.lock_clock().current
    }

    /// Persists a new ceiling once every [`VERSION_BLOCK`] versions.
    pub(super) fn bump_version(&self) -> Result<u64, StoreError> {
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

    /// Runs `f` in one write transaction. On a change that is committed, the new version is
    /// written in the same transaction, so the persisted counter and the data agree.
    pub(super) fn write<T: ResultsChanged>(
        &self,
        dry_run: bool,
        f: &dyn Fn(&mut dyn Tables) -> Result<T, StoreError>,
    ) -> Result<(T, u64), StoreError> {
        // Held across the commit so versions are issued in commit order.
        let mut clock = self.lock_clock();
        let txn = self.db.begin_write()?;
        let result = f(&mut RedbTables { txn: &txn });
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

    pub(super) fn objects(
        &self,
        kind: Option<&str>,
    ) -> Result<Vec<(ObjectKey, Record)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OBJECTS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let (k_kind, k_ns, k_name) = k.value();
            if kind.is_some_and(|want| want != k_kind) {
                continue;
            }
            let record = decode(&display_key(k_kind, k_ns, k_name), v.value())?;
            out.push(((k_kind.into(), k_ns.into(), k_name.into()), record));
        }
        Ok(out)
    }

    pub(super) fn history(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
    ) -> Result<Vec<Record>, StoreError> {
        let key = display_key(kind, ns, name);
        let txn = self.db.begin_read()?;
        let table = txn.open_table(HISTORY)?;
        let mut out = Vec::new();
        for item in table.range((kind, ns, name, 0)..=(kind, ns, name, u64::MAX))? {
            let (_, v) = item?;
            out.push(decode(&key, v.value())?);
        }
        Ok(out)
    }

    /// Stores `value` unless the secret exists; returns what is stored.
    pub(super) fn insert_secret(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let txn = self.db.begin_write()?;
        let stored = {
            let mut table = txn.open_table(SECRETS)?;
            let existing = table.get(name)?.map(|v| v.value().to_vec());
            match existing {
                Some(existing) => existing,
                None => {
                    table.insert(name, value)?;
                    value.to_vec()
                }
            }
        };
        txn.commit()?;
        Ok(stored)
    }

    pub(super) fn put_secrets_if(
        &self,
        (guard, expected): (&str, Option<&[u8]>),
        secrets: &[(&str, &[u8])],
    ) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(SECRETS)?;
            let current = table.get(guard)?.map(|v| v.value().to_vec());
            if current.as_deref() != expected {
                return Ok(false);
            }
            for (name, value) in secrets {
                table.insert(*name, *value)?;
            }
        }
        txn.commit()?;
        Ok(true)
    }

    pub(super) fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SECRETS)?;
        Ok(table.get(name)?.map(|v| v.value().to_vec()))
    }

    /// Whether the token was stored (false: the id exists already).
    pub(super) fn insert_token(&self, id: &str, value: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(TOKENS)?;
            if table.get(id)?.is_some() {
                return Ok(false);
            }
            table.insert(id, value)?;
        }
        txn.commit()?;
        Ok(true)
    }

    /// Rewrites a token's record with `f`; `None` when there is no such token.
    pub(super) fn update_token(
        &self,
        id: &str,
        f: &dyn Fn(&str) -> Result<String, StoreError>,
    ) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_write()?;
        let updated = {
            let mut table = txn.open_table(TOKENS)?;
            let current = table.get(id)?.map(|v| v.value().to_string());
            let Some(current) = current else {
                return Ok(None);
            };
            let updated = f(&current)?;
            table.insert(id, updated.as_str())?;
            updated
        };
        txn.commit()?;
        Ok(Some(updated))
    }

    pub(super) fn token(&self, id: &str) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TOKENS)?;
        Ok(table.get(id)?.map(|v| v.value().to_string()))
    }

    pub(super) fn tokens(&self) -> Result<Vec<(String, String)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TOKENS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_string(), v.value().to_string()));
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
}

/// One redb write transaction seen through [`Tables`].
struct RedbTables<'a> {
    txn: &'a WriteTransaction,
}

impl Tables for RedbTables<'_> {
    fn object(&mut self, kind: &str, ns: &str, name: &str) -> Result<Option<Record>, StoreError> {
        let table = self.txn.open_table(OBJECTS)?;
        let value = table.get((kind, ns, name))?;
        value
            .map(|v| decode(&display_key(kind, ns, name), v.value()))
            .transpose()
    }

    fn revision(
        &mut self,
        kind: &str,
        ns: &str,
        name: &str,
        revision: u64,
    ) -> Result<Option<Record>, StoreError> {
        let table = self.txn.open_table(HISTORY)?;
        let value = table.get((kind, ns, name, revision))?;
        value
            .map(|v| decode(&display_key(kind, ns, name), v.value()))
            .transpose()
    }

    fn of_kind(&mut self, kind: &str) -> Result<Vec<(String, String, Record)>, StoreError> {
        let table = self.txn.open_table(OBJECTS)?;
        let mut out = Vec::new();
        for item in table.range((kind, "", "")..)? {
            let (k, v) = item?;
            let (k_kind, ns, name) = k.value();
            if k_kind != kind {
                break;
            }
            let record = decode(&display_key(k_kind, ns, name), v.value())?;
            out.push((ns.to_string(), name.to_string(), record));
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
        let value = encode(&display_key(kind, ns, name), record)?;
        self.txn
            .open_table(OBJECTS)?
            .insert((kind, ns, name), value.as_str())?;
        let mut history = self.txn.open_table(HISTORY)?;
        history.insert((kind, ns, name, record.revision), value.as_str())?;
        if let Some(old) = drop_revision {
            history.remove((kind, ns, name, old))?;
        }
        Ok(())
    }
}
