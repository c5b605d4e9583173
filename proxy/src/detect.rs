//! Protocol detection from a single peek at the first bytes a client sends.
use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Opaque connections between proxies start with this header so the inbound side never has to
/// guess (and never waits on a server-speaks-first protocol): magic, then the original
/// destination port (big endian; 0 = the app's port).
pub const PREAMBLE_MAGIC: &[u8; 5] = b"WEIR\x01";
pub const PREAMBLE_LEN: usize = PREAMBLE_MAGIC.len() + 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    H2,
    /// A proxy-to-proxy opaque stream (see [`PREAMBLE_MAGIC`]).
    Preamble,
    /// A TLS ClientHello (a peer proxy's mTLS, or an app's own TLS).
    Tls,
    /// Not HTTP, or the client said nothing before the timeout (server-speaks-first protocols).
    Opaque,
    /// The client closed without sending anything.
    Closed,
}

pub async fn detect(stream: &TcpStream, timeout: Duration) -> io::Result<Detected> {
    let mut buf = [0u8; 24];
    match tokio::time::timeout(timeout, stream.peek(&mut buf)).await {
        Err(_) => Ok(Detected::Opaque),
        Ok(Ok(0)) => Ok(Detected::Closed),
        Ok(Ok(n)) => Ok(classify(&buf[..n])),
        Ok(Err(e)) => Err(e),
    }
}

pub fn classify(b: &[u8]) -> Detected {
    if b.len() >= 3 && (H2_PREFACE.starts_with(b) || b.starts_with(H2_PREFACE)) {
        return Detected::H2;
    }
    if b.starts_with(PREAMBLE_MAGIC) {
        return Detected::Preamble;
    }
    // A TLS record of type handshake (22), version major 3.
    if b.len() >= 2 && b[0] == 0x16 && b[1] == 0x03 {
        return Detected::Tls;
    }
    // An HTTP/1 request line starts with a method token (upper-case letters in practice,
    // `M-SEARCH` has a dash) followed by a space.
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'A'..=b'Z' | b'-' => {}
            b' ' if i > 0 => return Detected::Http1,
            _ => return Detected::Opaque,
        }
    }
    // All method characters but no space yet: a short first segment of an HTTP/1 request.
    if !b.is_empty() && b.len() < 16 {
        Detected::Http1
    } else {
        Detected::Opaque
    }
}

pub fn preamble(port: u16) -> [u8; PREAMBLE_LEN] {
    let mut p = [0u8; PREAMBLE_LEN];
    p[..PREAMBLE_MAGIC.len()].copy_from_slice(PREAMBLE_MAGIC);
    p[PREAMBLE_MAGIC.len()..].copy_from_slice(&port.to_be_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Detected::Http1);
        assert_eq!(classify(b"M-SEARCH * HTTP/1.1"), Detected::Http1);
        assert_eq!(classify(b"POS"), Detected::Http1);
        assert_eq!(classify(H2_PREFACE), Detected::H2);
        assert_eq!(classify(&H2_PREFACE[..10]), Detected::H2);
        assert_eq!(classify(&preamble(8080)), Detected::Preamble);
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Detected::Tls); // ClientHello
        assert_eq!(classify(b"hello world"), Detected::Opaque);
        assert_eq!(classify(b" GET"), Detected::Opaque);
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.2"), Detected::Opaque);
    }
}
