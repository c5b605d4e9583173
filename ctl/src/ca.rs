//! `weirctl ca show|rotate`: the mesh's roots and the three-phase root rotation
//! (prepare → activate → finish, see `identity::rotation`).

use std::process::ExitCode;

use clap::Subcommand;
use weir_proto::admin::v1::{CaInfo, GetCaRequest, RotateCaRequest};

use super::output::{self, MAX_WIDTH, Table};
use super::{ListFormat, Outcome, Target};

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Show the roots in the trust bundle, which one signs, and the rotation phase.
    Show {
        #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
        output: ListFormat,
    },
    /// Run one root rotation phase. In order, waiting for each to reach the proxies:
    /// `prepare` (a new root joins the bundle), `activate` (it signs; proxies renew within
    /// seconds), `finish` (the old root leaves the bundle; refused for 30s after activate
    /// unless --force).
    Rotate {
        #[arg(value_parser = ["prepare", "activate", "finish"])]
        phase: String,
        /// finish: do not wait for proxies to renew.
        #[arg(long)]
        force: bool,
        #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
        output: ListFormat,
    },
}

pub async fn run(target: &Target, command: CaCommand) -> Outcome {
    let mut client = target.connect().await?;
    let (info, format) = match command {
        CaCommand::Show { output } => (
            client
                .get_ca(GetCaRequest {})
                .await
                .map_err(|status| target.explain(&status))?,
            output,
        ),
        CaCommand::Rotate {
            phase,
            force,
            output,
        } => (
            client
                .rotate_ca(RotateCaRequest { phase, force })
                .await
                .map_err(|status| target.explain(&status))?,
            output,
        ),
    };
    let info = info.into_inner();
    match format {
        ListFormat::Table | ListFormat::Wide => output::emit(&render(&info))?,
        ListFormat::Json => output::emit(&output::pretty_json(&json(&info))?)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn render(info: &CaInfo) -> String {
    let source = if info.from_files {
        "--ca-cert files"
    } else {
        "generated"
    };
    let mut out = format!(
        "CA: {source}, generation {}, rotation phase {}\n",
        info.generation, info.phase
    );
    let mut table = Table::new(&["ROLE", "SHA256", "EXPIRES", "SUBJECT"]);
    for root in &info.roots {
        table.row(vec![
            root.role.clone(),
            root.sha256.chars().take(16).collect(),
            output::timestamp(root.not_after_unix_ms),
            root.subject.clone(),
        ]);
    }
    out.push_str(&table.render(MAX_WIDTH));
    out
}

fn json(info: &CaInfo) -> serde_json::Value {
    serde_json::json!({
        "generation": info.generation,
        "phase": info.phase,
        "fromFiles": info.from_files,
        "activated": (info.activated_unix_ms > 0).then(|| output::timestamp(info.activated_unix_ms)),
        "roots": info.roots.iter().map(|r| serde_json::json!({
            "role": r.role,
            "sha256": r.sha256,
            "expires": output::timestamp(r.not_after_unix_ms),
            "subject": r.subject,
        })).collect::<Vec<_>>(),
    })
}
