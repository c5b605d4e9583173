//! The chaos app: an HTTP/1.1 + h2c upstream that misbehaves on command, for the
//! resilience tests (timeouts, retries, retry budgets, circuit breaking, load
//! balancing, bulkheads).
//!
//! Each request's behaviour comes from its `x-chaos: <spec>` header, else from the
//! server's default ([`ChaosServer::set_default`], empty = plain 200). The request
//! body is always read whole first, so retried POSTs can be compared by hash.
//!
//! ```text
//! spec     = item *("," item)            ; blanks around items are ignored
//! item     = action / scope
//! action   = "ok"                        ; answer 200 (overrides the default spec)
//!          / "status=" 200..999          ; answer with this status
//!          / "delay=" duration           ; wait (≤ 60s), then the rest, or 200
//!          / "reset"                     ; h1: RST the TCP connection, no response;
//!                                        ; h2: RST_STREAM(INTERNAL_ERROR) this stream only
//!          / "reset=conn"                ; RST the TCP connection (h1 and h2)
//!          / "refuse" ["=" duration]     ; go down like a crashed process: close the
//!                                        ; listener (connects get ECONNREFUSED) and RST every
//!                                        ; open connection, this one included; listen again on
//!                                        ; the same port after `duration`, or (without one) on
//!                                        ; `refuse_connections(false)`
//!          / "hang"                      ; never answer; ends when the client gives up
//! scope    = "first=" N                  ; only calls 1..=N of the key misbehave
//!          / "percent=" 0..100           ; P% of the key's calls misbehave, spread evenly:
//!                                        ; call n does iff ⌊n·P/100⌋ > ⌊(n−1)·P/100⌋
//!          / "key=" K                    ; count under K instead of the request path
//! duration = 1*DIGIT ("ms" / "s" / "m")
//! ```
//! At most one of `ok`/`status`/`reset`/`refuse`/`hang`; `delay` combines with
//! any. Scopes are ANDed; a call outside them answers 200 at once. Calls are
//! numbered per key across all specs, e.g. `x-chaos: status=503,first=2,key=abc`
//! fails the first two calls counted under `abc`, then answers 200. A spec that
//! does not parse is answered 400 with the reason in `x-chaos-error`.
//!
//! Every answer carries `x-chaos-server: <name>`, `x-chaos-key` and `x-chaos-call`
//! (the 1-based call number), and a JSON body with the same facts.

mod ledger;
mod listen;
mod spec;

pub use ledger::{Call, Outcome};
pub use spec::{Fault, MAX_DELAY, Spec, SpecError, parse_duration};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::json;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::ledger::Ledger;
use self::listen::{Command, Op};
use super::{HttpStats, RespBody};
use crate::util::Fnv64;

pub const CHAOS_HEADER: &str = "x-chaos";
pub const SERVER_HEADER: &str = "x-chaos-server";

/// A running chaos app on 127.0.0.1; everything it runs stops on drop.
pub struct ChaosServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    name: String,
    /// Read per request, written rarely: an uncontended RwLock is cheap enough.
    default: RwLock<Arc<Spec>>,
    ledger: Arc<Ledger>,
    http: Arc<HttpStats>,
    listen: mpsc::UnboundedSender<Command>,
    refusing: AtomicBool,
}

impl Drop for ChaosServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a chaos app on 127.0.0.1:0. `name` is in every answer, so a test can
/// tell which of several apps answered.
pub async fn start(name: &str) -> ChaosServer {
    let listener = listen::listen_loopback().expect("binding the chaos app on 127.0.0.1:0");
    let addr = listener.local_addr().expect("listener address");
    let (listen, commands) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        name: name.to_string(),
        default: RwLock::new(Arc::new(Spec::default())),
        ledger: Arc::default(),
        http: Arc::default(),
        listen,
        refusing: AtomicBool::new(false),
    });
    let task = listen::spawn(listener, commands, shared.clone()).expect("listener address");
    ChaosServer { addr, shared, task }
}

impl ChaosServer {
    /// Stays the same across `refuse_connections`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Connections accepted, HTTP versions and hosts seen.
    pub fn stats(&self) -> &HttpStats {
        &self.shared.http
    }

    /// The spec for requests without `x-chaos`; takes effect for the next request.
    pub fn set_default(&self, spec: &str) -> Result<(), SpecError> {
        let spec = Arc::new(spec.parse::<Spec>()?);
        match self.shared.default.write() {
            Ok(mut slot) => *slot = spec,
            Err(poisoned) => *poisoned.into_inner() = spec,
        }
        Ok(())
    }

    /// `true`: go down (close the listener so connects get ECONNREFUSED, RST every
    /// open connection). `false`: listen again on the same port. Returns once done.
    pub async fn refuse_connections(&self, refuse: bool) -> std::io::Result<()> {
        let op = if refuse { Op::Refuse(None) } else { Op::Accept };
        self.shared.command(op).await
    }

    /// RSTs every open connection but keeps listening: pooled connections die.
    pub async fn reset_connections(&self) -> std::io::Result<()> {
        self.shared.command(Op::ResetAll).await
    }

    /// Whether the app is down (`refuse`), i.e. not listening.
    pub fn refusing(&self) -> bool {
        self.shared.refusing.load(Ordering::SeqCst)
    }
}

impl Shared {
    async fn command(&self, op: Op) -> std::io::Result<()> {
        let (done, result) = oneshot::channel();
        let gone = || std::io::Error::other("chaos app stopped");
        self.listen.send(Command { op, done }).map_err(|_| gone())?;
        result.await.map_err(|_| gone())?
    }

    fn default_spec(&self) -> Arc<Spec> {
        match self.default.read() {
            Ok(spec) => spec.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Makes hyper reset just this HTTP/2 stream (RST_STREAM with INTERNAL_ERROR).
#[derive(Debug)]
struct StreamReset;

impl std::fmt::Display for StreamReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("chaos: reset this stream")
    }
}

impl std::error::Error for StreamReset {}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    let value = headers.get(name)?;
    Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    reset_conn: Arc<Notify>,
) -> Result<Response<RespBody>, StreamReset> {
    let arrived = Instant::now();
    let spec = match req.headers().get(CHAOS_HEADER) {
        None => Ok(shared.default_spec()),
        Some(v) => v
            .to_str()
            .map_err(|_| SpecError("not visible ASCII".into()))
            .and_then(str::parse)
            .map(Arc::new),
    };
    let key = match spec.as_ref().ok().and_then(|s| s.key.as_ref()) {
        Some(k) => k.clone(),
        None => req.uri().path().to_string(),
    };
    let mut active = shared.ledger.enter(&key);
    let (parts, body) = req.into_parts();
    let read = consume(body).await;
    let (body_len, body_hash) = read.as_ref().map_or((0, 0), |(len, sum)| (*len, *sum));
    let seq = active.record(Call {
        seq: 0,
        arrived,
        method: parts.method,
        version: parts.version,
        attempt: header_text(&parts.headers, "x-weir-attempt"),
        timeout_ms: header_text(&parts.headers, "x-weir-timeout-ms"),
        grpc_timeout: header_text(&parts.headers, "grpc-timeout"),
        body_len,
        body_hash,
        outcome: Outcome::Running,
    });
    let answer = Answer {
        shared: &shared,
        key: &key,
        seq,
    };
    if let Err(e) = read {
        active.finish(Outcome::BodyError);
        return Ok(answer.reply(StatusCode::BAD_REQUEST, Some(&format!("body: {e}"))));
    }
    let spec = match spec {
        Ok(spec) => spec,
        Err(e) => {
            active.finish(Outcome::Status(400));
            return Ok(answer.reply(StatusCode::BAD_REQUEST, Some(&e.to_string())));
        }
    };
    let status = if spec.misbehaves(seq) {
        if let Some(delay) = spec.delay {
            tokio::time::sleep(delay).await;
        }
        match &spec.fault {
            None => StatusCode::OK,
            Some(Fault::Status(status)) => *status,
            Some(Fault::Reset) if parts.version == Version::HTTP_2 => {
                active.finish(Outcome::Reset);
                return Err(StreamReset);
            }
            Some(Fault::Reset | Fault::ResetConnection) => {
                active.finish(Outcome::Reset);
                reset_conn.notify_one();
                return never().await;
            }
            Some(Fault::Refuse(down_for)) => {
                active.finish(Outcome::Refused);
                let until = down_for.map(|d| Instant::now() + d);
                // Going down kills this connection too, and with it this future.
                if let Err(e) = shared.command(Op::Refuse(until)).await {
                    eprintln!("chaos app {}: refuse: {e}", shared.name);
                }
                reset_conn.notify_one();
                return never().await;
            }
            Some(Fault::Hang) => return never().await,
        }
    } else {
        StatusCode::OK
    };
    active.finish(Outcome::Status(status.as_u16()));
    Ok(answer.reply(status, None))
}

/// Pending until dropped: by the connection closing or the client giving up.
async fn never<T>() -> T {
    let never: Infallible = std::future::pending().await;
    match never {}
}

/// Reads the body to the end: (length, FNV-1a 64).
async fn consume(mut body: Incoming) -> Result<(u64, u64), hyper::Error> {
    let mut len = 0u64;
    let mut sum = Fnv64::default();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            len += data.len() as u64;
            sum.update(&data);
        }
    }
    Ok((len, sum.finish()))
}

struct Answer<'a> {
    shared: &'a Shared,
    key: &'a str,
    seq: u64,
}

impl Answer<'_> {
    fn reply(&self, status: StatusCode, error: Option<&str>) -> Response<RespBody> {
        let body = if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Bytes::new()
        } else {
            let mut value = json!({
                "server": self.shared.name,
                "key": self.key,
                "call": self.seq,
                "status": status.as_u16(),
            });
            if let Some(error) = error {
                value["error"] = json!(error);
            }
            Bytes::from(value.to_string())
        };
        let mut resp = Response::new(Full::new(body).map_err(|e| match e {}).boxed_unsync());
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        let mut set = |name: &'static str, value: &str| {
            // Names and keys come from the test; one that is no header value is left out.
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        };
        set(SERVER_HEADER, &self.shared.name);
        set("x-chaos-key", self.key);
        set("x-chaos-call", &self.seq.to_string());
        set("content-type", "application/json");
        if let Some(error) = error {
            set("x-chaos-error", error);
        }
        resp
    }
}
