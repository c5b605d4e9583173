//! In-crate end-to-end tests: a real tonic server on 127.0.0.1:0 with a temporary data
//! directory, and real tonic clients.

/// Runs each named `async fn NAME(store: Store)` as two tests, `NAME::embedded` and
/// `NAME::etcd`: the behaviour suite holds for both backends.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn embedded() {
                super::$name(None).await
            }
            #[tokio::test]
            async fn etcd() {
                super::$name(Some(crate::tests::etcd::config())).await
            }
        }
    )*};
}

mod admin;
mod delta;
mod discovery;
mod election;
mod etcd;
mod etcd_tls;
mod identity;
mod kubernetes;
mod kubernetes_tokens;
mod replicas;
mod rotation;

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Streaming};
use weir_proto::admin::v1::admin_client::AdminClient;
use weir_proto::admin::v1::{ApplyRequest, ApplyResponse};
use weir_proto::discovery::v1::discovery_client::DiscoveryClient;
use weir_proto::discovery::v1::{Hello, ProxyMessage, Snapshot, proxy_message};

use crate::store::EtcdConfig;
use crate::{ServerConfig, ServerError};

/// The store a test server runs on: `None` for the embedded file, else an etcd prefix of its own
/// (a restarted server given the same one finds its data).
pub type Store = Option<EtcdConfig>;

pub const POLICY: &str = "
apiVersion: weir/v1
kind: ServicePolicy
metadata: { name: payments, namespace: shop }
spec:
  service: payments
  timeouts: { request: 2s }
---
apiVersion: weir/v1
kind: MeshConfig
metadata: { name: default }
spec:
  mtls: strict
";

/// Each test server's trust bundle file by URL, so helpers that only get a URL can dial it.
static BUNDLES: std::sync::Mutex<std::collections::BTreeMap<String, std::path::PathBuf>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// A TLS channel to a test server, verified with its trust bundle as the file holds it now (a
/// root rotation changes it), as weirctl reads it on every call.
pub async fn channel(url: &str) -> Channel {
    let path = BUNDLES
        .lock()
        .expect("bundles")
        .get(url)
        .cloned()
        .expect("a TestServer started at this URL");
    let pem = std::fs::read(&path).expect("trust bundle");
    let roots = weir_proto::dial::roots_from_pem(&pem).expect("roots");
    let config = weir_proto::dial::client_config(roots).expect("client config");
    let endpoint = weir_proto::dial::endpoint(url).expect("endpoint");
    weir_proto::dial::connect(endpoint, config)
        .await
        .expect("connect over TLS")
}

pub struct TestServer {
    pub url: String,
    pub token: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl TestServer {
    pub async fn start(data_dir: &Path) -> TestServer {
        Self::start_with_grace(data_dir, Duration::from_secs(10)).await
    }

    pub async fn start_with_grace(data_dir: &Path, lease_grace: Duration) -> TestServer {
        Self::start_with(data_dir, |config| config.lease_grace = lease_grace).await
    }

    pub async fn start_on(data_dir: &Path, store: &Store) -> TestServer {
        Self::start_on_with(data_dir, store, |_| {}).await
    }

    pub async fn start_on_with(
        data_dir: &Path,
        store: &Store,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        let etcd = store.clone();
        Self::start_with(data_dir, move |config| {
            config.etcd = etcd;
            configure(config);
        })
        .await
    }

    /// Starts with the test defaults changed by `configure`.
    pub async fn start_with(
        data_dir: &Path,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        let mut config = ServerConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ..ServerConfig::new(data_dir)
        };
        configure(&mut config);
        let bound = crate::bind(config).await.expect("bind");
        let url = format!("https://{}", bound.local_addr());
        let bundle = bound.trust_bundle_path();
        assert!(bundle.exists(), "trust bundle written");
        BUNDLES.lock().expect("bundles").insert(url.clone(), bundle);
        let token = bound.token().secret().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(bound.serve(async move {
            let _ = stopped.await;
        }));
        TestServer {
            url,
            token,
            stop: Some(stop),
            task,
        }
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(channel(&self.url).await)
    }

    /// `message` with this server's admin token.
    pub fn authed<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        let value = format!("Bearer {}", self.token)
            .parse()
            .expect("metadata value");
        request.metadata_mut().insert("authorization", value);
        request
    }

    pub async fn apply(&self, yaml: &str) -> Result<ApplyResponse, tonic::Status> {
        let request = ApplyRequest {
            yaml: yaml.into(),
            source: "test.yaml".into(),
            dry_run: false,
        };
        self.admin()
            .await
            .apply(self.authed(request))
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn status(&self) -> weir_proto::admin::v1::StatusResponse {
        let request = self.authed(weir_proto::admin::v1::StatusRequest {});
        self.admin()
            .await
            .status(request)
            .await
            .expect("status")
            .into_inner()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("server stops within 10s");
        result.expect("server task").expect("server result");
    }
}

/// A fake proxy: the sending half of its stream and the snapshots it receives.
pub struct TestProxy {
    pub tx: mpsc::Sender<ProxyMessage>,
    pub snapshots: Streaming<Snapshot>,
}

impl TestProxy {
    pub async fn connect(url: &str, hello: Hello) -> Result<TestProxy, tonic::Status> {
        Self::open(
            url,
            ProxyMessage {
                kind: Some(proxy_message::Kind::Hello(hello)),
            },
        )
        .await
    }

    pub async fn open(url: &str, first: ProxyMessage) -> Result<TestProxy, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.expect("queue first message");
        let mut client = DiscoveryClient::new(channel(url).await);
        let snapshots = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        Ok(TestProxy { tx, snapshots })
    }

    pub async fn next(&mut self) -> Snapshot {
        tokio::time::timeout(Duration::from_secs(5), self.snapshots.message())
            .await
            .expect("a snapshot within 5s")
            .expect("stream ok")
            .expect("stream open")
    }

    pub async fn send(&self, kind: proxy_message::Kind) {
        self.tx
            .send(ProxyMessage { kind: Some(kind) })
            .await
            .expect("send to server");
    }
}

pub fn hello(service: &str, address: &str) -> Hello {
    Hello {
        service: service.into(),
        namespace: "shop".into(),
        service_account: service.into(),
        identity: format!("spiffe://weir.local/ns/shop/sa/{service}"),
        inbound_address: address.into(),
        current_version: 0,
        proxy_version: "test".into(),
    }
}

/// Polls `check` until it yields a value, failing after 5 s. Tests synchronise on observable
/// state rather than on fixed sleeps.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(what, Duration::from_secs(5), check).await
}

pub async fn eventually_within<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
