//! Reading manifests from files, folders and stdin, and finding the workloads in them (also
//! inside `List`s).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde_norway::{Mapping, Value};

use super::{FieldError, InjectError, yaml};

/// The documents of one input, named as the user gave it.
pub struct Source {
    pub name: String,
    pub docs: Vec<Value>,
}

/// Reads every input in full before anything is rewritten, collecting all errors.
pub fn read(paths: &[PathBuf]) -> Result<Vec<Source>, Vec<InjectError>> {
    let mut errors = Vec::new();
    let mut inputs: Vec<(String, Option<PathBuf>)> = Vec::new();
    for path in paths {
        let name = path.display().to_string();
        if path == Path::new("-") {
            inputs.push(("<stdin>".into(), None));
        } else if path.is_dir() {
            match manifest_files(path) {
                Ok(files) if files.is_empty() => errors.push(InjectError::file(
                    &name,
                    "directory has no *.yaml, *.yml or *.json files",
                )),
                Ok(files) => inputs.extend(
                    files
                        .into_iter()
                        .map(|f| (f.display().to_string(), Some(f))),
                ),
                Err(err) => {
                    errors.push(InjectError::file(&name, format!("cannot list: {err}")));
                }
            }
        } else {
            inputs.push((name, Some(path.clone())));
        }
    }
    let mut sources = Vec::new();
    for (name, file) in inputs {
        let text = match file {
            Some(file) => std::fs::read_to_string(file),
            None => {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text).map(|_| text)
            }
        };
        match text {
            Ok(text) => match yaml::load_all(&text) {
                Ok(docs) => sources.push(Source { name, docs }),
                Err(err) => errors.push(InjectError {
                    file: name,
                    document: Some(err.document),
                    label: None,
                    field: String::new(),
                    reason: err.to_string(),
                }),
            },
            Err(err) => errors.push(InjectError::file(&name, format!("cannot read: {err}"))),
        }
    }
    if errors.is_empty() {
        Ok(sources)
    } else {
        Err(errors)
    }
}

/// `*.yaml`, `*.yml` and `*.json` directly in `dir` (as `kubectl apply -f DIR` reads), sorted;
/// hidden entries are skipped so a ConfigMap mount's `..data/` is not read twice.
fn manifest_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        let manifest = path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml" || ext == "json");
        if !hidden && manifest && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Where a workload kind keeps its pod template, as mapping keys from the document root;
/// `None` for kinds that pass through.
pub fn template_path(doc: &Mapping) -> Option<&'static [&'static str]> {
    let kind = doc.get("kind").and_then(Value::as_str)?;
    let api_version = doc.get("apiVersion").and_then(Value::as_str)?;
    // A custom resource may reuse a built-in kind's name; only the built-in groups are pods.
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    match (group, kind) {
        ("", "Pod") => Some(&[]),
        ("apps" | "extensions", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("batch", "Job") => Some(&["spec", "template"]),
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// `List` and `*List` documents (what `kubectl get -o yaml` prints) hold their objects in
/// `items`.
pub fn list_items(doc: &mut Mapping) -> Option<&mut Vec<Value>> {
    let kind = doc.get("kind").and_then(Value::as_str)?;
    if !kind.ends_with("List") {
        return None;
    }
    doc.get_mut("items").and_then(Value::as_sequence_mut)
}

/// `kind namespace/name` for messages.
pub fn label(doc: &Mapping) -> Option<String> {
    let kind = doc.get("kind").and_then(Value::as_str)?;
    let metadata = doc.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    Some(
        match metadata
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
        {
            Some(ns) => format!("{kind} {ns}/{name}"),
            None => format!("{kind} {name}"),
        },
    )
}

/// The mapping at `path` below `root`, or an error naming the first missing or wrong key.
pub fn mapping_at<'a>(
    root: &'a mut Mapping,
    path: &[&str],
    prefix: &str,
) -> Result<&'a mut Mapping, FieldError> {
    let mut current = root;
    let mut field = prefix.to_string();
    for key in path {
        field = join(&field, key);
        current = match current.get_mut(*key) {
            Some(Value::Mapping(next)) => next,
            Some(other) => {
                return Err(FieldError::new(
                    &field,
                    format!("expected a mapping, got {}", describe(other)),
                ));
            }
            None => {
                return Err(FieldError::new(
                    &field,
                    "missing (a pod template is required)",
                ));
            }
        };
    }
    Ok(current)
}

/// `a.b` from a field path and a key (no leading dot at the root).
pub fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

pub fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a sequence",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}
