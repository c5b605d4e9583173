//! Running a parsed command line: each subcommand to the module that carries it out, errors
//! to stderr and exit codes.

use std::process::ExitCode;

use crate::{
    Cli, Command, Outcome, Target, Usage, ca, inject, install, mesh, policy, status, tokens, trace,
};

/// Runs one parsed command line; errors are printed to stderr here.
pub async fn run(cli: Cli) -> ExitCode {
    let diff = matches!(cli.command, Command::Diff { .. });
    match dispatch(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", format_error(&err));
            if diff || err.is::<Usage>() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// Server validation errors are many lines; keep them as sent. A context chain
/// ("cannot read …: No such file") reads as one line.
fn format_error(err: &anyhow::Error) -> String {
    let mut out = err.to_string();
    for cause in err.chain().skip(1) {
        out.push_str(": ");
        out.push_str(&cause.to_string());
    }
    out
}

async fn dispatch(cli: Cli) -> Outcome {
    // Resolved per command so that offline `validate` never reads a token file.
    let target = || {
        Target::resolve(
            &cli.server,
            cli.token.as_deref(),
            cli.token_file.as_deref(),
            cli.trust_bundle.as_deref(),
        )
    };
    match cli.command {
        Command::Validate { files } => policy::validate(&files),
        Command::Apply { files, dry_run } => policy::apply(&target()?, &files, dry_run).await,
        Command::Get {
            kind,
            name,
            namespace,
            output,
        } => {
            policy::get(
                &target()?,
                kind,
                name.as_deref(),
                namespace.as_deref(),
                output,
            )
            .await
        }
        Command::Delete {
            kind,
            name,
            namespace,
        } => {
            let (namespace, name) = kind.object(&name, namespace.as_deref())?;
            policy::delete(&target()?, kind, &namespace, &name).await
        }
        Command::Diff { files } => policy::diff(&target()?, &files).await,
        Command::History {
            kind,
            name,
            namespace,
            output,
        } => {
            let (namespace, name) = kind.object(&name, namespace.as_deref())?;
            policy::history(&target()?, kind, &namespace, &name, output).await
        }
        Command::Rollback {
            kind,
            name,
            namespace,
            to,
        } => {
            let (namespace, name) = kind.object(&name, namespace.as_deref())?;
            policy::rollback(&target()?, kind, &namespace, &name, to).await
        }
        Command::Status { output } => status::run(&target()?, output).await,
        Command::Endpoints {
            service,
            namespace,
            output,
        } => mesh::endpoints(&target()?, service.as_deref(), namespace.as_deref(), output).await,
        Command::Token { command } => tokens::run(&target()?, command).await,
        Command::Ca { command } => ca::run(&target()?, command).await,
        Command::Version => mesh::version(&target()?).await,
        Command::Trace(args) => trace::run(args).await,
        Command::Inject {
            files,
            legacy_sidecar,
        } => inject::run(
            &files,
            inject::Mode::Inject {
                legacy: legacy_sidecar,
            },
        ),
        Command::Uninject { files } => inject::run(&files, inject::Mode::Uninject),
        Command::Install => install::run(),
    }
}
