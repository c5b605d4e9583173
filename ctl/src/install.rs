//! `weirctl install`: the control plane's manifests (deploy/'s kustomize base), embedded at
//! build time, for `weirctl install | kubectl apply -f -`.
//!
//! The base's kustomizations only list files (no transformers), so concatenating the files is
//! what `kubectl kustomize deploy` renders; `ctl/tests/install.rs` checks both that
//! every listed file is here and that the objects are the same.

use std::io::Write;

use anyhow::Context;

use super::Outcome;

/// The base's resource files, relative to `deploy/`, in the order `kubectl apply -f -` creates
/// them: the namespace before what lives in it, the ServiceAccount before the pods that use it.
pub const MANIFESTS: &[(&str, &str)] = &[
    (
        "namespace/namespace.yaml",
        include_str!("../../deploy/namespace/namespace.yaml"),
    ),
    (
        "control-plane/serviceaccount.yaml",
        include_str!("../../deploy/control-plane/serviceaccount.yaml"),
    ),
    (
        "control-plane/rbac.yaml",
        include_str!("../../deploy/control-plane/rbac.yaml"),
    ),
    (
        "control-plane/service.yaml",
        include_str!("../../deploy/control-plane/service.yaml"),
    ),
    (
        "control-plane/statefulset.yaml",
        include_str!("../../deploy/control-plane/statefulset.yaml"),
    ),
    (
        "control-plane/poddisruptionbudget.yaml",
        include_str!("../../deploy/control-plane/poddisruptionbudget.yaml"),
    ),
    (
        "jaeger/service.yaml",
        include_str!("../../deploy/jaeger/service.yaml"),
    ),
    (
        "jaeger/deployment.yaml",
        include_str!("../../deploy/jaeger/deployment.yaml"),
    ),
];

/// All manifests as one multi-document YAML stream, each file under a comment naming it.
pub fn render() -> String {
    let mut out = format!(
        "# Weir {} control plane and Jaeger (deploy/ in the source): weirctl install | kubectl apply -f -\n",
        env!("CARGO_PKG_VERSION")
    );
    for (path, text) in MANIFESTS {
        out.push_str("---\n# Source: deploy/");
        out.push_str(path);
        out.push('\n');
        out.push_str(text);
        if !text.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

pub fn run() -> Outcome {
    std::io::stdout()
        .lock()
        .write_all(render().as_bytes())
        .context("cannot write the manifests to stdout")?;
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_a_separate_document_stream() {
        let out = render();
        // A file's first document must not run into the previous file's last one.
        assert_eq!(
            out.matches("---\n# Source: deploy/").count(),
            MANIFESTS.len()
        );
        for (path, text) in MANIFESTS {
            assert!(text.contains("apiVersion:"), "{path} holds no object");
            assert!(out.contains(text), "{path} is not printed whole");
        }
    }
}
