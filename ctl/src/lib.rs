//! `weirctl`: the command-line client of the control plane's admin API (design §3).
//!
//! The binary only parses arguments and calls [`run`]; everything lives here so the argument
//! parsing and output formats are unit-tested with the library.
//!
//! Layout: `cli` holds the clap definitions, `kind` the document kinds and names, `dispatch`
//! runs a parsed command line. `client` connects and explains gRPC errors, `output` formats
//! tables and documents, `policy` holds the commands on stored documents (apply, get, delete,
//! diff, history, rollback), `status` the proxies' view of the config, `mesh` the rest about
//! the running mesh (endpoints, version), `tokens` the workload tokens (token create, list,
//! revoke), `ca` the roots and their rotation, `trace` the waterfall of a trace, `install` the
//! embedded Kubernetes manifests and `inject` rewrites Kubernetes manifests offline.

mod ca;
mod cli;
mod client;
mod dispatch;
pub mod inject;
pub mod install;
mod kind;
mod mesh;
pub mod output;
mod policy;
mod status;
mod tokens;
mod trace;

use std::process::ExitCode;

pub use ca::CaCommand;
pub use cli::{Cli, Command, DocFormat, ListFormat};
pub use client::Target;
pub use dispatch::run;
pub use kind::Kind;
pub use tokens::{CreateFormat, TokenCommand};
pub use trace::{TraceArgs, TraceFormat};

/// A mistake in how weirctl was called that clap cannot see (e.g. two different namespaces):
/// exits 2 like clap's own usage errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// What a command decided beyond success: `diff` reports "differences found" as exit 1.
pub(crate) type Outcome = anyhow::Result<ExitCode>;
