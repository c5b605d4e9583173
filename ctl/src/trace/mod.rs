//! `weirctl trace`: a trace as a terminal waterfall with its critical path, or a list of traces,
//! from Jaeger or from files of OTLP JSON lines.
//!
//! `query` talks HTTP to Jaeger's query service, `jaeger` reads its JSON and the OTLP JSON that
//! api_v3 and span files share (the versions it mirrors are listed there), `files` reads
//! `--file`s, `select` picks the traces `--list`, `--errors` and `--slowest` show, `model` is
//! the format-neutral trace and its tree, `critical` the critical path and `render` the text
//! and JSON output.

mod critical;
mod files;
mod jaeger;
mod model;
mod query;
mod render;
mod select;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use clap::{ArgGroup, Args, ValueEnum};

use super::{Outcome, Usage, output};
use model::Trace;
use query::Jaeger;
use render::View;

const HELP: &str = "\
Where the spans come from:
  Jaeger (default): TRACE_ID is GET /api/traces/ID (the v1 JSON API of Jaeger 1.x and 2.x), and
  when that answers 404, GET /api/v3/traces/ID (api_v3). --service S searches api_v3
  (/api/v3/traces?query.service_name=S&query.start_time_min=…&query.start_time_max=…
  &query.num_traces=N) over the last --lookback, and the v1 search (/api/traces?service=S&…)
  when this Jaeger has no api_v3.
  --file PATH: files of OTLP JSON lines, one ExportTraceServiceRequest a line, as the
  OpenTelemetry Collector's file exporter and weir-proxy --trace-file write them. Give --file
  once per file, or a directory (its *.json and *.jsonl files); PATH.1, the rotated older part,
  is read too. Spans of one trace in several files are merged by trace id. A cut-off last line
  (still being written) is skipped; other bad lines are skipped with one warning. At most
  1 GiB in all.

What is shown:
  TRACE_ID     that trace's waterfall.
  --list       the --last N newest traces, newest first (the default for --service or --file).
  --errors     the --last N newest traces with an error span.
  --slowest    the waterfall of the trace with the longest total time (earliest start to latest
               end).
  --service S narrows the three to traces that involve S. With Jaeger --service is needed
  for all three (Jaeger searches by service); --list searches N traces, --errors and --slowest
  pick from the newest max(N, 100).

The waterfall has one row per span, children under their parent in start order, bars on one
time axis. A client span reads `caller → callee` (its peer.service or server.address), other
spans `service operation`; through sidecars one hop is three rows: the caller's call, its try
(or tries) and the callee's server span. ▶ marks the critical path, the spans that set the total latency: of calls made in
parallel only the one that ended last, of calls made one after another (a failed try and its
retry) every one. #1, #2 number the tries of a retried call (span tag weir.attempt). ERROR means
error=true, OTLP status code 2 (otel.status_code=ERROR) or an HTTP status >= 500. ? marks a span
whose parent is not in the trace. Bold and colour only when stdout is a terminal and NO_COLOR is
unset. A list has one row per trace: id, start, duration, span count, error spans, root span.

-o json prints, for a waterfall, {\"trace_id\", \"start_us\", \"duration_us\", \"span_count\",
\"services\", \"spans\": [{\"span_id\", \"parent_id\", \"service\", \"name\", \"depth\", \"offset_us\",
\"duration_us\", \"critical\", \"status\" (ok|error), \"http_status\", \"attempt\", \"kind\"
(client|server|other), \"peer\" (the called service of a client span, when known), \"orphan\"}]},
spans in waterfall order, times in microseconds; for a list an array of those.

Exit status: 0 shown (an empty list too), 1 not found, no trace to pick, Jaeger unreachable or
a file unreadable, 2 usage error (e.g. a bad trace id).";

#[derive(Debug, Clone, Args)]
#[command(
    after_long_help = HELP,
    group(ArgGroup::new("source").required(true).multiple(true).args(["trace_id", "service", "file"])),
    group(ArgGroup::new("mode").args(["trace_id", "slowest", "errors", "list"])),
)]
pub struct TraceArgs {
    /// Trace id: 16 or 32 hex digits (a W3C `traceparent` value works too).
    #[arg(
        value_name = "TRACE_ID",
        value_parser = parse_trace_id,
        conflicts_with_all = ["service", "last"]
    )]
    pub trace_id: Option<String>,
    /// Spans from this file of OTLP JSON lines, or a directory of them, not Jaeger (repeatable).
    #[arg(long = "file", value_name = "PATH")]
    pub file: Vec<PathBuf>,
    /// Only traces that involve this service (with Jaeger: search for them).
    #[arg(long, value_name = "SERVICE")]
    pub service: Option<String>,
    /// List the newest traces (the default without TRACE_ID).
    #[arg(long)]
    pub list: bool,
    /// List the newest traces that have an error span.
    #[arg(long)]
    pub errors: bool,
    /// Show the trace that took longest.
    #[arg(long)]
    pub slowest: bool,
    /// How many traces to list.
    // 1500 is the most Jaeger's own UI asks for.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(1..=1500)
    )]
    pub last: u32,
    /// With Jaeger: how far back a search looks, like 30m, 2h or 1d.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "1h",
        value_parser = parse_lookback,
        conflicts_with = "file"
    )]
    pub lookback: Duration,
    /// Jaeger's query service (the port of its UI).
    #[arg(
        long,
        value_name = "URL",
        env = "WEIR_JAEGER_URL",
        default_value = "http://127.0.0.1:16686"
    )]
    pub jaeger: String,
    /// text (a waterfall or a list) or json.
    #[arg(short, long, value_enum, default_value_t = TraceFormat::Text)]
    pub output: TraceFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TraceFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Many {
    List,
    Errors,
    Slowest,
}

/// Where the traces come from, loaded or connected once.
enum Source {
    // Boxed for clippy (large_enum_variant): hyper's client is big, but a run has one Source.
    Jaeger(Box<Jaeger>),
    Files(files::Loaded),
}

/// What Jaeger's search returns for `--errors` and `--slowest`: its own default search depth,
/// so the pick is from a useful sample, not from the 10 that are listed.
const PICK_FROM: u32 = 100;

pub(crate) async fn run(args: TraceArgs) -> Outcome {
    let source = if args.file.is_empty() {
        Source::Jaeger(Box::new(
            Jaeger::new(&args.jaeger).map_err(|err| Usage(err.to_string()))?,
        ))
    } else {
        let loaded = files::load(&args.file)?;
        if let Some(warning) = loaded.warning() {
            eprintln!("{warning}");
        }
        Source::Files(loaded)
    };
    let many = match (&args.trace_id, args.slowest, args.errors) {
        (Some(id), _, _) => {
            let trace = match source {
                Source::Jaeger(jaeger) => jaeger.trace(id).await?,
                Source::Files(loaded) => {
                    let what = loaded.describe();
                    loaded
                        .traces
                        .into_iter()
                        .find(|t| !t.spans.is_empty() && select::same_id(&t.id, id))
                        .ok_or_else(|| anyhow!("trace {id} not found in {what}"))?
                }
            };
            return show(&trace, args.output);
        }
        (None, true, _) => Many::Slowest,
        (None, _, true) => Many::Errors,
        (None, _, _) => Many::List,
    };
    let service = args.service.as_deref();
    // Jaeger's search already chose the traces of `service`; only files are narrowed here.
    let (traces, searched, narrow) = match source {
        Source::Jaeger(jaeger) => {
            let Some(service) = service else {
                return Err(Usage(
                    "Jaeger is searched by service: give --service SERVICE (or --file PATH)".into(),
                )
                .into());
            };
            let limit = match many {
                Many::List => args.last,
                Many::Errors | Many::Slowest => args.last.max(PICK_FROM),
            };
            let traces = jaeger.search(service, limit, args.lookback).await?;
            let searched = format!(
                "Jaeger's last {} (check the name with Jaeger's UI; spans take a few seconds \
                 to arrive)",
                query::short_duration(args.lookback)
            );
            (traces, searched, None)
        }
        Source::Files(loaded) => {
            let what = loaded.describe();
            (loaded.traces, what, service)
        }
    };
    let of = service.map_or_else(String::new, |s| format!(" of service {s:?}"));
    let last = usize::try_from(args.last).unwrap_or(usize::MAX);
    let listed = match many {
        Many::Slowest => {
            let trace = select::slowest(traces, narrow)
                .ok_or_else(|| anyhow!("no traces{of} in {searched}"))?;
            return show(&trace, args.output);
        }
        Many::List => {
            let mut traces = select::newest_first(traces, narrow);
            traces.truncate(last);
            if traces.is_empty() && args.output == TraceFormat::Text {
                eprintln!("no traces{of} in {searched}");
            }
            traces
        }
        Many::Errors => {
            let mut traces: Vec<Trace> = select::newest_first(traces, narrow)
                .into_iter()
                .filter(select::has_error)
                .collect();
            traces.truncate(last);
            if traces.is_empty() && args.output == TraceFormat::Text {
                eprintln!("no traces{of} with an error span in {searched}");
            }
            traces
        }
    };
    let views: Vec<View<'_>> = listed.iter().map(View::new).collect();
    let text = match args.output {
        TraceFormat::Json => {
            let all: Vec<_> = views.iter().map(render::json).collect();
            output::pretty_json(&all)?
        }
        TraceFormat::Text if views.is_empty() => String::new(),
        TraceFormat::Text => render::list(&views),
    };
    output::emit(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn show(trace: &Trace, format: TraceFormat) -> Outcome {
    let view = View::new(trace);
    let text = match format {
        TraceFormat::Text => render::waterfall(&view, color()),
        TraceFormat::Json => output::pretty_json(&render::json(&view))?,
    };
    output::emit(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// `--lookback`: a number and a unit (s, m, h, d), several in a row (`1h30m`) adding up.
fn parse_lookback(text: &str) -> Result<Duration, String> {
    let bad = || format!("expected a duration like 30m, 2h or 1d, got {text:?}");
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
    }
    if !digits.is_empty() || total == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// ANSI only for a person at a terminal (https://no-color.org).
fn color() -> bool {
    std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
}

/// Jaeger's ids: 16 or 32 hex digits. A `traceparent` header value is accepted because that is
/// what people find in request logs.
fn parse_trace_id(text: &str) -> Result<String, String> {
    let text = text.trim();
    let id = match text.split('-').collect::<Vec<_>>()[..] {
        [version, id, span, flags]
            if version.len() == 2 && id.len() == 32 && span.len() == 16 && flags.len() == 2 =>
        {
            id
        }
        _ => text,
    };
    if !matches!(id.len(), 16 | 32) || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "a trace id is 16 or 32 hex digits, like 4bf92f3577b34da6a3ce929d0e0e4736; got {:?} \
             ({} characters)",
            render::fit(text, 70),
            text.chars().count()
        ));
    }
    if id.bytes().all(|b| b == b'0') {
        return Err("the all-zero trace id is not a trace (W3C: invalid)".into());
    }
    Ok(id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests;
