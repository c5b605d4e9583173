//! Weir's policy documents (design §6): parsing, validation with field paths, re-serialisation.
//!
//! ```
//! let docs = weir_policy::parse_str("inline.yaml", "
//! apiVersion: weir/v1
//! kind: ServicePolicy
//! metadata: { name: payments, namespace: shop }
//! spec: { service: payments, timeouts: { request: 2s } }
//! ").expect("valid policy");
//! assert_eq!(docs[0].key(), "ServicePolicy shop/payments");
//! ```

pub mod duration;
mod error;
mod meta;
mod model;
mod parse;
mod validate;
mod wire;

#[cfg(test)]
mod tests;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use duration::Duration;
pub use error::{Errors, PolicyError};
pub use meta::{API_VERSION, DEFAULT_NAMESPACE, Metadata};
pub use model::*;
pub use validate::{MAX_RETRY_ATTEMPTS, dns_label, spiffe_id};

/// Parses every document in `text` and checks each one, then checks the set (duplicates, more
/// than one MeshConfig). `source` names the text in errors, usually the file name.
///
/// Collects all errors of all documents rather than stopping at the first.
pub fn parse_str(source: &str, text: &str) -> Result<Vec<Document>, Errors> {
    let (docs, mut errors) = parse::parse_text(source, text);
    errors.extend(validate::set(&locate(source, &docs)));
    finish(docs, errors)
}

/// Loads files, directories (their `*.yaml` / `*.yml`, sorted, not recursive, hidden entries
/// skipped) and `-` for stdin, then checks the union as one set.
pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<Document>, Errors> {
    let mut errors = Vec::new();
    let file_error = |source: &str, reason: String| PolicyError {
        source: source.to_string(),
        document: None,
        path: String::new(),
        reason,
    };
    let mut inputs: Vec<(String, Option<PathBuf>)> = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let name = path.display().to_string();
        if path == Path::new("-") {
            inputs.push(("<stdin>".into(), None));
        } else if path.is_dir() {
            match policy_files(path) {
                Ok(files) if files.is_empty() => errors.push(file_error(
                    &name,
                    "directory has no *.yaml or *.yml files".into(),
                )),
                Ok(files) => inputs.extend(
                    files
                        .into_iter()
                        .map(|f| (f.display().to_string(), Some(f))),
                ),
                Err(err) => errors.push(file_error(&name, format!("cannot list directory: {err}"))),
            }
        } else {
            inputs.push((name, Some(path.to_path_buf())));
        }
    }
    let mut sources: Vec<(String, Vec<Document>)> = Vec::new();
    for (source, file) in inputs {
        let text = match file {
            Some(file) => std::fs::read_to_string(file),
            None => {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text).map(|_| text)
            }
        };
        match text {
            Ok(text) => {
                let (docs, found) = parse::parse_text(&source, &text);
                errors.extend(found);
                sources.push((source, docs));
            }
            Err(err) => errors.push(file_error(&source, format!("cannot read: {err}"))),
        }
    }
    let located: Vec<_> = sources
        .iter()
        .flat_map(|(source, docs)| {
            docs.iter()
                .map(move |doc| validate::Located { source, doc })
        })
        .collect();
    errors.extend(validate::set(&located));
    finish(
        sources.into_iter().flat_map(|(_, docs)| docs).collect(),
        errors,
    )
}

/// `*.yaml` and `*.yml` files directly in `dir`, sorted by name. Hidden entries are skipped so a
/// Kubernetes ConfigMap mount (`..data/`, `..2024_…/`) is not read twice.
fn policy_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        let yaml = path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml");
        // `is_file` follows symlinks, which ConfigMap mounts rely on.
        if !hidden && yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Cross-document checks: no two documents with the same kind, namespace and name; at most one
/// MeshConfig. Errors carry no source because documents do not remember their file.
pub fn validate_set(docs: &[Document]) -> Result<(), Errors> {
    Errors(validate::set(&locate("", docs))).into_result()
}

/// Checks one already-decoded document (e.g. one received as JSON) with the same rules
/// [`parse_str`] applies.
pub fn validate(source: &str, doc: &Document) -> Result<(), Errors> {
    let key = doc.key();
    let errors = validate::document(doc)
        .0
        .into_iter()
        .map(|(path, reason)| PolicyError {
            source: source.to_string(),
            document: Some(key.clone()),
            path,
            reason,
        })
        .collect();
    Errors(errors).into_result()
}

/// Multi-document YAML that [`parse_str`] accepts again.
pub fn to_yaml(docs: &[Document]) -> String {
    let mut out = String::new();
    for doc in docs {
        if !out.is_empty() {
            out.push_str("---\n");
        }
        match serde_norway::to_string(doc) {
            Ok(text) => out.push_str(&text),
            // Unreachable for these types (string keys, no nested enums); still, say so in the
            // output rather than panic in a proxy that is dumping its config.
            Err(err) => out.push_str(&format!("# {}: cannot serialise: {err}\n", doc.key())),
        }
    }
    out
}

fn locate<'a>(source: &'a str, docs: &'a [Document]) -> Vec<validate::Located<'a>> {
    docs.iter()
        .map(|doc| validate::Located { source, doc })
        .collect()
}

fn finish(docs: Vec<Document>, errors: Vec<PolicyError>) -> Result<Vec<Document>, Errors> {
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(Errors(errors))
    }
}
