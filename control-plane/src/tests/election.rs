//! Leader election on a real etcd: of two replicas exactly one leads a duty, and when the
//! leader stops the other takes over without waiting for the lease to lapse.

use std::time::{Duration, Instant};

use crate::store::Store;

fn leaders(of: &[&tokio::sync::watch::Receiver<bool>]) -> Vec<usize> {
    (0..of.len()).filter(|&i| *of[i].borrow()).collect()
}

fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn one_replica_leads_and_a_stopping_leader_hands_over() {
    let config = super::etcd::config();
    let mut stores = [
        Some(Store::open_etcd(config.clone()).expect("replica 0")),
        Some(Store::open_etcd(config.clone()).expect("replica 1")),
    ];
    let watch: Vec<_> = stores
        .iter()
        .map(|s| s.as_ref().expect("store").leadership("test-duty"))
        .collect();
    let other = stores[0]
        .as_ref()
        .expect("store")
        .leadership("another-duty");
    wait_for("a leader", Duration::from_secs(5), || {
        leaders(&[&watch[0], &watch[1]]).len() == 1
    });
    let leader = leaders(&[&watch[0], &watch[1]])[0];
    // Several polls later, still exactly the same one: the follower does not take it over.
    std::thread::sleep(crate::store::etcd::ELECTION_POLL * 3);
    assert_eq!(leaders(&[&watch[0], &watch[1]]), vec![leader]);
    // Duties are elected apart: one nobody else wants is replica 0's whoever leads the other.
    wait_for("the lead of another duty", Duration::from_secs(3), || {
        *other.borrow()
    });

    let started = Instant::now();
    stores[leader] = None;
    let follower = 1 - leader;
    wait_for("the follower to take over", Duration::from_secs(4), || {
        *watch[follower].borrow()
    });
    eprintln!("the lead was handed over in {:?}", started.elapsed());
    // Well under the lease TTL: the leader resigned rather than lapsed.
    assert!(
        started.elapsed() < config.lease_ttl,
        "took {:?}",
        started.elapsed()
    );
}
