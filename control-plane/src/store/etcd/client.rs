//! A small etcd v3 client over the workspace's tonic: every call has a deadline and fails over
//! to the next endpoint when one does not answer (down, partitioned, or without a leader), and
//! every error names the endpoints, so "etcd is down" reads as such and not as a gRPC code.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use weir_proto::etcd::etcdserverpb as pb;
use weir_proto::etcd::etcdserverpb::kv_client::KvClient;

use super::EtcdConfig;
use super::dial::{self, Given, LastTls};
use crate::store::StoreError;

/// How many request timeouts one call may spend going round the members.
const ROUNDS: u32 = 3;
/// Between two rounds: about one election on a healthy cluster.
const ROUND_PAUSE: Duration = Duration::from_millis(200);

/// One connection per etcd member, made lazily and remade after failures by tonic.
#[derive(Clone)]
pub(crate) struct Client {
    urls: std::sync::Arc<[String]>,
    channels: std::sync::Arc<[Channel]>,
    /// The member that answered last: tried first next time.
    preferred: std::sync::Arc<AtomicUsize>,
    /// Newest etcd revision seen in any answer: the store's version.
    revision: std::sync::Arc<AtomicU64>,
    timeout: Duration,
    /// For the hints in TLS errors.
    tls: Given,
    /// Per member, beside `channels`.
    last_tls: std::sync::Arc<[std::sync::Arc<LastTls>]>,
}

impl Client {
    pub(crate) fn new(config: &EtcdConfig) -> Result<Client, StoreError> {
        let urls = &config.endpoints;
        let timeout = config.request_timeout;
        let tls = if config.https() {
            Some(
                config
                    .tls
                    .client_config()
                    .map_err(StoreError::Unavailable)?,
            )
        } else if !config.tls.is_empty() {
            return Err(StoreError::Unavailable(format!(
                "TLS to etcd ({}) needs https:// etcd endpoints, not {}",
                config.tls.flags().join(", "),
                urls.join(",")
            )));
        } else {
            None
        };
        let given = Given::from(&config.tls);
        let mut channels = Vec::with_capacity(urls.len());
        let mut last_tls = Vec::with_capacity(urls.len());
        for url in urls {
            let last = std::sync::Arc::new(LastTls::default());
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|err| StoreError::Unavailable(format!("etcd endpoint {url}: {err}")))?
                .connect_timeout(timeout)
                .tcp_nodelay(true);
            channels.push(match &tls {
                // The connector checks etcd's certificate against the URL's host.
                Some(tls) => dial::connect_lazy(endpoint, tls.clone(), given, last.clone()),
                None => endpoint.connect_lazy(),
            });
            last_tls.push(last);
        }
        Ok(Client {
            urls: urls.as_slice().into(),
            channels: channels.into(),
            preferred: Default::default(),
            revision: Default::default(),
            timeout,
            tls: given,
            last_tls: last_tls.into(),
        })
    }

    pub(crate) fn urls(&self) -> String {
        self.urls.join(",")
    }

    pub(crate) fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// Records a revision seen in an answer (or a watch event); revisions only go up.
    pub(crate) fn saw(&self, header: Option<&pb::ResponseHeader>) {
        if let Some(rev) = header.and_then(|h| u64::try_from(h.revision).ok()) {
            self.saw_revision(rev);
        }
    }

    pub(crate) fn saw_revision(&self, revision: u64) {
        self.revision.fetch_max(revision, Ordering::AcqRel);
    }

    /// The members in the order to try them: the last one that answered first.
    pub(crate) fn order(&self) -> impl Iterator<Item = (usize, &str, Channel)> + '_ {
        let n = self.channels.len();
        let first = self.preferred.load(Ordering::Relaxed) % n.max(1);
        (0..n).map(move |i| {
            let at = (first + i) % n;
            (at, self.urls[at].as_str(), self.channels[at].clone())
        })
    }

    /// Why a call to the member at `url` failed; see [`describe`].
    pub(crate) fn describe(&self, url: &str, status: &tonic::Status) -> String {
        let last = self.urls.iter().position(|u| u == url);
        let last_tls = last
            .and_then(|at| self.last_tls.get(at))
            .and_then(|l| l.get());
        describe(status, self.tls, last_tls)
    }

    pub(crate) fn prefer(&self, at: usize) {
        self.preferred.store(at, Ordering::Relaxed);
    }

    /// Runs `call` against each member in turn until one answers. A member that answers with
    /// an error about the request itself (not its availability) ends the search.
    pub(crate) async fn kv<T, F, Fut>(&self, what: &str, call: F) -> Result<T, StoreError>
    where
        F: Fn(KvClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        // A leader election (a member died) makes every member refuse for a moment: go round
        // the members again until the budget is spent rather than fail the first round.
        let budget = tokio::time::Instant::now() + self.timeout * ROUNDS;
        let mut failures = Vec::new();
        while failures.is_empty() || tokio::time::Instant::now() < budget {
            failures.clear();
            for (at, url, channel) in self.order() {
                match tokio::time::timeout(self.timeout, call(KvClient::new(channel))).await {
                    Ok(Ok(response)) => {
                        self.prefer(at);
                        return Ok(response.into_inner());
                    }
                    Ok(Err(status)) if !member_unavailable(&status) => {
                        return Err(StoreError::Unavailable(format!(
                            "etcd store ({}): {what} refused by {url}: {}",
                            self.urls(),
                            status.message()
                        )));
                    }
                    Ok(Err(status)) => {
                        failures.push(format!("{url}: {}", self.describe(url, &status)))
                    }
                    Err(_) => failures.push(format!("{url}: no answer within {:?}", self.timeout)),
                }
            }
            tokio::time::sleep(ROUND_PAUSE).await;
        }
        // Waiting for a quorum does not fix a certificate.
        let until = if failures.iter().all(|f| f.contains(": TLS: ")) {
            "TLS to etcd works"
        } else {
            "etcd has a quorum again"
        };
        Err(StoreError::Unavailable(format!(
            "etcd store ({}) is unavailable: {what} failed on every endpoint ({}); \
             writes are refused until {until}, proxies keep their last snapshot",
            self.urls(),
            failures.join("; ")
        )))
    }

    pub(crate) async fn range(
        &self,
        request: pb::RangeRequest,
    ) -> Result<pb::RangeResponse, StoreError> {
        let response = self
            .kv("read", |mut kv| {
                let request = request.clone();
                async move { kv.range(request).await }
            })
            .await?;
        // Not a version: the header's revision counts writes outside this store's prefix too.
        Ok(response)
    }

    pub(crate) async fn txn(&self, request: pb::TxnRequest) -> Result<pb::TxnResponse, StoreError> {
        let response = self.txn_unversioned(request).await?;
        if response.succeeded {
            self.saw(response.header.as_ref());
        }
        Ok(response)
    }

    /// A write that is not a version: what it writes (proxy status, replica names) is not in
    /// any snapshot, so its revision must not make every proxy look behind.
    pub(crate) async fn txn_unversioned(
        &self,
        request: pb::TxnRequest,
    ) -> Result<pb::TxnResponse, StoreError> {
        self.kv("write", |mut kv| {
            let request = request.clone();
            async move { kv.txn(request).await }
        })
        .await
    }

    pub(crate) async fn put(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<u64, StoreError> {
        let request = pb::PutRequest {
            key,
            value,
            lease,
            prev_kv: false,
        };
        let response = self
            .kv("write", |mut kv| {
                let request = request.clone();
                async move { kv.put(request).await }
            })
            .await?;
        self.saw(response.header.as_ref());
        Ok(response
            .header
            .and_then(|h| u64::try_from(h.revision).ok())
            .unwrap_or(0))
    }
}

/// Worth trying another member: this one is down, slow, or cut off from its leader.
fn member_unavailable(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
    ) || status.message().contains("no leader")
        || status.message().contains("request timed out")
}

/// The status's message and what caused it (a gRPC status from a failed connection says only
/// "transport error"); a TLS failure, in the status or met by the member's latest connection
/// (`last_tls`), as itself, with what to check.
fn describe(status: &tonic::Status, given: Given, last_tls: Option<String>) -> String {
    let source = std::error::Error::source(status);
    if let Some(tls) = source
        .and_then(|err| dial::explain(err, given))
        .or(last_tls)
    {
        return tls;
    }
    let message = match status.message() {
        "" => format!("{:?}", status.code()),
        message => message.to_string(),
    };
    dial::causes(message, source)
}

/// The end of the key range holding every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: etcd reads "\0" as "to the end of the keyspace".
    vec![0]
}
