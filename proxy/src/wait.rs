//! `weir-proxy wait`: block until the proxy's admin `/ready` answers 200. With
//! `--legacy-sidecar` it is the proxy container's postStart hook, so the kubelet starts the app
//! containers only once their outbound calls have a proxy to go through.
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::args::WaitArgs;

/// How often `/ready` is asked; the proxy is usually ready within a few of these.
const POLL: Duration = Duration::from_millis(200);

pub fn run(args: &WaitArgs) -> anyhow::Result<()> {
    let addr = dial_addr(args.admin_addr);
    let deadline = Instant::now() + args.timeout;
    loop {
        let last = match probe(addr) {
            Ok(200) => return Ok(()),
            Ok(status) => format!("/ready answered {status}"),
            Err(e) => format!("cannot reach the admin listener: {e}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "the proxy at {addr} was not ready within {:?} (last: {last}); see the \
                 weir-proxy container's log",
                args.timeout
            );
        }
        std::thread::sleep(POLL);
    }
}

/// The admin listener usually binds a wildcard in a pod (for the kubelet's probes); dial it
/// over loopback then.
fn dial_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// One `GET /ready`; the status code of the answer.
fn probe(addr: SocketAddr) -> std::io::Result<u16> {
    let timeout = Duration::from_secs(1);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"GET /ready HTTP/1.1\r\nHost: weir-proxy\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 32];
    let mut len = 0;
    // "HTTP/1.1 200" is 12 bytes; read until the status code is in.
    while len < 12 {
        let n = stream.read(&mut head[len..])?;
        if n == 0 {
            break;
        }
        len += n;
    }
    std::str::from_utf8(&head[..len])
        .ok()
        .and_then(|line| line.get(9..12))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_admin_is_dialled_on_loopback() {
        let v4: SocketAddr = "0.0.0.0:4191".parse().unwrap();
        assert_eq!(dial_addr(v4), "127.0.0.1:4191".parse().unwrap());
        let v6: SocketAddr = "[::]:4191".parse().unwrap();
        assert_eq!(dial_addr(v6), "[::1]:4191".parse().unwrap());
        let pod: SocketAddr = "10.0.0.5:4191".parse().unwrap();
        assert_eq!(dial_addr(pod), pod);
    }

    #[test]
    fn reads_the_status_and_times_out_when_nothing_listens() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.1 503 Service Unavailable\r\n\r\n",
                "HTTP/1.1 200 OK\r\n\r\n",
            ] {
                let (mut conn, _) = listener.accept().unwrap();
                let mut buf = [0u8; 256];
                let _ = conn.read(&mut buf).unwrap();
                conn.write_all(answer.as_bytes()).unwrap();
            }
        });
        assert_eq!(probe(addr).unwrap(), 503);
        let args = WaitArgs {
            admin_addr: addr,
            timeout: Duration::from_secs(10),
        };
        run(&args).unwrap();
        server.join().unwrap();
        // Nothing listens any more: wait gives up with a reason.
        let err = run(&WaitArgs {
            admin_addr: addr,
            timeout: Duration::from_millis(300),
        })
        .unwrap_err();
        assert!(err.to_string().contains("was not ready"), "{err}");
    }
}
