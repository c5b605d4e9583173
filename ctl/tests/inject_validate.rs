//! The real `weirctl inject` on tests/fixtures/inject (a file, the folder, stdin), its output
//! checked by `kubernetes-validate --strict` (PyPI; offline OpenAPI schemas) for Kubernetes
//! 1.29 and 1.33. kubernetes-validate must be installed (`pip install
//! kubernetes-validate==1.37.0`, as .ci/run does): without it this test fails, it never skips.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const WEIRCTL: &str = env!("CARGO_BIN_EXE_weirctl");
const VERSIONS: [&str; 2] = ["1.29.0", "1.33.0"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject")
}

/// Runs `program args` with `stdin` and returns its output.
fn run(program: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!(
                "cannot run {program}: {err} (kubernetes-validate: pip install \
                 kubernetes-validate==1.37.0)"
            )
        });
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(stdin).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("wait")
}

fn weirctl(args: &[&str], stdin: &[u8]) -> String {
    let out = run(WEIRCTL, args, stdin);
    assert!(
        out.status.success(),
        "weirctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Pipes `yaml` into kubernetes-validate for every version; panics with its report otherwise.
fn validate(what: &str, yaml: &str) {
    for version in VERSIONS {
        let out = run(
            "kubernetes-validate",
            &["--strict", "--quiet", "-k", version, "-"],
            yaml.as_bytes(),
        );
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !report.contains("ERROR"),
            "{what} does not validate for Kubernetes {version}:\n{report}"
        );
    }
}

/// How many documents (and List items) carry inject's marker.
fn injected_pods(yaml: &str) -> usize {
    yaml.matches("weir.dev/injected: \"0.1.0\"").count()
}

#[test]
fn injected_fixtures_validate_for_kubernetes_1_29_and_later() {
    let version = run("kubernetes-validate", &["--version"], b"");
    assert!(
        version.status.success(),
        "kubernetes-validate --version failed"
    );

    let folder = fixtures();
    let folder = folder.to_str().expect("UTF-8 path");
    let native = weirctl(&["inject", "-f", folder], b"");
    assert_eq!(injected_pods(&native), 8, "{native}");
    validate("inject -f FOLDER", &native);
    let legacy = weirctl(&["inject", "--legacy-sidecar", "-f", folder], b"");
    assert_eq!(injected_pods(&legacy), 8);
    validate("inject --legacy-sidecar -f FOLDER", &legacy);

    // Injecting the output again, from stdin, changes nothing; uninject restores the input.
    assert_eq!(weirctl(&["inject", "-f", "-"], native.as_bytes()), native);
    let restored = weirctl(&["uninject", "-f", "-"], native.as_bytes());
    let original = weirctl(&["uninject", "-f", folder], b"");
    assert_eq!(restored, original);
    assert_eq!(injected_pods(&restored), 0);
    validate("uninject of inject", &restored);

    // One file, and the same file on stdin.
    let file = fixtures().join("deployment-multi.yaml");
    let file = file.to_str().expect("UTF-8 path");
    let from_file = weirctl(&["inject", "-f", file], b"");
    let text = std::fs::read(file).expect("fixture");
    assert_eq!(weirctl(&["inject", "-f", "-"], &text), from_file);
    validate("inject -f FILE", &from_file);
}

#[test]
fn bad_input_fails_with_the_place_and_prints_nothing() {
    let bad = fixtures().join("../inject-bad");
    for (file, expected) in [
        (
            "no-template.yaml",
            "document 2 (Deployment shop/broken): spec.template: missing",
        ),
        ("not-yaml.yaml", "document 1: invalid YAML at line 4"),
        (
            "unnamed-port.yaml",
            "spec.containers[0].livenessProbe.httpGet.port: named port \"http\"",
        ),
    ] {
        let path = bad.join(file);
        let path = path.to_str().expect("UTF-8 path");
        // A good file first: its output must not appear either.
        let good = fixtures().join("pod.yaml");
        let out = run(
            WEIRCTL,
            &["inject", "-f", good.to_str().expect("UTF-8"), "-f", path],
            b"",
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {stderr}");
        assert!(out.stdout.is_empty(), "{file}: wrote {:?}", out.stdout);
        assert!(stderr.contains(path), "{file}: {stderr}");
        assert!(stderr.contains(expected), "{file}: {stderr}");
    }
}
