//! A raw TCP echo app, for opaque (non-HTTP) traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

#[derive(Debug, Default)]
pub struct TcpStats {
    pub connections: AtomicU64,
    pub bytes: AtomicU64,
}

pub struct TcpEcho {
    pub addr: SocketAddr,
    pub stats: Arc<TcpStats>,
    task: JoinHandle<()>,
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn start() -> TcpEcho {
    serve(super::bind_loopback().await)
}

pub fn serve(listener: TcpListener) -> TcpEcho {
    let addr = listener.local_addr().expect("listener address");
    let stats = Arc::new(TcpStats::default());
    let loop_stats = stats.clone();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let (mut stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("tcp echo {addr}: accept: {e}");
                    continue;
                }
            };
            while conns.try_join_next().is_some() {}
            loop_stats.connections.fetch_add(1, Ordering::SeqCst);
            let stats = loop_stats.clone();
            conns.spawn(async move {
                let (mut rd, mut wr) = stream.split();
                match tokio::io::copy(&mut rd, &mut wr).await {
                    Ok(n) => {
                        stats.bytes.fetch_add(n, Ordering::SeqCst);
                    }
                    Err(e) => eprintln!("tcp echo {addr}: {e}"),
                }
            });
        }
    });
    TcpEcho { addr, stats, task }
}
