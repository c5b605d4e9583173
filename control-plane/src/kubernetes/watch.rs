//! Services and EndpointSlices of every namespace, cached by kube's reflectors, turned into
//! derived Endpoints documents ([`crate::derived`]) after each burst of changes.
//!
//! Fail safe: a watch error is logged and the watch retried with backoff (kube's default:
//! 0.8 s doubling to 30 s); the caches keep what they last held, so an unreachable API server
//! never takes a service away from proxies. A re-list replaces a cache only once complete
//! (kube buffers `InitApply` until `InitDone`), and only then are deletions made while the
//! watch was down applied.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use super::Status;
use super::mapping::{self, Mapped};
use crate::derived::DerivedEndpoints;
use crate::hub::Hub;

/// Changes that arrive within this window of the first are recomputed together: a rollout
/// touches a Service's slices many times in a row.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// What `weirctl endpoints` calls documents from here.
pub const SOURCE: &str = "kubernetes";

enum Change {
    /// An object of this namespace was added, changed or deleted.
    Namespace(String),
    /// A cache finished a (re-)list.
    Listed(Kind),
    Error(Kind, watcher::Error),
    /// Nothing to recompute (the start of a re-list, a buffered object).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Services,
    EndpointSlices,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Services => "Services",
            Kind::EndpointSlices => "EndpointSlices",
        }
    }
}

/// Watches until the streams end (they do not: errors are retried), keeping `hub.derived`
/// equal to what the caches say.
pub async fn run(client: Client, hub: Arc<Hub>, status: Arc<Status>) {
    let (services, services_writer) = reflector::store::<Service>();
    let (slices, slices_writer) = reflector::store::<EndpointSlice>();
    let service_events = changes(
        Kind::Services,
        reflector::reflector(
            services_writer,
            watcher(
                Api::<Service>::all(client.clone()),
                watcher::Config::default(),
            )
            .default_backoff(),
        ),
    );
    let slice_events = changes(
        Kind::EndpointSlices,
        reflector::reflector(
            slices_writer,
            watcher(
                Api::<EndpointSlice>::all(client),
                watcher::Config::default(),
            )
            .default_backoff(),
        ),
    );
    let mut events = futures_util::stream::select(service_events.boxed(), slice_events.boxed());
    let mut listed = BTreeSet::new();
    let mut dirty = Dirty::default();
    while let Some(first) = events.next().await {
        note(first, &mut dirty, &mut listed, &status);
        let deadline = tokio::time::Instant::now() + DEBOUNCE;
        loop {
            tokio::select! {
                next = events.next() => match next {
                    Some(change) => note(change, &mut dirty, &mut listed, &status),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        // Until both caches hold a full list, a Service could be mapped without its slices
        // (or not at all): wait, keeping what is dirty.
        if listed.len() < 2 {
            continue;
        }
        let namespaces = dirty.take(&services, &slices, &hub);
        recompute(&hub, &services, &slices, namespaces);
        status.synced.store(true, Ordering::Relaxed);
    }
}

fn changes<K, S>(kind: Kind, events: S) -> impl Stream<Item = Change> + Send
where
    K: kube::Resource + Send,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    events.map(move |event| match event {
        Ok(watcher::Event::Apply(obj) | watcher::Event::Delete(obj)) => {
            Change::Namespace(obj.meta().namespace.clone().unwrap_or_default())
        }
        Ok(watcher::Event::InitDone) => Change::Listed(kind),
        Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => Change::None,
        Err(err) => Change::Error(kind, err),
    })
}

fn note(change: Change, dirty: &mut Dirty, listed: &mut BTreeSet<&'static str>, status: &Status) {
    match change {
        Change::Namespace(ns) => {
            dirty.namespaces.insert(ns);
        }
        Change::Listed(kind) => {
            listed.insert(kind.as_str());
            dirty.all = true;
        }
        Change::Error(kind, err) => {
            status.watch_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                %err,
                kind = kind.as_str(),
                "Kubernetes watch failed; keeping the last known Endpoints and retrying"
            );
        }
        Change::None => {}
    }
}

#[derive(Default)]
struct Dirty {
    namespaces: BTreeSet<String>,
    /// After a (re-)list everything may have changed, including namespaces now gone.
    all: bool,
}

impl Dirty {
    fn take(
        &mut self,
        services: &Store<Service>,
        slices: &Store<EndpointSlice>,
        hub: &Hub,
    ) -> BTreeSet<String> {
        let mut out = std::mem::take(&mut self.namespaces);
        if std::mem::take(&mut self.all) {
            out.extend(services.state().iter().filter_map(|s| s.namespace()));
            out.extend(slices.state().iter().filter_map(|s| s.namespace()));
            out.extend(hub.derived.all().into_keys().map(|(ns, _)| ns));
        }
        out
    }
}

fn recompute(
    hub: &Hub,
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    namespaces: BTreeSet<String>,
) {
    if namespaces.is_empty() {
        return;
    }
    let mut changed = false;
    for ns in namespaces {
        let docs = namespace_documents(&ns, services, slices);
        match hub.derived.replace_namespace(&ns, docs, &hub.store) {
            Ok(c) => changed |= c,
            Err(err) => {
                tracing::error!(%err, namespace = ns, "cannot record Kubernetes Endpoints");
            }
        }
    }
    if changed {
        hub.changed();
    }
}

/// Every derived document of one namespace, by mesh service name.
fn namespace_documents(
    ns: &str,
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
) -> BTreeMap<String, DerivedEndpoints> {
    let slices = slices.state_filter(|s| s.metadata.namespace.as_deref() == Some(ns));
    let mut by_owner: BTreeMap<String, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in &slices {
        if let Some((_, service)) = mapping::slice_owner(slice) {
            by_owner.entry(service).or_default().push(slice.as_ref());
        }
    }
    let mut services = services.state_filter(|s| s.metadata.namespace.as_deref() == Some(ns));
    // By name, so merging Services that share a mesh service is the same on every pass.
    services.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut mapped: BTreeMap<String, Mapped> = BTreeMap::new();
    for svc in &services {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let own = by_owner.get(&name).map(Vec::as_slice).unwrap_or_default();
        match mapping::map_service(svc, own) {
            Ok(m) => match mapped.get_mut(&m.name) {
                Some(into) => mapping::merge(into, m),
                None => {
                    mapped.insert(m.name.clone(), m);
                }
            },
            Err(skipped) => {
                tracing::debug!(namespace = ns, service = name, %skipped, "no Endpoints");
            }
        }
    }
    mapped
        .into_iter()
        .map(|(name, m)| {
            let doc = DerivedEndpoints {
                spec: m.spec,
                pods: m.pods,
                source: SOURCE,
            };
            (name, doc)
        })
        .collect()
}
