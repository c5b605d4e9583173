//! Commands on stored documents: validate, apply, get, delete, diff, history, rollback.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use similar::TextDiff;
use tonic::Code;
use weir_policy::Document;
use weir_proto::admin::v1::{
    ApplyRequest, ApplyResult, DeleteRequest, GetRequest, HistoryRequest, Object, RollbackRequest,
};

use super::output::{self, MAX_WIDTH, Table, key};
use super::{DocFormat, Kind, ListFormat, Outcome, Target};

/// Offline check with the same rules the control plane applies.
pub fn validate(files: &[PathBuf]) -> Outcome {
    let docs = load(files)?;
    for doc in &docs {
        output::emit(&format!("{}: valid\n", doc.key()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Local validation first, so errors name the file and line; an empty input is an error because
/// "applied nothing" after a typo in a folder name is worse than a message.
fn load(files: &[PathBuf]) -> anyhow::Result<Vec<Document>> {
    let docs = weir_policy::load_paths(files).map_err(|errors| anyhow!("{errors}"))?;
    if docs.is_empty() {
        bail!("no documents found in {}", source_name(files));
    }
    Ok(docs)
}

/// What the server names the request in its errors: the paths as the user typed them.
fn source_name(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

// === apply ===

pub async fn apply(target: &Target, files: &[PathBuf], dry_run: bool) -> Outcome {
    let docs = load(files)?;
    // One request for every file: the server applies all of them or none. The union is
    // re-serialised because stdin cannot be read twice and several files need one text.
    let request = ApplyRequest {
        yaml: weir_policy::to_yaml(&docs),
        source: source_name(files),
        dry_run,
    };
    let mut client = target.connect().await?;
    let response = client
        .apply(request)
        .await
        .map_err(|status| target.explain(&status))?
        .into_inner();
    output::emit(&apply_lines(&response.results, dry_run))?;
    Ok(ExitCode::SUCCESS)
}

/// `servicepolicy shop/payments configured (revision 3)`, one line per document.
fn apply_lines(results: &[ApplyResult], dry_run: bool) -> String {
    let mut out = String::new();
    for result in results {
        out.push_str(&key(
            &result.kind.to_ascii_lowercase(),
            &result.namespace,
            &result.name,
        ));
        out.push(' ');
        out.push_str(&result.action);
        if result.revision > 0 {
            out.push_str(&format!(" (revision {})", result.revision));
        }
        if dry_run {
            out.push_str(" (dry run)");
        }
        out.push('\n');
    }
    out
}

// === get ===

pub async fn get(
    target: &Target,
    kind: Kind,
    name: Option<&str>,
    namespace: Option<&str>,
    format: DocFormat,
) -> Outcome {
    // Without -n a name is looked up in every namespace; `ns/name` or -n narrows it.
    let (namespace, name) = match name {
        Some(name) if name.contains('/') || namespace.is_some() => kind.object(name, namespace)?,
        Some(name) => (String::new(), name.to_string()),
        None => (
            namespace
                .filter(|_| kind.namespaced())
                .unwrap_or_default()
                .to_string(),
            String::new(),
        ),
    };
    let mut client = target.connect().await?;
    let request = GetRequest {
        kind: kind.as_str().into(),
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let objects = match client.get(request).await {
        Ok(response) => response.into_inner().objects,
        Err(status) if status.code() == Code::NotFound => Vec::new(),
        Err(status) => return Err(target.explain(&status)),
    };
    let objects: Vec<Object> = objects.into_iter().filter(|o| !o.deleted).collect();
    if objects.is_empty() && !name.is_empty() {
        let where_ = if namespace.is_empty() && kind.namespaced() {
            " in any namespace"
        } else {
            ""
        };
        bail!(
            "{} not found{where_}",
            key(kind.as_str(), &namespace, &name)
        );
    }
    match format {
        DocFormat::Table if objects.is_empty() => eprintln!("No {kind} found."),
        DocFormat::Table => output::emit(&objects_table(&objects))?,
        DocFormat::Yaml => output::emit(&objects_yaml(&objects)?)?,
        DocFormat::Json => output::emit(&output::objects_json(&objects)?)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn objects_table(objects: &[Object]) -> String {
    let mut table = Table::new(&["KIND", "NAMESPACE", "NAME", "REVISION", "UPDATED"]);
    for o in objects {
        let namespace = if o.namespace.is_empty() {
            "-"
        } else {
            &o.namespace
        };
        table.row([
            o.kind.clone(),
            namespace.to_string(),
            o.name.clone(),
            o.revision.to_string(),
            output::timestamp(o.updated_unix_ms),
        ]);
    }
    table.render(MAX_WIDTH)
}

/// Multi-document YAML that `apply -f` accepts again.
fn objects_yaml(objects: &[Object]) -> anyhow::Result<String> {
    let docs = objects
        .iter()
        .map(output::decode)
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(weir_policy::to_yaml(&docs))
}

// === delete ===

pub async fn delete(target: &Target, kind: Kind, namespace: &str, name: &str) -> Outcome {
    let mut client = target.connect().await?;
    let response = client
        .delete(DeleteRequest {
            kind: kind.as_str().into(),
            namespace: namespace.into(),
            name: name.into(),
        })
        .await
        .map_err(|status| target.explain(&status))?
        .into_inner();
    output::emit(&format!(
        "{} deleted (revision {})\n",
        key(&kind.as_str().to_ascii_lowercase(), namespace, name),
        response.revision
    ))?;
    Ok(ExitCode::SUCCESS)
}

// === diff ===

pub async fn diff(target: &Target, files: &[PathBuf]) -> Outcome {
    let docs = load(files)?;
    let mut client = target.connect().await?;
    let mut out = String::new();
    for doc in &docs {
        let request = GetRequest {
            kind: doc.kind().into(),
            namespace: doc.namespace().into(),
            name: doc.name().into(),
        };
        let live = match client.get(request).await {
            Ok(response) => response
                .into_inner()
                .objects
                .into_iter()
                .find(|o| !o.deleted && o.namespace == doc.namespace() && o.name == doc.name()),
            Err(status) if status.code() == Code::NotFound => None,
            Err(status) => return Err(target.explain(&status)),
        };
        let live = live.as_ref().map(output::decode).transpose()?;
        if let Some(text) = document_diff(live.as_ref(), doc) {
            out.push_str(&text);
        }
    }
    output::emit(&out)?;
    Ok(if out.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Unified diff of the stored and the file's YAML, or `None` when they are the same. Both sides
/// go through the same serialiser so comments, key order and `2000ms` vs `2s` do not show up as
/// changes. A document that is not stored yet is diffed against nothing and marked `(new)`.
pub fn document_diff(live: Option<&Document>, file: &Document) -> Option<String> {
    let old = live.map(output::document_yaml).unwrap_or_default();
    let new = output::document_yaml(file);
    if old == new {
        return None;
    }
    let name = file.key();
    let old_header = match live {
        Some(_) => format!("live/{name}"),
        None => format!("live/{name} (new)"),
    };
    Some(
        TextDiff::from_lines(&old, &new)
            .unified_diff()
            .context_radius(3)
            .header(&old_header, &format!("file/{name}"))
            .to_string(),
    )
}

// === history and rollback ===

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
        ListFormat::Table => output::emit(&history_table(&revisions))?,
        ListFormat::Json => output::emit(&history_json(&revisions)?)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The server sends revisions without saying what happened; a revision after nothing (or after a
/// deletion) created the object, any other one changed it. The oldest revision shown may be a
/// change whose creation has aged out of the last 20; it is still called `created` only when it
/// is revision 1.
fn actions(revisions: &[Object]) -> Vec<&'static str> {
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

fn history_table(revisions: &[Object]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "
apiVersion: weir/v1
kind: ServicePolicy
metadata: { name: payments, namespace: shop }
spec: { service: payments, timeouts: { request: 2s } }
";

    fn doc(text: &str) -> Document {
        weir_policy::parse_str("test.yaml", text)
            .expect("valid")
            .remove(0)
    }

    #[test]
    fn diff_of_equal_documents_is_empty() {
        let a = doc(POLICY);
        // Comments and flow style do not count as differences.
        let b = doc(&format!("# comment\n{}", POLICY.replace("2s", "2000ms")));
        assert_eq!(document_diff(Some(&a), &b), None);
    }

    #[test]
    fn diff_shows_changed_lines() {
        let live = doc(POLICY);
        let file = doc(&POLICY.replace("2s", "3s"));
        let text = document_diff(Some(&live), &file).expect("differs");
        assert!(text.starts_with(
            "--- live/ServicePolicy shop/payments\n+++ file/ServicePolicy shop/payments\n"
        ));
        assert!(text.contains("\n-    request: 2s\n"), "{text}");
        assert!(text.contains("\n+    request: 3s\n"), "{text}");
    }

    #[test]
    fn diff_of_new_document_adds_everything() {
        let file = doc(POLICY);
        let text = document_diff(None, &file).expect("new");
        assert!(text.starts_with("--- live/ServicePolicy shop/payments (new)\n"));
        assert!(text.contains("+kind: ServicePolicy"));
        assert!(!text.lines().skip(2).any(|l| l.starts_with('-')));
    }

    #[test]
    fn apply_output() {
        let result = |action: &str, revision| ApplyResult {
            kind: "ServicePolicy".into(),
            namespace: "shop".into(),
            name: "payments".into(),
            action: action.into(),
            revision,
        };
        assert_eq!(
            apply_lines(&[result("configured", 3)], false),
            "servicepolicy shop/payments configured (revision 3)\n"
        );
        assert_eq!(
            apply_lines(&[result("created", 0)], true),
            "servicepolicy shop/payments created (dry run)\n"
        );
        let mc = ApplyResult {
            kind: "MeshConfig".into(),
            name: "default".into(),
            action: "unchanged".into(),
            revision: 1,
            ..Default::default()
        };
        assert_eq!(
            apply_lines(&[mc], false),
            "meshconfig default unchanged (revision 1)\n"
        );
    }

    #[test]
    fn history_actions() {
        let rev = |revision, deleted| Object {
            revision,
            deleted,
            ..Default::default()
        };
        let revisions = [rev(1, false), rev(2, false), rev(3, true), rev(4, false)];
        assert_eq!(
            actions(&revisions),
            ["created", "changed", "deleted", "created"]
        );
        assert_eq!(actions(&[rev(7, false)]), ["changed"]);
        let table = history_table(&revisions);
        assert!(table.starts_with("REVISION  UPDATED  ACTION\n1         -        created\n"));
    }

    #[test]
    fn get_yaml_round_trips() {
        let d = doc(POLICY);
        let object = Object {
            kind: "ServicePolicy".into(),
            namespace: "shop".into(),
            name: "payments".into(),
            revision: 2,
            json: serde_json::to_string(&d).expect("json"),
            ..Default::default()
        };
        let yaml = objects_yaml(&[object.clone(), object]).expect("yaml");
        // Two documents with the same key fail the set check, so parse each half alone.
        let first = yaml.split("---\n").next().unwrap_or_default();
        assert_eq!(doc(first), d);
        assert_eq!(yaml.matches("kind: ServicePolicy").count(), 2);
    }

    #[test]
    fn empty_input_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("empty.yaml");
        std::fs::write(&file, "# nothing\n").expect("write");
        let err = load(&[file]).expect_err("empty");
        assert!(
            err.to_string().starts_with("no documents found in"),
            "{err}"
        );
    }
}
