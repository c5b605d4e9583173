//! A steady open-loop load (200 requests/s) through a proxy, each request recorded, for tests
//! that must show "0 failed requests" while something changes underneath.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use crate::client;
use crate::util::wait_until;

/// 200 requests per second.
const LOAD_INTERVAL: Duration = Duration::from_millis(5);

/// One request of a load run.
#[derive(Debug, Clone)]
pub struct Sample {
    pub started: Instant,
    pub status: u16,
    /// The answering app's name (from `/echo`), or the error text.
    pub app: String,
}

/// One GET to payments through `entry`; never panics, so a failure is counted, not fatal.
pub async fn call(entry: SocketAddr, host: &str) -> (u16, String) {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(entry)
            .await
            .map_err(|e| e.to_string())?;
        let mut sender = client::h1_on(stream).await;
        let rsp = sender
            .send_request(client::request("GET", host, "/echo", client::empty()))
            .await
            .map_err(|e| e.to_string())?;
        let status = rsp.status().as_u16();
        let body = rsp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let app = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["app"].as_str().map(str::to_owned))
            .unwrap_or_default();
        Ok::<_, String>((status, app))
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => (0, e),
        Err(_) => (0, "timeout".into()),
    }
}

/// A steady 200 rps stream to payments until `stop` is set (or `max` passes).
pub struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    pub fn start(entry: SocketAddr, host: &str, max: Duration) -> Load {
        let host = host.to_owned();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let deadline = Instant::now() + max;
            let mut tick = tokio::time::interval(LOAD_INTERVAL);
            let mut inflight = tokio::task::JoinSet::new();
            while !st.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                tick.tick().await;
                let (s, host) = (s.clone(), host.clone());
                inflight.spawn(async move {
                    let started = Instant::now();
                    let (status, app) = call(entry, &host).await;
                    s.lock().expect("samples").push(Sample {
                        started,
                        status,
                        app,
                    });
                });
            }
            while inflight.join_next().await.is_some() {}
        });
        Load {
            samples,
            stop,
            task,
        }
    }

    pub fn count(&self) -> usize {
        self.samples.lock().expect("samples").len()
    }

    pub async fn wait_for(&self, n: usize) {
        wait_until(
            &format!("{n} responses under load"),
            Duration::from_secs(30),
            || async { self.count() >= n },
        )
        .await;
    }

    pub async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("load task");
        let mut v = self.samples.lock().expect("samples").clone();
        v.sort_by_key(|s| s.started);
        v
    }
}

/// The requests that did not get a 200.
pub fn failures(samples: &[Sample]) -> Vec<&Sample> {
    samples.iter().filter(|s| s.status != 200).collect()
}

/// Asserts that every request of a load got a 200 and that the load really ran (more than
/// `min` requests); `during` names what happened meanwhile, for the failure message.
pub fn assert_no_failures(samples: &[Sample], min: usize, during: &str) {
    let failed = failures(samples);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during {during}: {:?}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        samples.len() > min,
        "the load ran: {} requests",
        samples.len()
    );
}
