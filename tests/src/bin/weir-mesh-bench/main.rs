//! `weir-mesh-bench`: a mesh of simulated proxies on `Discovery.Delta` against one control plane;
//! measures what one policy change, one new endpoint, one MeshConfig change and a rolling
//! restart cost in bytes, reach, control-plane CPU and time to ACK.
//!
//! Proxy i is `svc-(i % services)` in namespace `mesh` and calls the next `calls` services.
//! Prints one JSON object per line per measured round and, last, a `summary`.

// The summary is one large `json!` literal.
#![recursion_limit = "256"]

mod phase;
mod proxy;
mod roll;
mod setup;
mod summary;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::json;
use tonic::transport::Channel;
use weir_proto::admin::v1::ApplyRequest;
use weir_proto::admin::v1::admin_client::AdminClient;
use weir_tests::bench::{authed, ms};

use phase::{Ctx, Outcome, Watch, measure};
use proxy::{Dial, NAMESPACE, Shared, Spec, address, open};

#[derive(Parser)]
#[command(
    name = "weir-mesh-bench",
    about = "A simulated mesh on Discovery.Delta against one weir-control"
)]
pub struct Args {
    /// Control plane URL, e.g. https://127.0.0.1:8090.
    #[arg(long)]
    server: String,
    /// Roots that verify the control plane (DATA_DIR/trust-bundle.pem).
    #[arg(long)]
    trust_bundle: std::path::PathBuf,
    /// File holding the admin token (DATA_DIR/admin.token).
    #[arg(long)]
    token_file: std::path::PathBuf,
    /// PID of the control plane, to sample its RSS (/proc/PID/status) and CPU (/proc/PID/stat).
    #[arg(long)]
    cp_pid: Option<u32>,
    #[arg(long, default_value_t = 10_000)]
    proxies: usize,
    #[arg(long, default_value_t = 1_000)]
    services: usize,
    /// Services each proxy calls (subscribes to): the next ones after its own.
    #[arg(long, default_value_t = 5)]
    calls: usize,
    /// Rounds of each change; the summary gives medians over them.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Proxies of the extra service `big` that the rolling restart restarts (0: no restart).
    #[arg(long, default_value_t = 1_000)]
    roll: usize,
    /// Proxies (spread over the mesh) that also call `big`.
    #[arg(long, default_value_t = 50)]
    callers_of_big: usize,
    /// Restarts in flight at once during the rolling restart.
    #[arg(long, default_value_t = 10)]
    roll_batch: usize,
    /// The control plane's lease grace in seconds (--lease-grace): how long after a restart
    /// the old address is removed.
    #[arg(long, default_value_t = 10)]
    lease_grace: u64,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 200)]
    batch: usize,
    /// Seconds for connecting every proxy and receiving its first response.
    #[arg(long, default_value_t = 300)]
    connect_timeout: u64,
    /// Seconds per change until every proxy that needs it ACKed; partial results after.
    #[arg(long, default_value_t = 30)]
    phase_timeout: u64,
    /// Seconds for the rolling restart's restarts (the grace and settling come on top).
    #[arg(long, default_value_t = 300)]
    roll_timeout: u64,
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

fn svc(s: usize) -> String {
    format!("svc-{s}")
}

/// Proxy `i`'s service and what it calls; `big` is appended for its callers.
fn mesh_spec(s: usize, args: &Args) -> Spec {
    let mut subscribe: Vec<String> = (1..=args.calls)
        .map(|d| (s + d) % args.services)
        .filter(|&t| t != s)
        .map(|t| format!("{}.{NAMESPACE}", svc(t)))
        .collect();
    subscribe.dedup();
    Spec {
        service: svc(s),
        subscribe,
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.proxies == 0 || args.services == 0 {
        bail!("--proxies and --services must be at least 1");
    }
    let (p, rounds) = (args.proxies, args.rounds as usize);
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("read {}", args.token_file.display()))?
        .trim()
        .to_owned();
    let bundle = std::fs::read(&args.trust_bundle)
        .with_context(|| format!("read {}", args.trust_bundle.display()))?;
    let dial = Dial {
        endpoint: weir_proto::dial::endpoint(&args.server)
            .context("--server")?
            .connect_timeout(Duration::from_secs(10)),
        tls: weir_proto::dial::client_config(weir_proto::dial::roots_from_pem(&bundle)?)?,
    };
    // Admin on its own connection, so it never queues behind the proxies' streams.
    let admin_channel = weir_proto::dial::connect(dial.endpoint.clone(), dial.tls.clone())
        .await
        .context("connect admin channel")?;
    let mut admin = AdminClient::new(admin_channel);
    let t_setup = Instant::now();
    setup::apply_baseline(&mut admin, &token, args.services).await?;
    let setup_s = ms(t_setup.elapsed()) / 1e3;

    // Slots: the mesh, one newcomer per endpoint round, then `big`'s proxies.
    let mut specs: Vec<Spec> = (0..p)
        .map(|i| mesh_spec(i % args.services, &args))
        .collect();
    let callers_of_big = args.callers_of_big.min(p);
    let big_callers: Vec<usize> = (0..callers_of_big)
        .map(|k| k * p / callers_of_big.max(1))
        .collect();
    for &i in &big_callers {
        specs[i].subscribe.push(format!("big.{NAMESPACE}"));
    }
    let newcomer_services: Vec<usize> = (1..=rounds)
        .map(|r| (r * 7919 + args.services / 2) % args.services)
        .collect();
    specs.extend(newcomer_services.iter().map(|&s| mesh_spec(s, &args)));
    let big_spec = Spec {
        service: "big".into(),
        subscribe: Vec::new(),
    };
    let big_slots: Vec<usize> = (specs.len()..specs.len() + args.roll).collect();
    specs.extend(big_slots.iter().map(|_| big_spec.clone()));
    let n = specs.len();
    let shared = Arc::new(Shared::new(n));
    let ctx = Ctx {
        shared: shared.clone(),
        cp_pid: args.cp_pid,
        timeout: Duration::from_secs(args.phase_timeout),
        quiet: Duration::from_millis(500),
        settle_max: Duration::from_secs(5),
    };
    let mut handles: Vec<Option<tokio::task::JoinHandle<()>>> = (0..n).map(|_| None).collect();
    let mut generations = vec![0u64; n];
    let mut live = vec![false; n];

    // Connect: the mesh and `big`, every slot with address number = slot index.
    let rss_idle = ctx.rss_kb();
    let cpu_idle = ctx.cpu_s();
    let initial: Vec<usize> = (0..p).chain(big_slots.iter().copied()).collect();
    let t_connect = Instant::now();
    let connect_deadline = t_connect + Duration::from_secs(args.connect_timeout);
    let opened = setup::connect_all(
        &initial,
        &specs,
        &dial,
        &shared,
        args.batch,
        connect_deadline,
    )
    .await;
    let mut open_errors = 0;
    let mut first_open_error = None;
    for (i, result) in opened {
        match result {
            Ok(handle) => {
                handles[i] = Some(handle);
                generations[i] = 1;
                live[i] = true;
            }
            Err(err) => {
                open_errors += 1;
                first_open_error.get_or_insert(err);
            }
        }
    }
    let opened_count = live.iter().filter(|l| **l).count();
    while shared.initial.load(Ordering::Acquire) < opened_count && Instant::now() < connect_deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let initial_count = shared.initial.load(Ordering::Acquire);
    let connect_s = ms(t_connect.elapsed()) / 1e3;
    // The connect storm's registrations keep changing Endpoints for a while: let them settle.
    let quiet_ctx = Ctx {
        settle_max: Duration::from_secs(60),
        quiet: Duration::from_secs(1),
        ..ctx.clone()
    };
    let mut peak = ctx.rss_kb();
    phase::settle(&quiet_ctx, &mut peak).await;
    let connect_bytes = shared.total_bytes();
    let rss_connected = ctx.rss_kb();
    let hwm_connected = args
        .cp_pid
        .and_then(|pid| weir_tests::bench::proc_status_kb(pid, "VmHWM:"));
    let connected = json!({
            "event": "connected",
            "proxies": p,
            "services": args.services,
            "calls": args.calls,
            "streams": initial.len(),
            "opened": opened_count,
            "open_errors": open_errors,
            "first_open_error": first_open_error,
            "initial_responses": initial_count,
            "setup_s": setup_s,
            "connect_s": connect_s,
            "connect_bytes": connect_bytes,
            "unresolved_at_connect": shared.unresolved.load(Ordering::Relaxed),
            "cp_rss_idle_kb": rss_idle,
            "cp_rss_connected_kb": rss_connected,
            "cp_hwm_kb": hwm_connected,
            "cp_cpu_connect_s": weir_tests::bench::diff(ctx.cpu_s(), cpu_idle),
    });
    println!("{connected}");

    let callers = |live: &[bool], service: &str| -> Vec<usize> {
        (0..n)
            .filter(|&i| live[i] && specs[i].calls(service))
            .collect()
    };
    let mut phase_id = 0u64;
    let mut next = || {
        phase_id += 1;
        phase_id
    };

    // One service's policy changes: its callers and its own proxies need it.
    let mut policy: Vec<Outcome> = Vec::new();
    for round in 1..=args.rounds {
        let s = (round as usize * 7919) % args.services;
        let name = svc(s);
        let mut expected = callers(&live, &name);
        expected.extend((0..n).filter(|&i| live[i] && specs[i].service == name));
        let yaml = setup::policy_yaml(&name, 2000 + round * 10 + std::process::id() % 10);
        let watch = Watch {
            kind: "policy",
            round,
            phase: next(),
            target: format!("ServicePolicy/{NAMESPACE}/{name}"),
            expected,
            exclude: None,
        };
        policy.push(measure(&ctx, watch, apply(&mut admin, &token, yaml)).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // A new proxy of one service connects: its callers get the service's new Endpoints.
    let mut endpoint: Vec<Outcome> = Vec::new();
    for (k, &s) in newcomer_services.iter().enumerate() {
        let i = p + k;
        let name = svc(s);
        let watch = Watch {
            kind: "endpoint",
            round: k as u32 + 1,
            phase: next(),
            target: format!("Endpoints/{NAMESPACE}/{name}"),
            expected: callers(&live, &name),
            exclude: Some(i),
        };
        let (spec, dial2, shared2) = (specs[i].clone(), dial.clone(), shared.clone());
        let mut handle = None;
        let outcome = measure(&ctx, watch, async {
            let h = open(i, 1, &spec, address(i as u64), &dial2, &shared2).await?;
            handle = Some(h);
            Ok(json!({ "service": name }))
        })
        .await;
        if let Some(h) = handle {
            handles[i] = Some(h);
            generations[i] = 1;
            live[i] = true;
        }
        endpoint.push(outcome);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // The MeshConfig changes: every proxy needs it.
    let mut mesh: Vec<Outcome> = Vec::new();
    for round in 1..=args.rounds {
        let watch = Watch {
            kind: "mesh_config",
            round,
            phase: next(),
            target: "MeshConfig//default".into(),
            expected: (0..n).filter(|&i| live[i]).collect(),
            exclude: None,
        };
        let yaml = setup::mesh_yaml(0.1 + f64::from(round) / 100.0);
        mesh.push(measure(&ctx, watch, apply(&mut admin, &token, yaml)).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let roll = if big_slots.is_empty() {
        None
    } else {
        let mut next_address = n as u64;
        let r = roll::Roll {
            phase: next(),
            target: format!("Endpoints/{NAMESPACE}/big"),
            spec: big_spec,
            slots: big_slots.clone(),
            callers: callers(&live, "big"),
            handles: &mut handles,
            generations: &mut generations,
            next_address: &mut next_address,
            batch: args.roll_batch,
            grace: Duration::from_secs(args.lease_grace),
            timeout: Duration::from_secs(args.roll_timeout),
        };
        Some(roll::roll(&ctx, &dial, r).await)
    };

    let phases = summary::Phases {
        policy: &policy,
        endpoint: &endpoint,
        mesh: &mesh,
        roll: roll.as_ref(),
    };
    let summary = summary::summary(&args, &ctx, &connected, &phases);
    println!("{summary}");
    // Exit without the graceful teardown of thousands of connections.
    std::process::exit(0);
}

/// Applies `yaml`; the change's version and the apply RPC's time.
async fn apply(
    admin: &mut AdminClient<Channel>,
    token: &str,
    yaml: String,
) -> anyhow::Result<serde_json::Value> {
    let t0 = Instant::now();
    let response = admin
        .apply(authed(
            ApplyRequest {
                yaml,
                source: "weir-mesh-bench".into(),
                dry_run: false,
            },
            token,
        )?)
        .await
        .context("Admin.Apply")?
        .into_inner();
    let action = response.results.first().map(|r| r.action.clone());
    Ok(json!({ "version": response.version, "apply_rpc_ms": ms(t0.elapsed()), "action": action }))
}
