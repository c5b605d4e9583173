//! From YAML text to typed documents, collecting every error with its document and field path.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_norway::Value;

use crate::error::PolicyError;
use crate::meta::{API_VERSION, DEFAULT_NAMESPACE};
use crate::model::{Document, KINDS, document_key, unknown_kind};
use crate::validate;

const TOP_LEVEL: [&str; 4] = ["apiVersion", "kind", "metadata", "spec"];

/// Parses one file's text: documents that pass their own checks, plus every error found.
/// Cross-document checks are left to the caller, which may be combining several files.
pub(crate) fn parse_text(source: &str, text: &str) -> (Vec<Document>, Vec<PolicyError>) {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let position = format!("document {}", i + 1);
        let at = |document: String, path: String, reason: String| PolicyError {
            source: source.to_string(),
            document: Some(document),
            path,
            reason,
        };
        let mut value = match Value::deserialize(de) {
            Ok(value) => value,
            Err(err) => {
                // The parser cannot resynchronise after an error (it would return the same
                // error forever), so later documents stay unchecked until this one is fixed.
                errors.push(at(position, String::new(), yaml_reason(&err)));
                break;
            }
        };
        if let Err(err) = value.apply_merge() {
            errors.push(at(
                position,
                String::new(),
                format!("invalid YAML merge (<<): {err}"),
            ));
            continue;
        }
        if value.is_null() {
            // Empty documents, e.g. after a trailing `---`.
            continue;
        }
        let header = match header(&value) {
            Ok(header) => header,
            Err(found) => {
                errors.extend(
                    found
                        .into_iter()
                        .map(|(path, reason)| at(position.clone(), path, reason)),
                );
                continue;
            }
        };
        let label = document_key(header.kind, &header.namespace, &header.name);
        let decoded = match header.kind {
            "MeshConfig" => decode(value).map(Document::MeshConfig),
            "ServicePolicy" => decode(value).map(Document::ServicePolicy),
            _ => decode(value).map(Document::Endpoints),
        };
        match decoded {
            Ok(doc) => {
                let found = validate::document(&doc).0;
                if found.is_empty() {
                    docs.push(doc);
                }
                errors.extend(
                    found
                        .into_iter()
                        .map(|(path, reason)| at(label.clone(), path, reason)),
                );
            }
            Err((path, reason)) => errors.push(at(label, path, reason)),
        }
    }
    (docs, errors)
}

fn yaml_reason(err: &serde_norway::Error) -> String {
    let message = err.to_string();
    match err.location() {
        Some(loc) => {
            let mark = format!(" at line {} column {}", loc.line(), loc.column());
            format!(
                "invalid YAML at line {} column {}: {}",
                loc.line(),
                loc.column(),
                message.replacen(&mark, "", 1)
            )
        }
        None => format!("invalid YAML: {message}"),
    }
}

/// What must be known before anything else can be reported usefully.
struct Header {
    kind: &'static str,
    name: String,
    namespace: String,
}

/// Reads apiVersion, kind and metadata by hand, so a broken envelope gets one clear message per
/// field instead of whatever serde trips over first, and so later errors can name the document.
fn header(value: &Value) -> Result<Header, Vec<(String, String)>> {
    let mut found = Vec::new();
    let Some(map) = value.as_mapping() else {
        let reason = format!(
            "expected a mapping with {}, got {}",
            TOP_LEVEL.join(", "),
            describe(value)
        );
        return Err(vec![(String::new(), reason)]);
    };
    for key in map.keys() {
        match key.as_str() {
            Some(k) if TOP_LEVEL.contains(&k) => {}
            Some(k) => found.push((
                k.to_string(),
                format!(
                    "unknown field `{k}`, expected one of {}",
                    TOP_LEVEL.join(", ")
                ),
            )),
            None => found.push((
                String::new(),
                format!("field names must be strings, got {}", describe(key)),
            )),
        }
    }
    match value.get("apiVersion") {
        None => found.push((
            "apiVersion".into(),
            format!("missing; expected {API_VERSION}"),
        )),
        Some(v) if v.as_str() == Some(API_VERSION) => {}
        Some(v) => found.push((
            "apiVersion".into(),
            format!(
                "unsupported apiVersion {}; expected {API_VERSION}",
                describe(v)
            ),
        )),
    }
    let kind = match value.get("kind") {
        None => {
            found.push((
                "kind".into(),
                format!("missing; expected one of {}", KINDS.join(", ")),
            ));
            None
        }
        Some(v) => {
            let kind = v
                .as_str()
                .and_then(|k| KINDS.iter().find(|known| **known == k).copied());
            if kind.is_none() {
                let reason = match v.as_str() {
                    Some(k) => unknown_kind(k),
                    None => format!("expected one of {}, got {}", KINDS.join(", "), describe(v)),
                };
                found.push(("kind".into(), reason));
            }
            kind
        }
    };
    let mut name = None;
    let mut namespace = DEFAULT_NAMESPACE.to_string();
    match value.get("metadata") {
        None => found.push((
            "metadata".into(),
            "missing; every document needs metadata.name".into(),
        )),
        Some(md) if !md.is_mapping() => found.push((
            "metadata".into(),
            format!(
                "expected a mapping with name and namespace, got {}",
                describe(md)
            ),
        )),
        Some(md) => {
            match md.get("name") {
                None => found.push((
                    "metadata.name".into(),
                    "missing; every document needs a name".into(),
                )),
                Some(v) => match v.as_str() {
                    Some(n) => name = Some(n.to_string()),
                    None => found.push((
                        "metadata.name".into(),
                        format!("expected a string, got {}", describe(v)),
                    )),
                },
            }
            if let Some(ns) = md.get("namespace").and_then(Value::as_str) {
                namespace = ns.to_string();
            }
        }
    }
    match (kind, name) {
        (Some(kind), Some(name)) if found.is_empty() => {
            if kind == "MeshConfig" {
                namespace.clear();
            }
            Ok(Header {
                kind,
                name,
                namespace,
            })
        }
        _ => Err(found),
    }
}

/// Deserialises through serde_path_to_error so type errors and unknown fields carry their path.
fn decode<T: DeserializeOwned>(value: Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let reason = err.into_inner().to_string();
        // Point at the missing field itself, as every other error points at its field.
        if let Some(field) = reason
            .strip_prefix("missing field `")
            .and_then(|r| r.strip_suffix('`'))
        {
            let path = if path.is_empty() {
                field.to_string()
            } else {
                format!("{path}.{field}")
            };
            return (path, "required field is missing".to_string());
        }
        (path, reason)
    })
}

/// A short description of a YAML value for error messages: `"v2"`, `integer 3`, `a list`.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("tagged value {}", t.tag),
    }
}
