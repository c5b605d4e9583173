//! The address a connection was headed to before iptables REDIRECT sent it to us.
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use tokio::net::TcpStream;

// From linux/netfilter_ipv4.h and linux/netfilter_ipv6/ip6_tables.h.
const SO_ORIGINAL_DST: libc::c_int = 80;
const IP6T_SO_ORIGINAL_DST: libc::c_int = 80;

/// `Some(addr)` when the connection was redirected (the original destination differs from the
/// address we accepted it on); `None` for connections made to the proxy directly.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let orig = match local {
        SocketAddr::V4(_) => get_v4(stream),
        SocketAddr::V6(_) => get_v6(stream).or_else(|| get_v4(stream)),
    }?;
    (orig != local).then_some(orig)
}

fn get_v4(stream: &TcpStream) -> Option<SocketAddr> {
    // SAFETY: getsockopt writes at most `len` bytes into a properly sized, zeroed sockaddr_in.
    unsafe {
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&raw mut addr).cast(),
            &mut len,
        );
        if rc != 0 || addr.sin_family != libc::AF_INET as libc::sa_family_t {
            return None;
        }
        let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        Some(SocketAddr::V4(SocketAddrV4::new(
            ip,
            u16::from_be(addr.sin_port),
        )))
    }
}

fn get_v6(stream: &TcpStream) -> Option<SocketAddr> {
    // SAFETY: as above, with sockaddr_in6.
    unsafe {
        let mut addr: libc::sockaddr_in6 = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        let rc = libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IPV6,
            IP6T_SO_ORIGINAL_DST,
            (&raw mut addr).cast(),
            &mut len,
        );
        if rc != 0 || addr.sin6_family != libc::AF_INET6 as libc::sa_family_t {
            return None;
        }
        let ip = Ipv6Addr::from(addr.sin6_addr.s6_addr);
        Some(SocketAddr::V6(SocketAddrV6::new(
            ip,
            u16::from_be(addr.sin6_port),
            0,
            0,
        )))
    }
}
