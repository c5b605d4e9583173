//! What the chaos app has seen, per counting key, and the queries and waits the
//! tests use on it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::ChaosServer;

/// One request that reached the app.
#[derive(Clone, Debug)]
pub struct Call {
    /// 1-based number of this call within its key, in the order bodies finished.
    pub seq: u64,
    /// When the request head arrived (before the body was read).
    pub arrived: Instant,
    pub method: http::Method,
    pub version: http::Version,
    pub attempt: Option<String>,
    /// `x-weir-timeout-ms`.
    pub timeout_ms: Option<String>,
    pub grpc_timeout: Option<String>,
    pub body_len: u64,
    /// FNV-1a 64 of the body: equal bodies on a retried POST give equal hashes.
    pub body_hash: u64,
    pub outcome: Outcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still being delayed, or hanging.
    Running,
    Status(u16),
    /// Connection or stream reset instead of a response.
    Reset,
    /// `refuse`: the app went down while answering this call.
    Refused,
    /// The client (or the connection) went away before the app answered.
    Cancelled,
    /// The request body failed to arrive whole.
    BodyError,
}

#[derive(Debug, Default)]
struct KeyState {
    calls: Vec<Call>,
    in_flight: i64,
}

/// Shared by the handlers (which write) and the server guard (which reads).
#[derive(Debug)]
pub(super) struct Ledger {
    keys: Mutex<HashMap<String, KeyState>>,
    /// Bumped after every change, so waiters re-check instead of polling.
    changed: watch::Sender<u64>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self {
            keys: Mutex::default(),
            changed: watch::Sender::new(0),
        }
    }
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, KeyState>> {
        // A panicking test thread must not hide what the app saw from the others.
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update<R>(&self, f: impl FnOnce(&mut HashMap<String, KeyState>) -> R) -> R {
        let result = f(&mut self.lock());
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
        result
    }

    fn read_key<R>(&self, key: &str, f: impl FnOnce(&KeyState) -> R) -> R {
        match self.lock().get(key) {
            Some(state) => f(state),
            None => f(&KeyState::default()),
        }
    }

    /// Marks a request as in flight until the returned guard drops.
    pub(super) fn enter(self: &Arc<Self>, key: &str) -> Active {
        self.update(|keys| keys.entry(key.to_string()).or_default().in_flight += 1);
        Active {
            ledger: self.clone(),
            key: key.to_string(),
            seq: None,
            finished: false,
        }
    }
}

/// A request inside the app. Dropping it unfinished (the client gave up, or the
/// connection died) records `Cancelled`, which is how timeouts become visible.
pub(super) struct Active {
    ledger: Arc<Ledger>,
    key: String,
    seq: Option<u64>,
    finished: bool,
}

impl Active {
    /// Appends the call and returns its 1-based number within the key.
    pub(super) fn record(&mut self, mut call: Call) -> u64 {
        let seq = self.ledger.update(|keys| {
            let state = keys.entry(self.key.clone()).or_default();
            call.seq = state.calls.len() as u64 + 1;
            let seq = call.seq;
            state.calls.push(call);
            seq
        });
        self.seq = Some(seq);
        seq
    }

    pub(super) fn finish(&mut self, outcome: Outcome) {
        self.finished = true;
        self.set_outcome(outcome);
    }

    fn set_outcome(&self, outcome: Outcome) {
        let Some(seq) = self.seq else { return };
        self.ledger.update(|keys| {
            let call = keys
                .get_mut(&self.key)
                .and_then(|s| s.calls.get_mut(seq as usize - 1));
            if let Some(call) = call {
                call.outcome = outcome;
            }
        });
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if !self.finished {
            self.set_outcome(Outcome::Cancelled);
        }
        self.ledger.update(|keys| {
            if let Some(state) = keys.get_mut(&self.key) {
                state.in_flight -= 1;
            }
        });
    }
}

/// Queries. Every `key` is a counting key: the request path unless the spec said
/// `key=K`. Unknown keys read as empty.
impl ChaosServer {
    fn calls_where(&self, key: &str, keep: impl Fn(&Call) -> bool) -> u64 {
        self.shared
            .ledger
            .read_key(key, |s| s.calls.iter().filter(|c| keep(c)).count() as u64)
    }

    fn each_call<T>(&self, key: &str, field: impl Fn(&Call) -> Option<T>) -> Vec<T> {
        self.shared
            .ledger
            .read_key(key, |s| s.calls.iter().filter_map(field).collect())
    }

    fn sum_keys<T: std::iter::Sum<T>>(&self, per_key: impl Fn(&KeyState) -> T) -> T {
        self.shared.ledger.lock().values().map(per_key).sum()
    }

    /// Every key seen so far, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.shared.ledger.lock().keys().cloned().collect();
        keys.sort();
        keys
    }

    /// The full record of every call of `key`, in `seq` order.
    pub fn log(&self, key: &str) -> Vec<Call> {
        self.shared.ledger.read_key(key, |s| s.calls.clone())
    }

    pub fn calls(&self, key: &str) -> u64 {
        self.calls_where(key, |_| true)
    }

    pub fn total_calls(&self) -> u64 {
        self.sum_keys(|s| s.calls.len() as u64)
    }

    /// Calls of `key` answered with `status`.
    pub fn status_count(&self, key: &str, status: u16) -> u64 {
        self.calls_where(key, |c| c.outcome == Outcome::Status(status))
    }

    pub fn total_status(&self, status: u16) -> u64 {
        let want = Outcome::Status(status);
        self.sum_keys(|s| s.calls.iter().filter(|c| c.outcome == want).count() as u64)
    }

    /// Status → number of calls of `key` answered with it.
    pub fn statuses(&self, key: &str) -> BTreeMap<u16, u64> {
        let mut by_status = BTreeMap::new();
        for status in self.each_call(key, |c| match c.outcome {
            Outcome::Status(s) => Some(s),
            _ => None,
        }) {
            *by_status.entry(status).or_insert(0) += 1;
        }
        by_status
    }

    /// Calls of `key` answered with a reset (not counting `refuse`).
    pub fn resets(&self, key: &str) -> u64 {
        self.calls_where(key, |c| c.outcome == Outcome::Reset)
    }

    pub fn total_resets(&self) -> u64 {
        self.sum_keys(|s| {
            let resets = s.calls.iter().filter(|c| c.outcome == Outcome::Reset);
            resets.count() as u64
        })
    }

    /// Calls of `key` whose client went away before the app answered.
    pub fn cancelled(&self, key: &str) -> u64 {
        self.calls_where(key, |c| c.outcome == Outcome::Cancelled)
    }

    /// Requests of `key` inside the app right now (from head arrival to answer).
    pub fn in_flight(&self, key: &str) -> i64 {
        self.shared.ledger.read_key(key, |s| s.in_flight)
    }

    pub fn total_in_flight(&self) -> i64 {
        self.sum_keys(|s| s.in_flight)
    }

    /// Every `x-weir-attempt` value seen for `key`, in call order; calls without
    /// the header are skipped (see [`Call::attempt`] in [`Self::log`]).
    pub fn attempt_headers(&self, key: &str) -> Vec<String> {
        self.each_call(key, |c| c.attempt.clone())
    }

    /// Every `x-weir-timeout-ms` value seen for `key`, in call order.
    pub fn deadline_headers(&self, key: &str) -> Vec<String> {
        self.each_call(key, |c| c.timeout_ms.clone())
    }

    /// Every `grpc-timeout` value seen for `key`, in call order.
    pub fn grpc_timeouts(&self, key: &str) -> Vec<String> {
        self.each_call(key, |c| c.grpc_timeout.clone())
    }

    /// Head arrival time of every call of `key`: differences are backoff gaps.
    pub fn arrivals(&self, key: &str) -> Vec<Instant> {
        self.each_call(key, |c| Some(c.arrived))
    }

    /// FNV-1a 64 of every request body of `key`.
    pub fn body_hashes(&self, key: &str) -> Vec<u64> {
        self.each_call(key, |c| Some(c.body_hash))
    }

    /// Request body bytes received for `key`, all calls together.
    pub fn body_bytes(&self, key: &str) -> u64 {
        self.each_call(key, |c| Some(c.body_len)).into_iter().sum()
    }

    /// Waits until `cond` holds, re-checking on every change the app records (no
    /// polling); panics naming `what` after `timeout`.
    pub async fn wait_until(&self, what: &str, timeout: Duration, cond: impl Fn(&Self) -> bool) {
        let mut changes = self.shared.ledger.changed.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            // Mark seen before checking, so a change during the check wakes us.
            changes.borrow_and_update();
            if cond(self) {
                return;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives in `self`; it cannot be gone while we borrow it.
                Ok(Err(_)) => panic!("chaos app {}: ledger closed", self.name()),
                Err(_) => panic!(
                    "chaos app {}: timed out after {timeout:?} waiting until {what}; keys: {:?}",
                    self.name(),
                    self.summary()
                ),
            }
        }
    }

    pub async fn wait_for_calls(&self, key: &str, n: u64, timeout: Duration) {
        let what = format!("{n} calls of {key:?}");
        self.wait_until(&what, timeout, |s| s.calls(key) >= n).await;
    }

    pub async fn wait_for_total_calls(&self, n: u64, timeout: Duration) {
        let what = format!("{n} calls in total");
        self.wait_until(&what, timeout, |s| s.total_calls() >= n)
            .await;
    }

    /// Waits until exactly `n` requests of `key` are inside the app: `n > 0` to
    /// know a bulkhead is full, `0` to know cancelled calls have been dropped.
    pub async fn wait_for_in_flight(&self, key: &str, n: i64, timeout: Duration) {
        let what = format!("{n} requests of {key:?} in flight");
        self.wait_until(&what, timeout, |s| s.in_flight(key) == n)
            .await;
    }

    /// key → (calls, in flight), for failure messages.
    fn summary(&self) -> BTreeMap<String, (usize, i64)> {
        let keys = self.shared.ledger.lock();
        keys.iter()
            .map(|(k, s)| (k.clone(), (s.calls.len(), s.in_flight)))
            .collect()
    }
}
