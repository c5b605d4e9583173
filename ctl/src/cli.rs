//! The command line: clap's definitions of weirctl's global flags and subcommands, which are
//! also its `--help`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::{CaCommand, Kind, TokenCommand, TraceArgs};

const EXIT_HELP: &str = "\
Exit status: 0 success, 1 error (validation, server, connection), 2 usage error.
`weirctl diff` follows `kubectl diff`: 0 no differences, 1 differences found, 2 error.";

#[derive(Debug, Parser)]
#[command(
    name = "weirctl",
    version,
    about = "Manage a Weir mesh through its control plane",
    after_help = EXIT_HELP
)]
pub struct Cli {
    /// Control plane admin API (TLS); several replicas comma-separated, the first that answers
    /// is used.
    #[arg(
        long,
        env = "WEIR_SERVER",
        default_value = "https://127.0.0.1:8090",
        global = true
    )]
    pub server: String,
    /// Roots that verify the control plane's certificate: DATA_DIR/trust-bundle.pem of
    /// `weir-control serve`, or the mesh's trust bundle.
    #[arg(long, env = "WEIR_TRUST_BUNDLE", global = true)]
    pub trust_bundle: Option<PathBuf>,
    /// Admin token (see DATA_DIR/admin.token of `weir-control serve`).
    #[arg(long, env = "WEIR_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// File holding the admin token, e.g. DATA_DIR/admin.token; --token wins if both are set.
    #[arg(long, env = "WEIR_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update documents from files, folders (their *.yaml/*.yml) or `-` for stdin.
    ///
    /// All documents are checked locally first, then sent in one request: the control plane
    /// applies all of them or none.
    Apply {
        #[arg(
            short = 'f',
            long = "filename",
            required = true,
            value_name = "FILE|DIR|-"
        )]
        files: Vec<PathBuf>,
        /// Validate on the server and report what would change, without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show stored documents.
    ///
    /// KIND is meshconfig (mc), servicepolicy (servicepolicies, sp) or endpoints (ep). Without
    /// -n every namespace is listed; NAME may also be written NAMESPACE/NAME.
    ///
    /// -o yaml prints multi-document YAML that `weirctl apply -f` accepts again. -o json prints
    /// an array of {"kind", "namespace", "name", "revision", "updated", "document"} where
    /// "document" is the policy document itself.
    Get {
        /// meshconfig|mc, servicepolicy|servicepolicies|sp, endpoints|ep.
        kind: Kind,
        /// NAME or NAMESPACE/NAME; without a namespace, NAME is looked up in every namespace.
        name: Option<String>,
        /// Only this namespace (default: every namespace).
        #[arg(short, long)]
        namespace: Option<String>,
        /// table, yaml (re-applicable documents) or json (documents with revisions).
        #[arg(short, long, value_enum, default_value_t = DocFormat::Table)]
        output: DocFormat,
    },
    /// Delete a stored document (its history is kept: `weirctl rollback` can restore it).
    Delete {
        /// meshconfig|mc, servicepolicy|servicepolicies|sp, endpoints|ep.
        kind: Kind,
        /// NAME or NAMESPACE/NAME; the namespace defaults to `default`.
        name: String,
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Show how the documents in files differ from the stored ones, as a unified diff.
    ///
    /// Like `kubectl diff`, exits 0 when nothing differs, 1 when something does, 2 on error.
    Diff {
        #[arg(
            short = 'f',
            long = "filename",
            required = true,
            value_name = "FILE|DIR|-"
        )]
        files: Vec<PathBuf>,
    },
    /// List the stored revisions of a document, oldest first (the server keeps the last 20).
    History {
        /// meshconfig|mc, servicepolicy|servicepolicies|sp, endpoints|ep.
        kind: Kind,
        /// NAME or NAMESPACE/NAME; the namespace defaults to `default`.
        name: String,
        #[arg(short, long)]
        namespace: Option<String>,
        #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
        output: ListFormat,
    },
    /// Make an earlier revision current again (as a new revision).
    Rollback {
        /// meshconfig|mc, servicepolicy|servicepolicies|sp, endpoints|ep.
        kind: Kind,
        /// NAME or NAMESPACE/NAME; the namespace defaults to `default`.
        name: String,
        #[arg(short, long)]
        namespace: Option<String>,
        /// Revision to restore (see `weirctl history`).
        #[arg(long, value_name = "REV")]
        to: u64,
    },
    /// Show which config version the proxies acknowledged: a summary by service, then the
    /// proxies that are NACKing, behind or disconnected (`-o wide`: every proxy).
    Status {
        #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
        output: ListFormat,
    },
    /// Show where services run: registered proxies and static Endpoints documents.
    Endpoints {
        /// Only this service (default: every service).
        service: Option<String>,
        /// Only this namespace (default: every namespace).
        #[arg(short, long)]
        namespace: Option<String>,
        #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
        output: ListFormat,
    },
    /// Check policy documents offline, with the rules the proxy and control plane apply.
    Validate {
        #[arg(
            short = 'f',
            long = "filename",
            required = true,
            value_name = "FILE|DIR|-"
        )]
        files: Vec<PathBuf>,
    },
    /// The mesh's roots and their rotation (prepare, activate, finish).
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Manage workload tokens: the credential a proxy presents to get its certificate.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Show a trace as a waterfall, or list recent traces: from Jaeger or from span files (--file).
    Trace(TraceArgs),
    /// Add the Weir proxy to the pods of Kubernetes manifests; prints the result.
    ///
    /// Rewrites every Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob and Pod
    /// (also inside a `List`) and prints every other document unchanged. The pods get the
    /// `weir-init` iptables init container and the proxy as a native sidecar (Kubernetes
    /// 1.29+); app containers are not changed. Injecting injected output changes nothing.
    /// Annotations (weir.dev/inject: disabled, weir.dev/skip-inbound-ports, ...) are described
    /// in deploy/README.md. Works offline: no control plane is contacted.
    ///
    /// Example: kubectl get deploy -o yaml | weirctl inject -f - | kubectl apply -f -
    Inject {
        #[arg(
            short = 'f',
            long = "filename",
            required = true,
            value_name = "FILE|DIR|-"
        )]
        files: Vec<PathBuf>,
        /// The proxy as the first regular container with a postStart hook that waits for it,
        /// for clusters older than 1.29 (no native sidecars).
        #[arg(long)]
        legacy_sidecar: bool,
    },
    /// Remove what `weirctl inject` added, restoring the manifests it was given.
    Uninject {
        #[arg(
            short = 'f',
            long = "filename",
            required = true,
            value_name = "FILE|DIR|-"
        )]
        files: Vec<PathBuf>,
    },
    /// Print the Kubernetes manifests of the control plane and Jaeger (namespace weir-system),
    /// the same objects as `kubectl kustomize deploy`: `weirctl install | kubectl apply -f -`.
    ///
    /// Offline: contacts no server. For provider-specific settings (EKS, GKE) or a single node
    /// use the overlays in deploy/overlays with `kubectl apply -k`.
    Install,
    /// Print the client and server versions.
    Version,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DocFormat {
    Table,
    Yaml,
    Json,
}

/// `wide` is accepted by every list, as in kubectl: lists without more to show print their
/// table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Table,
    /// every row; for `status` every proxy instead of the summary
    Wide,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("weirctl").chain(args.iter().copied()))
    }

    #[test]
    fn parses_commands() {
        let cli = parse(&[
            "--server",
            "https://cp:8090",
            "--token",
            "t",
            "get",
            "sp",
            "-n",
            "shop",
            "-o",
            "yaml",
        ])
        .expect("parse");
        assert_eq!(cli.server, "https://cp:8090");
        assert_eq!(cli.token.as_deref(), Some("t"));
        match cli.command {
            Command::Get {
                kind,
                name,
                namespace,
                output,
            } => {
                assert_eq!(kind, Kind::ServicePolicy);
                assert_eq!(name, None);
                assert_eq!(namespace.as_deref(), Some("shop"));
                assert_eq!(output, DocFormat::Yaml);
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = parse(&["apply", "-f", "a.yaml", "-f", "dir", "--dry-run"]).expect("parse");
        assert!(matches!(
            cli.command,
            Command::Apply { ref files, dry_run: true } if files.len() == 2
        ));
        let cli = parse(&["inject", "-f", "-", "--legacy-sidecar"]).expect("parse");
        assert!(matches!(
            cli.command,
            Command::Inject { ref files, legacy_sidecar: true } if files == &[PathBuf::from("-")]
        ));
        let cli = parse(&["uninject", "-f", "a.yaml", "-f", "dir"]).expect("parse");
        assert!(matches!(cli.command, Command::Uninject { ref files } if files.len() == 2));
        let cli = parse(&["rollback", "sp", "shop/payments", "--to", "3"]).expect("parse");
        assert!(matches!(cli.command, Command::Rollback { to: 3, .. }));
        // Global flags work after the subcommand too.
        let cli = parse(&["status", "-o", "json", "--token-file", "/x"]).expect("parse");
        assert_eq!(cli.token_file, Some(PathBuf::from("/x")));
        assert!(matches!(
            cli.command,
            Command::Status {
                output: ListFormat::Json
            }
        ));
        let cli = parse(&["status", "-o", "wide"]).expect("parse");
        assert!(matches!(
            cli.command,
            Command::Status {
                output: ListFormat::Wide
            }
        ));
        // kubectl accepts `-o wide` on every list; ours print their table.
        for args in [
            &["endpoints", "-o", "wide"][..],
            &["token", "list", "-o", "wide"],
        ] {
            parse(args).expect("wide is accepted");
        }
    }

    #[test]
    fn usage_errors_exit_2() {
        for args in [
            &["get", "pods"][..],
            &["apply"],
            &["rollback", "sp", "x"],
            &["status", "-o", "yaml"],
            &["history", "sp"],
            &["frobnicate"],
            &["inject"],
            &["uninject", "--legacy-sidecar", "-f", "x"],
        ] {
            let err = parse(args).expect_err("usage error");
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn help_documents_exit_codes_and_json() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        cmd.build();
        let help = cmd.render_long_help().to_string();
        assert!(help.contains("1 differences found"));
        assert!(help.contains("https://127.0.0.1:8090"));
        let get = cmd
            .find_subcommand_mut("get")
            .map(|c| c.render_long_help().to_string())
            .unwrap_or_default();
        assert!(get.contains("\"document\""));
    }
}
