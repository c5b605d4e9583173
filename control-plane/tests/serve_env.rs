//! `weir-control serve` and its environment: WEIR_TRUST_BUNDLE (exported for weirctl and
//! weir-proxy) leaves it alone, a flag set by a variable is named in "requires" errors, and the
//! etcd TLS flags are refused without each other or without https:// endpoints.

mod common;

use std::io::{BufReader, Read};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Server, logged_addr, serve, start};

/// Runs a command that must exit on its own (a usage error), killing it after 30 s so a
/// server that starts after all fails the test instead of hanging it.
fn exit_output(cmd: &mut Command) -> Output {
    let mut child = Server(cmd.spawn().expect("start weir-control"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match child.0.try_wait().expect("wait for weir-control") {
            Some(_) => break,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            None => panic!("weir-control is still running: it should have refused its flags"),
        }
    }
    let mut stderr = String::new();
    if let Some(pipe) = child.0.stderr.take() {
        let _ = BufReader::new(pipe).read_to_string(&mut stderr);
    }
    Output {
        status: child.0.wait().expect("exit status"),
        stdout: Vec::new(),
        stderr: stderr.into_bytes(),
    }
}

#[test]
fn starts_with_weirctl_trust_bundle_exported() {
    let data = tempfile::tempdir().expect("tempdir");
    // What README's "With the control plane" exports for weirctl, then a restart.
    let (_server, lines) =
        start(serve(data.path()).env("WEIR_TRUST_BUNDLE", data.path().join("trust-bundle.pem")));
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = logged_addr(&lines, "weir-control listening on ", deadline);
    TcpStream::connect(addr).expect("weir-control accepts connections");
}

/// The usage error of `serve` with `vars` set and `args` added; it must exit 2.
fn refused(data: &Path, vars: &[(&str, &Path)], args: &[&str]) -> String {
    let mut cmd = serve(data);
    cmd.args(args);
    for (key, value) in vars {
        cmd.env(key, value);
    }
    let out = exit_output(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{vars:?} {args:?}: {stderr}");
    stderr
}

#[test]
fn requires_errors_name_the_environment_variable() {
    let data = tempfile::tempdir().expect("tempdir");
    let file = data.path().join("roots.pem");
    let err = refused(data.path(), &[("WEIR_CA_TRUST_BUNDLE", &file)], &[]);
    assert!(
        err.contains(
            "error: --trust-bundle (set by WEIR_CA_TRUST_BUNDLE) requires --ca-cert and --ca-key"
        ),
        "{err}"
    );
    let err = refused(data.path(), &[("WEIR_CA_CERT", &file)], &[]);
    assert!(
        err.contains("error: --ca-cert (set by WEIR_CA_CERT) requires --ca-key"),
        "{err}"
    );
    // From the command line there is no variable to name.
    let args = ["--kubernetes-issuer", "https://kubernetes.default.svc"];
    let err = refused(data.path(), &[], &args);
    assert!(
        err.contains("error: --kubernetes-issuer requires --kubernetes-jwks\n"),
        "{err}"
    );
}

#[test]
fn etcd_tls_flags_need_each_other_and_https_endpoints() {
    let data = tempfile::tempdir().expect("tempdir");
    let file = data.path().join("etcd.pem");
    let file_arg = file.to_string_lossy().into_owned();
    let https = "etcd:https://127.0.0.1:1";
    let http = "etcd:http://127.0.0.1:1";

    let args = ["--store", https, "--etcd-cert", &file_arg];
    let err = refused(data.path(), &[], &args);
    assert!(
        err.contains("error: --etcd-cert requires --etcd-key\n"),
        "{err}"
    );
    let store = Path::new(https);
    let vars = [("WEIR_STORE", store), ("WEIR_ETCD_KEY", &file)];
    let err = refused(data.path(), &vars, &[]);
    assert!(
        err.contains("error: --etcd-key (set by WEIR_ETCD_KEY) requires --etcd-cert"),
        "{err}"
    );

    let args = ["--store", http, "--etcd-ca", &file_arg];
    let err = refused(data.path(), &[], &args);
    assert!(
        err.contains(
            "error: --etcd-ca is for TLS to etcd, but --store lists http:// endpoints \
             (http://127.0.0.1:1)"
        ),
        "{err}"
    );
    let store = Path::new(http);
    let vars = [("WEIR_STORE", store), ("WEIR_ETCD_CA", &file)];
    let err = refused(data.path(), &vars, &[]);
    assert!(
        err.contains(
            "error: --etcd-ca (set by WEIR_ETCD_CA) is for TLS to etcd, but --store (set by \
             WEIR_STORE) lists http:// endpoints"
        ),
        "{err}"
    );
    let args = ["--etcd-cert", &file_arg, "--etcd-key", &file_arg];
    let err = refused(data.path(), &[], &args);
    assert!(
        err.contains(
            "error: --etcd-cert, --etcd-key are for TLS to etcd, but the store is embedded"
        ),
        "{err}"
    );

    let err = refused(
        data.path(),
        &[],
        &["--store", "etcd:http://a:1,https://b:1"],
    );
    assert!(err.contains("mix http:// and https://"), "{err}");
}

/// A bad TLS file stops the start with its flag and path, before etcd is dialled.
#[test]
fn an_unreadable_etcd_ca_fails_the_start_naming_flag_and_file() {
    let data = tempfile::tempdir().expect("tempdir");
    let missing = data.path().join("missing-ca.pem");
    let mut cmd = serve(data.path());
    cmd.args(["--store", "etcd:https://127.0.0.1:1", "--etcd-ca"])
        .arg(&missing);
    let out = exit_output(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let expected = format!("--etcd-ca {}: cannot read it", missing.display());
    assert!(stderr.contains(&expected), "{stderr}");
}
