//! `weirctl status`: a summary by service that stays short at 10,000 proxies, every proxy with
//! `-o wide`, and in both the proxies that need attention first.

use std::collections::HashMap;
use std::process::ExitCode;

use weir_proto::admin::v1::{ProxyStatus, StatusRequest, StatusResponse};

use crate::output::{self, MAX_WIDTH, Table, or_dash};
use crate::{ListFormat, Outcome, Target};

/// The summary names at most this many proxies; the rest are one `-o wide` away.
const ATTENTION_ROWS: usize = 20;
/// Distinct NACK errors shown under the summary: one bad policy is the same error from every
/// proxy of a service, and the per-proxy rows have no room for it.
const SHOWN_ERRORS: usize = 5;
/// ACKED versions shown per service: a rollout has two; more means something is stuck, and
/// the list would push the other columns off the line.
const SHOWN_VERSIONS: usize = 3;

pub async fn run(target: &Target, format: ListFormat) -> Outcome {
    let mut client = target.connect().await?;
    let response = client
        .status(StatusRequest {})
        .await
        .map_err(|status| target.explain(&status))?
        .into_inner();
    // On stderr, so scripts reading the table or the JSON are not thrown off.
    if !response.warning.is_empty() {
        eprintln!("warning: {}", response.warning);
    }
    match format {
        ListFormat::Table => output::emit(&summary_table(&response))?,
        ListFormat::Wide => output::emit(&wide_table(&response))?,
        ListFormat::Json => output::emit(&status_json(&response)?)?,
    }
    Ok(ExitCode::SUCCESS)
}

// === Health ===

/// What a proxy asks of the reader, most urgent first: the order rows are sorted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Health {
    Nacking,
    Behind,
    Disconnected,
    Current,
}

impl Health {
    /// A disconnected proxy counts only as that: its ACK and NACK are from its last stream, and
    /// rows of pods long gone must not crowd out live proxies that are stuck.
    fn of(p: &ProxyStatus, version: u64) -> Health {
        if !p.connected {
            Health::Disconnected
        } else if has_nack(p) {
            Health::Nacking
        } else if p.acked_version < version {
            Health::Behind
        } else {
            Health::Current
        }
    }
}

fn has_nack(p: &ProxyStatus) -> bool {
    !p.last_nack_error.is_empty() || p.last_nack_version != 0
}

/// Every proxy with its health, problems first, then by service, namespace and identity so
/// that runs compare line by line. One sort: n log n at any size.
fn ordered(response: &StatusResponse) -> Vec<(Health, &ProxyStatus)> {
    let mut proxies: Vec<_> = response
        .proxies
        .iter()
        .map(|p| (Health::of(p, response.version), p))
        .collect();
    proxies.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
    proxies
}

fn order_key<'a>((health, p): &(Health, &'a ProxyStatus)) -> (Health, [&'a str; 5]) {
    let p: &'a ProxyStatus = p;
    (
        *health,
        [
            &p.service,
            &p.namespace,
            &p.identity,
            &p.inbound_address,
            &p.replica,
        ],
    )
}

// === Summary ===

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    proxies: usize,
    connected: usize,
    nacking: usize,
    behind: usize,
    disconnected: usize,
}

impl Counts {
    fn add(&mut self, health: Health) {
        self.proxies += 1;
        match health {
            Health::Nacking => self.nacking += 1,
            Health::Behind => self.behind += 1,
            Health::Disconnected => self.disconnected += 1,
            Health::Current => {}
        }
        if health != Health::Disconnected {
            self.connected += 1;
        }
    }

    /// A service sorts by its worst proxy.
    fn worst(&self) -> Health {
        if self.nacking > 0 {
            Health::Nacking
        } else if self.behind > 0 {
            Health::Behind
        } else if self.disconnected > 0 {
            Health::Disconnected
        } else {
            Health::Current
        }
    }
}

/// One (service, namespace): its counts and how many connected proxies ACKed each version
/// (a disconnected proxy's ACK says nothing about the config in force).
#[derive(Debug)]
struct Service<'a> {
    service: &'a str,
    namespace: &'a str,
    counts: Counts,
    versions: HashMap<u64, usize>,
}

impl Service<'_> {
    /// Most common first, then newest first.
    fn versions(&self) -> Vec<(u64, usize)> {
        let mut versions: Vec<_> = self.versions.iter().map(|(v, n)| (*v, *n)).collect();
        versions.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
        versions
    }
}

/// The services, those with problems first (NACKing, then behind, then disconnected), then by
/// name; and the totals over every proxy.
fn summarize(response: &StatusResponse) -> (Vec<Service<'_>>, Counts) {
    let mut totals = Counts::default();
    let mut services: HashMap<(&str, &str), Service<'_>> = HashMap::new();
    for p in &response.proxies {
        let health = Health::of(p, response.version);
        totals.add(health);
        let entry = services
            .entry((p.service.as_str(), p.namespace.as_str()))
            .or_insert_with(|| Service {
                service: &p.service,
                namespace: &p.namespace,
                counts: Counts::default(),
                versions: HashMap::new(),
            });
        entry.counts.add(health);
        if p.connected {
            *entry.versions.entry(p.acked_version).or_default() += 1;
        }
    }
    let mut services: Vec<_> = services.into_values().collect();
    services.sort_by(|a, b| {
        (a.counts.worst(), a.service, a.namespace).cmp(&(b.counts.worst(), b.service, b.namespace))
    });
    (services, totals)
}

/// Today's first line (scripts read it) plus what needs attention.
fn header(response: &StatusResponse, totals: &Counts) -> String {
    format!(
        "config version {}; {} of {} proxies connected; {} NACKing, {} behind, {} disconnected\n",
        response.version,
        totals.connected,
        totals.proxies,
        totals.nacking,
        totals.behind,
        totals.disconnected
    )
}

/// `42 (998), 41* (2)`: `*` marks versions behind the current one.
fn acked_cell(service: &Service<'_>, version: u64) -> String {
    let versions = service.versions();
    if versions.is_empty() {
        return "-".into();
    }
    let mut cells: Vec<String> = versions
        .iter()
        .take(SHOWN_VERSIONS)
        .map(|(v, n)| format!("{}{} ({n})", v, if *v < version { "*" } else { "" }))
        .collect();
    if versions.len() > SHOWN_VERSIONS {
        cells.push("…".into());
    }
    cells.join(", ")
}

/// The default: a header, one row per service, then at most [`ATTENTION_ROWS`] proxies that
/// are NACKing, behind or disconnected, in the per-proxy format of `-o wide`, and their NACK
/// errors. Its length grows with the services, not the proxies.
fn summary_table(response: &StatusResponse) -> String {
    let (services, totals) = summarize(response);
    let mut out = header(response, &totals);
    if response.proxies.is_empty() {
        return out;
    }
    let mut table = Table::new(&[
        "SERVICE",
        "NAMESPACE",
        "PROXIES",
        "CONNECTED",
        "ACKED",
        "NACKING",
    ]);
    for s in &services {
        table.row([
            or_dash(s.service),
            or_dash(s.namespace),
            s.counts.proxies.to_string(),
            s.counts.connected.to_string(),
            acked_cell(s, response.version),
            s.counts.nacking.to_string(),
        ]);
    }
    out.push_str(&table.render(MAX_WIDTH));
    let attention: Vec<_> = ordered(response)
        .into_iter()
        .take_while(|(health, _)| *health != Health::Current)
        .collect();
    if attention.is_empty() {
        return out;
    }
    out.push_str("\nneeds attention:\n");
    let shown = attention.iter().take(ATTENTION_ROWS).map(|(_, p)| *p);
    out.push_str(&proxy_table(shown, response.version));
    if attention.len() > ATTENTION_ROWS {
        out.push_str(&format!(
            "… and {} more: weirctl status -o wide\n",
            attention.len() - ATTENTION_ROWS
        ));
    }
    out.push_str(&nack_errors(&attention));
    out
}

/// The NACKing proxies' errors, most common first, one line each: `3 proxies at v42: …`.
fn nack_errors(attention: &[(Health, &ProxyStatus)]) -> String {
    let mut errors: HashMap<(u64, &str), usize> = HashMap::new();
    for (_, p) in attention.iter().filter(|(h, _)| *h == Health::Nacking) {
        *errors
            .entry((p.last_nack_version, p.last_nack_error.as_str()))
            .or_default() += 1;
    }
    if errors.is_empty() {
        return String::new();
    }
    let mut errors: Vec<_> = errors.into_iter().collect();
    errors.sort_by(|((va, ea), na), ((vb, eb), nb)| (nb, vb, ea).cmp(&(na, va, eb)));
    let mut out = String::from("\nNACK errors:\n");
    for ((version, error), count) in errors.iter().take(SHOWN_ERRORS) {
        let proxies = if *count == 1 { "proxy" } else { "proxies" };
        let line = format!(
            "  {count} {proxies} at v{version}: {}",
            output::one_line(error)
        );
        out.push_str(&output::truncate(&line, MAX_WIDTH));
        out.push('\n');
    }
    if errors.len() > SHOWN_ERRORS {
        out.push_str(&format!(
            "  … and {} more: weirctl status -o json\n",
            errors.len() - SHOWN_ERRORS
        ));
    }
    out
}

// === Per proxy ===

/// `-o wide`: the header, then every proxy, problems first.
fn wide_table(response: &StatusResponse) -> String {
    let (_, totals) = summarize(response);
    let mut out = header(response, &totals);
    if response.proxies.is_empty() {
        return out;
    }
    let proxies = ordered(response).into_iter().map(|(_, p)| p);
    out.push_str(&proxy_table(proxies, response.version));
    out
}

/// One row per proxy. ACKED is marked `*` when the proxy is behind. REPLICA comes last and
/// ACKED third: scripts (demo.sh) read the third column of `-o wide`.
fn proxy_table<'a>(proxies: impl Iterator<Item = &'a ProxyStatus>, version: u64) -> String {
    let mut table = Table::new(&[
        "IDENTITY",
        "ADDRESS",
        "ACKED",
        "NACK",
        "CONNECTED SINCE",
        "REPLICA",
    ])
    .keep_end(0);
    for p in proxies {
        let acked = if p.acked_version < version {
            format!("{}*", p.acked_version)
        } else {
            p.acked_version.to_string()
        };
        let since = if p.connected {
            output::timestamp(p.connected_since_unix_ms)
        } else {
            "disconnected".to_string()
        };
        table.row([
            proxy_name(p),
            or_dash(&p.inbound_address),
            acked,
            nack(p),
            since,
            or_dash(&p.replica),
        ]);
    }
    table.render(MAX_WIDTH)
}

/// The SPIFFE identity, or `service.namespace` for a proxy that has none (no mTLS yet).
fn proxy_name(p: &ProxyStatus) -> String {
    match (
        p.identity.as_str(),
        p.service.as_str(),
        p.namespace.as_str(),
    ) {
        (id, _, _) if !id.is_empty() => id.to_string(),
        ("", "", _) => "-".to_string(),
        ("", service, "") => service.to_string(),
        (_, service, namespace) => format!("{service}.{namespace}"),
    }
}

fn nack(p: &ProxyStatus) -> String {
    if has_nack(p) {
        format!("v{}: {}", p.last_nack_version, p.last_nack_error)
    } else {
        "-".to_string()
    }
}

// === JSON ===

/// Today's fields, with `proxies` in the `-o wide` order, plus `summary` as in the table.
fn status_json(response: &StatusResponse) -> anyhow::Result<String> {
    let proxies: Vec<_> = ordered(response)
        .into_iter()
        .map(|(_, p)| {
            serde_json::json!({
                "identity": p.identity,
                "service": p.service,
                "namespace": p.namespace,
                "address": p.inbound_address,
                "ackedVersion": p.acked_version,
                "lastNack": has_nack(p).then(|| {
                    serde_json::json!({ "version": p.last_nack_version, "error": p.last_nack_error })
                }),
                "connected": p.connected,
                "connectedSince": p.connected.then(|| output::timestamp(p.connected_since_unix_ms)),
                "proxyVersion": p.proxy_version,
                "replica": p.replica,
            })
        })
        .collect();
    let (services, _) = summarize(response);
    let summary: Vec<_> = services
        .iter()
        .map(|s| {
            let versions: serde_json::Map<String, serde_json::Value> = s
                .versions()
                .into_iter()
                .map(|(v, n)| (v.to_string(), n.into()))
                .collect();
            serde_json::json!({
                "service": s.service,
                "namespace": s.namespace,
                "proxies": s.counts.proxies,
                "connected": s.counts.connected,
                "versions": versions,
                "nacking": s.counts.nacking,
                "behind": s.counts.behind,
                "disconnected": s.counts.disconnected,
            })
        })
        .collect();
    let mut out = serde_json::json!({
        "version": response.version,
        "replica": response.replica,
        "proxies": proxies,
        "summary": summary,
    });
    if !response.warning.is_empty() {
        out["warning"] = response.warning.clone().into();
    }
    output::pretty_json(&out)
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
