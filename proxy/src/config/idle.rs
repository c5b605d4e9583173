//! Dropping subscriptions nobody uses. Each sweep reads every subscribed service's request
//! counter and open tunnels (kept per service across snapshots); a key whose counter has not
//! moved for the idle period and that no opaque connection holds, or that the control plane
//! said is not in the mesh that long ago, is dropped.
//! Nothing is added to the request path.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::ConfigStore;

pub async fn sweep_forever(config: Arc<ConfigStore>, idle: Duration) {
    let period = (idle / 4).max(Duration::from_secs(1));
    let mut seen: HashMap<String, (u64, Instant)> = HashMap::new();
    loop {
        tokio::time::sleep(period).await;
        let idle_keys = sweep(&config, &mut seen, idle, Instant::now());
        if !idle_keys.is_empty() {
            tracing::debug!(keys = ?idle_keys, "dropping idle subscriptions");
            config.subscriptions.forget(&idle_keys);
            config.unsettle(&idle_keys);
        }
    }
}

/// The keys idle at `now`; `seen` holds each key's request count and since when.
fn sweep(
    config: &ConfigStore,
    seen: &mut HashMap<String, (u64, Instant)>,
    idle: Duration,
    now: Instant,
) -> Vec<String> {
    let keys = config.subscriptions.keys_peek();
    let snapshot = config.load();
    seen.retain(|k, _| keys.contains(k));
    let mut out = Vec::new();
    for key in keys {
        let service = match key.parse::<SocketAddr>() {
            Ok(addr) => snapshot.service_for_original_dst(addr).map(|(s, _)| s),
            Err(_) => snapshot.service_for_authority(&key),
        };
        // A key that names nothing in the mesh counts nothing: it ages from its first sweep.
        let count = service.map_or(0, |s| s.metrics.requests());
        // An open opaque connection or tunnel keeps its destination however long it lasts.
        let tunnels = service.is_some_and(|s| s.metrics.tunnels() > 0);
        let entry = seen.entry(key.clone()).or_insert((count, now));
        if entry.0 != count || tunnels {
            *entry = (count, now);
        } else if now.duration_since(entry.1) >= idle {
            seen.remove(&key);
            out.push(key);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::fixtures::{DOCS, store};

    #[tokio::test]
    async fn keys_without_requests_for_the_idle_period_go() {
        let s = store();
        s.install_for_test(weir_policy::parse_str("t.yaml", DOCS).expect("valid"));
        s.subscriptions
            .restore(["payments.shop".into(), "nowhere.shop".into()]);
        let idle = Duration::from_secs(60);
        let mut seen = HashMap::new();
        let t0 = Instant::now();
        assert!(sweep(&s, &mut seen, idle, t0).is_empty());
        // payments is called; nowhere is not in the mesh.
        s.load()
            .service_for_authority("payments")
            .expect("payments")
            .metrics
            .request();
        assert!(sweep(&s, &mut seen, idle, t0 + Duration::from_secs(30)).is_empty());
        assert_eq!(
            sweep(&s, &mut seen, idle, t0 + Duration::from_secs(61)),
            ["nowhere.shop"]
        );
        // An opaque connection open the whole time keeps payments, however long it lasts.
        let tunnel = s
            .load()
            .service_for_authority("payments")
            .expect("payments")
            .metrics
            .tunnel();
        // (nowhere.shop stays subscribed here, since only the caller forgets: filter it out.)
        let payments = |seen: &mut HashMap<_, _>, at: u64| {
            sweep(&s, seen, idle, t0 + Duration::from_secs(at))
                .contains(&"payments.shop".to_string())
        };
        assert!(!payments(&mut seen, 91));
        assert!(!payments(&mut seen, 500));
        drop(tunnel);
        assert!(!payments(&mut seen, 540));
        assert!(payments(&mut seen, 561));
    }
}
