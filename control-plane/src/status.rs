//! Proxy status across replicas: each replica writes what `weirctl status` shows of its own
//! proxies to the shared store, in batches off the request path, and `status` merges its own
//! (from memory, freshest) with the other replicas' (from the store).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use weir_proto::admin::v1 as pb;

use crate::hub::Hub;

/// At most one batch write per interval: a snapshot pushed to 10,000 proxies is 10,000 ACKs,
/// and they become one write, not 10,000.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How often a failing store is worth a warning in the log.
const WARN_INTERVAL: Duration = Duration::from_secs(30);
/// A NACK can list many errors; the shared copy keeps the start (etcd values stay small).
const MAX_SHARED_ERROR: usize = 2000;

/// One proxy's status as every replica reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SharedProxy {
    pub identity: String,
    pub service: String,
    pub namespace: String,
    pub inbound_address: String,
    pub acked_version: u64,
    pub last_nack_version: u64,
    pub last_nack_error: String,
    pub connected_since_unix_ms: i64,
    pub connected: bool,
    pub proxy_version: String,
    /// The replica the proxy is (or was last) connected to.
    pub replica: String,
}

impl SharedProxy {
    /// What makes two rows the same proxy, whichever replica wrote them.
    fn proxy_key(&self) -> (&str, &str, &str, &str) {
        (
            &self.identity,
            &self.service,
            &self.namespace,
            &self.inbound_address,
        )
    }
}

impl From<SharedProxy> for pb::ProxyStatus {
    fn from(p: SharedProxy) -> Self {
        pb::ProxyStatus {
            identity: p.identity,
            service: p.service,
            namespace: p.namespace,
            inbound_address: p.inbound_address,
            acked_version: p.acked_version,
            last_nack_version: p.last_nack_version,
            last_nack_error: p.last_nack_error,
            connected_since_unix_ms: p.connected_since_unix_ms,
            connected: p.connected,
            proxy_version: p.proxy_version,
            replica: p.replica,
        }
    }
}

/// What changed in the registry's status rows since the last batch. Proxies carry their own
/// dirty flag (so an ACK touches no lock); this wakes the writer and lists removed rows.
#[derive(Debug, Default)]
pub struct StatusChanges {
    pub(crate) notify: Notify,
    removed: Mutex<Vec<u64>>,
}

impl StatusChanges {
    pub(crate) fn removed(&self, stream: u64) {
        self.removed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stream);
        self.notify.notify_one();
    }

    pub(crate) fn take_removed(&self) -> Vec<u64> {
        std::mem::take(&mut *self.removed.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// This replica's rows plus the other replicas'. A row another replica still shows as
/// disconnected is left out when the same proxy is connected somewhere: it moved.
pub fn merge(local: Vec<SharedProxy>, remote: Vec<SharedProxy>) -> Vec<pb::ProxyStatus> {
    let mut all = local;
    all.extend(remote);
    // Indexed rather than compared pairwise: 10,000 proxies after a replica restart would be
    // tens of millions of comparisons on every `weirctl status`.
    let mut connected: HashMap<(&str, &str, &str, &str), Vec<&str>> = HashMap::new();
    for p in all.iter().filter(|p| p.connected) {
        connected.entry(p.proxy_key()).or_default().push(&p.replica);
    }
    let moved: HashSet<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.connected)
        .filter(|(_, p)| {
            connected
                .get(&p.proxy_key())
                .is_some_and(|replicas| replicas.iter().any(|r| *r != p.replica))
        })
        .map(|(i, _)| i)
        .collect();
    let mut out: Vec<pb::ProxyStatus> = all
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !moved.contains(i))
        .map(|(_, p)| p.into())
        .collect();
    out.sort_by(|a, b| {
        (
            &a.namespace,
            &a.service,
            &a.inbound_address,
            a.connected_since_unix_ms,
            &a.replica,
        )
            .cmp(&(
                &b.namespace,
                &b.service,
                &b.inbound_address,
                b.connected_since_unix_ms,
                &b.replica,
            ))
    });
    out
}

/// Writes the changed status rows of this replica's proxies to the shared store, at most every
/// [`FLUSH_INTERVAL`], until the hub is gone. Only a shared store needs it.
pub async fn share(hub: Weak<Hub>, changes: Arc<StatusChanges>) {
    let mut last: Option<tokio::time::Instant> = None;
    let mut warn = Warnings::default();
    loop {
        changes.notify.notified().await;
        // Like the publisher: a change after a quiet spell goes out at once, a storm of them
        // rides along in the next batch.
        if let Some(last) = last {
            tokio::time::sleep_until(last + FLUSH_INTERVAL).await;
        }
        last = Some(tokio::time::Instant::now());
        let Some(strong) = hub.upgrade() else { return };
        let batch = batch(&strong);
        if batch.is_empty() {
            continue;
        }
        let written = tokio::task::spawn_blocking(move || strong.store.share_status(&batch)).await;
        match written {
            Ok(Ok(())) => warn.recovered(),
            Ok(Err(err)) => warn.failed(&err.to_string()),
            Err(err) => warn.failed(&format!("status write task failed: {err}")),
        }
    }
}

/// `(stream, row)` of every changed proxy, `(stream, None)` for every removed one.
fn batch(hub: &Hub) -> Vec<(u64, Option<SharedProxy>)> {
    let mut out: Vec<(u64, Option<SharedProxy>)> = hub
        .registry
        .take_changed()
        .into_iter()
        .map(|p| {
            let mut row = p.shared(&hub.replica);
            if row.last_nack_error.chars().count() > MAX_SHARED_ERROR {
                row.last_nack_error = row.last_nack_error.chars().take(MAX_SHARED_ERROR).collect();
                row.last_nack_error.push('…');
            }
            (p.stream, Some(row))
        })
        .collect();
    let present: HashSet<u64> = out.iter().map(|(s, _)| *s).collect();
    out.extend(
        hub.registry
            .status_changes()
            .take_removed()
            .into_iter()
            .filter(|s| !present.contains(s))
            .map(|s| (s, None)),
    );
    out
}

/// One warning per [`WARN_INTERVAL`] while the store fails, with how many failures it covers;
/// the held values are rewritten by the lease once etcd answers again.
#[derive(Default)]
struct Warnings {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl Warnings {
    fn failed(&mut self, err: &str) {
        let due = self.last.is_none_or(|t| t.elapsed() >= WARN_INTERVAL);
        if due {
            tracing::warn!(
                %err,
                suppressed = self.suppressed,
                "cannot share proxy status with the other replicas; retried when the store answers"
            );
            self.last = Some(std::time::Instant::now());
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
    }

    fn recovered(&mut self) {
        if self.last.take().is_some() {
            tracing::info!("proxy status is shared again");
        }
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(replica: &str, connected: bool, since: i64) -> SharedProxy {
        SharedProxy {
            identity: "spiffe://weir.local/ns/shop/sa/payments".into(),
            service: "payments".into(),
            namespace: "shop".into(),
            inbound_address: "10.0.3.7:4143".into(),
            connected,
            connected_since_unix_ms: since,
            replica: replica.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_proxy_that_moved_shows_once() {
        let merged = merge(vec![row("a", true, 2)], vec![row("b", false, 1)]);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].replica, "a");
        // Disconnected everywhere: both rows stay, as on one replica.
        let merged = merge(vec![row("a", false, 2)], vec![row("b", false, 1)]);
        assert_eq!(
            merged
                .iter()
                .map(|p| p.replica.as_str())
                .collect::<Vec<_>>(),
            ["b", "a"]
        );
        // Reconnected to the same replica: that replica's own rows are left as they are.
        let merged = merge(vec![row("a", true, 2), row("a", false, 1)], vec![]);
        assert_eq!(merged.len(), 2);
        // Only a row of another replica goes, and only when the key matches.
        let mut elsewhere = row("b", false, 1);
        elsewhere.inbound_address = "10.0.3.8:4143".into();
        let merged = merge(vec![row("a", true, 2)], vec![row("b", false, 1), elsewhere]);
        assert_eq!(merged.len(), 2);
        assert!(merged.iter().any(|p| p.inbound_address == "10.0.3.8:4143"));
    }

    #[test]
    fn shared_rows_read_with_missing_fields() {
        let row: SharedProxy = serde_json::from_str(r#"{"identity":"x","replica":"b"}"#)
            .expect("older or newer rows parse");
        assert_eq!(row.replica, "b");
        assert_eq!(row.acked_version, 0);
    }
}
