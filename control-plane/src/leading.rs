//! Duties one replica runs at a time: started when this replica takes the lead
//! ([`Store::leadership`](crate::store::Store::leadership)), dropped when it loses it, and
//! started afresh when it leads again (each duty catches up from the current state).

use std::future::Future;

use tokio::sync::watch;

/// Runs `duty()` while `leader` says this replica leads; returns when the duty ends by itself.
pub async fn while_leading<F, Fut>(name: &str, mut leader: watch::Receiver<bool>, mut duty: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        while !*leader.borrow_and_update() {
            if leader.changed().await.is_err() {
                return;
            }
        }
        tracing::debug!(duty = name, "starting, as this replica leads");
        let lost = async {
            loop {
                // No sender: nobody can take the lead away any more (the embedded store).
                if leader.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                if !*leader.borrow_and_update() {
                    return;
                }
            }
        };
        tokio::select! {
            () = duty() => return,
            () = lost => tracing::info!(duty = name, "stopped: another replica leads now"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_duty_runs_only_while_leading_and_restarts_on_a_new_lead() {
        let (tx, rx) = watch::channel(false);
        let starts = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let (s, r) = (starts.clone(), running.clone());
        let task = tokio::spawn(while_leading("test", rx, move || {
            let (s, r) = (s.clone(), r.clone());
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                r.fetch_add(1, Ordering::SeqCst);
                struct Stop(Arc<AtomicUsize>);
                impl Drop for Stop {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let _stop = Stop(r);
                std::future::pending::<()>().await
            }
        }));
        let wait = |what: &'static str, f: Box<dyn Fn() -> bool>| async move {
            for _ in 0..5000 {
                if f() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            panic!("{what}");
        };
        tokio::task::yield_now().await;
        assert_eq!(starts.load(Ordering::SeqCst), 0, "not leading: not started");
        tx.send_replace(true);
        let s = starts.clone();
        wait(
            "started on lead",
            Box::new(move || s.load(Ordering::SeqCst) == 1),
        )
        .await;
        tx.send_replace(false);
        let r = running.clone();
        wait(
            "stopped on loss",
            Box::new(move || r.load(Ordering::SeqCst) == 0),
        )
        .await;
        tx.send_replace(true);
        let s = starts.clone();
        wait("restarted", Box::new(move || s.load(Ordering::SeqCst) == 2)).await;
        drop(tx);
        tokio::task::yield_now().await;
        assert_eq!(
            running.load(Ordering::SeqCst),
            1,
            "keeps running without a sender"
        );
        task.abort();
    }
}
