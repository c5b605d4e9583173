//! Network namespaces for tests that need real, distinct IP addresses and
//! iptables (transparent interception). Two namespaces joined by a veth pair
//! stand in for two pods; nothing touches the host's own network setup.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::Command;

use tokio::net::TcpStream;

/// Why namespace tests cannot run here, if they cannot: not root, or `ip` /
/// `iptables` missing. Tests print this and return (a skip), nothing else.
pub fn unavailable_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    for tool in [["ip", "-V"], ["iptables", "--version"]] {
        match Command::new(tool[0]).arg(tool[1]).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => return Some(format!("`{} {}` failed: {}", tool[0], tool[1], out.status)),
            Err(e) => return Some(format!("`{}` not runnable: {e}", tool[0])),
        }
    }
    None
}

fn run(cmd: &mut Command) -> std::io::Result<()> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// One named network namespace; deleted on drop. Drop processes running inside it
/// first (declare this guard before them) so the namespace really goes away.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn add(name: &str) -> std::io::Result<Self> {
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self { name: name.into() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NS ARGS...`
    pub fn ip(&self, args: &[&str]) -> std::io::Result<()> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// `ip netns exec NS iptables ARGS...`
    pub fn iptables(&self, args: &[&str]) -> std::io::Result<()> {
        run(self.command("iptables").args(args))
    }

    /// A command that runs `program` inside the namespace. `ip netns exec` execs
    /// the program in place, so the child's pid is the program's pid and signals
    /// and kills reach it directly.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    pub fn net(&self) -> Net {
        Net::Netns(self.name.clone())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Two namespaces `a` and `b` joined by a veth pair: `a_ip`/24 and `b_ip`/24.
pub struct NetnsPair {
    pub a: Netns,
    pub b: Netns,
    pub a_ip: Ipv4Addr,
    pub b_ip: Ipv4Addr,
}

impl NetnsPair {
    pub fn new() -> std::io::Result<Self> {
        let n = crate::util::unique();
        let pid = std::process::id();
        let a = Netns::add(&format!("weir-{pid}-{n}-a"))?;
        let b = Netns::add(&format!("weir-{pid}-{n}-b"))?;
        // A random-ish /24 inside 10.0.0.0/8 so concurrent runs do not collide;
        // these addresses exist only inside our two namespaces.
        let seed = u64::from(pid)
            .wrapping_mul(31)
            .wrapping_add(n)
            .wrapping_add(u64::from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0),
            ));
        let (x, y) = ((seed % 250 + 1) as u8, ((seed >> 8) % 256) as u8);
        let a_ip = Ipv4Addr::new(10, x, y, 1);
        let b_ip = Ipv4Addr::new(10, x, y, 2);
        // Interface names are per namespace, so fixed short names cannot clash;
        // the veth is created directly inside the namespaces (never in the host's).
        run(Command::new("ip").args([
            "link",
            "add",
            "weir0",
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            "weir0",
            "netns",
            b.name(),
        ]))?;
        a.ip(&["addr", "add", &format!("{a_ip}/24"), "dev", "weir0"])?;
        b.ip(&["addr", "add", &format!("{b_ip}/24"), "dev", "weir0"])?;
        a.ip(&["link", "set", "weir0", "up"])?;
        b.ip(&["link", "set", "weir0", "up"])?;
        Ok(Self { a, b, a_ip, b_ip })
    }
}

/// Where a socket is created: in the test's own namespace or in a named one.
/// Sockets belong to the namespace they were created in, so a connection made
/// from a thread that entered the namespace can then be used from anywhere.
#[derive(Clone, Debug, Default)]
pub enum Net {
    #[default]
    Host,
    Netns(String),
}

impl Net {
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        match self {
            Net::Host => TcpStream::connect(addr).await,
            Net::Netns(name) => {
                let name = name.clone();
                let (tx, rx) = tokio::sync::oneshot::channel();
                // A fresh thread, never a pooled one: setns changes the calling
                // thread for good, and this thread exits right after.
                std::thread::spawn(move || {
                    let _ = tx.send(connect_in_netns(&name, addr));
                });
                let std_stream = rx
                    .await
                    .map_err(|_| std::io::Error::other("netns connect thread died"))??;
                TcpStream::from_std(std_stream)
            }
        }
    }
}

fn connect_in_netns(name: &str, addr: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let file = std::fs::File::open(format!("/run/netns/{name}"))?;
    // SAFETY: setns only switches this thread's network namespace; the fd is valid
    // for the duration of the call.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let stream = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}
