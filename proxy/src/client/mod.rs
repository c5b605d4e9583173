//! Connections the proxy originates: multiplexed HTTP/2 to peers and apps, pooled HTTP/1, and
//! plain TCP connects shared by every path.
pub mod app;
pub mod h2;
pub mod http1;
pub mod peer;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// How long an idle pooled HTTP/1 connection is kept; shorter than common app keep-alive
/// timeouts (60 s+) so the proxy closes first and never sends on a connection the app is
/// closing.
pub const POOL_IDLE: Duration = Duration::from_secs(50);

/// How long a TCP connect may take before the destination counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects with a timeout and TCP_NODELAY: the proxy writes whole frames, so Nagle only adds
/// latency.
pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out"),
            )
        })??;
    stream.set_nodelay(true)?;
    Ok(stream)
}
