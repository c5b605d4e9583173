//! `weir-proxy`: Weir's sidecar.
mod admin;
mod args;
mod body;
mod client;
mod config;
mod control;
mod detect;
mod drain;
mod endpoint;
mod errors;
mod headers;
mod inbound;
mod init;
mod jitter;
mod metrics;
mod orig_dst;
mod outbound;
mod resilience;
mod routes;
mod server;
mod tcp;
mod tls;
mod trace;
mod upgrade;
mod wait;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, bail};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use weir_policy::MtlsMode;

use crate::args::{Cli, Command, RunArgs};
use crate::config::{ConfigStore, LocalIdentity};
use crate::drain::Drain;
use crate::metrics::Metrics;

/// Exit status of a one-shot subcommand, its error on stderr.
fn exit_status(what: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: weir-proxy {what}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Run(a)) => *a,
        Some(Command::Init(a)) => return exit_status("init", init::run(&a)),
        Some(Command::Wait(a)) => return exit_status("wait", wait::run(&a)),
        None => cli.run,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // One worker (the default) runs on the current-thread scheduler: no work-stealing queues,
    // no cross-thread wake-ups, and the control task shares the thread with the data path.
    let mut builder = if args.workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args.workers);
        b
    };
    let runtime = match builder.thread_name("weir-proxy").enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let Some(service) = args.service.clone() else {
        bail!(
            "--service is required (or WEIR_SERVICE): the name of the service this proxy runs next to"
        );
    };
    let local = LocalIdentity {
        service_account: args
            .service_account
            .clone()
            .unwrap_or_else(|| service.clone()),
        service,
        namespace: args.namespace.clone(),
    };
    let metrics = Arc::new(Metrics::default());
    let creds = Arc::new(tls::CredStore::default());
    let cert_files = match (&args.cert, &args.key, &args.trust_bundle) {
        (Some(cert), Some(key), Some(bundle)) => Some(tls::CertFiles {
            cert: cert.clone(),
            key: key.clone(),
            bundle: bundle.clone(),
        }),
        _ => None,
    };
    if let Some(files) = &cert_files {
        let c = files
            .load()
            .map_err(|e| anyhow::anyhow!("cannot use --cert/--key/--trust-bundle: {e}"))?;
        tracing::info!(identity = %c.spiffe_id, "identity loaded from certificate files");
        creds.store(c);
    }
    let config = Arc::new(ConfigStore::new(
        local,
        metrics.clone(),
        args.config.clone(),
        creds.clone(),
    ));
    if !args.config.is_empty() {
        // A sidecar that starts with a config it cannot read would route wrongly; refuse to start.
        config
            .reload_files()
            .map_err(|e| anyhow::anyhow!("invalid --config; nothing was started:\n{e}"))?;
    }
    let dialer = match &args.control_plane {
        Some(url) => {
            let bundle = args.trust_bundle.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "--control-plane needs --trust-bundle: the roots that verify the control \
                     plane's TLS certificate (DATA_DIR/trust-bundle.pem of weir-control, or the \
                     mesh's trust-bundle ConfigMap in Kubernetes)"
                )
            })?;
            Some(
                tls::dial::ControlDialer::new(url, bundle)
                    .map_err(|e| anyhow::anyhow!("cannot use --control-plane: {e}"))?,
            )
        }
        None => None,
    };
    let (trust_tx, trust_rx) = tokio::sync::watch::channel(None);
    let control = dialer.clone().map(|dialer| control::ControlClient {
        dialer,
        trust: args.token_file.is_some().then(|| trust_tx.clone()),
        hello: hello(&args, &config),
        config: config.clone(),
        cache_dir: args.cache_dir.clone(),
    });
    if let Some(c) = &control {
        config.subscriptions.enable(args.resolve_timeout);
        c.load_cache();
        tokio::spawn(config::idle::sweep_forever(
            config.clone(),
            args.subscription_idle,
        ));
    }
    warn_if_strict_without_identity(&config, &creds);

    let bind = |addr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind the {what} listener on {addr}"))
    };
    let outbound_listener = bind(args.outbound_addr, "outbound").await?;
    let inbound_listener = bind(args.inbound_addr, "inbound").await?;
    let admin_listener = bind(args.admin_addr, "admin").await?;

    let drain = Drain::default();
    let admin = Arc::new(admin::Admin {
        config: config.clone(),
        metrics: metrics.clone(),
        ready: Default::default(),
        needs_control_plane: control.is_some(),
        needs_identity: args.token_file.is_some(),
        creds: creds.clone(),
        drain: drain.clone(),
    });
    tokio::spawn(admin.clone().serve(admin_listener));
    let detect = server::DetectSettings {
        timeout: args.detect_timeout,
        opaque_ports: args.opaque_ports.clone(),
    };
    if let Some(files) = cert_files {
        tokio::spawn(files.watch(creds.clone()));
    }
    if let (Some(token_file), Some(dialer)) = (&args.token_file, &dialer) {
        let certifier = tls::certify::Certifier {
            dialer: dialer.clone(),
            trust: trust_rx.clone(),
            token_file: token_file.clone(),
            spiffe_id: config.local().spiffe_id(&args.trust_domain),
            creds: creds.clone(),
            metrics: metrics.clone(),
        };
        tokio::spawn(certifier.run());
    }
    let spans = Arc::new(start_tracing(&args, config.local(), &metrics)?);
    let outbound = outbound::Outbound::new(
        config.clone(),
        creds.clone(),
        metrics.clone(),
        args.peer_protocol,
        detect.clone(),
        drain.clone(),
        spans.clone(),
    );
    let probes = inbound::Probes::parse(&args.probe_paths)
        .map_err(|e| anyhow::anyhow!("--probe-paths: {e}"))?;
    let inbound = inbound::Inbound::new(
        config.clone(),
        creds.clone(),
        metrics.clone(),
        inbound::AppTargets::new(
            args.app_addr,
            vec![
                args.inbound_addr.port(),
                args.outbound_addr.port(),
                args.admin_addr.port(),
            ],
        )
        .with_probes(probes),
        detect,
        drain.clone(),
        spans.clone(),
    );
    let outbound_task = tokio::spawn(outbound.serve(outbound_listener));
    let inbound_task = tokio::spawn(inbound.serve(inbound_listener));
    if let Some(c) = control {
        tokio::spawn(c.run());
    }
    admin.ready.store(true, Ordering::Release);
    tracing::info!(
        outbound = %args.outbound_addr,
        inbound = %args.inbound_addr,
        admin = %args.admin_addr,
        app = %args.app_addr,
        config_version = config.load().version,
        "weir-proxy ready"
    );

    let mut hup = signal(SignalKind::hangup()).context("install SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                // Reading and compiling the YAML is blocking work; with one worker it would
                // otherwise stall every request on the data-path thread for its duration.
                let (config, creds) = (config.clone(), creds.clone());
                if let Err(e) = tokio::task::spawn_blocking(move || reload(&config, &creds)).await {
                    tracing::error!(error = %e, "config reload task failed; the previous config stays in force");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            () = drain.signaled() => break,
        }
    }

    tracing::info!(timeout = ?args.drain_timeout, "draining: no new connections, finishing requests in flight");
    let finished = drain.drain(args.drain_timeout).await;
    // The accept loops have returned by now; their listeners are closed.
    let _ = tokio::join!(outbound_task, inbound_task);
    // The last requests' spans; bounded, since a black-holed collector never answers.
    if tokio::time::timeout(SPAN_FLUSH_TIMEOUT, spans.tracer().flush())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?SPAN_FLUSH_TIMEOUT, "spans not flushed at exit: the collector did not answer");
    }
    if finished {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!("drain timeout reached with connections still open; exiting");
    }
    Ok(())
}

/// How long an exiting proxy waits for its last spans to reach the collector.
const SPAN_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Spans go to `OTEL_EXPORTER_OTLP_ENDPOINT` (design §3) when it is set, to `--trace-file`
/// when given, or to both; with neither nothing is recorded and trace headers pass through
/// untouched. A malformed endpoint or a file that cannot be created stops the start, like
/// any other bad configuration.
fn start_tracing(
    args: &RunArgs,
    local: &LocalIdentity,
    metrics: &Metrics,
) -> anyhow::Result<trace::Tracing> {
    let outputs = weir_trace::Outputs {
        otlp: std::env::var(weir_trace::ENDPOINT_ENV)
            .ok()
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty()),
        file: args.trace_file.as_ref().map(|path| weir_trace::FileConfig {
            path: path.clone(),
            max_bytes: args.trace_file_max_bytes,
        }),
    };
    let tracer = if outputs.otlp.is_none() && outputs.file.is_none() {
        weir_trace::Tracer::disabled()
    } else {
        let pod_name = args
            .pod_name
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok())
            .filter(|p| !p.is_empty());
        let resource = weir_trace::Resource {
            service_name: local.service.clone(),
            namespace: Some(local.namespace.clone()),
            pod_name,
        };
        let queue = args.trace_queue_size as usize;
        let config = weir_trace::ExportConfig {
            queue_capacity: queue,
            max_batch: queue.min(512),
            ..weir_trace::ExportConfig::default()
        };
        let tracer =
            weir_trace::Tracer::start_with(&outputs, resource, config).with_context(|| {
                format!(
                    "cannot export spans ({} / --trace-file)",
                    weir_trace::ENDPOINT_ENV
                )
            })?;
        if let Some(endpoint) = &outputs.otlp {
            tracing::info!(%endpoint, queue, "exporting spans over OTLP/gRPC");
        }
        if let Some(file) = &outputs.file {
            tracing::info!(path = %file.path.display(), max_bytes = file.max_bytes, queue, "writing spans to a file as OTLP/JSON lines");
        }
        tracer
    };
    let _ = metrics.tracer.set(tracer.clone());
    Ok(trace::Tracing::new(tracer, &local.service))
}

fn hello(args: &RunArgs, config: &ConfigStore) -> weir_proto::discovery::v1::Hello {
    let local = config.local();
    let advertise = args
        .advertise_addr
        .or_else(|| (!args.inbound_addr.ip().is_unspecified()).then_some(args.inbound_addr));
    if advertise.is_none() {
        tracing::warn!(
            "--inbound-addr is a wildcard and --advertise-addr is not set: this proxy will not \
             register an endpoint, so peers cannot reach it through the mesh"
        );
    }
    weir_proto::discovery::v1::Hello {
        service: local.service.clone(),
        namespace: local.namespace.clone(),
        service_account: local.service_account.clone(),
        identity: local.spiffe_id(&args.trust_domain),
        inbound_address: advertise.map(|a| a.to_string()).unwrap_or_default(),
        current_version: 0,
        proxy_version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

fn reload(config: &ConfigStore, creds: &tls::CredStore) {
    if config.files.is_empty() {
        tracing::info!("SIGHUP: no --config files to reload");
        return;
    }
    match config.reload_files() {
        Ok(version) => {
            tracing::info!(version, "config reloaded");
            warn_if_strict_without_identity(config, creds);
        }
        Err(errors) => {
            let version = config.load().version;
            for e in &errors.0 {
                tracing::error!(error = %e, "config rejected");
            }
            tracing::error!(
                version,
                "config reload failed; the previous config stays in force"
            );
        }
    }
}

fn warn_if_strict_without_identity(config: &ConfigStore, creds: &tls::CredStore) {
    if config.load().mtls == MtlsMode::Strict && !creds.is_present() {
        tracing::warn!(
            "MeshConfig mtls is strict (the default) but this proxy has no identity yet: mesh \
             traffic and inbound connections will be refused. Set `mtls: permissive` in a MeshConfig \
             to run standalone proxies in plaintext."
        );
    }
}
