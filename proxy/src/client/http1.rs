//! Pooled HTTP/1.1 (and h2c for pass-through) clients built on hyper-util's pooling client.
//! Connections are kept alive and reused per destination.
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::POOL_IDLE;
use crate::body::ProxyBody;

pub type DirectClient = Client<HttpConnector, ProxyBody>;

fn direct_connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(super::CONNECT_TIMEOUT));
    c
}

/// HTTP/1.1 to whatever address the URI names (pass-through, or peers in HTTP/1 mode).
pub fn direct_client() -> DirectClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(direct_connector())
}

/// h2c with prior knowledge to whatever address the URI names: for apps that spoke h2c to a
/// destination outside the mesh.
pub fn direct_h2_client() -> DirectClient {
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .http2_only(true)
        .build(direct_connector())
}
