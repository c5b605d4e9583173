//! `weirctl`: the command-line client of the control plane. Until the control plane lands it
//! offers what works offline: validating policy files with the same rules the proxy applies.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "weirctl", version, about = "Manage Weir policy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check policy documents (files, folders or `-` for stdin) without applying them.
    Validate {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the client version.
    Version,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate { files } => match weir_policy::load_paths(&files) {
            Ok(docs) => {
                for doc in &docs {
                    println!("{}: valid", doc.key());
                }
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(1)
            }
        },
        Command::Version => {
            println!("weirctl {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
    }
}
