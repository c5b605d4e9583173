//! Harness for Weir's end-to-end tests: real `weir-proxy` processes on real
//! sockets, in-process test apps with counters, and network namespaces for
//! transparent (iptables) interception. Nothing is mocked.
//!
//! Every process a test starts is owned by a guard that kills and reaps it on
//! drop (also when the test panics); every wait polls with a deadline.

pub mod apps;
pub mod bench;
pub mod bins;
pub mod client;
pub mod config;
pub mod control;
pub mod etcd;
pub mod kube;
pub mod load;
pub mod loadgen;
pub mod metrics;
pub mod netns;
pub mod otlp;
pub mod pair;
pub mod pooled;
pub mod process;
pub mod proxy;
pub mod raw_http;
pub mod resilience;
pub mod util;

pub use pair::Pair;
pub use proxy::Proxy;

/// Generated from `proto/echo.proto`.
pub mod pb {
    tonic::include_proto!("weir.testing.v1");
}
