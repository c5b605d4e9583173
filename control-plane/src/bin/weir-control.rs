//! `weir-control`: the control plane. The server lands with the control-plane issue; until
//! then the binary exists so packaging, manifests and `--help` are already in their final shape.
use clap::{Parser, Subcommand};

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
    /// Serve the discovery, identity and admin gRPC APIs.
    Serve {
        /// Address the gRPC server listens on.
        #[arg(long, env = "WEIR_LISTEN", default_value = "0.0.0.0:8090")]
        listen: std::net::SocketAddr,
        /// Directory for the store and the admin token.
        #[arg(long, env = "WEIR_DATA_DIR", default_value = "/var/lib/weir")]
        data_dir: std::path::PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve { .. } => anyhow::bail!(
            "weir-control serve is not implemented yet; run proxies standalone with `weir-proxy --config FILE`"
        ),
    }
}
