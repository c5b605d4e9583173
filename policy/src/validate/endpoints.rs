//! Endpoints documents: addresses, the peer identity, cluster IPs and their ports.

use std::collections::HashSet;

use super::findings::Findings;
use super::names::spiffe_id;
use crate::model::*;

pub(super) fn endpoints(f: &mut Findings, spec: &EndpointsSpec) {
    // A service with cluster IPs may have no proxy registered yet: its callers then get
    // `no-endpoints` instead of a pass-through to a virtual IP nothing would answer for.
    if spec.addresses.is_empty() && spec.cluster_ips.is_empty() {
        f.add(
            "spec.addresses",
            "must list at least one ip:port address (or clusterIPs)",
        );
    }
    let mut seen = HashSet::new();
    for (i, addr) in spec.addresses.iter().enumerate() {
        if addr.port() == 0 {
            f.add(
                format_args!("spec.addresses[{i}]"),
                format!("port must not be 0, got {addr}"),
            );
        }
        if !seen.insert(addr) {
            f.add(
                format_args!("spec.addresses[{i}]"),
                format!("{addr} is listed twice"),
            );
        }
    }
    if let Some(id) = &spec.identity {
        f.check("spec.identity", spiffe_id(id));
    }
    let mut seen_ips = HashSet::new();
    for (i, ip) in spec.cluster_ips.iter().enumerate() {
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
            f.add(
                format_args!("spec.clusterIPs[{i}]"),
                format!("must be a routable unicast address, got {ip}"),
            );
        }
        if !seen_ips.insert(ip) {
            f.add(
                format_args!("spec.clusterIPs[{i}]"),
                format!("{ip} is listed twice"),
            );
        }
    }
    if !spec.ports.is_empty() && spec.cluster_ips.is_empty() {
        f.add(
            "spec.ports",
            "ports describe clusterIPs; list clusterIPs too",
        );
    }
    let mut seen_ports = HashSet::new();
    for (i, p) in spec.ports.iter().enumerate() {
        if p.port == 0 {
            f.add(
                format_args!("spec.ports[{i}].port"),
                "must be 1..=65535, got 0",
            );
        }
        if p.target_port == Some(0) {
            f.add(
                format_args!("spec.ports[{i}].targetPort"),
                "must be 1..=65535, got 0",
            );
        }
        if !seen_ports.insert(p.port) {
            f.add(
                format_args!("spec.ports[{i}].port"),
                format!("port {} is listed twice", p.port),
            );
        }
    }
}
