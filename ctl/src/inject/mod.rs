//! `weirctl inject` and `weirctl uninject`: add the Weir proxy to the pods of Kubernetes
//! manifests, or take it out again, offline (deploy/README.md is the contract).
//!
//! Layout: `yaml` reads and writes YAML the way Kubernetes resolves it, `documents` reads the
//! inputs and finds workloads (also inside `List`s), `annotations` reads the `weir.dev/*`
//! settings, `probes` derives `WEIR_PROBE_PATHS`, `containers` builds what is added and `pod`
//! puts it into a pod template and takes it out.

mod annotations;
mod containers;
mod documents;
mod pod;
mod probes;
mod yaml;

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_norway::{Mapping, Value};

use super::Outcome;
use super::output;
use annotations::{Merged, Settings};
use documents::join;

pub use yaml::{emit_all, load_all};

/// Which way the documents are rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `legacy`: the proxy as a regular container for clusters older than 1.29.
    Inject {
        legacy: bool,
    },
    Uninject,
}

/// A problem at one field of a document; the document layer adds the file and index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: &str, reason: impl Into<String>) -> FieldError {
        FieldError {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

/// A problem with the input, naming the file, the 1-based document, the object and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InjectError {
    pub file: String,
    pub document: Option<usize>,
    /// `Kind namespace/name` when known.
    pub label: Option<String>,
    pub field: String,
    pub reason: String,
}

impl InjectError {
    fn file(file: &str, reason: impl Into<String>) -> InjectError {
        InjectError {
            file: file.to_string(),
            document: None,
            label: None,
            field: String::new(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for InjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(document) = self.document {
            write!(f, ": document {document}")?;
        }
        if let Some(label) = &self.label {
            write!(f, " ({label})")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Every error of a run, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct InjectErrors(pub Vec<InjectError>);

/// The rewritten documents, plus notes for stderr (skipped workloads, probes to exempt).
#[derive(Debug)]
pub struct Rewritten {
    pub yaml: String,
    pub warnings: Vec<String>,
}

/// `weirctl inject` / `uninject`: everything is read and rewritten before anything is
/// written, so an error anywhere leaves stdout empty.
pub fn run(files: &[PathBuf], mode: Mode) -> Outcome {
    let sources = documents::read(files).map_err(InjectErrors)?;
    let rewritten = rewrite_sources(sources, mode).map_err(InjectErrors)?;
    for warning in &rewritten.warnings {
        eprintln!("warning: {warning}");
    }
    output::emit(&rewritten.yaml)?;
    Ok(ExitCode::SUCCESS)
}

/// Rewrites one YAML text (named `name` in errors).
pub fn rewrite_text(name: &str, text: &str, mode: Mode) -> Result<Rewritten, Vec<InjectError>> {
    let docs = load_all(text).map_err(|err| {
        vec![InjectError {
            file: name.to_string(),
            document: Some(err.document),
            label: None,
            field: String::new(),
            reason: err.to_string(),
        }]
    })?;
    rewrite_sources(
        vec![documents::Source {
            name: name.to_string(),
            docs,
        }],
        mode,
    )
}

fn rewrite_sources(
    sources: Vec<documents::Source>,
    mode: Mode,
) -> Result<Rewritten, Vec<InjectError>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut out = Vec::new();
    if sources.iter().all(|s| s.docs.is_empty()) {
        let names: Vec<_> = sources.iter().map(|s| s.name.as_str()).collect();
        return Err(vec![InjectError::file(
            &names.join(", "),
            "no documents found",
        )]);
    }
    for source in sources {
        for (i, mut doc) in source.docs.into_iter().enumerate() {
            let at = Location {
                file: &source.name,
                document: i + 1,
            };
            let before = warnings.len();
            if let Err(err) = rewrite(&mut doc, "", mode, &mut warnings) {
                errors.push(at.error(&doc, err));
            }
            for warning in &mut warnings[before..] {
                *warning = format!("{}: document {}: {warning}", at.file, at.document);
            }
            out.push(doc);
        }
    }
    if errors.is_empty() {
        Ok(Rewritten {
            yaml: emit_all(&out),
            warnings,
        })
    } else {
        Err(errors)
    }
}

struct Location<'a> {
    file: &'a str,
    document: usize,
}

impl Location<'_> {
    fn error(&self, doc: &Value, (label, err): (Option<String>, FieldError)) -> InjectError {
        InjectError {
            file: self.file.to_string(),
            document: Some(self.document),
            label: label.or_else(|| doc.as_mapping().and_then(documents::label)),
            field: err.field,
            reason: err.reason,
        }
    }
}

/// Rewrites one document (or list item at `field`); kinds without pods pass through.
/// An error comes with the label of the object it is about.
fn rewrite(
    doc: &mut Value,
    field: &str,
    mode: Mode,
    warnings: &mut Vec<String>,
) -> Result<(), (Option<String>, FieldError)> {
    let Value::Mapping(map) = doc else {
        return Ok(());
    };
    if let Some(items) = documents::list_items(map) {
        for (i, item) in items.iter_mut().enumerate() {
            rewrite(
                item,
                &format!("{}[{i}]", join(field, "items")),
                mode,
                warnings,
            )?;
        }
        return Ok(());
    }
    let Some(path) = documents::template_path(map) else {
        return Ok(());
    };
    let label = documents::label(map);
    let fail = |err: FieldError| (label.clone(), err);
    // Settings come from every level down to the template; read them before borrowing it.
    let mut annotation_set = Merged::default();
    let mut label_set = Merged::default();
    let mut level: &Value = doc;
    let mut level_field = field.to_string();
    for key in std::iter::once(None).chain(path.iter().map(Some)) {
        if let Some(key) = key {
            level = match level.get(*key) {
                Some(next) => next,
                None => break,
            };
            level_field = join(&level_field, key);
        }
        let metadata_field = join(&level_field, "metadata");
        annotation_set.add(level.get("metadata"), "annotations", &metadata_field);
        label_set.add(level.get("metadata"), "labels", &metadata_field);
    }
    let name = doc
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str);
    let settings = Settings::parse(
        &annotation_set,
        &label_set,
        name,
        &join(field, "metadata.name"),
    )
    .map_err(fail)?;
    let Value::Mapping(map) = doc else {
        return Ok(());
    };
    let template_field = path.iter().fold(field.to_string(), |f, k| join(&f, k));
    let template: &mut Mapping = documents::mapping_at(map, path, field).map_err(fail)?;
    let mut notes = Vec::new();
    let outcome = match mode {
        Mode::Inject { legacy } => {
            let outcome = pod::inject(template, &settings, legacy, &template_field, &mut notes)
                .map_err(fail)?;
            let runs_to_completion =
                path.len() > 2 || label.as_deref().is_some_and(|l| l.starts_with("Job "));
            if legacy && runs_to_completion && outcome == pod::Outcome::Changed {
                notes.push(
                    "with --legacy-sidecar the proxy keeps running after the job's containers \
                     exit, so the Job does not complete"
                        .into(),
                );
            }
            outcome
        }
        Mode::Uninject => pod::uninject(template),
    };
    if let pod::Outcome::Unchanged(Some(reason)) = outcome {
        notes.push(format!("left unchanged: {reason}"));
    }
    let who = label.unwrap_or_else(|| "object".into());
    warnings.extend(notes.into_iter().map(|n| format!("{who}: {n}")));
    Ok(())
}

#[cfg(test)]
mod tests;
