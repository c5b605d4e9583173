//! `weir-control`: the control plane server (identity CA, policy store, admin API, discovery).
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use weir_control::identity::jwt::{self, JwksLocation, KubernetesConfig};
use weir_control::store::etcd::{ClientCert, EtcdConfig, EtcdTls};
use weir_control::{CaFiles, ServerConfig};

#[derive(Parser)]
#[command(
    name = "weir-control",
    version,
    about = "Weir control plane: identity CA, policy store, discovery"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the discovery, identity and admin gRPC APIs on one port.
    Serve {
        /// Address the gRPC server listens on.
        #[arg(long, env = "WEIR_LISTEN", default_value = "0.0.0.0:8090")]
        listen: SocketAddr,
        /// Plain-HTTP health endpoints for the kubelet: GET /live (200 while running) and
        /// /ready (200 once the store is open and --listen bound, else 503). Off without it.
        #[arg(long, env = "WEIR_ADMIN_ADDR")]
        admin_addr: Option<SocketAddr>,
        /// Directory for the store (policies, generated CA, workload tokens) and the admin token
        /// (created 0700 if missing).
        #[arg(long, env = "WEIR_DATA_DIR", default_value = "/var/lib/weir")]
        data_dir: PathBuf,
        /// SPIFFE trust domain of the mesh's identities.
        #[arg(long, env = "WEIR_TRUST_DOMAIN", default_value = "weir.local")]
        trust_domain: String,
        /// How long a proxy's endpoint stays registered after its stream ends, so a quick
        /// reconnect does not make its service flap.
        #[arg(long, env = "WEIR_LEASE_GRACE", default_value = "10s", value_parser = parse_duration)]
        lease_grace: std::time::Duration,
        /// CA certificate (PEM) that signs workload certificates: a root or an intermediate from
        /// your PKI, optionally followed by the rest of its chain (e.g. cert-manager's tls.crt).
        /// Without it, a root made on first start and kept in the store is used.
        #[arg(long, env = "WEIR_CA_CERT")]
        ca_cert: Option<PathBuf>,
        /// Private key (unencrypted PKCS#8 PEM) of --ca-cert.
        #[arg(long, env = "WEIR_CA_KEY")]
        ca_key: Option<PathBuf>,
        /// Roots proxies trust (PEM). Default: the self-signed certificates in --ca-cert, or the
        /// CA certificate itself.
        // Not WEIR_TRUST_BUNDLE: weirctl and weir-proxy read that one (the roots they verify
        // with), and exporting it for them would make this server demand --ca-cert.
        #[arg(long, env = "WEIR_CA_TRUST_BUNDLE")]
        trust_bundle: Option<PathBuf>,
        /// Lifetime of workload certificates; proxies renew at ~70% of it.
        #[arg(long, env = "WEIR_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
        cert_ttl: std::time::Duration,
        /// DNS names and IP addresses the control plane is dialled by: they go into its serving
        /// certificate (signed by the mesh CA), which proxies and weirctl verify. Repeatable or
        /// comma-separated.
        #[arg(
            long = "server-name",
            env = "WEIR_SERVER_NAMES",
            value_delimiter = ',',
            default_values = weir_control::serving::DEFAULT_SERVER_NAMES
        )]
        server_names: Vec<String>,
        /// Watch Services and EndpointSlices (in-cluster service account, or KUBECONFIG) for
        /// Endpoints, and write the trust-bundle ConfigMap into every namespace.
        #[arg(long, env = "WEIR_KUBERNETES")]
        kubernetes: bool,
        /// Issuer (`iss`) of the cluster's service-account tokens. With it, Identity.Certify
        /// accepts a pod's projected token and certifies its service account.
        #[arg(long, env = "WEIR_KUBERNETES_ISSUER")]
        kubernetes_issuer: Option<String>,
        /// The issuer's keys: a JWKS file, or an https URL (the cluster's /openid/v1/jwks)
        /// fetched with this pod's service-account token and CA.
        #[arg(long, env = "WEIR_KUBERNETES_JWKS", value_parser = JwksLocation::parse)]
        kubernetes_jwks: Option<JwksLocation>,
        /// Audience a service-account token must carry.
        #[arg(long, env = "WEIR_KUBERNETES_AUDIENCE", default_value = jwt::DEFAULT_AUDIENCE)]
        kubernetes_audience: String,
        /// Where documents, tokens and the CA live: `embedded` (a file in the data directory,
        /// one replica) or `etcd:http://H1:2379,http://H2:2379,…` (shared by every replica;
        /// `etcd:https://…` for TLS, see --etcd-ca).
        #[arg(long, env = "WEIR_STORE", default_value = "embedded", value_parser = parse_store)]
        store: StoreSpec,
        /// This replica's name in `weirctl status` (default: the hostname, i.e. the pod name in
        /// Kubernetes). With etcd, a name another live replica holds gets a `-2`, `-3`… suffix.
        #[arg(long, env = "WEIR_REPLICA_NAME")]
        replica_name: Option<String>,
        /// CA certificates (PEM) that verify etcd's serving certificates, for
        /// `--store etcd:https://…`. Without it, the system's roots.
        #[arg(long, env = "WEIR_ETCD_CA")]
        etcd_ca: Option<PathBuf>,
        /// Client certificate (PEM, optionally followed by its chain) for an etcd started with
        /// --client-cert-auth.
        #[arg(long, env = "WEIR_ETCD_CERT")]
        etcd_cert: Option<PathBuf>,
        /// Private key (unencrypted PEM) of --etcd-cert.
        #[arg(long, env = "WEIR_ETCD_KEY")]
        etcd_key: Option<PathBuf>,
    },
}

/// `None`: the embedded store.
#[derive(Debug, Clone)]
struct StoreSpec(Option<EtcdConfig>);

fn parse_store(text: &str) -> Result<StoreSpec, String> {
    if text == "embedded" {
        return Ok(StoreSpec(None));
    }
    EtcdConfig::parse(text).map(|c| StoreSpec(Some(c)))
}

/// Flags of `serve` that only work together: (flag, the flags it needs). Checked after parsing
/// rather than with clap's `requires`, so that the error can name the environment variable
/// that set a flag: an exported WEIR_CA_CERT would otherwise fail a bare `weir-control serve`
/// with "--ca-key was not provided" and nothing on the command line to explain it.
const REQUIRES: &[(&str, &[&str])] = &[
    ("ca_cert", &["ca_key"]),
    ("ca_key", &["ca_cert"]),
    ("trust_bundle", &["ca_cert", "ca_key"]),
    ("kubernetes_issuer", &["kubernetes_jwks"]),
    ("kubernetes_jwks", &["kubernetes_issuer"]),
    ("etcd_cert", &["etcd_key"]),
    ("etcd_key", &["etcd_cert"]),
];

/// Flags of `serve` for TLS to etcd, refused unless `--store` lists `https://` endpoints.
const ETCD_TLS: &[&str] = &["etcd_ca", "etcd_cert", "etcd_key"];

/// Parses the command line; usage errors exit 2 with clap's message and usage.
fn parse() -> Cli {
    let mut cli = Cli::command();
    let matches = cli.get_matches_mut();
    if let Some(("serve", serve_matches)) = matches.subcommand()
        && let Some(serve) = cli.find_subcommand_mut("serve")
    {
        let given = Given {
            serve,
            matches: serve_matches,
        };
        if let Some(message) = missing_requirements(&given) {
            serve
                .error(ErrorKind::MissingRequiredArgument, message)
                .exit();
        }
        if let Some(message) = etcd_tls_without_https(&given) {
            serve.error(ErrorKind::ArgumentConflict, message).exit();
        }
    }
    Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit())
}

/// The flags of `serve` as given, to name them in usage errors.
struct Given<'a> {
    serve: &'a clap::Command,
    matches: &'a ArgMatches,
}

impl Given<'_> {
    /// Where `id` came from; defaults never count as given, as with clap's own `requires`.
    fn source(&self, id: &str) -> Option<ValueSource> {
        self.matches
            .value_source(id)
            .filter(|source| *source != ValueSource::DefaultValue)
    }

    fn arg(&self, id: &str) -> Option<&clap::Arg> {
        self.serve.get_arguments().find(|arg| arg.get_id() == id)
    }

    /// `--ca-cert`.
    fn flag(&self, id: &str) -> String {
        match self.arg(id).and_then(clap::Arg::get_long) {
            Some(long) => format!("--{long}"),
            None => id.to_string(),
        }
    }

    /// `--ca-cert (set by WEIR_CA_CERT)` when the environment gave it, else `--ca-cert`.
    fn named(&self, id: &str) -> String {
        let env = self
            .arg(id)
            .and_then(clap::Arg::get_env)
            .filter(|_| self.source(id) == Some(ValueSource::EnvVariable));
        match env {
            Some(var) => format!("{} (set by {})", self.flag(id), var.to_string_lossy()),
            None => self.flag(id),
        }
    }
}

/// One line per flag of [`REQUIRES`] given without what it needs, e.g. `--trust-bundle (set by
/// WEIR_CA_TRUST_BUNDLE) requires --ca-cert and --ca-key`; `None` when nothing is missing.
fn missing_requirements(given: &Given) -> Option<String> {
    let mut lines = Vec::new();
    for (id, needs) in REQUIRES {
        if given.source(id).is_none() {
            continue;
        }
        let missing: Vec<String> = needs
            .iter()
            .filter(|need| given.source(need).is_none())
            .map(|need| given.flag(need))
            .collect();
        if missing.is_empty() {
            continue;
        }
        lines.push(format!(
            "{} requires {}",
            given.named(id),
            missing.join(" and ")
        ));
    }
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// The [`ETCD_TLS`] flags given with an embedded store or `http://` etcd endpoints, which
/// would otherwise be ignored: an operator who gave a CA expects TLS.
fn etcd_tls_without_https(given: &Given) -> Option<String> {
    let flags: Vec<String> = ETCD_TLS
        .iter()
        .filter(|id| given.source(id).is_some())
        .map(|id| given.named(id))
        .collect();
    if flags.is_empty() {
        return None;
    }
    let (verb, flags) = match flags.as_slice() {
        [one] => ("is", one.clone()),
        many => ("are", many.join(", ")),
    };
    let store = given.matches.get_one::<StoreSpec>("store");
    match store.and_then(|spec| spec.0.as_ref()) {
        Some(etcd) if etcd.https() => None,
        Some(etcd) => Some(format!(
            "{flags} {verb} for TLS to etcd, but {} lists http:// endpoints ({}): \
             use https:// when etcd serves TLS, or drop the TLS flags",
            given.named("store"),
            etcd.endpoints.join(",")
        )),
        None => Some(format!(
            "{flags} {verb} for TLS to etcd, but the store is embedded: \
             add --store etcd:https://HOST:PORT[,https://HOST:PORT…]"
        )),
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    weir_policy::duration::parse(text)
}

fn main() -> anyhow::Result<()> {
    let Command::Serve {
        listen,
        admin_addr,
        data_dir,
        trust_domain,
        lease_grace,
        ca_cert,
        ca_key,
        trust_bundle,
        cert_ttl,
        server_names,
        kubernetes,
        kubernetes_issuer,
        kubernetes_jwks,
        kubernetes_audience,
        store,
        replica_name,
        etcd_ca,
        etcd_cert,
        etcd_key,
    } = parse().command;
    anyhow::ensure!(!cert_ttl.is_zero(), "--cert-ttl must be positive");
    anyhow::ensure!(
        kubernetes_issuer
            .as_deref()
            .is_none_or(|i| !i.trim().is_empty()),
        "--kubernetes-issuer must not be empty: give the `iss` of the cluster's tokens"
    );
    anyhow::ensure!(
        !kubernetes_audience.trim().is_empty(),
        "--kubernetes-audience must not be empty"
    );
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = ServerConfig {
        listen,
        data_dir,
        trust_domain,
        lease_grace,
        // `parse` makes --ca-cert and --ca-key come together.
        ca: ca_cert.zip(ca_key).map(|(cert, key)| CaFiles {
            cert,
            key,
            trust_bundle,
        }),
        cert_ttl,
        server_names,
        kubernetes: None,
        // `parse` makes --kubernetes-issuer and --kubernetes-jwks come together.
        kubernetes_tokens: kubernetes_issuer
            .zip(kubernetes_jwks)
            .map(|(issuer, jwks)| KubernetesConfig {
                audience: kubernetes_audience,
                ..KubernetesConfig::new(issuer, jwks)
            }),
        // `parse` makes --etcd-cert and --etcd-key come together, and only with https://.
        etcd: store.0.map(|etcd| EtcdConfig {
            tls: EtcdTls {
                ca: etcd_ca,
                client: etcd_cert
                    .zip(etcd_key)
                    .map(|(cert, key)| ClientCert { cert, key }),
            },
            ..etcd
        }),
        replica: replica_name,
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let mut config = config;
        if kubernetes {
            config.kubernetes = Some(kube::Config::infer().await.context(
                "--kubernetes: no Kubernetes API configuration (neither the in-cluster service \
                 account under /var/run/secrets/kubernetes.io/serviceaccount nor KUBECONFIG)",
            )?);
        }
        let shutdown = shutdown_signal()?;
        let readiness = match admin_addr {
            Some(addr) => {
                let health = weir_control::health::bind(addr).await?;
                let readiness = health.readiness();
                let store = health.store_health();
                tokio::spawn(health.serve());
                Some((readiness, store))
            }
            None => None,
        };
        let bound = weir_control::bind(config).await?;
        if let Some((_, store)) = &readiness {
            bound.watch_store(store.clone());
        }
        let readiness = readiness.map(|(r, _)| r);
        let ready = |ready| readiness.iter().for_each(|r| r.set(ready));
        ready(true);
        bound
            .serve(async {
                shutdown.await;
                // Out of the Service's endpoints while the streams drain.
                ready(false);
            })
            .await?;
        anyhow::Ok(())
    })
}

/// Resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirements_name_flags_of_serve() {
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").expect("serve");
        let flags = REQUIRES
            .iter()
            .flat_map(|(id, needs)| std::iter::once(id).chain(needs.iter()));
        for id in flags.chain(ETCD_TLS).chain(&["store"]) {
            assert!(
                serve.get_arguments().any(|arg| arg.get_id() == *id),
                "{id} is not a flag of serve"
            );
        }
    }

    #[test]
    fn command_is_consistent() {
        Cli::command().debug_assert();
    }
}
