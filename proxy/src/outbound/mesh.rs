//! Forwarding a request to a mesh service: pick an endpoint, carry the request to its proxy.
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;
use weir_policy::MtlsMode;
use weir_resilience::PeakEwma;
use weir_resilience::deadline::{GRPC_TIMEOUT, WEIR_TIMEOUT_MS};

use super::Outbound;
use crate::body::ProxyBody;
use crate::config::{Service, Snapshot};
use crate::endpoint::Backend;
use crate::errors::ProxyError;
use crate::headers;
use crate::resilience::amplification::{self, RETRIES_EXHAUSTED};
use crate::resilience::balance;
use crate::resilience::deadline::Deadline;
use crate::resilience::retry::{self, Outcome, Replay};
use crate::tls::ALPN_HTTP1;
use crate::trace::CallTrace;

/// The try number (1 for the first) on every try of a call with a retry policy.
const X_WEIR_ATTEMPT: HeaderName = HeaderName::from_static("x-weir-attempt");

impl Outbound {
    /// With credentials every peer connection is mTLS; without, plaintext is allowed only in a
    /// permissive mesh. Strict without an identity fails closed.
    pub(super) fn may_reach_mesh(&self, snapshot: &Snapshot) -> bool {
        may_reach_mesh(self.creds.is_present(), snapshot)
    }

    pub(super) async fn to_mesh(
        &self,
        snapshot: &Snapshot,
        svc: &Arc<Service>,
        req: Request<Incoming>,
    ) -> Response<ProxyBody> {
        let m = &svc.metrics;
        m.request();
        let start = Instant::now();
        // Before anything can fail, so a 503 circuit-open or a timeout still gets its span.
        let call = self.tracing.client_call(&req, &svc.name, snapshot.sampling);
        let mut result = self.mesh_call(snapshot, svc, req, &call).await;
        self.tracing.finish_call(call, &mut result);
        let rsp = result.unwrap_or_else(ProxyError::response);
        m.response(Some(rsp.status().as_u16()), start.elapsed());
        rsp
    }

    /// The layers of `resilience` (their order is documented there), then the call.
    async fn mesh_call(
        &self,
        snapshot: &Snapshot,
        svc: &Service,
        mut req: Request<Incoming>,
        call: &CallTrace,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if !may_reach_mesh(self.creds.is_present(), snapshot) {
            return Err(ProxyError::NoIdentity);
        }
        let backend = svc.backend_for(&req);
        if headers::is_upgrade(&req) {
            let ep = balance::pick(&backend.endpoints, Instant::now(), self.rng.next(), None)?;
            let span = self.tracing.attempt(call, 1, req.headers_mut());
            let mut result = match self
                .connect_peer(ep.addr, backend.identity.as_deref(), ALPN_HTTP1)
                .await
            {
                Ok(io) => crate::upgrade::forward_on(io, req, &self.drain).await,
                Err(e) => Err(e),
            };
            self.tracing
                .finish_attempt(span, &mut result, Some(ep.addr));
            return result;
        }
        let policy = &*svc.policy;
        let inherited_deadline =
            req.headers().contains_key(WEIR_TIMEOUT_MS) || req.headers().contains_key(GRPC_TIMEOUT);
        if policy.is_plain() && !inherited_deadline {
            // No policy: one try, no copies, nothing to wait for.
            let req = self.prepare(req)?;
            return self
                .try_once(backend, req.map(ProxyBody::Incoming), None, None, call)
                .await;
        }
        let deadline = Deadline::new(Instant::now(), policy.request_timeout, req.headers());
        let call = async {
            if let Some(fault) = &policy.fault {
                let injected =
                    fault.decide(self.rng.fraction() * 100.0, self.rng.fraction() * 100.0);
                if let Some(delay) = injected.delay {
                    tokio::time::sleep(delay).await;
                }
                if let Some(status) = injected.abort {
                    return Ok(ProxyError::fault_response(status));
                }
            }
            let _permit = match &policy.bulkhead {
                Some(b) => Some(b.acquire().await.map_err(|_| ProxyError::BulkheadFull)?),
                None => None,
            };
            self.tries(svc, backend, req, &deadline, call).await
        };
        match deadline.at {
            Some(at) => tokio::time::timeout_at(at, call)
                .await
                .unwrap_or(Err(ProxyError::Timeout)),
            None => call.await,
        }
    }

    /// The retry layer: tries until an answer is final (see `resilience::retry`).
    async fn tries(
        &self,
        svc: &Service,
        backend: &Backend,
        req: Request<Incoming>,
        deadline: &Deadline,
        call: &CallTrace,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let policy = &*svc.policy;
        let mut req = self.prepare(req)?;
        let Some(retry) = policy.retry.as_ref().filter(|r| r.allows(req.method())) else {
            deadline.propagate(req.headers_mut(), Instant::now());
            let limit = deadline.try_limit(policy.try_timeout(), Instant::now());
            return self
                .try_once(
                    backend,
                    req.map(ProxyBody::Incoming),
                    limit,
                    policy.connect_timeout,
                    call,
                )
                .await;
        };
        if let Some(budget) = &retry.budget {
            budget.deposit();
        }
        let (parts, body) = req.into_parts();
        let mut body = Some(Replay::read(body).await?);
        let replayable = body.as_ref().is_some_and(Replay::replayable);
        let mut attempt: u32 = 1;
        let mut last_endpoint = None;
        loop {
            let now = Instant::now();
            let try_body = match body.as_ref() {
                Some(Replay::Whole(data, trailers)) => {
                    ProxyBody::Replay((!data.is_empty()).then(|| data.clone()), trailers.clone())
                }
                _ => match body.take() {
                    Some(Replay::Once(b)) => b,
                    _ => ProxyBody::empty(),
                },
            };
            let mut attempt_req = copy_head(&parts, try_body);
            let h = attempt_req.headers_mut();
            h.insert(X_WEIR_ATTEMPT, HeaderValue::from(attempt));
            deadline.propagate(h, now);
            let limit = deadline.try_limit(policy.try_timeout(), now);
            let (result, endpoint) = self
                .traced_try(
                    call,
                    attempt,
                    backend,
                    attempt_req,
                    limit,
                    policy.connect_timeout,
                    last_endpoint,
                )
                .await;
            last_endpoint = endpoint;
            let outcome = match &result {
                Ok(rsp) => peer_outcome(rsp),
                Err(e) => Outcome::Error(*e),
            };
            let failed = match &outcome {
                Outcome::Status(s) => s.is_server_error(),
                Outcome::Error(_) => true,
            };
            // The callee already retried its own dependencies to exhaustion for this request:
            // another try would multiply the load on them.
            let downstream_gave_up = result
                .as_ref()
                .is_ok_and(|r| r.headers().contains_key(RETRIES_EXHAUSTED));
            let again = replayable
                && attempt <= retry.attempts
                && !downstream_gave_up
                && retry.on.matches(&outcome);
            let wait = retry::backoff(retry, attempt, self.rng.fraction());
            let room = deadline
                .remaining(Instant::now())
                .is_none_or(|left| left > wait);
            let budget_ok = again && room && retry.budget.as_ref().is_none_or(|b| b.withdraw());
            if !budget_ok {
                if failed && let Some(id) = crate::trace::trace_id(&parts.headers) {
                    amplification::table().mark(&id, Instant::now());
                }
                return result;
            }
            drop(result);
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// The only try of a call.
    async fn try_once(
        &self,
        backend: &Backend,
        req: Request<ProxyBody>,
        limit: Option<std::time::Duration>,
        connect_timeout: Option<std::time::Duration>,
        call: &CallTrace,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        self.traced_try(call, 1, backend, req, limit, connect_timeout, None)
            .await
            .0
    }

    /// Try `n` of a call, with its CLIENT span (the callee's SERVER span hangs under it).
    #[allow(clippy::too_many_arguments, reason = "one call site per kind of try")]
    async fn traced_try(
        &self,
        call: &CallTrace,
        n: u32,
        backend: &Backend,
        mut req: Request<ProxyBody>,
        limit: Option<std::time::Duration>,
        connect_timeout: Option<std::time::Duration>,
        avoid: Option<std::net::SocketAddr>,
    ) -> (
        Result<Response<ProxyBody>, ProxyError>,
        Option<std::net::SocketAddr>,
    ) {
        let span = self.tracing.attempt(call, n, req.headers_mut());
        let (mut result, endpoint) = self
            .try_at(backend, req, limit, connect_timeout, avoid)
            .await;
        self.tracing.finish_attempt(span, &mut result, endpoint);
        (result, endpoint)
    }

    /// [`Self::try_once`], avoiding `avoid` (the endpoint the previous try failed on) when
    /// another is eligible; returns where the try went.
    async fn try_at(
        &self,
        backend: &Backend,
        req: Request<ProxyBody>,
        limit: Option<std::time::Duration>,
        connect_timeout: Option<std::time::Duration>,
        avoid: Option<std::net::SocketAddr>,
    ) -> (
        Result<Response<ProxyBody>, ProxyError>,
        Option<std::net::SocketAddr>,
    ) {
        let now = Instant::now();
        let ep = match balance::pick(&backend.endpoints, now, self.rng.next(), avoid) {
            Ok(ep) => ep,
            Err(e) => return (Err(e), None),
        };
        let in_flight = PeakEwma::start(&ep.lb, now);
        let send = self.send(ep, backend, req, connect_timeout);
        let result = match limit {
            Some(limit) => tokio::time::timeout(limit, send)
                .await
                .unwrap_or(Err(ProxyError::Timeout)),
            None => send.await,
        };
        let end = Instant::now();
        in_flight.complete(end);
        let success = matches!(&result, Ok(rsp) if !rsp.status().is_server_error());
        let unreachable = match &result {
            Err(_) => true,
            Ok(rsp) => matches!(peer_outcome(rsp), Outcome::Error(_)),
        };
        if unreachable {
            // A refused connection fails in microseconds: measured as is, a dead endpoint
            // would look like the fastest one and draw every request. Error answers from a
            // live app are the circuit breaker's business, not the balancer's.
            ep.lb.observe(balance::FAILURE_PENALTY, end);
        }
        balance::record(ep, success, end);
        (result, Some(ep.addr))
    }
}

/// How a try that got a response ended: the callee's proxy answers for its app, so its
/// `502 connect-failure`/`reset` is the app refusing or dropping the request, which the
/// `connect-failure` and `reset` retry conditions are about.
fn peer_outcome(rsp: &Response<ProxyBody>) -> Outcome {
    if rsp.status() == http::StatusCode::BAD_GATEWAY
        && let Some(reason) = rsp.headers().get(crate::errors::X_WEIR_ERROR)
    {
        match reason.as_bytes() {
            b"connect-failure" => return Outcome::Error(ProxyError::ConnectFailure),
            b"reset" => return Outcome::Error(ProxyError::Reset),
            _ => {}
        }
    }
    Outcome::Status(rsp.status())
}

/// A try's request: the call's method, URI, version and headers, with `body`.
fn copy_head(parts: &http::request::Parts, body: ProxyBody) -> Request<ProxyBody> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req
}

fn may_reach_mesh(has_identity: bool, snapshot: &Snapshot) -> bool {
    has_identity || snapshot.mtls == MtlsMode::Permissive
}
