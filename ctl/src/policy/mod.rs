//! Commands on stored documents: validate, apply, get, delete, diff, history, rollback.
//!
//! Loading and sending documents (validate, apply, delete) is here; `get`, `diff` and
//! `history` (with rollback) each have their own file with their output formats.

mod diff;
mod get;
mod history;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use weir_policy::Document;
use weir_proto::admin::v1::{ApplyRequest, ApplyResult, DeleteRequest};

use super::output::{self, key};
use super::{Kind, Outcome, Target};

pub use diff::diff;
pub use get::get;
pub use history::{history, rollback};

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
