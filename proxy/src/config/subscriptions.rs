//! The destinations this proxy asked the control plane about. A request to a name or address
//! the snapshot does not know subscribes to it and waits (bounded) until the control plane has
//! answered; the answer is in the snapshot (`settled`), so later requests to a name outside
//! the mesh pass through without asking again, and without a lock.
//!
//! Keys are `name.namespace` for service names and `ip:port` for redirected connections.
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{Notify, watch};

pub struct Subscriptions {
    /// How long a first request to an unknown destination waits; set once when a control
    /// plane serves this proxy (standalone proxies never subscribe).
    resolve_timeout: OnceLock<Duration>,
    state: Mutex<State>,
    /// Bumped after each install that answered keys, so waiters look again.
    answered: watch::Sender<u64>,
    /// Wakes the control-plane session when there is a change to send.
    pub wake: Notify,
}

#[derive(Default)]
struct State {
    keys: BTreeSet<String>,
    add: BTreeSet<String>,
    remove: BTreeSet<String>,
}

impl Default for Subscriptions {
    fn default() -> Self {
        Subscriptions {
            resolve_timeout: OnceLock::new(),
            state: Mutex::default(),
            answered: watch::channel(0).0,
            wake: Notify::new(),
        }
    }
}

/// Waiting for the control plane ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unanswered;

impl Subscriptions {
    /// Turns subscribing on; the first call's timeout stays.
    pub fn enable(&self, resolve_timeout: Duration) {
        let _ = self.resolve_timeout.set(resolve_timeout);
    }

    pub fn enabled(&self) -> bool {
        self.resolve_timeout.get().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every key, for a new stream's hello and the cache.
    pub fn keys(&self) -> Vec<String> {
        let mut state = self.lock();
        // The hello carries them all: nothing is left to send separately.
        state.add.clear();
        state.remove.clear();
        state.keys.iter().cloned().collect()
    }

    /// Every key, leaving pending changes to the session.
    pub fn keys_peek(&self) -> Vec<String> {
        self.lock().keys.iter().cloned().collect()
    }

    /// Keys from a cache, subscribed again on the next stream.
    pub fn restore(&self, keys: impl IntoIterator<Item = String>) {
        self.lock().keys.extend(keys);
    }

    /// What changed since the last call: `(add, remove)`.
    pub fn take_changes(&self) -> (Vec<String>, Vec<String>) {
        let mut state = self.lock();
        let add = std::mem::take(&mut state.add).into_iter().collect();
        let remove = std::mem::take(&mut state.remove).into_iter().collect();
        (add, remove)
    }

    /// Drops keys nobody used for a while.
    pub fn forget(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        let mut state = self.lock();
        for key in keys {
            if state.keys.remove(key) {
                state.add.remove(key);
                state.remove.insert(key.clone());
            }
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Called after an install whose response answered keys.
    pub fn answered(&self) {
        self.answered.send_modify(|n| *n += 1);
    }

    /// Subscribes to `keys` (if not yet) and waits until `settled` says each is answered.
    pub async fn wait_for(
        &self,
        keys: &[String],
        settled: impl Fn(&str) -> bool,
    ) -> Result<(), Unanswered> {
        let mut answered = self.answered.subscribe();
        let new = {
            let mut state = self.lock();
            let mut new = false;
            for key in keys {
                if state.keys.insert(key.clone()) {
                    state.remove.remove(key);
                    state.add.insert(key.clone());
                    new = true;
                }
            }
            new
        };
        if new {
            self.wake.notify_one();
        }
        // Not enabled: nobody would answer, so there is nothing to wait for.
        let limit = self.resolve_timeout.get().copied().unwrap_or_default();
        let all = || keys.iter().all(|k| settled(k));
        tokio::time::timeout(limit, async {
            while !all() {
                if answered.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .map_err(|_| Unanswered)
    }
}

/// The key a `Host`/`:authority` subscribes to, if it can name a mesh service: `name`,
/// `name.ns`, `name.ns.svc` or `name.ns.svc.cluster.local` (short names in this proxy's own
/// namespace), or an `ip:port` literal. Anything else is not the mesh's to answer.
pub fn authority_key(authority: &str, own_namespace: &str) -> Option<String> {
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        return Some(addr.to_string());
    }
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    let (name, ns) = match labels.as_slice() {
        [name] => (*name, own_namespace),
        [name, ns] | [name, ns, "svc"] | [name, ns, "svc", "cluster", "local"] => (*name, *ns),
        _ => return None,
    };
    let valid = |l: &str| weir_policy::dns_label(l).is_ok();
    (valid(name) && valid(ns)).then(|| format!("{name}.{ns}"))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

    use super::*;

    #[test]
    fn authority_keys() {
        let k = |a: &str| authority_key(a, "shop");
        assert_eq!(k("payments").as_deref(), Some("payments.shop"));
        assert_eq!(k("payments:8080").as_deref(), Some("payments.shop"));
        assert_eq!(k("payments.pay").as_deref(), Some("payments.pay"));
        assert_eq!(k("Payments.pay.svc").as_deref(), Some("payments.pay"));
        assert_eq!(
            k("payments.pay.svc.cluster.local.:80").as_deref(),
            Some("payments.pay")
        );
        assert_eq!(k("10.0.0.1:80").as_deref(), Some("10.0.0.1:80"));
        assert_eq!(k("[::1]:80").as_deref(), Some("[::1]:80"));
        assert_eq!(k("api.github.com"), None);
        assert_eq!(k("a_b"), None);
        assert_eq!(k("10.0.0.1"), None, "an IP without a port names no key");
    }

    #[tokio::test]
    async fn waits_until_answered_or_times_out() {
        let subs = std::sync::Arc::new(Subscriptions::default());
        subs.enable(Duration::from_secs(5));
        let settled = std::sync::Arc::new(AtomicBool::new(false));
        let other = Subscriptions::default();
        other.enable(Duration::from_millis(20));
        let (s2, flag) = (subs.clone(), settled.clone());
        let waiter = tokio::spawn(async move {
            s2.wait_for(&["payments.shop".into()], |_| flag.load(Relaxed))
                .await
        });
        // The session sees the new key.
        subs.wake.notified().await;
        assert_eq!(subs.take_changes().0, ["payments.shop"]);
        settled.store(true, Relaxed);
        subs.answered();
        assert_eq!(waiter.await.expect("join"), Ok(()));

        assert_eq!(
            other.wait_for(&["other.shop".into()], |_| false).await,
            Err(Unanswered)
        );
        other.forget(&["other.shop".into()]);
        assert_eq!(other.take_changes(), (vec![], vec!["other.shop".into()]));
        assert_eq!(subs.keys(), ["payments.shop"]);
    }
}
