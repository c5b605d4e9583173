//! Which failures are retried, how long to wait, and the request body kept for replay.
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use weir_policy::RetryOn;
use weir_resilience::{Backoff, RetryBudget};

use crate::body::ProxyBody;
use crate::errors::ProxyError;

/// Request bodies up to this size are buffered so a retry can send them again; larger ones
/// are sent once and never retried.
pub const MAX_REPLAY_BODY: usize = 64 * 1024;

/// Retry conditions as flags, so judging an outcome is a few compares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetryConditions {
    connect_failure: bool,
    refused_stream: bool,
    reset: bool,
    unavailable: bool,
    status_5xx: bool,
    gateway_error: bool,
    statuses: Vec<u16>,
}

impl RetryConditions {
    pub fn new(on: &[RetryOn]) -> Self {
        let mut c = RetryConditions::default();
        for o in on {
            match o {
                RetryOn::ConnectFailure => c.connect_failure = true,
                RetryOn::RefusedStream => c.refused_stream = true,
                RetryOn::Reset => c.reset = true,
                RetryOn::Unavailable => c.unavailable = true,
                RetryOn::Status5xx => c.status_5xx = true,
                RetryOn::GatewayError => c.gateway_error = true,
                RetryOn::Status(s) => c.statuses.push(*s),
            }
        }
        c
    }

    /// Whether this outcome of a try is one the policy retries.
    pub fn matches(&self, outcome: &Outcome) -> bool {
        match outcome {
            Outcome::Status(s) => {
                let code = s.as_u16();
                (self.status_5xx && s.is_server_error())
                    || (self.gateway_error && matches!(code, 502..=504))
                    || (self.unavailable && code == 503)
                    || self.statuses.contains(&code)
            }
            Outcome::Error(ProxyError::ConnectFailure) => self.connect_failure,
            Outcome::Error(ProxyError::RefusedStream) => self.refused_stream || self.reset,
            Outcome::Error(ProxyError::Reset) => self.reset,
            // A try that ran out of its per-try time behaves like a gateway timeout.
            Outcome::Error(ProxyError::Timeout) => self.status_5xx || self.gateway_error,
            Outcome::Error(_) => false,
        }
    }
}

/// How one try ended, as the retry layer judges it.
#[derive(Debug)]
pub enum Outcome {
    Status(StatusCode),
    Error(ProxyError),
}

#[derive(Debug)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub on: RetryConditions,
    pub backoff: Backoff,
    pub budget: Option<std::sync::Arc<RetryBudget>>,
    pub non_idempotent: bool,
}

impl RetryPolicy {
    /// GET, HEAD, OPTIONS, PUT, DELETE (and TRACE) are safe to send again; others only with
    /// `nonIdempotent: true`.
    pub fn allows(&self, method: &Method) -> bool {
        self.non_idempotent
            || matches!(
                *method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::PUT
                    | Method::DELETE
                    | Method::TRACE
            )
    }
}

/// The backoff before retry `n` (1-based), full jitter.
pub fn backoff(policy: &RetryPolicy, retry: u32, rand: f64) -> Duration {
    policy.backoff.delay(retry.saturating_sub(1), rand)
}

/// A request body read for replay.
pub enum Replay {
    /// The whole body (and trailers): every try gets a copy.
    Whole(Bytes, Option<http::HeaderMap>),
    /// Too large: sent once, as read so far plus the rest.
    Once(ProxyBody),
}

impl Replay {
    /// Reads up to [`MAX_REPLAY_BODY`]; stops at the first frame past it. Errors reading the
    /// caller's body end the call (the caller went away).
    pub async fn read(mut body: Incoming) -> Result<Replay, ProxyError> {
        if http_body::Body::is_end_stream(&body) {
            return Ok(Replay::Whole(Bytes::new(), None));
        }
        if http_body::Body::size_hint(&body).lower() > MAX_REPLAY_BODY as u64 {
            return Ok(Replay::Once(ProxyBody::Incoming(body)));
        }
        let mut buf = BytesMut::new();
        loop {
            match body.frame().await {
                None => return Ok(Replay::Whole(buf.freeze(), None)),
                Some(Err(_)) => return Err(ProxyError::BadRequest),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        buf.extend_from_slice(&data);
                        if buf.len() > MAX_REPLAY_BODY {
                            return Ok(Replay::Once(ProxyBody::Prefixed(Some(buf.freeze()), body)));
                        }
                    }
                    Err(frame) => {
                        let trailers = frame.into_trailers().ok();
                        return Ok(Replay::Whole(buf.freeze(), trailers));
                    }
                },
            }
        }
    }

    pub fn replayable(&self) -> bool {
        matches!(self, Replay::Whole(..))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions() {
        let c = RetryConditions::new(&[RetryOn::ConnectFailure, RetryOn::Status(503)]);
        assert!(c.matches(&Outcome::Error(ProxyError::ConnectFailure)));
        assert!(c.matches(&Outcome::Status(StatusCode::SERVICE_UNAVAILABLE)));
        assert!(!c.matches(&Outcome::Status(StatusCode::INTERNAL_SERVER_ERROR)));
        assert!(!c.matches(&Outcome::Error(ProxyError::Reset)));
        let c = RetryConditions::new(&[RetryOn::Status5xx, RetryOn::Reset]);
        assert!(c.matches(&Outcome::Status(StatusCode::INTERNAL_SERVER_ERROR)));
        assert!(c.matches(&Outcome::Error(ProxyError::Reset)));
        assert!(c.matches(&Outcome::Error(ProxyError::RefusedStream)));
        assert!(c.matches(&Outcome::Error(ProxyError::Timeout)));
        assert!(!c.matches(&Outcome::Status(StatusCode::NOT_FOUND)));
        let g = RetryConditions::new(&[RetryOn::GatewayError]);
        assert!(g.matches(&Outcome::Status(StatusCode::GATEWAY_TIMEOUT)));
        assert!(!g.matches(&Outcome::Status(StatusCode::INTERNAL_SERVER_ERROR)));
    }

    #[test]
    fn idempotent_methods_only() {
        let p = RetryPolicy {
            attempts: 2,
            on: RetryConditions::default(),
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(2)),
            budget: None,
            non_idempotent: false,
        };
        assert!(p.allows(&Method::GET) && p.allows(&Method::PUT) && p.allows(&Method::DELETE));
        assert!(!p.allows(&Method::POST) && !p.allows(&Method::PATCH));
        let p = RetryPolicy {
            non_idempotent: true,
            ..p
        };
        assert!(p.allows(&Method::POST));
    }
}
