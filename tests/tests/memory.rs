//! Streaming must not buffer: a gigabyte through both proxies may raise neither
//! proxy's RSS by more than 16 MB. `WEIR_TEST_STREAM_BYTES` shrinks the volume.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use weir_tests::client;
use weir_tests::process::rss_kb;
use weir_tests::util::{Pattern, within};
use weir_tests::{Pair, apps};

const DEFAULT_BYTES: u64 = 1 << 30;
const MAX_GROWTH_KB: u64 = 16 * 1024;
const WARM_UP_BYTES: u64 = 8 << 20;
/// Generous: 2 cores carry the client, the app and both proxies.
const STREAM_TIMEOUT: Duration = Duration::from_secs(300);

fn stream_bytes() -> u64 {
    std::env::var("WEIR_TEST_STREAM_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_BYTES)
}

async fn download(pair: &Pair, n: u64) -> u64 {
    let mut sender = client::h1(pair.entry()).await;
    let req = client::request("GET", "echo", &format!("/bytes?n={n}"), client::empty());
    let resp = client::send1(&mut sender, req).await;
    assert_eq!(resp.status(), 200, "download status");
    client::drain(resp.into_body())
        .await
        .expect("download body")
}

async fn upload(pair: &Pair, n: u64) -> u64 {
    let mut sender = client::h1(pair.entry()).await;
    let body = client::pattern(Pattern::Cycle, n, true);
    let req = client::request("POST", "echo", "/upload?sum=0", body);
    let reply = client::json(client::send1(&mut sender, req).await).await;
    reply["body_len"].as_u64().expect("body_len")
}

/// Highest RSS seen for one pid, sampled until told to stop.
struct Peak(Arc<AtomicU64>);

impl Peak {
    fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn sample(pids: [i32; 2], stop: Arc<AtomicBool>) -> ([Peak; 2], tokio::task::JoinHandle<()>) {
    let peaks = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let task_peaks = peaks.clone();
    let task = tokio::spawn(async move {
        // Bounded even if nobody sets `stop`: 20 samples/s for the stream timeout.
        let max_samples = STREAM_TIMEOUT.as_millis() / 50 * 2;
        for _ in 0..max_samples {
            for (pid, peak) in pids.iter().zip(&task_peaks) {
                if let Some(kb) = rss_kb(*pid) {
                    peak.fetch_max(kb, Ordering::SeqCst);
                }
            }
            if stop.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let [a, b] = peaks;
    ([Peak(a), Peak(b)], task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_a_gigabyte_keeps_proxy_memory_flat() {
    let n = stream_bytes();
    let app = apps::http::start("app").await;
    let pair = Pair::start(app.addr).await;

    // Warm up so lazily built pools and buffers exist before the baseline.
    within(STREAM_TIMEOUT, "warm-up", async {
        assert_eq!(download(&pair, WARM_UP_BYTES).await, WARM_UP_BYTES);
        assert_eq!(upload(&pair, WARM_UP_BYTES).await, WARM_UP_BYTES);
    })
    .await;
    let base = [pair.outbound.rss_kb(), pair.inbound.rss_kb()];

    let stop = Arc::new(AtomicBool::new(false));
    let (peaks, sampler) = sample([pair.outbound.pid(), pair.inbound.pid()], stop.clone());
    let got = within(STREAM_TIMEOUT, "streaming download", download(&pair, n)).await;
    assert_eq!(got, n, "download length");
    let sent = within(STREAM_TIMEOUT, "streaming upload", upload(&pair, n)).await;
    assert_eq!(sent, n, "upload length seen by the app");
    stop.store(true, Ordering::SeqCst);
    within(Duration::from_secs(5), "RSS sampler stops", sampler)
        .await
        .expect("sampler task");
    let after = [pair.outbound.rss_kb(), pair.inbound.rss_kb()];

    for (i, name) in ["outbound", "inbound"].iter().enumerate() {
        let peak = peaks[i].get().max(after[i]);
        let growth = peak.saturating_sub(base[i]);
        eprintln!(
            "{name} proxy RSS: base {} kB, peak {peak} kB, after {} kB",
            base[i], after[i]
        );
        assert!(
            growth < MAX_GROWTH_KB,
            "{name} proxy RSS grew by {growth} kB (base {} kB, peak {peak} kB) while \
             streaming {n} bytes: it buffers",
            base[i]
        );
    }
}
