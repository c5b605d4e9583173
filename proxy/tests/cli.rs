//! The binary's command line: what an operator sees before any traffic flows.
use std::process::Command;

fn proxy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir-proxy"))
}

#[test]
fn help_lists_every_flag_with_its_default() {
    let out = proxy()
        .arg("--help")
        .output()
        .expect("run weir-proxy --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, default) in [
        ("--outbound-addr", "127.0.0.1:4140"),
        ("--inbound-addr", "0.0.0.0:4143"),
        ("--admin-addr", "127.0.0.1:4191"),
        ("--app-addr", "127.0.0.1:8080"),
        ("--namespace", "default"),
        ("--drain-timeout", "30s"),
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
        assert!(
            help.contains(&format!("[default: {default}]")),
            "--help lacks default {default}:\n{help}"
        );
    }
    for env in [
        "WEIR_SERVICE",
        "WEIR_CONFIG",
        "WEIR_CONTROL_PLANE",
        "WEIR_CACHE_DIR",
    ] {
        assert!(help.contains(env), "--help lacks {env}");
    }
}

#[test]
fn missing_service_is_a_clear_error() {
    let out = proxy()
        .env_remove("WEIR_SERVICE")
        .output()
        .expect("run weir-proxy");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--service is required"), "{err}");
}

#[test]
fn invalid_config_stops_startup_with_every_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "apiVersion: weir/v1\nkind: ServicePolicy\nmetadata: { name: payments, namespace: shop }\n\
         spec:\n  service: payments\n  retries: { attempts: 2, on: [reset], budget: { percent: 250 } }\n\
         ---\napiVersion: weir/v1\nkind: Endpoints\nmetadata: { name: p }\nspec: { addresses: [\"nonsense\"] }\n",
    )
    .expect("write");
    // Ports 0: if validation were skipped the proxy would start and this test would hang
    // on a live process; the bind never happens because config is checked first.
    let out = proxy()
        .args([
            "--service",
            "x",
            "--outbound-addr",
            "127.0.0.1:0",
            "--inbound-addr",
            "127.0.0.1:0",
        ])
        .args(["--admin-addr", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .expect("run weir-proxy");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml: ServicePolicy shop/payments: spec.retries.budget.percent"),
        "{err}"
    );
    assert!(err.contains("spec.addresses[0]"), "{err}");
}
