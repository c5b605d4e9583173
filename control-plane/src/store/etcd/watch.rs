//! Watches the store's prefix so a change written through any replica reaches this one's
//! proxies: each batch of events moves the version forward and tells the publisher. Events on
//! keys that are in no snapshot (proxy status, replica names) move nothing: otherwise a status
//! write would be a new version, which every proxy ACKs, which is a status write…
//!
//! The watch asks etcd to end it when its member loses the leader (`hasleader`), so a member cut
//! off from the cluster does not leave this replica silently stale: it reconnects to another.

use std::time::Duration;

use futures_util::StreamExt;
use tonic::metadata::MetadataValue;
use weir_proto::etcd::etcdserverpb::watch_client::WatchClient;
use weir_proto::etcd::etcdserverpb::{self as pb, watch_request};

use super::client::{Client, prefix_end};

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(3);

/// Where a watch reports: every change, and separately those to the identity secrets (the CA
/// roots and rotation state), which the CA reloads while the rest only rebuilds snapshots.
pub(super) struct Targets {
    pub all: tokio::sync::watch::Sender<u64>,
    pub secrets: tokio::sync::watch::Sender<u64>,
}

/// Runs until the receiver side is gone, resuming after the last revision it saw.
pub(super) async fn run(
    client: Client,
    prefix: String,
    ignore: Vec<Vec<u8>>,
    from: u64,
    targets: Targets,
) {
    let tx = &targets.all;
    let mut next = from + 1;
    let mut backoff = RETRY_MIN;
    loop {
        let mut progressed = false;
        for (at, url, channel) in client.order() {
            if tx.is_closed() {
                return;
            }
            match watch_once(&client, url, channel, &prefix, &ignore, &mut next, &targets).await {
                Ok(()) => return,
                Err(reason) => {
                    progressed |= reason.progressed;
                    tracing::warn!(etcd = url, reason = %reason.message, "etcd watch ended; trying the next endpoint");
                    // A member that worked once is likely to work again after a blip.
                    if reason.progressed {
                        client.prefer(at);
                    }
                }
            }
        }
        if progressed {
            backoff = RETRY_MIN;
        }
        let jitter = Duration::from_millis(u64::from(rand_ms()) % 100);
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(RETRY_MAX);
        // Whatever happened meanwhile is read again by the next build.
        tx.send_modify(|v| *v = (*v).max(client.revision()));
    }
}

struct Ended {
    message: String,
    /// At least one event or the creation was received on this connection.
    progressed: bool,
}

/// One watch on one member. `Ok` only when nobody listens any more.
async fn watch_once(
    client: &Client,
    url: &str,
    channel: tonic::transport::Channel,
    prefix: &str,
    ignore: &[Vec<u8>],
    next: &mut u64,
    targets: &Targets,
) -> Result<(), Ended> {
    let tx = &targets.all;
    let secrets = format!("{prefix}secrets/").into_bytes();
    let key = prefix.as_bytes().to_vec();
    let create = pb::WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                range_end: prefix_end(&key),
                key,
                start_revision: i64::try_from(*next).unwrap_or(i64::MAX),
                progress_notify: true,
                prev_kv: false,
            },
        )),
    };
    // The request stream stays open (a closed one would end the watch); nothing more is sent.
    let (_keep, requests) = tokio::sync::mpsc::channel::<pb::WatchRequest>(1);
    let outbound = futures_util::stream::once(async move { create })
        .chain(tokio_stream::wrappers::ReceiverStream::new(requests));
    let mut request = tonic::Request::new(outbound);
    request
        .metadata_mut()
        .insert("hasleader", MetadataValue::from_static("true"));
    let ended = |message: String, progressed| Ended {
        message,
        progressed,
    };
    let mut stream = WatchClient::new(channel)
        .watch(request)
        .await
        .map_err(|status| ended(client.describe(url, &status), false))?
        .into_inner();
    let mut progressed = false;
    loop {
        let response = match stream.next().await {
            Some(Ok(response)) => response,
            Some(Err(status)) => return Err(ended(client.describe(url, &status), progressed)),
            None => return Err(ended("stream closed".into(), progressed)),
        };
        progressed = true;
        if response.canceled {
            if response.compact_revision > 0 {
                // History before this was compacted away: start from now; the next build reads
                // the whole state anyway.
                *next = u64::try_from(response.compact_revision).unwrap_or(*next);
                // Whether a secret changed in the lost part is unknown: reload to be sure.
                targets.secrets.send_modify(|v| *v = (*v).max(*next));
            }
            return Err(ended(
                format!("canceled: {}", response.cancel_reason),
                progressed,
            ));
        }
        let revisions = |relevant_only: bool| {
            response
                .events
                .iter()
                .filter_map(|e| e.kv.as_ref())
                .filter(|kv| !relevant_only || !ignore.iter().any(|p| kv.key.starts_with(p)))
                .map(|kv| kv.mod_revision)
                .max()
                .and_then(|rev| u64::try_from(rev).ok())
        };
        let relevant = revisions(true);
        if let Some(rev) = revisions(false) {
            *next = rev + 1;
            let secret_changed = response
                .events
                .iter()
                .filter_map(|e| e.kv.as_ref())
                .any(|kv| kv.key.starts_with(&secrets));
            if secret_changed {
                targets.secrets.send_replace(rev);
            }
        }
        if response.created {
            // After a reconnect (or a compaction) changes may have been missed: the version
            // moves to now and the publisher reads the whole state again.
            let before = client.revision();
            client.saw(response.header.as_ref());
            if client.revision() > before && tx.send(client.revision()).is_err() {
                return Ok(());
            }
        }
        // Not the header's revision: it counts writes that are no version (ignored keys), and
        // a progress notification has nothing else.
        if let Some(rev) = relevant {
            client.saw_revision(rev);
            if tx.send(client.revision()).is_err() {
                return Ok(());
            }
        }
    }
}

/// A little jitter so replicas that lost the same member do not retry in step.
fn rand_ms() -> u16 {
    let mut b = [0u8; 2];
    let _ = getrandom::fill(&mut b);
    u16::from_le_bytes(b)
}
