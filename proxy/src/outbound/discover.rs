//! Scoped discovery on the request path: a destination the snapshot does not know is asked
//! of the control plane once, and the request waits (bounded) for the answer. Requests to
//! known services, and to names the control plane already said are not the mesh's, do not
//! wait and take no lock.
use std::net::SocketAddr;
use std::sync::Arc;

use http::Request;

use super::{Outbound, resolve};
use crate::config::{Snapshot, Unanswered, authority_key};
use crate::errors::ProxyError;
use crate::headers;

impl Outbound {
    /// The snapshot to route `req` with, after asking the control plane about its
    /// destination if the snapshot has no answer yet. Without an answer in time, a redirected
    /// call goes where the app sent it; an explicit one fails with `discovery-timeout`.
    pub(super) async fn discovered<B>(
        &self,
        req: &Request<B>,
        orig_dst: Option<SocketAddr>,
    ) -> Result<Arc<Snapshot>, ProxyError> {
        let snapshot = self.config.load();
        if !self.config.subscriptions.enabled() {
            return Ok(snapshot);
        }
        // A service known without endpoints (say, only from a --config policy) is still
        // asked about, once: the control plane may know where it runs.
        if let Some((svc, _)) = resolve::resolve(&snapshot, req, orig_dst)
            && !svc.own.endpoints.is_empty()
        {
            return Ok(snapshot);
        }
        let own_ns = &self.config.local().namespace;
        let keys = headers::authority(req)
            .and_then(|a| authority_key(a, own_ns))
            .into_iter()
            .chain(orig_dst.and_then(address_key));
        match self.ask(snapshot, keys).await {
            Ok(snapshot) => Ok(snapshot),
            Err(Unanswered) if orig_dst.is_some() => Ok(self.config.load()),
            Err(Unanswered) => Err(ProxyError::DiscoveryTimeout),
        }
    }

    /// For a redirected non-HTTP connection.
    pub(super) async fn discovered_addr(
        &self,
        dst: SocketAddr,
    ) -> Result<Arc<Snapshot>, Unanswered> {
        let snapshot = self.config.load();
        if !self.config.subscriptions.enabled() || snapshot.service_for_original_dst(dst).is_some()
        {
            return Ok(snapshot);
        }
        self.ask(snapshot, address_key(dst)).await
    }

    /// For `CONNECT host:port`.
    pub(super) async fn discovered_authority(
        &self,
        authority: &str,
    ) -> Result<Arc<Snapshot>, ProxyError> {
        let snapshot = self.config.load();
        if !self.config.subscriptions.enabled()
            || snapshot.service_for_authority(authority).is_some()
        {
            return Ok(snapshot);
        }
        let key = authority_key(authority, &self.config.local().namespace);
        self.ask(snapshot, key)
            .await
            .map_err(|Unanswered| ProxyError::DiscoveryTimeout)
    }

    /// Asks the control plane about the keys `snapshot` has no answer for and waits for the
    /// answers; returns the snapshot to route with (`snapshot` itself when nothing was asked).
    async fn ask(
        &self,
        snapshot: Arc<Snapshot>,
        keys: impl IntoIterator<Item = String>,
    ) -> Result<Arc<Snapshot>, Unanswered> {
        let keys: Vec<String> = keys.into_iter().filter(|k| !snapshot.settled(k)).collect();
        if keys.is_empty() {
            return Ok(snapshot);
        }
        self.metrics
            .discovery_waits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let config = &self.config;
        let result = config
            .subscriptions
            .wait_for(&keys, |k| config.peek(|s| s.settled(k)))
            .await;
        if result.is_err() {
            self.metrics
                .discovery_timeouts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(?keys, "no answer from the control plane in time");
        }
        result.map(|()| config.load())
    }
}

/// A redirected connection's destination as a key; loopback names no pod.
fn address_key(dst: SocketAddr) -> Option<String> {
    (!dst.ip().is_loopback()).then(|| dst.to_string())
}
