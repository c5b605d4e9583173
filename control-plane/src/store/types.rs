//! What the store hands out (objects, apply results) and the record format both backends keep
//! under each key, so the backends and the rules in `tables` share one definition.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::error::StoreError;

/// Revisions kept per object, deletions included.
pub const HISTORY_LEN: u64 = 20;

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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) revision: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(super) json: String,
    pub(super) updated_unix_ms: i64,
    #[serde(default)]
    pub(super) deleted: bool,
}

/// `(kind, namespace, name)` of a stored object.
pub(super) type ObjectKey = (String, String, String);

/// Whether a write changed anything, so an all-`Unchanged` apply commits nothing and takes no
/// version.
pub(super) trait ResultsChanged {
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

pub(super) fn decode(key: &str, value: &str) -> Result<Record, StoreError> {
    serde_json::from_str(value).map_err(|err| StoreError::Corrupt {
        key: key.to_string(),
        reason: err.to_string(),
    })
}

pub(super) fn encode(key: &str, record: &Record) -> Result<String, StoreError> {
    serde_json::to_string(record).map_err(|err| StoreError::Corrupt {
        key: key.to_string(),
        reason: err.to_string(),
    })
}

pub(super) fn object(kind: &str, ns: &str, name: &str, record: Record) -> Object {
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
