//! A small Kubernetes API server for tests, on 127.0.0.1: list (with `resourceVersion`),
//! watch (newline-delimited `ADDED`/`MODIFIED`/`DELETED` events on a chunked response) and
//! server-side apply (`PATCH … application/apply-patch+yaml`) for the resources weir-control
//! uses. No real API server runs on this machine, so this is how the real watch code, with a
//! real `kube::Client` over real HTTP, is tested; it speaks only as much of the API as kube's
//! watcher and `Api::patch` need, and it is no model of the API server's semantics beyond that.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// `(resource, namespace, name)`; the namespace is empty for cluster-scoped kinds.
type Key = (&'static str, String, String);

/// One server-side apply as received.
#[derive(Debug, Clone)]
pub struct Applied {
    pub namespace: String,
    pub name: String,
    pub field_manager: String,
    pub force: bool,
    pub content_type: String,
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    resource_version: u64,
    objects: BTreeMap<Key, Value>,
    /// Every change, for watches that start from an older resourceVersion.
    log: Vec<(u64, &'static str, &'static str, Value)>,
    applied: Vec<Applied>,
}

/// State that outlives one server process, so a "restarted" API server has the same objects.
#[derive(Default)]
pub struct State {
    inner: Mutex<Inner>,
    /// The newest resourceVersion; watches wait on it.
    changed: watch::Sender<u64>,
    unavailable: AtomicBool,
    refused: AtomicU64,
}

pub struct FakeApi {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    task: JoinHandle<()>,
}

impl FakeApi {
    pub async fn start() -> FakeApi {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), Arc::default()).await
    }

    /// Serves `state` on `addr` (port 0 for any).
    pub async fn start_on(addr: SocketAddr, state: Arc<State>) -> FakeApi {
        let listener = TcpListener::bind(addr).await.expect("bind the fake API");
        let addr = listener.local_addr().expect("local addr");
        let serving = state.clone();
        let task = tokio::spawn(async move {
            // Owned here, so aborting this task drops every connection (open watches too).
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = serving.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        FakeApi { addr, state, task }
    }

    /// A client configuration for this server (plain HTTP, no credentials).
    pub fn config(&self) -> kube::Config {
        let url = format!("http://{}", self.addr).parse().expect("url");
        kube::Config::new(url)
    }

    /// The API server dies: its port closes and every connection drops.
    pub async fn kill(self) -> (SocketAddr, Arc<State>) {
        self.task.abort();
        let _ = self.task.await;
        (self.addr, self.state)
    }
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates or replaces an object (`ADDED`/`MODIFIED`), as a controller or kubectl would.
    pub fn put(&self, resource: &'static str, mut object: Value) {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("object has a name")
            .to_string();
        let mut inner = self.lock();
        inner.resource_version += 1;
        let rv = inner.resource_version;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let previous = inner.objects.insert((resource, ns, name), object.clone());
        let kind = if previous.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        inner.log.push((rv, resource, kind, object));
        drop(inner);
        self.changed.send_replace(rv);
    }

    pub fn delete(&self, resource: &'static str, ns: &str, name: &str) {
        let mut inner = self.lock();
        let Some(mut object) = inner
            .objects
            .remove(&(resource, ns.to_string(), name.to_string()))
        else {
            return;
        };
        inner.resource_version += 1;
        let rv = inner.resource_version;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        inner.log.push((rv, resource, "DELETED", object));
        drop(inner);
        self.changed.send_replace(rv);
    }

    /// Answer every request with 503 (an API server whose etcd is gone), or serve again.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }

    /// Requests answered 503 so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    pub fn applied(&self) -> Vec<Applied> {
        self.lock().applied.clone()
    }

    pub fn object(&self, resource: &'static str, ns: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(resource, ns.to_string(), name.to_string()))
            .cloned()
    }
}

fn full(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn failure(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    full(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
        }),
    )
}

/// The collection a path names: `(resource, apiVersion, list kind)`.
fn collection(path: &str) -> Option<(&'static str, &'static str, &'static str)> {
    match path {
        "/api/v1/services" => Some(("services", "v1", "ServiceList")),
        "/api/v1/namespaces" => Some(("namespaces", "v1", "NamespaceList")),
        "/apis/discovery.k8s.io/v1/endpointslices" => {
            Some(("endpointslices", "discovery.k8s.io/v1", "EndpointSliceList"))
        }
        _ => None,
    }
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn handle(state: &Arc<State>, req: Request<Incoming>) -> Response<Body> {
    if state.unavailable.load(Ordering::SeqCst) {
        state.refused.fetch_add(1, Ordering::SeqCst);
        return failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "etcdserver: request timed out",
        );
    }
    let params = query(&req);
    let path = req.uri().path().to_string();
    if req.method() == Method::GET
        && let Some((resource, api_version, list_kind)) = collection(&path)
    {
        if matches!(params.get("watch").map(String::as_str), Some("true" | "1")) {
            let from = params
                .get("resourceVersion")
                .and_then(|rv| rv.parse().ok())
                .unwrap_or(0);
            return watch_response(state.clone(), resource, from);
        }
        let inner = state.lock();
        let items: Vec<&Value> = inner
            .objects
            .iter()
            .filter(|((r, _, _), _)| *r == resource)
            .map(|(_, object)| object)
            .collect();
        return full(
            StatusCode::OK,
            &json!({
                "apiVersion": api_version, "kind": list_kind,
                "metadata": { "resourceVersion": inner.resource_version.to_string() },
                "items": items,
            }),
        );
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if req.method() == Method::PATCH
        && let ["api", "v1", "namespaces", ns, "configmaps", name] = parts.as_slice()
    {
        let (ns, name) = (ns.to_string(), name.to_string());
        return apply_config_map(state, req, params, ns, name).await;
    }
    failure(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("no route {path}"),
    )
}

async fn apply_config_map(
    state: &Arc<State>,
    req: Request<Incoming>,
    params: BTreeMap<String, String>,
    ns: String,
    name: String,
) -> Response<Body> {
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let Ok(bytes) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return failure(StatusCode::BAD_REQUEST, "BadRequest", "unreadable body");
    };
    // An apply patch is YAML; what kube sends is its JSON subset.
    let Ok(body) = serde_json::from_slice::<Value>(&bytes) else {
        return failure(StatusCode::BAD_REQUEST, "BadRequest", "body is not JSON");
    };
    let Some(field_manager) = params.get("fieldManager").cloned() else {
        return failure(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "fieldManager is required for apply requests",
        );
    };
    if !state
        .lock()
        .objects
        .contains_key(&("namespaces", String::new(), ns.clone()))
    {
        return failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("namespaces \"{ns}\" not found"),
        );
    }
    state.lock().applied.push(Applied {
        namespace: ns.clone(),
        name: name.clone(),
        field_manager,
        force: params.get("force").is_some_and(|f| f == "true"),
        content_type,
        body: body.clone(),
    });
    let mut object = body;
    object["metadata"]["uid"] = json!(format!("cm-{ns}-{name}"));
    state.put("configmaps", object);
    let stored = state
        .object("configmaps", &ns, &name)
        .unwrap_or(Value::Null);
    full(StatusCode::OK, &stored)
}

/// Streams the changes of `resource` after resourceVersion `from`, then waits for more.
fn watch_response(state: Arc<State>, resource: &'static str, from: u64) -> Response<Body> {
    let changed = state.changed.subscribe();
    let events = futures_util::stream::unfold(
        (state, changed, from),
        move |(state, mut changed, mut seen)| async move {
            loop {
                let next = state
                    .lock()
                    .log
                    .iter()
                    .find(|(rv, r, _, _)| *rv > seen && *r == resource)
                    .cloned();
                if let Some((rv, _, kind, object)) = next {
                    seen = rv;
                    let line = format!("{}\n", json!({ "type": kind, "object": object }));
                    let frame = Ok::<_, Infallible>(Frame::data(Bytes::from(line)));
                    return Some((frame, (state, changed, seen)));
                }
                // Nothing newer for this resource: wait for the next change anywhere.
                if changed.changed().await.is_err() {
                    return None;
                }
            }
        },
    );
    let mut response = Response::new(StreamBody::new(events).boxed_unsync());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
