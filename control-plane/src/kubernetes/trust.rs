//! The trust-bundle ConfigMap (`weir-trust-bundle`, key `trust-bundle.pem`) in every
//! namespace, which injected pods mount (deploy/README.md). Written with server-side apply
//! under the field manager `weir-control`, so a `kubectl apply` of other fields or labels by
//! someone else is left alone, and re-applying the same bundle is a no-op for the API server.
//!
//! Applied when the namespace list is first complete, to each namespace that appears, and to
//! all of them after a root rotation step changes the bundle. A failed apply is retried with
//! backoff; terminating namespaces are skipped (the API server refuses writes there).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use super::Status;
use crate::identity::Authority;

pub const CONFIG_MAP: &str = "weir-trust-bundle";
pub const KEY: &str = "trust-bundle.pem";
pub const FIELD_MANAGER: &str = "weir-control";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "weir-control");

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The ConfigMap as applied: only the fields weir-control owns.
pub fn config_map(namespace: &str, bundle_pem: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": CONFIG_MAP,
            "namespace": namespace,
            "labels": { MANAGED_BY.0: MANAGED_BY.1 },
        },
        "data": { KEY: bundle_pem },
    })
}

/// Keeps the ConfigMap current in every namespace until the namespace watch ends (it does not:
/// errors are retried).
pub async fn run(client: Client, authority: Arc<Authority>, status: Arc<Status>) {
    let (namespaces, writer) = reflector::store::<Namespace>();
    let mut events = reflector::reflector(
        writer,
        watcher(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .boxed();
    let mut rotations = authority.subscribe();
    let mut bundle: Arc<str> = Arc::from(authority.ca().trust_bundle_pem());
    // Namespace → the bundle last applied there.
    let mut applied: BTreeMap<String, Arc<str>> = BTreeMap::new();
    let mut listed = false;
    let mut retry: Option<tokio::time::Instant> = None;
    let mut backoff = RETRY_FIRST;
    let mut rotations_open = true;
    loop {
        tokio::select! {
            event = events.next() => match event {
                None => return,
                Some(Ok(watcher::Event::InitDone)) => {
                    listed = true;
                    let present: Vec<String> =
                        namespaces.state().iter().map(|n| n.name_any()).collect();
                    applied.retain(|ns, _| present.contains(ns));
                }
                Some(Ok(watcher::Event::Delete(ns))) => {
                    applied.remove(&ns.name_any());
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => {
                    status.watch_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%err, "Kubernetes namespace watch failed; retrying");
                }
            },
            changed = rotations.changed(), if rotations_open => match changed {
                Ok(()) => bundle = rotations.borrow_and_update().1.clone(),
                // The authority is gone only when the server is: nothing more will rotate.
                Err(_) => rotations_open = false,
            },
            () = sleep_until(retry) => retry = None,
        }
        if !listed || retry.is_some() {
            continue;
        }
        if apply_missing(&client, &namespaces, &bundle, &mut applied, &status).await {
            backoff = RETRY_FIRST;
        } else {
            retry = Some(tokio::time::Instant::now() + backoff);
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Applies `bundle` where it is not yet. Returns false when some apply failed.
async fn apply_missing(
    client: &Client,
    namespaces: &Store<Namespace>,
    bundle: &Arc<str>,
    applied: &mut BTreeMap<String, Arc<str>>,
    status: &Status,
) -> bool {
    let mut ok = true;
    for ns in namespaces.state() {
        let name = ns.name_any();
        let terminating =
            ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
        if terminating || applied.get(&name) == Some(bundle) {
            continue;
        }
        let api = Api::<ConfigMap>::namespaced(client.clone(), &name);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api
            .patch(
                CONFIG_MAP,
                &params,
                &Patch::Apply(config_map(&name, bundle)),
            )
            .await
        {
            Ok(_) => {
                status.config_maps_applied.fetch_add(1, Ordering::Relaxed);
                tracing::info!(namespace = name, "trust bundle ConfigMap applied");
                applied.insert(name, bundle.clone());
            }
            Err(err) => {
                ok = false;
                tracing::warn!(%err, namespace = name, "cannot apply the trust bundle ConfigMap; retrying");
            }
        }
    }
    ok
}
