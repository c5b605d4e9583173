//! The config snapshot: policy documents compiled into immutable lookup tables, swapped in whole
//! with `arc-swap`. A request loads the snapshot once and keeps that `Arc` to the end, so a swap
//! never changes the rules under a request in flight.
#[cfg(test)]
mod bench;
mod compile;
pub mod idle;
mod lookup;
pub mod report;
mod reuse;
mod snapshot;
mod store;
mod subscriptions;
mod view;

pub use snapshot::{LocalIdentity, MeshDst, Service, Snapshot};
pub use store::{ConfigStore, Pushed, PushedResource};
pub use subscriptions::{Subscriptions, Unanswered, authority_key};

/// A store and documents shared by the tests of the submodules.
#[cfg(test)]
mod fixtures {
    use std::sync::Arc;

    use super::{ConfigStore, LocalIdentity};
    use crate::metrics::Metrics;

    pub fn store() -> ConfigStore {
        let local = LocalIdentity {
            service: "orders".into(),
            namespace: "shop".into(),
            service_account: "orders".into(),
        };
        ConfigStore::new(
            local,
            Arc::new(Metrics::default()),
            Vec::new(),
            Default::default(),
        )
    }

    pub const DOCS: &str = "apiVersion: weir/v1\nkind: Endpoints\nmetadata: { name: payments, namespace: shop }\nspec: { addresses: [\"10.0.3.7:4143\", \"10.0.3.8:4143\"] }\n---\napiVersion: weir/v1\nkind: Endpoints\nmetadata: { name: users, namespace: auth }\nspec: { addresses: [\"10.0.4.1:4143\"] }\n";
}
