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

/// Starts the watch and the ConfigMap writer; abort the handles to stop them.
pub fn spawn(
    client: kube::Client,
    hub: Arc<Hub>,
    authority: Arc<Authority>,
    status: Arc<Status>,
) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(watch::run(client.clone(), hub, status.clone())),
        tokio::spawn(trust::run(client, authority, status)),
    ]
}
