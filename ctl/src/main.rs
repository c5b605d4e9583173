//! `weirctl`: the command-line client of the control plane. Everything but argument parsing
//! lives in the `weirctl` library so it is tested there.
use std::process::ExitCode;

use clap::Parser;
use weirctl::{Cli, run};

fn main() -> ExitCode {
    // Usage errors exit 2 here, from clap, before any runtime is started.
    let cli = Cli::parse();
    // One thread is plenty for a handful of sequential RPCs and starts faster.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(cli))
}
