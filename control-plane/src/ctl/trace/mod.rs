//! `weirctl trace`: a trace from Jaeger as a terminal waterfall with its critical path.
//!
//! `query` talks HTTP to Jaeger's query service, `jaeger` reads its JSON (the Jaeger versions it
//! mirrors are listed there), `model` is the format-neutral trace and its tree, `critical` the
//! critical path and `render` the text and JSON output.

mod critical;
mod jaeger;
mod model;
mod query;
mod render;

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::{ArgGroup, Args, ValueEnum};

use super::{Outcome, Usage, output};
use query::Jaeger;
use render::View;

const HELP: &str = "\
Jaeger: GET /api/traces/ID (the v1 JSON API of Jaeger 1.x and 2.x); when that answers 404,
GET /api/v3/traces/ID (Jaeger 2.x api_v3).

The waterfall has one row per span, children under their parent in start order, bars on one
time axis. ▶ marks the critical path, the spans that set the total latency: of calls made in
parallel only the one that ended last, of calls made one after another (a failed try and its
retry) every one. #1, #2 number the tries of a retried call (span tag weir.attempt). ERROR means
error=true, otel.status_code=ERROR or an HTTP status >= 500. ? marks a span whose parent is not
in the trace. Bold and colour only when stdout is a terminal and NO_COLOR is unset.

--service S lists the --last N newest traces that involve S (Jaeger's search over its default
lookback), newest first; `weirctl trace ID` shows one of them.

-o json prints {\"trace_id\", \"start_us\", \"duration_us\", \"span_count\", \"services\", \"spans\":
[{\"span_id\", \"parent_id\", \"service\", \"name\", \"depth\", \"offset_us\", \"duration_us\",
\"critical\", \"status\" (ok|error), \"http_status\", \"attempt\", \"orphan\"}]}, spans in waterfall
order, times in microseconds; with --service an array of those.

Exit status: 0 shown, 1 not found or Jaeger unreachable, 2 usage error (e.g. a bad trace id).";

#[derive(Debug, Clone, Args)]
#[command(
    after_long_help = HELP,
    group(ArgGroup::new("what").required(true).args(["trace_id", "service"]))
)]
pub struct TraceArgs {
    /// Trace id: 16 or 32 hex digits (a W3C `traceparent` value works too).
    #[arg(
        value_name = "TRACE_ID",
        value_parser = parse_trace_id
    )]
    pub trace_id: Option<String>,
    /// List the newest traces of this service instead of showing one.
    #[arg(long, value_name = "SERVICE")]
    pub service: Option<String>,
    /// With --service: how many traces to list.
    // 1500 is the most Jaeger's own UI asks for.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 10,
        requires = "service",
        value_parser = clap::value_parser!(u32).range(1..=1500)
    )]
    pub last: u32,
    /// Jaeger's query service (the port of its UI).
    #[arg(
        long,
        value_name = "URL",
        env = "WEIR_JAEGER_URL",
        default_value = "http://127.0.0.1:16686"
    )]
    pub jaeger: String,
    /// text (waterfall, or a list with --service) or json.
    #[arg(short, long, value_enum, default_value_t = TraceFormat::Text)]
    pub output: TraceFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TraceFormat {
    Text,
    Json,
}

pub(crate) async fn run(args: TraceArgs) -> Outcome {
    let jaeger = Jaeger::new(&args.jaeger).map_err(|err| Usage(err.to_string()))?;
    let text = match (&args.trace_id, &args.service) {
        (Some(id), _) => {
            let trace = jaeger.trace(id).await?;
            let view = View::new(&trace);
            match args.output {
                TraceFormat::Text => render::waterfall(&view, color()),
                TraceFormat::Json => output::pretty_json(&render::json(&view))?,
            }
        }
        (None, Some(service)) => {
            let mut traces = jaeger.search(service, args.last).await?;
            traces.retain(|t| !t.spans.is_empty());
            let start = |t: &model::Trace| t.spans.iter().map(|s| s.start_us).min();
            traces.sort_by_key(|t| std::cmp::Reverse(start(t)));
            traces.truncate(usize::try_from(args.last).unwrap_or(usize::MAX));
            let views: Vec<View<'_>> = traces.iter().map(View::new).collect();
            match args.output {
                TraceFormat::Json => {
                    let all: Vec<_> = views.iter().map(render::json).collect();
                    output::pretty_json(&all)?
                }
                TraceFormat::Text if views.is_empty() => {
                    eprintln!(
                        "no traces of service {service:?} in Jaeger's lookback window \
                         (check the name with Jaeger's UI; spans take a few seconds to arrive)"
                    );
                    String::new()
                }
                TraceFormat::Text => render::list(&views),
            }
        }
        (None, None) => {
            return Err(Usage("give a TRACE_ID or --service SERVICE".into()).into());
        }
    };
    output::emit(&text)?;
    Ok(ExitCode::SUCCESS)
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
