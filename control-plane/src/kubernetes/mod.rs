//! `weir-control serve --kubernetes`: Endpoints from the cluster's Services and
//! EndpointSlices ([`watch`], mapped by [`mapping`]), and the trust-bundle ConfigMap in every
//! namespace ([`trust`]). The names and rules are deploy/README.md's contract.

pub mod mapping;
pub mod trust;
pub mod watch;

#[cfg(test)]
pub(crate) mod fake_api;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use tokio::task::JoinHandle;

use crate::hub::Hub;
use crate::identity::Authority;

/// What the Kubernetes tasks have done, for logs and tests.
#[derive(Debug, Default)]
pub struct Status {
    /// Watch errors seen (each is retried with backoff).
    pub watch_errors: AtomicU64,
    /// Derived Endpoints were computed from complete lists at least once.
    pub synced: AtomicBool,
    pub config_maps_applied: AtomicU64,
}

/// Leader-election name of the ConfigMap writer (etcd key `leaders/trust-config-maps`).
pub const TRUST_DUTY: &str = "trust-config-maps";

/// Starts the watch and the ConfigMap writer; abort the handles to stop them. Every replica
/// watches (each serves its own proxies from it); only the leader writes ConfigMaps, so replicas
/// do not race each other's writes in the middle of a root rotation.
pub fn spawn(
    client: kube::Client,
    hub: Arc<Hub>,
    authority: Arc<Authority>,
    status: Arc<Status>,
) -> Vec<JoinHandle<()>> {
    let leader = hub.store.leadership(TRUST_DUTY);
    let writer = {
        let (client, status) = (client.clone(), status.clone());
        crate::leading::while_leading(TRUST_DUTY, leader, move || {
            trust::run(client.clone(), authority.clone(), status.clone())
        })
    };
    vec![
        tokio::spawn(watch::run(client, hub, status)),
        tokio::spawn(writer),
    ]
}
