//! `weir-proxy init`: the pod's iptables rules for transparent interception (the init container).
mod rules;

use std::io::Write as _;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::args::InitArgs;
use rules::{Family, INBOUND_CHAIN, OUTBOUND_CHAIN, Plan};

/// `iptables-restore` flags: keep the tables' other rules; `-w`: legacy iptables takes the
/// node-wide xtables lock, so wait for it rather than fail when another pod's init holds it.
const RESTORE_ARGS: [&str; 3] = ["--noflush", "-w", "30"];

pub fn run(args: &InitArgs) -> anyhow::Result<()> {
    let plan = Plan {
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        proxy_uid: args.proxy_uid,
        skip_inbound: args.skip_inbound_ports.clone(),
        skip_outbound: args.skip_outbound_ports.clone(),
        inbound_ports: args.inbound_ports.clone(),
        outbound_ports: args.outbound_ports.clone(),
    };
    let backend = Backend::detect(args.iptables_mode.as_deref())?;
    let mut families = vec![Family::V4];
    if !args.no_ipv6 && std::path::Path::new("/proc/net/if_inet6").exists() {
        families.push(Family::V6);
    }
    for family in families {
        let saved = if args.dry_run && !args.cleanup {
            // A dry run shows what a first run writes without asking the kernel.
            String::new()
        } else {
            backend.save(family)?
        };
        let present: Vec<_> = rules::jumps()
            .into_iter()
            .filter(|(chain, spec)| {
                let line = format!("-A {chain} {spec}");
                saved.lines().any(|l| l == line)
            })
            .collect();
        let input = if args.cleanup {
            let declared = [INBOUND_CHAIN, OUTBOUND_CHAIN].map(|c| format!(":{c} "));
            let chains = saved
                .lines()
                .any(|l| declared.iter().any(|d| l.starts_with(d.as_str())));
            rules::cleanup_input(&present, chains)
        } else {
            let missing: Vec<_> = rules::jumps()
                .into_iter()
                .filter(|j| !present.contains(j))
                .collect();
            rules::restore_input(&plan, family, &missing)
        };
        if args.dry_run {
            println!("# {} {}", backend.restore(family), RESTORE_ARGS.join(" "));
            print!("{input}");
            continue;
        }
        backend.restore_input(family, &input)?;
    }
    Ok(())
}

/// Which iptables the node uses: nft or legacy. Rules written to the other one would be
/// ignored by the kernel's active ruleset, so pick the one that already holds rules.
struct Backend {
    suffix: &'static str,
}

impl Backend {
    fn detect(forced: Option<&str>) -> anyhow::Result<Self> {
        match forced {
            Some("legacy") => return Ok(Self { suffix: "-legacy" }),
            Some("nft") => return Ok(Self { suffix: "-nft" }),
            Some("auto") | None => {}
            Some(other) => bail!("--iptables-mode: must be auto, legacy or nft, got {other:?}"),
        }
        let count = |suffix: &str| -> usize {
            Command::new(format!("iptables{suffix}-save"))
                .stderr(Stdio::null())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .filter(|l| l.starts_with("-A "))
                        .count()
                })
                .unwrap_or(0)
        };
        let (legacy, nft) = (count("-legacy"), count("-nft"));
        let suffix = if legacy > nft {
            "-legacy"
        } else if nft > 0 || which("iptables-nft-restore") {
            "-nft"
        } else if which("iptables-legacy-restore") {
            "-legacy"
        } else {
            ""
        };
        Ok(Self { suffix })
    }

    fn tool(&self, family: Family, what: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        format!("{base}{}{what}", self.suffix)
    }

    fn restore(&self, family: Family) -> String {
        self.tool(family, "-restore")
    }

    fn save(&self, family: Family) -> anyhow::Result<String> {
        let cmd = format!("{} -t nat", self.tool(family, "-save"));
        let out = Command::new(self.tool(family, "-save"))
            .args(["-t", "nat"])
            .output()
            .with_context(|| format!("cannot run `{cmd}`"))?;
        succeeded(&cmd, &out, "")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn restore_input(&self, family: Family, input: &str) -> anyhow::Result<()> {
        let cmd = format!("{} {}", self.restore(family), RESTORE_ARGS.join(" "));
        let mut child = Command::new(self.restore(family))
            .args(RESTORE_ARGS)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run `{cmd}`"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .with_context(|| format!("writing the rules to `{cmd}`"))?;
        }
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for `{cmd}`"))?;
        succeeded(&cmd, &out, &format!("\ninput was:\n{input}"))
    }
}

/// A failed command is reported with the command line, its exit status and its stderr.
fn succeeded(cmd: &str, out: &std::process::Output, extra: &str) -> anyhow::Result<()> {
    if !out.status.success() {
        bail!(
            "`{cmd}` failed ({}): {}{extra}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}
