//! The store's rules, written once over [`Tables`] (one write transaction of either backend):
//! what an apply, a delete and a rollback do to an object's current record and its history.

use weir_policy::{Document, Errors, PolicyError};

use super::error::StoreError;
use super::types::{Action, Applied, HISTORY_LEN, Object, Record, display_key, object};

/// The reads and writes of one write transaction. Reads see the transaction's own writes.
pub(super) trait Tables {
    /// The current record of an object (a tombstone when it was deleted).
    fn object(&mut self, kind: &str, ns: &str, name: &str) -> Result<Option<Record>, StoreError>;
    /// One kept revision of an object.
    fn revision(
        &mut self,
        kind: &str,
        ns: &str,
        name: &str,
        revision: u64,
    ) -> Result<Option<Record>, StoreError>;
    /// Every stored object of `kind`, tombstones included: `(namespace, name, record)`.
    fn of_kind(&mut self, kind: &str) -> Result<Vec<(String, String, Record)>, StoreError>;
    /// Makes `record` the object's current record, adds it to the history and drops the
    /// revision `drop_revision` (the one that fell out of the window), if any.
    fn write_revision(
        &mut self,
        kind: &str,
        ns: &str,
        name: &str,
        record: &Record,
        drop_revision: Option<u64>,
    ) -> Result<(), StoreError>;
}

/// `(kind, namespace, name, weir-policy JSON)` of each document to apply.
pub(super) type Encoded<'a> = (&'a str, &'a str, &'a str, String);

pub(super) fn apply(
    t: &mut dyn Tables,
    encoded: &[Encoded<'_>],
    mesh_config: Option<&str>,
    now: i64,
) -> Result<Vec<Applied>, StoreError> {
    let mut results = Vec::with_capacity(encoded.len());
    for (kind, ns, name, json) in encoded {
        results.push(put(t, kind, ns, name, json, now)?);
    }
    check_single_mesh_config(t, mesh_config)?;
    Ok(results)
}

pub(super) fn delete(
    t: &mut dyn Tables,
    kind: &str,
    ns: &str,
    name: &str,
    now: i64,
) -> Result<Applied, StoreError> {
    let current = t.object(kind, ns, name)?;
    let Some(current) = current.filter(|r| !r.deleted) else {
        return Err(StoreError::NotFound(display_key(kind, ns, name)));
    };
    let record = Record {
        revision: current.revision + 1,
        json: String::new(),
        updated_unix_ms: now,
        deleted: true,
    };
    let object = write_revision(t, kind, ns, name, record)?;
    Ok(Applied {
        object,
        action: Action::Deleted,
    })
}

pub(super) fn rollback(
    t: &mut dyn Tables,
    kind: &str,
    ns: &str,
    name: &str,
    to_revision: u64,
    now: i64,
) -> Result<Applied, StoreError> {
    let key = display_key(kind, ns, name);
    let Some(old) = t.revision(kind, ns, name, to_revision)? else {
        return Err(StoreError::Precondition(format!(
            "{key} has no revision {to_revision} in its history \
             (see `weirctl history`; the last {HISTORY_LEN} revisions are kept)"
        )));
    };
    if old.deleted {
        return Err(StoreError::Precondition(format!(
            "revision {to_revision} of {key} is a deletion; roll back to a revision with content, \
             or use `weirctl delete`"
        )));
    }
    // The rules may have tightened since that revision was written.
    let doc: Document = serde_json::from_str(&old.json).map_err(|err| {
        StoreError::Precondition(format!(
            "revision {to_revision} of {key} no longer parses: {err}"
        ))
    })?;
    if let Err(errors) = weir_policy::validate("", &doc) {
        return Err(StoreError::Precondition(format!(
            "revision {to_revision} of {key} is no longer valid:\n{errors}"
        )));
    }
    let applied = put(t, kind, ns, name, &old.json, now)?;
    if kind == "MeshConfig" {
        check_single_mesh_config(t, Some(name))?;
    }
    Ok(applied)
}

fn put(
    t: &mut dyn Tables,
    kind: &str,
    ns: &str,
    name: &str,
    json: &str,
    now: i64,
) -> Result<Applied, StoreError> {
    let (revision, action) = match t.object(kind, ns, name)? {
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
    let object = write_revision(t, kind, ns, name, record)?;
    Ok(Applied { object, action })
}

fn write_revision(
    t: &mut dyn Tables,
    kind: &str,
    ns: &str,
    name: &str,
    record: Record,
) -> Result<Object, StoreError> {
    // Revisions are consecutive, so dropping the one that fell out of the window keeps exactly
    // the last HISTORY_LEN.
    let drop = (record.revision > HISTORY_LEN).then(|| record.revision - HISTORY_LEN);
    t.write_revision(kind, ns, name, &record, drop)?;
    Ok(object(kind, ns, name, record))
}

/// The store-wide half of "at most one MeshConfig": a request may replace the stored one under
/// the same name, not add a second.
fn check_single_mesh_config(t: &mut dyn Tables, written: Option<&str>) -> Result<(), StoreError> {
    let Some(written) = written else {
        return Ok(());
    };
    for (_, name, record) in t.of_kind("MeshConfig")? {
        if name != written && !record.deleted {
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
