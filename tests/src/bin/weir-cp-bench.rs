//! `weir-cp-bench`: N simulated proxies (discovery streams that ACK every snapshot) on one
//! control plane; measures apply → X% ACKed and, with `--cp-pid`, the control plane's RSS and CPU.
//!
//! Prints one JSON object per line: `connected` after the connect phase, one `round` per apply,
//! and `done`. The client runs on the same machine as the control plane, so its CPU use is
//! reported too (`client_cpu_s`): on a small box both compete for the same cores.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use weir_proto::admin::v1::admin_client::AdminClient;
use weir_proto::admin::v1::{ApplyRequest, StatusRequest};
use weir_proto::discovery::v1::discovery_client::DiscoveryClient;
use weir_proto::discovery::v1::{Ack, Hello, ProxyMessage, Snapshot, proxy_message};
use weir_tests::bench::{authed, diff, ms, proc_cpu_s, proc_status_kb};

#[derive(Parser)]
#[command(
    name = "weir-cp-bench",
    about = "Simulated proxies against one weir-control"
)]
struct Args {
    /// Control plane URL, e.g. https://127.0.0.1:8090.
    #[arg(long)]
    server: String,
    /// Roots that verify the control plane (DATA_DIR/trust-bundle.pem).
    #[arg(long)]
    trust_bundle: std::path::PathBuf,
    /// File holding the admin token (DATA_DIR/admin.token).
    #[arg(long)]
    token_file: std::path::PathBuf,
    /// Number of simulated proxies (discovery streams).
    #[arg(long)]
    streams: usize,
    /// TCP connections the streams share; default one per stream, like real proxies.
    #[arg(long)]
    connections: Option<usize>,
    /// Applies to measure.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Connects (and stream opens) in flight at once.
    #[arg(long, default_value_t = 200)]
    batch: usize,
    /// Per-round timeout in seconds; partial results are reported when it runs out.
    #[arg(long, default_value_t = 30)]
    round_timeout: u64,
    /// Timeout in seconds for connecting every stream and receiving the first snapshot.
    #[arg(long, default_value_t = 180)]
    connect_timeout: u64,
    /// PID of the control plane, to sample its RSS (/proc/PID/status) and CPU (/proc/PID/stat).
    #[arg(long)]
    cp_pid: Option<u32>,
}

/// What one simulated proxy has seen; written by its reader task, read by the measuring loop.
#[derive(Default)]
struct Slot {
    acked: AtomicU64,
    snapshots: AtomicU64,
    /// Version of the first snapshot at or above the round's target, and when it was ACKed
    /// (ns since `Shared::base`). `reach_ns` is stored before `reach_version` (Release).
    reach_version: AtomicU64,
    reach_ns: AtomicU64,
}

struct Shared {
    base: Instant,
    /// Snapshots with a version at or above this are recorded; u64::MAX between rounds.
    target: AtomicU64,
    slots: Vec<Slot>,
    /// Streams that received their first snapshot.
    initial: AtomicUsize,
    /// Streams that ended (error or server close).
    closed: AtomicUsize,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Worker threads default to the number of cores; the control plane shares them.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let n = args.streams;
    if n == 0 {
        bail!("--streams must be at least 1");
    }
    let conns = args.connections.unwrap_or(n).clamp(1, n);
    let batch = args.batch.max(1);
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("read {}", args.token_file.display()))?
        .trim()
        .to_owned();
    let endpoint = weir_proto::dial::endpoint(&args.server)
        .context("--server")?
        .connect_timeout(Duration::from_secs(10));
    let bundle = std::fs::read(&args.trust_bundle)
        .with_context(|| format!("read {}", args.trust_bundle.display()))?;
    let tls = weir_proto::dial::client_config(weir_proto::dial::roots_from_pem(&bundle)?)?;
    let shared = Arc::new(Shared {
        base: Instant::now(),
        target: AtomicU64::new(u64::MAX),
        slots: (0..n).map(|_| Slot::default()).collect(),
        initial: AtomicUsize::new(0),
        closed: AtomicUsize::new(0),
    });
    let cp = args.cp_pid;
    let rss_idle = cp.and_then(|p| proc_status_kb(p, "VmRSS:"));
    let cpu_start = cp.and_then(proc_cpu_s);
    let client_cpu_start = proc_cpu_s(std::process::id());

    // Admin channel first, on its own connection, so it never queues behind stream opens.
    let admin_channel = weir_proto::dial::connect(endpoint.clone(), tls.clone())
        .await
        .context("connect admin channel")?;
    let mut admin = AdminClient::new(admin_channel);
    let status0 = admin
        .status(authed(StatusRequest {}, &token)?)
        .await
        .context("Admin.Status (is the token right?)")?
        .into_inner();

    // Connect phase: C connections, then N streams, each in bounded batches.
    let t_connect = Instant::now();
    let deadline = t_connect + Duration::from_secs(args.connect_timeout);
    let channels: Vec<Channel> = futures_util::stream::iter(0..conns)
        .map(|_| {
            let endpoint = endpoint.clone();
            let tls = tls.clone();
            async move { weir_proto::dial::connect(endpoint, tls).await }
        })
        .buffered(batch)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .context("connect")?;
    let connect_ms = ms(t_connect.elapsed());
    let opened: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..n)
        .map(|i| open_stream(i, channels[i % conns].clone(), shared.clone()))
        .buffer_unordered(batch)
        .collect()
        .await;
    let open_errors: Vec<String> = opened
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    let open_ms = ms(t_connect.elapsed());
    while shared.initial.load(Ordering::Acquire) + open_errors.len() < n
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let initial = shared.initial.load(Ordering::Acquire);
    let initial_ms = ms(t_connect.elapsed());
    // Let the connect storm's coalesced publishes and ACKs settle before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = cp.and_then(|p| proc_status_kb(p, "VmRSS:"));
    let cpu_connected = cp.and_then(proc_cpu_s);
    println!(
        "{}",
        json!({
            "event": "connected",
            "streams": n,
            "connections": conns,
            "batch": batch,
            "client_threads": std::thread::available_parallelism().map(|p| p.get()).unwrap_or(0),
            "proxies_in_status_before": status0.proxies.len(),
            "connect_ms": connect_ms,
            "open_ms": open_ms,
            "initial_snapshot_all_ms": initial_ms,
            "initial_snapshots": initial,
            "open_errors": open_errors.len(),
            "first_open_error": open_errors.first(),
            "cp_rss_idle_kb": rss_idle,
            "cp_rss_connected_kb": rss_connected,
            "cp_cpu_connect_s": diff(cpu_connected, cpu_start),
        })
    );
    if initial < n {
        eprintln!("warning: only {initial}/{n} streams received their first snapshot");
    }

    for round in 1..=args.rounds {
        measure_round(round, &args, &mut admin, &token, &shared).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "{}",
        json!({
            "event": "done",
            "streams": n,
            "closed_streams": shared.closed.load(Ordering::Acquire),
            "cp_hwm_kb": cp.and_then(|p| proc_status_kb(p, "VmHWM:")),
            "client_cpu_total_s": diff(proc_cpu_s(std::process::id()), client_cpu_start),
            "client_hwm_kb": proc_status_kb(std::process::id(), "VmHWM:"),
        })
    );
    // Exit without the graceful teardown of 10,000 connections.
    std::process::exit(0);
}

/// Opens stream `i`: Hello, then a reader task that ACKs every snapshot.
async fn open_stream(i: usize, channel: Channel, shared: Arc<Shared>) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<ProxyMessage>(4);
    let sa = format!("sim-{i}");
    let hello = Hello {
        service: format!("sim-{}", i % 50),
        namespace: "bench".into(),
        identity: format!("spiffe://weir.local/ns/bench/sa/{sa}"),
        service_account: sa,
        // Empty: no registration, so connects cause no pushes during the measurement.
        inbound_address: String::new(),
        current_version: 0,
        proxy_version: "weir-cp-bench".into(),
    };
    tx.send(ProxyMessage {
        kind: Some(proxy_message::Kind::Hello(hello)),
    })
    .await
    .ok()
    .context("queue Hello")?;
    let mut client = DiscoveryClient::new(channel);
    let inbound = client
        .stream(ReceiverStream::new(rx))
        .await
        .with_context(|| format!("stream {i}"))?
        .into_inner();
    tokio::spawn(read_snapshots(i, inbound, tx, shared));
    Ok(())
}

async fn read_snapshots(
    i: usize,
    mut inbound: tonic::Streaming<Snapshot>,
    tx: mpsc::Sender<ProxyMessage>,
    shared: Arc<Shared>,
) {
    let slot = &shared.slots[i];
    while let Ok(Some(snapshot)) = inbound.message().await {
        let version = snapshot.version;
        let ack = ProxyMessage {
            kind: Some(proxy_message::Kind::Ack(Ack {
                version,
                nonce: snapshot.nonce,
            })),
        };
        if tx.send(ack).await.is_err() {
            break;
        }
        let now = shared.now_ns();
        slot.acked.fetch_max(version, Ordering::Relaxed);
        if slot.snapshots.fetch_add(1, Ordering::Relaxed) == 0 {
            shared.initial.fetch_add(1, Ordering::Release);
        }
        let target = shared.target.load(Ordering::Acquire);
        if version >= target && slot.reach_version.load(Ordering::Relaxed) < target {
            slot.reach_ns.store(now, Ordering::Relaxed);
            slot.reach_version.store(version, Ordering::Release);
        }
    }
    shared.closed.fetch_add(1, Ordering::Release);
}

async fn measure_round(
    round: u32,
    args: &Args,
    admin: &mut AdminClient<Channel>,
    token: &str,
    shared: &Shared,
) -> anyhow::Result<()> {
    let n = shared.slots.len();
    let base_version = shared
        .slots
        .iter()
        .map(|s| s.acked.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let snapshots_before: u64 = shared
        .slots
        .iter()
        .map(|s| s.snapshots.load(Ordering::Relaxed))
        .sum();
    for slot in &shared.slots {
        slot.reach_version.store(0, Ordering::Relaxed);
        slot.reach_ns.store(0, Ordering::Relaxed);
    }
    // Provisional target until the apply answers: anything newer than what every stream runs.
    shared.target.store(base_version + 1, Ordering::Release);
    let yaml = format!(
        "apiVersion: weir/v1\nkind: ServicePolicy\nmetadata: {{name: bench, namespace: bench}}\n\
         spec: {{service: sim-0, timeouts: {{request: {}ms}}}}\n",
        1000 + round * 10 + (std::process::id() % 10)
    );
    let cp = args.cp_pid;
    let cpu_before = cp.and_then(proc_cpu_s);
    let client_cpu_before = proc_cpu_s(std::process::id());
    let mut rss_peak = cp.and_then(|p| proc_status_kb(p, "VmRSS:"));
    let t0_ns = shared.now_ns();
    let t0 = Instant::now();
    let response = admin
        .apply(authed(
            ApplyRequest {
                yaml,
                source: "weir-cp-bench".into(),
                dry_run: false,
            },
            token,
        )?)
        .await
        .context("Admin.Apply")?
        .into_inner();
    let apply_rpc_ms = ms(t0.elapsed());
    let version = response.version;
    shared.target.store(version, Ordering::Release);
    let action = response.results.first().map(|r| r.action.clone());
    if version <= base_version {
        bail!("apply did not produce a new version ({version} <= {base_version}): {action:?}");
    }

    // Poll the slots (N atomic loads, cheap next to the work being measured) every ms.
    let timeout = Duration::from_secs(args.round_timeout);
    let mut next_rss = Instant::now();
    let (mut at50, mut at99) = (None, None);
    let reached = loop {
        let reached = count_reached(shared, version);
        let elapsed = t0.elapsed();
        if at50.is_none() && reached * 2 >= n {
            at50 = Some(elapsed);
        }
        if at99.is_none() && reached * 100 >= n * 99 {
            at99 = Some(elapsed);
        }
        if let Some(pid) = cp
            && Instant::now() >= next_rss
        {
            rss_peak = rss_peak.max(proc_status_kb(pid, "VmRSS:"));
            next_rss = Instant::now() + Duration::from_millis(10);
        }
        if reached == n || elapsed >= timeout {
            break reached;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let cpu_after = cp.and_then(proc_cpu_s);
    let client_cpu_after = proc_cpu_s(std::process::id());
    let wall_ms = ms(t0.elapsed());

    // Exact percentiles from the recorded ACK times (the polling marks above are only a cross-check).
    let mut lat: Vec<u64> = shared
        .slots
        .iter()
        .filter(|s| s.reach_version.load(Ordering::Acquire) >= version)
        .map(|s| s.reach_ns.load(Ordering::Relaxed).saturating_sub(t0_ns))
        .collect();
    lat.sort_unstable();
    let pct = |p: usize| -> Option<f64> {
        let k = (n * p).div_ceil(100).max(1);
        lat.get(k - 1).map(|ns| (*ns as f64 / 1e3).round() / 1e3)
    };
    let snapshots_after: u64 = shared
        .slots
        .iter()
        .map(|s| s.snapshots.load(Ordering::Relaxed))
        .sum();

    // Only now ask the control plane (Status with N rows is not free; don't perturb the above).
    let status_deadline = t0 + timeout.max(Duration::from_secs(5)) + Duration::from_secs(5);
    let mut status_99_ms = None;
    let mut status_acked = 0;
    let mut status_rows = 0;
    let mut status_polls = 0;
    while Instant::now() < status_deadline {
        let status = admin
            .status(authed(StatusRequest {}, token)?)
            .await
            .context("Admin.Status")?
            .into_inner();
        status_polls += 1;
        let bench: Vec<_> = status
            .proxies
            .iter()
            .filter(|p| p.namespace == "bench" && p.connected)
            .collect();
        status_rows = bench.len();
        status_acked = bench.iter().filter(|p| p.acked_version >= version).count();
        if status_acked * 100 >= n * 99 {
            status_99_ms = Some(ms(t0.elapsed()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shared.target.store(u64::MAX, Ordering::Release);
    println!(
        "{}",
        json!({
            "event": "round",
            "round": round,
            "streams": n,
            "version": version,
            "action": action,
            "apply_rpc_ms": apply_rpc_ms,
            "reached": reached,
            "timed_out": reached < n,
            "p50_ms": pct(50),
            "p99_ms": pct(99),
            "p100_ms": if reached == n { pct(100) } else { None },
            "poll_50_ms": at50.map(ms),
            "poll_99_ms": at99.map(ms),
            "measured_ms": wall_ms,
            "snapshots_received": snapshots_after - snapshots_before,
            "status_99_ms": status_99_ms,
            "status_rows": status_rows,
            "status_polls": status_polls,
            "status_acked": status_acked,
            "cp_rss_peak_kb": rss_peak,
            "cp_hwm_kb": cp.and_then(|p| proc_status_kb(p, "VmHWM:")),
            "cp_cpu_apply_s": diff(cpu_after, cpu_before),
            "client_cpu_apply_s": diff(client_cpu_after, client_cpu_before),
            "closed_streams": shared.closed.load(Ordering::Acquire),
        })
    );
    Ok(())
}

fn count_reached(shared: &Shared, version: u64) -> usize {
    shared
        .slots
        .iter()
        .filter(|s| s.reach_version.load(Ordering::Acquire) >= version)
        .count()
}
