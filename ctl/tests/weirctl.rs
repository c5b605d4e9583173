//! `weirctl` (the real binary) against a real control plane started in-process, with the output
//! parsed the way scripts would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;
use common::Run;

const POLICY: &str = "\
apiVersion: weir/v1
kind: ServicePolicy
metadata: { name: payments, namespace: shop }
spec:
  service: payments
  timeouts: { request: 2s }
---
apiVersion: weir/v1
kind: MeshConfig
metadata: { name: default }
spec: { mtls: strict }
";

/// An in-process control plane on a free port with its own data directory; stopped on drop.
/// weirctl itself runs as a real process, the way users run it.
struct Server {
    url: String,
    token_file: PathBuf,
    bundle: PathBuf,
    dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = weir_control::ServerConfig::new(dir.path().join("data"));
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        // Its own runtime on its own thread: the test body blocks on weirctl processes.
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            runtime.block_on(async move {
                let bound = weir_control::bind(config)
                    .await
                    .expect("bind control plane");
                let info = (
                    bound.local_addr(),
                    bound.token().path().to_path_buf(),
                    bound.trust_bundle_path(),
                );
                ready_tx.send(info).expect("test is waiting");
                bound
                    .serve(async {
                        let _ = stop.await;
                    })
                    .await
                    .expect("serve");
            });
        });
        let (addr, token_file, bundle) = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("control plane started");
        Server {
            url: format!("https://{addr}"),
            token_file,
            bundle,
            dir,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write policy");
        path
    }

    /// Runs weirctl with this server and token.
    fn ctl(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weirctl"));
        cmd.args(["--server", &self.url, "--token-file"])
            .arg(&self.token_file)
            .arg("--trust-bundle")
            .arg(&self.bundle)
            .args(args)
            .env_remove("WEIR_TOKEN")
            .env_remove("WEIR_SERVER");
        Run::from(cmd.output().expect("run weirctl"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

#[test]
fn apply_get_diff_history_rollback_delete() {
    let server = Server::start();
    let v1 = server.file("v1.yaml", POLICY);
    let v2 = server.file("v2.yaml", &POLICY.replace("request: 2s", "request: 3s"));
    let (v1, v2) = (path_str(&v1), path_str(&v2));

    let out = server.ctl(&["apply", "-f", v1]).ok();
    assert!(
        out.stdout
            .contains("servicepolicy shop/payments created (revision 1)"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("meshconfig default created"));
    let out = server.ctl(&["apply", "-f", v1]).ok();
    assert!(out.stdout.contains("servicepolicy shop/payments unchanged"));

    // Dry run reports the change and changes nothing.
    let out = server.ctl(&["apply", "-f", v2, "--dry-run"]).ok();
    assert!(
        out.stdout
            .contains("servicepolicy shop/payments configured")
    );
    assert!(out.stdout.contains("(dry run)"));

    // diff follows kubectl: 0 without differences, 1 with.
    let out = server.ctl(&["diff", "-f", v1]).code(0);
    assert_eq!(out.stdout, "");
    let out = server.ctl(&["diff", "-f", v2]).code(1);
    assert!(out.stdout.contains("--- live/ServicePolicy shop/payments"));
    assert!(out.stdout.contains("-    request: 2s"), "{}", out.stdout);
    assert!(out.stdout.contains("+    request: 3s"), "{}", out.stdout);

    let out = server.ctl(&["apply", "-f", v2]).ok();
    assert!(
        out.stdout
            .contains("servicepolicy shop/payments configured (revision 2)")
    );
    let out = server.ctl(&["get", "sp", "-n", "shop", "-o", "json"]).ok();
    let items = out.json();
    assert_eq!(items[0]["revision"], 2);
    assert_eq!(items[0]["document"]["spec"]["timeouts"]["request"], "3s");

    // -o yaml is what apply accepts again.
    let out = server.ctl(&["get", "servicepolicies", "-o", "yaml"]).ok();
    let docs = weir_policy::parse_str("get.yaml", &out.stdout).expect("re-applicable YAML");
    assert_eq!(docs.len(), 1);
    let out = server.ctl(&["get", "mc"]).ok();
    assert!(out.stdout.starts_with("KIND"), "{}", out.stdout);
    assert!(out.stdout.contains("MeshConfig"));

    let out = server
        .ctl(&["history", "sp", "shop/payments", "-o", "json"])
        .ok();
    let history = out.json();
    assert_eq!(history[0]["action"], "created");
    assert_eq!(history[1]["action"], "changed");

    let out = server
        .ctl(&["rollback", "sp", "payments", "-n", "shop", "--to", "1"])
        .ok();
    assert!(
        out.stdout
            .contains("rolled back to revision 1 (now revision 3)"),
        "{}",
        out.stdout
    );
    let out = server
        .ctl(&["get", "sp", "shop/payments", "-o", "json"])
        .ok();
    assert_eq!(
        out.json()[0]["document"]["spec"]["timeouts"]["request"],
        "2s"
    );

    let out = server.ctl(&["delete", "sp", "shop/payments"]).ok();
    assert!(out.stdout.contains("servicepolicy shop/payments deleted"));
    let out = server.ctl(&["get", "sp", "shop/payments"]).code(1);
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
    let out = server
        .ctl(&["history", "sp", "shop/payments", "-o", "json"])
        .ok();
    let history = out.json();
    let last = history.as_array().and_then(|h| h.last()).cloned();
    assert_eq!(last.map(|l| l["action"].clone()), Some("deleted".into()));
}

#[test]
fn errors_and_exit_codes() {
    let server = Server::start();
    let bad = server.file(
        "bad.yaml",
        &POLICY.replace("timeouts: { request: 2s }", "retries: { attempts: 99 }"),
    );
    let out = server.ctl(&["apply", "-f", path_str(&bad)]).code(1);
    assert!(out.stderr.contains("bad.yaml"), "{}", out.stderr);
    assert!(
        out.stderr.contains("spec.retries.attempts"),
        "{}",
        out.stderr
    );

    let out = Run::from(
        Command::new(env!("CARGO_BIN_EXE_weirctl"))
            .args(["--server", &server.url, "--token", "wrong", "get", "sp"])
            .arg("--trust-bundle")
            .arg(&server.bundle)
            .output()
            .expect("run weirctl"),
    )
    .code(1);
    assert!(out.stderr.contains("token"), "{}", out.stderr);

    let out = server.ctl(&["get", "pods"]).code(2);
    assert!(out.stderr.contains("unknown kind"));

    let out = server.ctl(&["version"]).ok();
    assert!(out.stdout.contains("client: weirctl"));
    assert!(out.stdout.contains("server: weir-control"));

    let out = server.ctl(&["status", "-o", "json"]).ok();
    assert!(out.json()["proxies"].is_array());
    let out = server.ctl(&["status"]).ok();
    assert!(out.stdout.starts_with("config version"));

    let out = server.ctl(&["endpoints", "-o", "json"]).ok();
    assert!(out.json().is_array());

    // Once the server is gone, the error names the address.
    let url = server.url.clone();
    let token = std::fs::read_to_string(&server.token_file).expect("token");
    let keep = tempfile::tempdir().expect("tempdir");
    let bundle = keep.path().join("bundle.pem");
    std::fs::copy(&server.bundle, &bundle).expect("copy bundle");
    drop(server);
    let out = Run::from(
        Command::new(env!("CARGO_BIN_EXE_weirctl"))
            .args(["--server", &url, "--token", token.trim(), "get", "sp"])
            .arg("--trust-bundle")
            .arg(&bundle)
            .output()
            .expect("run weirctl"),
    )
    .code(1);
    assert!(
        out.stderr
            .contains(&format!("cannot reach the control plane at {url}")),
        "{}",
        out.stderr
    );
}

/// Certify with `token` for `uri` over the server's gRPC port (no admin token), as a proxy does.
fn certify(server: &Server, token: &str, uri: &str) -> Result<String, tonic::Code> {
    use weir_proto::identity::v1::CertifyRequest;
    use weir_proto::identity::v1::identity_client::IdentityClient;
    let key = rcgen::KeyPair::generate().expect("key");
    let csr_pem = weir_control::ca::csr_pem(uri, &key).expect("csr");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let pem = std::fs::read(&server.bundle).expect("bundle");
        let roots = weir_proto::dial::roots_from_pem(&pem).expect("roots");
        let config = weir_proto::dial::client_config(roots).expect("config");
        let endpoint = weir_proto::dial::endpoint(&server.url).expect("endpoint");
        let channel = weir_proto::dial::connect(endpoint, config)
            .await
            .expect("connect");
        let mut client = IdentityClient::new(channel);
        client
            .certify(CertifyRequest {
                token: token.into(),
                csr_pem,
            })
            .await
            .map(|r| r.into_inner().spiffe_id)
            .map_err(|status| status.code())
    })
}

#[test]
fn token_create_list_revoke() {
    let server = Server::start();
    let orders = "spiffe://weir.local/ns/shop/sa/orders";
    // stdout carries the token alone, so `TOKEN=$(weirctl token create …)` works.
    let out = server
        .ctl(&[
            "token",
            "create",
            "--namespace",
            "shop",
            "--service-account",
            "orders",
        ])
        .ok();
    let token = out.stdout.trim().to_string();
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    assert!(out.stderr.contains(orders), "{}", out.stderr);
    assert_eq!(certify(&server, &token, orders), Ok(orders.to_string()));
    assert_eq!(
        certify(&server, &token, "spiffe://weir.local/ns/shop/sa/payments"),
        Err(tonic::Code::PermissionDenied)
    );

    let out = server
        .ctl(&[
            "token", "create", "-n", "shop", "--sa", "payments", "--ttl", "1h", "-o", "json",
        ])
        .ok();
    let created = out.json();
    let payments_id = created["id"].as_str().expect("id").to_string();
    assert_eq!(
        created["identity"],
        "spiffe://weir.local/ns/shop/sa/payments"
    );

    let out = server.ctl(&["token", "list", "-o", "json"]).ok();
    let listed = out.json();
    let items = listed.as_array().expect("array");
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|t| t["state"] == "active"));
    // The secret is never listed.
    assert!(!out.stdout.contains(&token));
    let orders_id = items
        .iter()
        .find(|t| t["identity"] == orders)
        .and_then(|t| t["id"].as_str())
        .expect("orders token listed")
        .to_string();

    let out = server.ctl(&["token", "revoke", &orders_id]).ok();
    assert!(out.stdout.contains("revoked"), "{}", out.stdout);
    assert_eq!(
        certify(&server, &token, orders),
        Err(tonic::Code::Unauthenticated)
    );
    let out = server.ctl(&["token", "list"]).ok();
    assert!(out.stdout.starts_with("ID"), "{}", out.stdout);
    let state_of = |id: &str| {
        out.stdout
            .lines()
            .find(|l| l.starts_with(id))
            .and_then(|l| l.split_whitespace().last())
            .map(str::to_string)
    };
    assert_eq!(state_of(&orders_id).as_deref(), Some("revoked"));
    assert_eq!(state_of(&payments_id).as_deref(), Some("active"));

    let out = server.ctl(&["token", "revoke", "nope"]).code(1);
    assert!(out.stderr.contains("not found"), "{}", out.stderr);
    let out = server
        .ctl(&["token", "create", "-n", "shop", "--sa", "a/b"])
        .code(1);
    assert!(out.stderr.contains("SPIFFE path segment"), "{}", out.stderr);
    server.ctl(&["token", "create", "-n", "shop"]).code(2);
}
