//! Small shared pieces: polling with deadlines, free ports, temp dirs, checksums
//! and the deterministic byte patterns that test bodies are made of.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How often `wait_until` re-checks its condition. Short enough that tests do not
/// idle, long enough not to hammer an admin endpoint.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `check` until it returns true; panics with `what` once `timeout` passes.
/// This is the only way tests wait for another process: never a bare sleep.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Runs `fut` with a deadline; panics naming `what` if it does not finish in time.
pub async fn within<T>(timeout: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(timeout, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {timeout:?}: {what}"),
    }
}

/// Returns `n` distinct free TCP ports on 127.0.0.1, chosen below the kernel's
/// ephemeral range (32768 and up by default). A port from `bind(0)` lies inside
/// that range, so between its release and the proxy's bind any outgoing connection
/// could be given it as a source port (CI saw exactly that). Below the range only
/// another listener can take it, and every chosen port is held until all are
/// chosen. One cursor per test process walks the range, so two tests starting at
/// once are never given the same port; it starts at a place set by the process id,
/// so test processes side by side walk different parts. `Proxy` still retries the
/// rare start that finds its port taken.
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 32_768 - LOW;
    static CURSOR: std::sync::OnceLock<std::sync::atomic::AtomicU32> = std::sync::OnceLock::new();
    let cursor = CURSOR.get_or_init(|| {
        std::sync::atomic::AtomicU32::new(std::process::id().wrapping_mul(2_654_435_761) % SPAN)
    });
    let mut listeners = Vec::with_capacity(n);
    // One full walk of the range: if that finds too few, the machine has none to give.
    for _ in 0..SPAN {
        if listeners.len() == n {
            break;
        }
        let port = (LOW + cursor.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            listeners.push(l);
        }
    }
    if listeners.len() < n {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("only {} of {n} free ports in {LOW}..32768", listeners.len()),
        ));
    }
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// A process-unique number, for names of temp dirs, namespaces and logs.
pub fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A temp directory for one test's config files and logs. Removed on drop unless
/// the test is panicking: then it is kept and its path printed, so the proxy logs
/// can be read after a failure.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(label: &str) -> std::io::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "weir-tests-{}-{}-{label}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

// === impl Fnv64 ===

/// FNV-1a, 64 bit: cheap, dependency-free and order-sensitive, which is all a
/// "did every byte arrive in order" check needs.
#[derive(Clone, Copy, Debug)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    pub fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }

    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

// === impl Pattern ===

/// Deterministic body contents, so both ends can check bytes without sharing buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Byte `i` is `i mod 256`: every chunk is a slice of one static block, so
    /// gigabytes cost no CPU to produce. Used where only the length matters.
    Cycle,
    /// Byte `i` is a hash of `i`: catches reordered or duplicated chunks.
    Mixed,
}

/// Size of each chunk a `PatternBody` yields; a multiple of 256 keeps `Cycle`
/// chunks identical.
pub const CHUNK: usize = 64 * 1024;

impl Pattern {
    pub fn byte_at(self, i: u64) -> u8 {
        match self {
            Pattern::Cycle => i as u8,
            Pattern::Mixed => (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8,
        }
    }

    /// Checksum of the first `len` bytes of this pattern.
    pub fn checksum(self, len: u64) -> String {
        let mut sum = Fnv64::default();
        let mut buf = vec![0u8; CHUNK];
        let mut off = 0u64;
        while off < len {
            let n = (len - off).min(CHUNK as u64) as usize;
            for (j, b) in buf[..n].iter_mut().enumerate() {
                *b = self.byte_at(off + j as u64);
            }
            sum.update(&buf[..n]);
            off += n as u64;
        }
        sum.hex()
    }
}

/// A streaming body of `len` pattern bytes, produced chunk by chunk so neither the
/// test client nor the app ever holds the whole body.
pub struct PatternBody {
    pattern: Pattern,
    len: u64,
    offset: u64,
    /// Whether `size_hint` is exact. Without it hyper's HTTP/1 client sends
    /// `Transfer-Encoding: chunked` and no `Content-Length`.
    exact: bool,
    cycle_block: Bytes,
}

impl PatternBody {
    pub fn new(pattern: Pattern, len: u64, exact: bool) -> Self {
        let cycle_block = if pattern == Pattern::Cycle {
            Bytes::from((0..CHUNK).map(|i| i as u8).collect::<Vec<u8>>())
        } else {
            Bytes::new()
        };
        Self {
            pattern,
            len,
            offset: 0,
            exact,
            cycle_block,
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.offset >= this.len {
            return Poll::Ready(None);
        }
        let n = (this.len - this.offset).min(CHUNK as u64) as usize;
        let chunk = match this.pattern {
            Pattern::Cycle => this.cycle_block.slice(..n),
            Pattern::Mixed => Bytes::from(
                (0..n)
                    .map(|j| this.pattern.byte_at(this.offset + j as u64))
                    .collect::<Vec<u8>>(),
            ),
        };
        this.offset += n as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.offset >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        let remaining = self.len - self.offset;
        if self.exact {
            SizeHint::with_exact(remaining)
        } else {
            // A lower bound only: hyper then cannot know the length up front.
            let mut hint = SizeHint::new();
            hint.set_lower(0);
            hint
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_checksum_matches_streamed_body() {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let len = (CHUNK as u64) * 2 + 17;
        let body = rt
            .block_on(PatternBody::new(Pattern::Mixed, len, true).collect())
            .expect("infallible")
            .to_bytes();
        let mut sum = Fnv64::default();
        sum.update(&body);
        assert_eq!(body.len() as u64, len);
        assert_eq!(sum.hex(), Pattern::Mixed.checksum(len));
    }
}
