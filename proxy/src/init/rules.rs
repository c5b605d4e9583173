//! The `nat` rules `weir-proxy init` writes, as `iptables-restore --noflush` input.
//!
//! Declaring a chain (`:WEIR_INBOUND - [0:0]`) in restore input empties it, so running init
//! again rewrites Weir's chains instead of doubling them. The jumps from PREROUTING/OUTPUT live in
//! built-in chains that restore does not empty; they are added only when missing (see `mod.rs`).

use std::fmt::Write;

pub const INBOUND_CHAIN: &str = "WEIR_INBOUND";
pub const OUTBOUND_CHAIN: &str = "WEIR_OUTBOUND";

/// What to intercept; every port list is already validated (1..=65535).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub proxy_uid: u32,
    pub skip_inbound: Vec<u16>,
    pub skip_outbound: Vec<u16>,
    /// Empty: every port.
    pub inbound_ports: Vec<u16>,
    /// Empty: every port.
    pub outbound_ports: Vec<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
}

/// The jump rules (without `-A CHAIN`), as `iptables-save` prints them, so presence can be
/// checked against its output.
pub fn jumps() -> [(&'static str, String); 2] {
    [
        (
            "PREROUTING",
            format!("-p tcp -m comment --comment \"weir/inbound\" -j {INBOUND_CHAIN}"),
        ),
        (
            "OUTPUT",
            format!("-p tcp -m comment --comment \"weir/outbound\" -j {OUTBOUND_CHAIN}"),
        ),
    ]
}

/// `iptables-restore --noflush` input; `missing_jumps` are the jumps `iptables-save` lacks.
pub fn restore_input(plan: &Plan, family: Family, missing_jumps: &[(&str, String)]) -> String {
    let mut s = String::from("*nat\n");
    let _ = writeln!(s, ":{INBOUND_CHAIN} - [0:0]");
    let _ = writeln!(s, ":{OUTBOUND_CHAIN} - [0:0]");

    // Inbound: the proxy's own ports and the skip list go straight to their listeners.
    let mut skip_in = plan.skip_inbound.clone();
    skip_in.push(plan.inbound_port);
    skip_in.sort_unstable();
    skip_in.dedup();
    for p in &skip_in {
        rule(
            &mut s,
            INBOUND_CHAIN,
            &format!("--dport {p}"),
            "skip-inbound-port",
            "RETURN",
        );
    }
    let redirect_in = format!("REDIRECT --to-ports {}", plan.inbound_port);
    redirect(
        &mut s,
        INBOUND_CHAIN,
        &plan.inbound_ports,
        &redirect_in,
        "inbound-redirect",
    );

    // Outbound: never the proxy's own traffic (no loop), never loopback, never skipped ports.
    rule(
        &mut s,
        OUTBOUND_CHAIN,
        &format!("-m owner --uid-owner {}", plan.proxy_uid),
        "proxy-uid",
        "RETURN",
    );
    rule(
        &mut s,
        OUTBOUND_CHAIN,
        &format!("-d {}", family.loopback()),
        "loopback",
        "RETURN",
    );
    let mut skip_out = plan.skip_outbound.clone();
    skip_out.sort_unstable();
    skip_out.dedup();
    for p in &skip_out {
        rule(
            &mut s,
            OUTBOUND_CHAIN,
            &format!("--dport {p}"),
            "skip-outbound-port",
            "RETURN",
        );
    }
    let redirect_out = format!("REDIRECT --to-ports {}", plan.outbound_port);
    redirect(
        &mut s,
        OUTBOUND_CHAIN,
        &plan.outbound_ports,
        &redirect_out,
        "outbound-redirect",
    );

    for (chain, spec) in missing_jumps {
        let _ = writeln!(s, "-A {chain} {spec}");
    }
    s.push_str("COMMIT\n");
    s
}

/// Input that removes exactly Weir's chains and jumps (`present_jumps` from `iptables-save`).
pub fn cleanup_input(present_jumps: &[(&str, String)], chains_present: bool) -> String {
    let mut s = String::from("*nat\n");
    for (chain, spec) in present_jumps {
        let _ = writeln!(s, "-D {chain} {spec}");
    }
    if chains_present {
        for c in [INBOUND_CHAIN, OUTBOUND_CHAIN] {
            let _ = writeln!(s, "-F {c}");
            let _ = writeln!(s, "-X {c}");
        }
    }
    s.push_str("COMMIT\n");
    s
}

fn redirect(s: &mut String, chain: &str, ports: &[u16], target: &str, comment: &str) {
    if ports.is_empty() {
        rule(s, chain, "", comment, target);
    }
    for p in ports {
        rule(s, chain, &format!("--dport {p}"), comment, target);
    }
}

fn rule(s: &mut String, chain: &str, matcher: &str, comment: &str, target: &str) {
    let sep = if matcher.is_empty() { "" } else { " " };
    let _ = writeln!(
        s,
        "-A {chain} -p tcp{sep}{matcher} -m comment --comment \"weir/{comment}\" -j {target}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            inbound_port: 4143,
            outbound_port: 4140,
            proxy_uid: 2102,
            skip_inbound: vec![4191, 4191],
            skip_outbound: vec![8090],
            inbound_ports: vec![],
            outbound_ports: vec![],
        }
    }

    #[test]
    fn restore_input_declares_both_chains_and_skips_before_redirecting() {
        let all = jumps();
        let s = restore_input(&plan(), Family::V4, &all);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "*nat");
        assert_eq!(lines[1], ":WEIR_INBOUND - [0:0]");
        assert_eq!(lines[2], ":WEIR_OUTBOUND - [0:0]");
        assert_eq!(*lines.last().unwrap_or(&""), "COMMIT");
        let pos = |needle: &str| lines.iter().position(|l| l.contains(needle));
        // The duplicate skip port appears once; the inbound port itself is skipped.
        assert_eq!(s.matches("--dport 4191").count(), 1);
        assert!(pos("WEIR_INBOUND -p tcp --dport 4143").is_some());
        assert!(pos("--dport 4191") < pos("REDIRECT --to-ports 4143"));
        assert!(pos("--uid-owner 2102") < pos("REDIRECT --to-ports 4140"));
        assert!(pos("-d 127.0.0.0/8") < pos("REDIRECT --to-ports 4140"));
        assert!(pos("WEIR_OUTBOUND -p tcp --dport 8090") < pos("REDIRECT --to-ports 4140"));
        assert!(pos("-A PREROUTING") > pos("REDIRECT --to-ports 4140"));
        for l in lines.iter().filter(|l| l.starts_with("-A")) {
            assert!(l.contains("--comment \"weir/"), "uncommented rule: {l}");
        }
    }

    #[test]
    fn restricted_ports_redirect_only_those_and_v6_skips_its_loopback() {
        let mut p = plan();
        p.inbound_ports = vec![8080, 9090];
        let s = restore_input(&p, Family::V6, &[]);
        assert_eq!(s.matches("REDIRECT --to-ports 4143").count(), 2);
        assert!(s.contains("--dport 9090 -m comment --comment \"weir/inbound-redirect\""));
        assert!(s.contains("-d ::1/128"));
        assert!(
            !s.contains("PREROUTING"),
            "present jumps are not added again"
        );
    }

    #[test]
    fn cleanup_removes_jumps_then_chains() {
        let s = cleanup_input(&jumps(), true);
        let d = s.find("-D PREROUTING").unwrap_or(usize::MAX);
        let x = s.find("-X WEIR_INBOUND").unwrap_or(0);
        assert!(d < x);
        assert_eq!(cleanup_input(&[], false), "*nat\nCOMMIT\n");
    }
}
