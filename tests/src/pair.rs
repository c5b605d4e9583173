//! The standard topology: client → outbound proxy → inbound proxy (service
//! `echo`) → app, both proxies in permissive mTLS (plaintext) mode.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config;
use crate::proxy::Proxy;
use crate::util::TestDir;

pub struct Pair {
    // Field order is drop order: proxies die before their log dir is removed.
    /// The caller's proxy; send requests to `outbound.outbound()`.
    pub outbound: Proxy,
    /// The callee's proxy, delivering to the app.
    pub inbound: Proxy,
    /// The outbound proxy's config file (rewrite it and SIGHUP to reload).
    pub outbound_config: PathBuf,
    pub dir: TestDir,
}

impl Pair {
    /// Starts both proxies in front of the app at `app_addr`.
    pub async fn start(app_addr: SocketAddr) -> Self {
        Self::start_with(app_addr, |b| b).await
    }

    /// Like `start`, letting the test adjust the outbound proxy (e.g. drain timeout).
    pub async fn start_with(
        app_addr: SocketAddr,
        outbound_opts: impl FnOnce(crate::proxy::ProxyBuilder) -> crate::proxy::ProxyBuilder,
    ) -> Self {
        let dir = TestDir::new("pair").expect("temp dir");
        let inbound_config = dir.join("inbound.yaml");
        std::fs::write(&inbound_config, config::MESH_PERMISSIVE).expect("write inbound config");
        let inbound = Proxy::builder("inbound-echo", dir.path())
            .service("echo")
            .app_addr(app_addr)
            .config(&inbound_config)
            .start()
            .await;
        let outbound_config = dir.join("outbound.yaml");
        std::fs::write(
            &outbound_config,
            config::mesh_with_echo(&[inbound.inbound()]),
        )
        .expect("write outbound config");
        let outbound = outbound_opts(
            Proxy::builder("outbound-client", dir.path())
                .service("client")
                .config(&outbound_config),
        )
        .start()
        .await;
        Self {
            outbound,
            inbound,
            outbound_config,
            dir,
        }
    }

    /// The address a client (the "app" of the calling pod) sends to.
    pub fn entry(&self) -> SocketAddr {
        self.outbound.outbound()
    }
}
