//! Leader election for the duties only one replica should run at a time (writing the trust
//! bundle ConfigMaps into every namespace). The leader holds `leaders/DUTY` under its lease, so
//! a replica that dies gives the duty up within the lease TTL; one that stops cleanly resigns.
//!
//! A replica that cannot confirm it still holds the key (etcd away) steps down at once: two
//! leaders must not overlap for longer than one poll, while no leader for a moment costs
//! nothing (the duties catch up when resumed).

use std::sync::Arc;
use std::time::Duration;

use weir_proto::etcd::etcdserverpb as pb;

use super::client::Client;
use super::lease::Lease;
use super::ops::{absent, delete_op, holds, put_leased_op, range_op};

/// How often a replica checks whether it leads, or can take the lead.
pub(super) const POLL: Duration = Duration::from_secs(1);

/// Campaigns for `key` as `me` until nobody watches the result any more, reporting on `tx`
/// whether this replica leads.
pub(super) async fn campaign(
    client: Client,
    lease: Arc<Lease>,
    key: Vec<u8>,
    me: String,
    tx: tokio::sync::watch::Sender<bool>,
) {
    let mut leading = false;
    while !tx.is_closed() {
        let now = match take_or_read(&client, &lease, &key, &me).await {
            Ok(now) => now,
            Err(err) => {
                if leading {
                    tracing::warn!(%err, "cannot confirm the lead; stepping down");
                }
                false
            }
        };
        if now != leading {
            leading = now;
            let duty = String::from_utf8_lossy(&key).into_owned();
            if leading {
                tracing::info!(duty, "this replica leads");
            } else {
                tracing::info!(duty, "this replica no longer leads");
            }
            tx.send_replace(leading);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Takes the key if nobody holds it; otherwise whether this replica holds it, under its lease
/// of now (a key left under a lease it replaced is gone with that lease).
async fn take_or_read(
    client: &Client,
    lease: &Lease,
    key: &[u8],
    me: &str,
) -> Result<bool, crate::store::StoreError> {
    let id = lease.id();
    let put = put_leased_op(key, me.as_bytes(), id);
    let response = client
        .txn_unversioned(pb::TxnRequest {
            compare: vec![absent(key)],
            success: vec![put],
            failure: vec![range_op(key)],
        })
        .await?;
    if response.succeeded {
        return Ok(true);
    }
    let held = response
        .responses
        .into_iter()
        .find_map(|op| match op.response {
            Some(pb::response_op::Response::ResponseRange(range)) => range.kvs.into_iter().next(),
            _ => None,
        });
    Ok(held.is_some_and(|kv| kv.value == me.as_bytes() && kv.lease == id))
}

/// Gives the key up if this replica holds it, so another takes over without waiting for the TTL.
pub(super) async fn resign(client: &Client, key: Vec<u8>, me: &str) {
    let request = pb::TxnRequest {
        compare: vec![holds(&key, me.as_bytes())],
        success: vec![delete_op(key.clone())],
        failure: Vec::new(),
    };
    if let Err(err) = client.txn_unversioned(request).await {
        tracing::debug!(%err, "cannot resign the lead; it lapses with the lease");
    }
}
