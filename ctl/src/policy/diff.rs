//! `weirctl diff`: the documents in files against the stored ones, as unified diffs.

use std::path::PathBuf;
use std::process::ExitCode;

use similar::TextDiff;
use tonic::Code;
use weir_policy::Document;
use weir_proto::admin::v1::GetRequest;

use super::load;
use crate::output;
use crate::{Outcome, Target};

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
