//! `weir-proxy init` against a real kernel: in a network namespace of its own, the rules it
//! writes, that a second run leaves them as they were, that `--cleanup` removes exactly them,
//! that a command it cannot run is named in its error, and that it runs as a non-root uid
//! with only NET_ADMIN and NET_RAW.
use std::process::Command;

use weir_tests::bins::proxy_bin;
use weir_tests::netns::{Netns, unavailable_reason};

fn nat_rules(ns: &Netns, save: &str) -> Vec<String> {
    let out = ns
        .command(save)
        .args(["-t", "nat"])
        .output()
        .expect("run iptables-save");
    assert!(
        out.status.success(),
        "{save}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        // Packet counters in chain headers change between reads.
        .map(|l| l.split(" [").next().unwrap_or(l).to_string())
        .collect()
}

fn init(ns: &Netns, args: &[&str]) -> std::process::Output {
    ns.command(proxy_bin())
        .arg("init")
        .args(args)
        .output()
        .expect("run weir-proxy init")
}

#[test]
fn init_writes_idempotent_rules_and_cleanup_removes_exactly_them() {
    if let Some(why) = unavailable_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let ns = Netns::add(&format!("wi{}", std::process::id())).expect("netns");
    // A rule that is not Weir's: cleanup must leave it.
    ns.iptables(&[
        "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "53", "-j", "RETURN",
    ])
    .expect("foreign rule");
    let before = nat_rules(&ns, "iptables-save");

    let dry = init(&ns, &["--dry-run"]);
    assert!(dry.status.success());
    assert!(String::from_utf8_lossy(&dry.stdout).contains("REDIRECT --to-ports 4143"));
    assert_eq!(
        nat_rules(&ns, "iptables-save"),
        before,
        "--dry-run changed the rules"
    );

    let args = [
        "--skip-inbound-ports",
        "4191,9100",
        "--outbound-ports",
        "80,443",
    ];
    let first = init(&ns, &args);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let written = nat_rules(&ns, "iptables-save");
    let weir: Vec<_> = written.iter().filter(|l| l.contains("weir/")).collect();
    // 3 inbound skips + redirect, uid + loopback + 8090 skip + 2 redirects, 2 jumps.
    assert_eq!(weir.len(), 11, "{written:#?}");
    assert!(weir.iter().any(|l| l.contains("--uid-owner 2102")));
    assert!(
        weir.iter()
            .any(|l| l.contains("--dport 9100") && l.contains("RETURN"))
    );
    for l in written.iter().filter(|l| l.starts_with("-A WEIR_")) {
        assert!(l.contains("weir/"), "uncommented rule {l}");
    }
    if std::path::Path::new("/proc/net/if_inet6").exists() {
        let v6 = nat_rules(&ns, "ip6tables-save");
        assert!(v6.iter().any(|l| l.contains("-d ::1/128")), "{v6:#?}");
    }

    let second = init(&ns, &args);
    assert!(second.status.success());
    assert_eq!(
        nat_rules(&ns, "iptables-save"),
        written,
        "a second run changed the rules"
    );

    let clean = init(&ns, &["--cleanup"]);
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );
    assert_eq!(
        nat_rules(&ns, "iptables-save"),
        before,
        "cleanup left or removed other rules"
    );
}

#[test]
fn init_names_the_command_it_could_not_run() {
    let empty = std::env::temp_dir().join(format!("weir-init-nopath-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("dir");
    let out = Command::new(proxy_bin())
        .args(["init", "--no-ipv6"])
        .env("PATH", &empty)
        .output()
        .expect("run");
    let _ = std::fs::remove_dir(&empty);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("iptables") && err.contains("-save -t nat"),
        "{err}"
    );
}

/// The init container's security context: uid 65534, no capabilities but NET_ADMIN and
/// NET_RAW in its bounding set, and iptables binaries carrying those as file capabilities (what
/// the weir-init image gives them). Without the file capabilities the same run must fail, so
/// the success is the capabilities' doing and not a root leak.
#[test]
fn init_runs_as_non_root_with_only_net_admin_and_net_raw() {
    if let Some(why) = unavailable_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    for tool in ["setpriv", "setcap"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .status()
                .is_ok_and(|s| s.success()),
            "{tool} is needed (apt: util-linux, libcap2-bin)"
        );
    }
    let multi = std::fs::canonicalize("/usr/sbin/xtables-nft-multi").expect("xtables-nft-multi");
    let ns = Netns::add(&format!("wc{}", std::process::id())).expect("netns");
    let as_nobody = |bin_dir: &std::path::Path, args: &[&str]| {
        ns.command("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all,+net_admin,+net_raw",
                "--",
                "env",
            ])
            // Only the test's iptables on the PATH, set for weir-proxy alone (ip and setpriv
            // are found on the usual one).
            .arg(format!("PATH={}", bin_dir.display()))
            .arg(proxy_bin())
            .args(["init", "--iptables-mode", "nft"])
            .args(args)
            .output()
            .expect("run setpriv")
    };
    let tools = |dir: &std::path::Path, caps: bool| {
        std::fs::create_dir_all(dir).expect("dir");
        let copy = dir.join("xtables-nft-multi");
        std::fs::copy(&multi, &copy).expect("copy xtables-nft-multi");
        if caps {
            let status = Command::new("setcap")
                .arg("cap_net_admin,cap_net_raw+ep")
                .arg(&copy)
                .status()
                .expect("setcap");
            assert!(status.success(), "setcap failed");
        }
        for name in [
            "iptables-nft-save",
            "iptables-nft-restore",
            "ip6tables-nft-save",
            "ip6tables-nft-restore",
        ] {
            std::os::unix::fs::symlink("xtables-nft-multi", dir.join(name)).expect("symlink");
        }
    };
    let root = std::env::temp_dir().join(format!("weir-init-caps-{}", std::process::id()));
    let (plain, capable) = (root.join("plain"), root.join("caps"));
    tools(&plain, false);
    tools(&capable, true);
    // uid 65534 must be able to reach the binaries.
    for dir in [&root, &plain, &capable] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    let refused = as_nobody(&plain, &[]);
    let refused_err = String::from_utf8_lossy(&refused.stderr).into_owned();
    let written = as_nobody(&capable, &[]);
    let rules = nat_rules(&ns, "iptables-save");
    let cleaned = as_nobody(&capable, &["--cleanup"]);
    let after = nat_rules(&ns, "iptables-save");
    let _ = std::fs::remove_dir_all(&root);

    assert!(!refused.status.success(), "ran without file capabilities");
    assert!(
        refused_err.contains("iptables-nft-save -t nat"),
        "{refused_err}"
    );
    assert!(
        written.status.success(),
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    assert!(
        rules
            .iter()
            .any(|l| l.contains("--uid-owner 2102") && l.contains("weir/")),
        "{rules:#?}"
    );
    assert!(
        rules.iter().any(|l| l.contains("REDIRECT --to-ports 4140")),
        "{rules:#?}"
    );
    assert!(
        cleaned.status.success(),
        "{}",
        String::from_utf8_lossy(&cleaned.stderr)
    );
    assert!(
        !after
            .iter()
            .any(|l| l.contains("weir/") || l.contains("WEIR_")),
        "{after:#?}"
    );
}
