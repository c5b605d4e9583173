//! `weir-proxy init` against a real kernel: in a network namespace of its own, the rules it
//! writes, that a second run leaves them as they were, that `--cleanup` removes exactly them,
//! and that a command it cannot run is named in its error.
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
