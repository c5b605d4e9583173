//! `weirctl history` and `weirctl rollback`: a document's stored revisions and restoring one.

use std::process::ExitCode;

use anyhow::{anyhow, bail};
use weir_proto::admin::v1::{HistoryRequest, Object, RollbackRequest};

use crate::output::{self, MAX_WIDTH, Table, key};
use crate::{Kind, ListFormat, Outcome, Target};

pub async fn history(
    target: &Target,
    kind: Kind,
    namespace: &str,
    name: &str,
    format: ListFormat,
) -> Outcome {
    let mut client = target.connect().await?;
    let revisions = client
        .history(HistoryRequest {
            kind: kind.as_str().into(),
            namespace: namespace.into(),
            name: name.into(),
        })
        .await
        .map_err(|status| target.explain(&status))?
        .into_inner()
        .revisions;
    if revisions.is_empty() {
        bail!("{} has no history", key(kind.as_str(), namespace, name));
    }
    match format {
        ListFormat::Table | ListFormat::Wide => output::emit(&history_table(&revisions))?,
        ListFormat::Json => output::emit(&history_json(&revisions)?)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The server sends revisions without saying what happened; a revision after nothing (or after a
/// deletion) created the object, any other one changed it. The oldest revision shown may be a
/// change whose creation has aged out of the last 20; it is still called `created` only when it
/// is revision 1.
pub(super) fn actions(revisions: &[Object]) -> Vec<&'static str> {
    let mut previous_deleted = None;
    revisions
        .iter()
        .map(|o| {
            let action = if o.deleted {
                "deleted"
            } else {
                match previous_deleted {
                    None if o.revision <= 1 => "created",
                    None => "changed",
                    Some(true) => "created",
                    Some(false) => "changed",
                }
            };
            previous_deleted = Some(o.deleted);
            action
        })
        .collect()
}

pub(super) fn history_table(revisions: &[Object]) -> String {
    let mut table = Table::new(&["REVISION", "UPDATED", "ACTION"]);
    for (o, action) in revisions.iter().zip(actions(revisions)) {
        table.row([
            o.revision.to_string(),
            output::timestamp(o.updated_unix_ms),
            action.to_string(),
        ]);
    }
    table.render(MAX_WIDTH)
}

/// A struct rather than `json!` so the keys come out in this order, not alphabetically.
#[derive(serde::Serialize)]
struct RevisionJson {
    revision: u64,
    updated: String,
    action: &'static str,
    document: serde_json::Value,
}

/// `[{"revision", "updated", "action", "document"}]`, `document` null for deletions.
fn history_json(revisions: &[Object]) -> anyhow::Result<String> {
    let items = revisions
        .iter()
        .zip(actions(revisions))
        .map(|(o, action)| {
            let document = if o.json.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_str(&o.json).map_err(|err| {
                    anyhow!(
                        "{} revision {}: the server sent invalid JSON: {err}",
                        key(&o.kind, &o.namespace, &o.name),
                        o.revision
                    )
                })?
            };
            Ok(RevisionJson {
                revision: o.revision,
                updated: output::timestamp(o.updated_unix_ms),
                action,
                document,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    output::pretty_json(&items)
}

pub async fn rollback(
    target: &Target,
    kind: Kind,
    namespace: &str,
    name: &str,
    to: u64,
) -> Outcome {
    let mut client = target.connect().await?;
    let response = client
        .rollback(RollbackRequest {
            kind: kind.as_str().into(),
            namespace: namespace.into(),
            name: name.into(),
            to_revision: to,
        })
        .await
        .map_err(|status| target.explain(&status))?
        .into_inner();
    let label = key(&kind.as_str().to_ascii_lowercase(), namespace, name);
    match response.object {
        Some(object) => output::emit(&format!(
            "{label} rolled back to revision {to} (now revision {})\n",
            object.revision
        ))?,
        None => output::emit(&format!("{label} rolled back to revision {to}\n"))?,
    }
    Ok(ExitCode::SUCCESS)
}
