//! A one-node "cluster" made of network namespaces: a node namespace holding a bridge (the
//! node's pod network, as a CNI bridge plugin builds it) and one namespace per pod, each with
//! its own address on that bridge and a default route through the node. What runs on the node
//! (the control plane, the kubelet's probes, a client outside the mesh) runs in the node
//! namespace. Names resolve through `/etc/netns/POD/hosts`, which `ip netns exec` mounts over
//! `/etc/hosts`: the test's stand-in for cluster DNS.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

use crate::netns::{Net, Netns};

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub struct Cluster {
    /// Pods hold their namespaces; declared first so they go before the node's.
    pub node: Netns,
    pub node_ip: Ipv4Addr,
    prefix: [u8; 3],
    next_host: u8,
}

impl Cluster {
    pub fn new() -> anyhow::Result<Self> {
        let id = format!("{}-{}", std::process::id(), crate::util::unique());
        let node = Netns::add(&format!("weir-node-{id}")).context("node namespace")?;
        // A /24 inside 10.0.0.0/8 picked from the pid, so parallel runs do not collide; it
        // exists only inside the namespaces made here.
        let pid = std::process::id();
        let prefix = [
            10,
            (pid % 200 + 20) as u8,
            (crate::util::unique() % 250) as u8,
        ];
        let node_ip = Ipv4Addr::new(prefix[0], prefix[1], prefix[2], 1);
        node.ip(&["link", "add", "br0", "type", "bridge"])?;
        node.ip(&["addr", "add", &format!("{node_ip}/24"), "dev", "br0"])?;
        node.ip(&["link", "set", "br0", "up"])?;
        Ok(Self {
            node,
            node_ip,
            prefix,
            next_host: 10,
        })
    }

    /// A pod network namespace with its own address on the node's bridge.
    pub fn add_pod_net(&mut self, pod: &str) -> anyhow::Result<PodNet> {
        let host = self.next_host;
        self.next_host = self
            .next_host
            .checked_add(1)
            .context("out of pod addresses")?;
        let ip = Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], host);
        let ns = Netns::add(&format!("{}-{pod}", self.node.name()))?;
        let node_end = format!("veth{host}");
        run(Command::new("ip").args([
            "link",
            "add",
            &node_end,
            "netns",
            self.node.name(),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ]))?;
        self.node.ip(&["link", "set", &node_end, "master", "br0"])?;
        self.node.ip(&["link", "set", &node_end, "up"])?;
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        // Cluster IPs are not on the bridge: like kube-proxy's, they are only reachable
        // through the default route (and here, through the pod's own iptables redirect).
        ns.ip(&["route", "add", "default", "via", &self.node_ip.to_string()])?;
        let etc = PathBuf::from("/etc/netns").join(ns.name());
        Ok(PodNet { etc, ns, ip })
    }

    pub fn node_net(&self) -> Net {
        self.node.net()
    }

    /// The node's `/etc/hosts` (for what runs on the node: weirctl, the control plane).
    pub fn write_node_hosts(&self, names: &[(String, Ipv4Addr)]) -> anyhow::Result<()> {
        write_hosts(&self.node_etc(), "node", self.node_ip, names)
    }

    fn node_etc(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(self.node.name())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.node_etc());
    }
}

fn write_hosts(
    etc: &std::path::Path,
    own_name: &str,
    own_ip: Ipv4Addr,
    names: &[(String, Ipv4Addr)],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(etc).with_context(|| format!("creating {}", etc.display()))?;
    let mut text = format!("127.0.0.1 localhost\n{own_ip} {own_name}\n");
    for (name, ip) in names {
        text.push_str(&format!("{ip} {name}\n"));
    }
    let path = etc.join("hosts");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// One pod's network: its namespace, address and the `/etc` overrides `ip netns exec` mounts.
pub struct PodNet {
    etc: PathBuf,
    pub ns: Netns,
    pub ip: Ipv4Addr,
}

impl PodNet {
    /// The pod's `/etc/hosts`: its own name plus the cluster names the test resolves.
    pub fn write_hosts(&self, pod_name: &str, names: &[(String, Ipv4Addr)]) -> anyhow::Result<()> {
        write_hosts(&self.etc, pod_name, self.ip, names)
    }

    pub fn net(&self) -> Net {
        self.ns.net()
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}
