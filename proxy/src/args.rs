//! Command-line flags. Every flag also reads `WEIR_<FLAG>`; a flag on the command line wins.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::outbound::PeerProtocol;

#[derive(Parser, Debug)]
#[command(
    name = "weir-proxy",
    version,
    about = "Weir sidecar proxy: carries a service's inbound and outbound traffic",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy (the default when no subcommand is given).
    Run(Box<RunArgs>),
    /// Write the pod's iptables nat rules that send its TCP through the proxy (init container).
    Init(InitArgs),
    /// Wait until the proxy's admin /ready answers 200 (postStart hook of a legacy sidecar).
    Wait(WaitArgs),
}

#[derive(Args, Debug, Clone)]
pub struct WaitArgs {
    /// The proxy's admin listener (a wildcard address is dialled on loopback).
    #[arg(long, env = "WEIR_ADMIN_ADDR", default_value = "127.0.0.1:4191")]
    pub admin_addr: SocketAddr,
    /// Give up, exiting non-zero, after this long.
    #[arg(long, env = "WEIR_WAIT_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct InitArgs {
    /// Port of the proxy's inbound listener; redirected inbound TCP goes there.
    #[arg(long, env = "WEIR_INBOUND_PORT", default_value_t = 4143, value_parser = clap::value_parser!(u16).range(1..))]
    pub inbound_port: u16,
    /// Port of the proxy's outbound listener; redirected outbound TCP goes there.
    #[arg(long, env = "WEIR_OUTBOUND_PORT", default_value_t = 4140, value_parser = clap::value_parser!(u16).range(1..))]
    pub outbound_port: u16,
    /// The proxy's uid: its own connections are never redirected (no loop).
    #[arg(long, env = "WEIR_PROXY_UID", default_value_t = 2102)]
    pub proxy_uid: u32,
    /// Inbound ports that reach the pod directly (the inbound port itself always does).
    #[arg(
        long,
        env = "WEIR_SKIP_INBOUND_PORTS",
        value_delimiter = ',',
        value_parser = clap::value_parser!(u16).range(1..),
        default_value = "4191"
    )]
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound ports that leave the pod directly.
    #[arg(
        long,
        env = "WEIR_SKIP_OUTBOUND_PORTS",
        value_delimiter = ',',
        value_parser = clap::value_parser!(u16).range(1..),
        default_value = "8090"
    )]
    pub skip_outbound_ports: Vec<u16>,
    /// Redirect only these inbound ports (default: all).
    #[arg(long, env = "WEIR_INBOUND_PORTS", value_delimiter = ',',
        value_parser = clap::value_parser!(u16).range(1..))]
    pub inbound_ports: Vec<u16>,
    /// Redirect only these outbound ports (default: all).
    #[arg(long, env = "WEIR_OUTBOUND_PORTS", value_delimiter = ',',
        value_parser = clap::value_parser!(u16).range(1..))]
    pub outbound_ports: Vec<u16>,
    /// auto (the backend that already holds the node's rules), legacy or nft.
    #[arg(long, env = "WEIR_IPTABLES_MODE")]
    pub iptables_mode: Option<String>,
    /// Do not write ip6tables rules even where the pod has IPv6.
    #[arg(long, env = "WEIR_NO_IPV6")]
    pub no_ipv6: bool,
    /// Remove exactly Weir's chains and jumps.
    #[arg(long)]
    pub cleanup: bool,
    /// Print the iptables-restore input instead of applying it.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Name of the service this proxy runs next to (required).
    #[arg(long, env = "WEIR_SERVICE")]
    pub service: Option<String>,

    /// Namespace of the service; short names like `payments` resolve in it.
    #[arg(long, env = "WEIR_NAMESPACE", default_value = "default")]
    pub namespace: String,

    /// Service account (identity) of the service; defaults to the service name.
    #[arg(long, env = "WEIR_SERVICE_ACCOUNT")]
    pub service_account: Option<String>,

    /// Where the app's outbound calls arrive (explicitly or redirected by iptables).
    #[arg(long, env = "WEIR_OUTBOUND_ADDR", default_value = "127.0.0.1:4140")]
    pub outbound_addr: SocketAddr,

    /// Where other proxies connect to reach this service.
    #[arg(long, env = "WEIR_INBOUND_ADDR", default_value = "0.0.0.0:4143")]
    pub inbound_addr: SocketAddr,

    /// Admin listener: /live /ready /metrics /config, POST /shutdown.
    #[arg(long, env = "WEIR_ADMIN_ADDR", default_value = "127.0.0.1:4191")]
    pub admin_addr: SocketAddr,

    /// Where inbound traffic is delivered: the application's own listener.
    #[arg(long, env = "WEIR_APP_ADDR", default_value = "127.0.0.1:8080")]
    pub app_addr: SocketAddr,

    /// Policy file or folder (YAML, design §6); repeatable. SIGHUP re-reads them.
    #[arg(long = "config", env = "WEIR_CONFIG", value_delimiter = ',')]
    pub config: Vec<PathBuf>,

    /// Control plane to take config from (e.g. https://weir-control.weir-system.svc:8090), over
    /// TLS verified with --trust-bundle; several replicas comma-separated, tried from a random
    /// one and failed over in turn. Without it the proxy runs standalone on its --config files.
    #[arg(long, env = "WEIR_CONTROL_PLANE")]
    pub control_plane: Option<String>,

    /// Where the last good control-plane snapshot is kept, so a proxy restarted while the
    /// control plane is down still routes.
    #[arg(long, env = "WEIR_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// How long the first request to a destination this proxy has not seen waits for the
    /// control plane to resolve it (then `503 x-weir-error: discovery-timeout`, or, for a
    /// redirected connection, the original destination).
    #[arg(long, env = "WEIR_RESOLVE_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub resolve_timeout: std::time::Duration,

    /// A destination no request used for this long is dropped from the subscription.
    #[arg(long, env = "WEIR_SUBSCRIPTION_IDLE", default_value = "10m", value_parser = parse_duration)]
    pub subscription_idle: std::time::Duration,

    /// Address peers use to reach this proxy's inbound listener, registered with the control
    /// plane (in Kubernetes: the pod IP and the inbound port). Defaults to --inbound-addr unless
    /// that is a wildcard address.
    #[arg(long, env = "WEIR_ADVERTISE_ADDR")]
    pub advertise_addr: Option<SocketAddr>,

    /// File holding a token from `weirctl token create` (or a projected ServiceAccount token):
    /// the proxy gets its certificate from --control-plane with it and renews it.
    #[arg(
        long,
        env = "WEIR_TOKEN_FILE",
        requires = "control_plane",
        conflicts_with = "cert"
    )]
    pub token_file: Option<PathBuf>,

    /// This proxy's certificate chain (PEM, leaf first, SPIFFE URI SAN), e.g. from
    /// cert-manager or SPIRE; re-read when it changes. Needs --key and --trust-bundle.
    #[arg(long, env = "WEIR_CERT", requires_all = ["key", "trust_bundle"])]
    pub cert: Option<PathBuf>,

    /// Private key of --cert (PEM, PKCS#8 or SEC1).
    #[arg(long, env = "WEIR_KEY", requires = "cert")]
    pub key: Option<PathBuf>,

    /// Roots this mesh trusts (PEM; old and new during a root rotation): they verify the
    /// control plane and, with --cert, peers.
    #[arg(long, env = "WEIR_TRUST_BUNDLE")]
    pub trust_bundle: Option<PathBuf>,

    /// SPIFFE trust domain of this mesh.
    #[arg(long, env = "WEIR_TRUST_DOMAIN", default_value = "weir.local")]
    pub trust_domain: String,

    /// How long SIGTERM waits for requests in flight before exiting.
    #[arg(long, env = "WEIR_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Data-plane worker threads (a sidecar usually needs one). With one, the whole proxy runs
    /// on a single-threaded scheduler; more use tokio's work-stealing one.
    #[arg(long, env = "WEIR_WORKERS", default_value_t = 1)]
    pub workers: usize,

    /// How HTTP/1 requests travel between proxies.
    #[arg(long, env = "WEIR_PEER_PROTOCOL", value_enum, default_value = "h2")]
    pub peer_protocol: PeerProtocol,

    /// How long to wait for a client's first bytes before treating the connection as opaque
    /// TCP (server-speaks-first protocols).
    #[arg(long, env = "WEIR_DETECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub detect_timeout: Duration,

    /// Destination ports proxied as opaque TCP without protocol detection (server-speaks-first
    /// protocols: SMTP, MySQL, PostgreSQL, Redis, Memcached, ...). Comma-separated.
    #[arg(
        long,
        env = "WEIR_OPAQUE_PORTS",
        value_delimiter = ',',
        default_value = "25,587,3306,4444,5432,6379,9300,11211"
    )]
    pub opaque_ports: Vec<u16>,

    /// The kubelet's HTTP probes of the app, as PORT/PATH (e.g. 8080/healthz), comma-separated:
    /// allowed in plaintext (GET/HEAD of exactly that path) even when mTLS is strict.
    /// `weirctl inject` writes them from the pod's probes.
    #[arg(long, env = "WEIR_PROBE_PATHS", value_delimiter = ',')]
    pub probe_paths: Vec<String>,

    /// This pod's name, exported as the `k8s.pod.name` of its spans (Kubernetes: from the
    /// downward API). Falls back to `POD_NAME`. Spans go to `OTEL_EXPORTER_OTLP_ENDPOINT` and/or
    /// --trace-file.
    #[arg(long, env = "WEIR_POD_NAME")]
    pub pod_name: Option<String>,

    /// Finished spans waiting for export; beyond this they are dropped and counted
    /// (`weir_trace_spans_dropped_total`), so a slow collector costs bounded memory.
    #[arg(long, env = "WEIR_TRACE_QUEUE_SIZE", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub trace_queue_size: u32,

    /// Append spans to this file as OTLP/JSON lines (one export request per line, as the
    /// OpenTelemetry Collector's `file` exporter writes them), with or without
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: either one enables tracing, both get every span.
    #[arg(long, env = "WEIR_TRACE_FILE")]
    pub trace_file: Option<PathBuf>,

    /// When the next line would take --trace-file past this size, it is renamed to PATH.1
    /// (replacing the previous one) and a new file is started: at most twice this on disk.
    #[arg(long, env = "WEIR_TRACE_FILE_MAX_BYTES", default_value_t = 16 << 20,
          value_parser = clap::value_parser!(u64).range(weir_trace::MIN_FILE_BYTES..))]
    pub trace_file_max_bytes: u64,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    weir_policy::duration::parse(s)
}
