//! Opaque byte streams: TCP forwarding and the splice behind upgrades and CONNECT tunnels.
use std::io;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Copies both ways until both sides are done; a half-close on one side is passed on.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional(a, b).await
}

/// Writes the proxy-to-proxy opaque preamble, then splices.
pub async fn splice_with_preamble<A, B>(
    a: &mut A,
    b: &mut B,
    preamble: &[u8],
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    b.write_all(preamble).await?;
    splice(a, b).await
}

/// Once both sides of an HTTP/1 upgrade (or a CONNECT) have switched protocols, splices the two
/// raw streams.
pub async fn splice_upgrades(downstream: OnUpgrade, upstream: OnUpgrade) {
    let (down, up) = match tokio::try_join!(downstream, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
    if let Err(e) = splice(&mut down, &mut up).await {
        tracing::debug!(error = %e, "upgraded stream ended with an error");
    }
}
