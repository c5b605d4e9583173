//! Text and JSON views of a trace: the waterfall, the `--last` list and `-o json`.
//!
//! Pure functions of a [`Trace`] (no I/O, no clock, no terminal lookups) so the exact output is
//! tested with golden strings.

use std::fmt::Write as _;

use serde::Serialize;
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use super::critical::critical_path;
use super::model::{Kind, Trace, Tree};
use crate::output;

/// The waterfall fits an 80-column terminal, measured in display columns.
pub const WIDTH: usize = 80;
/// `--last` is a table like the other weirctl tables, which allow 100 columns.
pub const LIST_WIDTH: usize = output::MAX_WIDTH;
/// Row: marker, space, label, space, bar, space, duration, space, status.
const LABEL: usize = 32;
const BAR: usize = 27;
const DURATION: usize = 7;
const STATUS: usize = 9;
/// Deeper spans stop moving right so the label keeps room for the names; one column per level
/// because a hop between sidecars is already three levels (call, try, server).
const MAX_INDENT: usize = 14;
const CRITICAL: char = '▶';
const ORPHAN: &str = "? ";

/// A trace with its layout worked out once.
pub struct View<'a> {
    pub trace: &'a Trace,
    tree: Tree,
    critical: Vec<bool>,
    start_us: u64,
    total_us: u64,
    services: Vec<&'a str>,
}

impl<'a> View<'a> {
    pub fn new(trace: &'a Trace) -> View<'a> {
        let tree = Tree::new(trace);
        let critical = critical_path(trace, &tree);
        let start_us = trace.spans.iter().map(|s| s.start_us).min().unwrap_or(0);
        let end_us = trace.spans.iter().map(|s| s.end_us()).max().unwrap_or(0);
        let mut services: Vec<&str> = Vec::new();
        for (i, _) in &tree.rows {
            let service = trace.spans[*i].service.as_str();
            if !services.contains(&service) {
                services.push(service);
            }
        }
        View {
            trace,
            tree,
            critical,
            start_us,
            total_us: end_us.saturating_sub(start_us),
            services,
        }
    }

    fn errors(&self) -> usize {
        self.trace.spans.iter().filter(|s| s.error).count()
    }

    fn root_label(&self) -> String {
        self.tree.roots.first().map_or_else(String::new, |r| {
            let span = &self.trace.spans[*r];
            format!("{} {}", span.service, span.name)
        })
    }
}

// === waterfall ===

/// The waterfall; `color` adds ANSI bold to critical rows and red to errors.
pub fn waterfall(view: &View<'_>, color: bool) -> String {
    let trace = view.trace;
    let mut out = String::new();
    let spans = trace.spans.len();
    let errors = match view.errors() {
        0 => String::new(),
        1 => "  1 error".into(),
        n => format!("  {n} errors"),
    };
    let head = format!(
        "trace {}  {}  {spans} span{}{errors}",
        trace.id,
        human(view.total_us),
        if spans == 1 { "" } else { "s" },
    );
    line(&mut out, &fit(&head, WIDTH));
    let services = format!("services: {}", view.services.join(", "));
    line(&mut out, &fit(&services, WIDTH));
    if spans == 0 {
        line(&mut out, "(Jaeger returned the trace without spans)");
        return out;
    }
    let total = human(view.total_us);
    let axis = format!(
        "{:pad$}0{total:>rest$}",
        "",
        pad = LABEL + 2 + 1,
        rest = BAR - 1
    );
    line(&mut out, &axis);
    for (i, depth) in &view.tree.rows {
        let critical = view.critical.get(*i).copied().unwrap_or(false);
        let mut row = String::with_capacity(WIDTH * 2);
        row.push(if critical { CRITICAL } else { ' ' });
        row.push(' ');
        row.push_str(&pad(&label(view, *i, *depth), LABEL));
        row.push(' ');
        row.push_str(&bar(view, *i));
        let _ = write!(row, " {:>DURATION$}", human(trace.spans[*i].duration_us));
        let status = status(view, *i);
        if !status.is_empty() {
            row.push(' ');
            if color && trace.spans[*i].error {
                let _ = write!(row, "\x1b[31m{status}\x1b[39m");
            } else {
                row.push_str(&status);
            }
        }
        let row = row.trim_end();
        if color && critical {
            line(&mut out, &format!("\x1b[1m{row}\x1b[22m"));
        } else {
            line(&mut out, row);
        }
    }
    line(
        &mut out,
        &format!("{CRITICAL} critical path: the spans that set the total latency"),
    );
    if view.tree.orphan.iter().any(|o| *o) {
        line(
            &mut out,
            "? parent span not in the trace (not reported yet or dropped): shown as a root",
        );
    }
    out
}

/// Indent, orphan mark, who called whom (`checkout → payment` for a client span whose peer is
/// known, else "service operation") cut to fit, then the try number, which must stay visible
/// however long the names are.
fn label(view: &View<'_>, i: usize, depth: usize) -> String {
    let span = &view.trace.spans[i];
    let indent = " ".repeat(depth.min(MAX_INDENT));
    let mark = if view.tree.orphan[i] { ORPHAN } else { "" };
    let attempt = match span.attempt {
        Some(n) if n > 1 || retried_sibling(view, i) => format!(" #{n}"),
        _ => String::new(),
    };
    let room = LABEL.saturating_sub(indent.len() + mark.len() + attempt.len());
    let text = match (span.kind, &span.peer) {
        (Kind::Client, Some(peer)) => format!("{} → {peer}", span.service),
        _ => format!("{} {}", span.service, span.name),
    };
    let name = fit(&text, room);
    format!("{indent}{mark}{name}{attempt}")
}

/// A first try is numbered only when it was retried; a lone `#1` on every call is noise.
fn retried_sibling(view: &View<'_>, i: usize) -> bool {
    let spans = &view.trace.spans;
    let siblings: &[usize] = match view.tree.parent[i] {
        Some(p) => &view.tree.children[p],
        None => &view.tree.roots,
    };
    siblings.iter().any(|s| {
        spans[*s].name == spans[i].name
            && spans[*s].service == spans[i].service
            && spans[*s].attempt.is_some_and(|n| n > 1)
    })
}

/// The span's place on the shared time axis; never empty, so even a 1µs span shows.
fn bar(view: &View<'_>, i: usize) -> String {
    let span = &view.trace.spans[i];
    let total = u128::from(view.total_us.max(1));
    let width = BAR as u128;
    let offset = u128::from(span.start_us.saturating_sub(view.start_us));
    let end = offset + u128::from(span.duration_us);
    let from = usize::try_from(offset * width / total).unwrap_or(BAR);
    let to = usize::try_from((end * width).div_ceil(total)).unwrap_or(BAR);
    let from = from.min(BAR - 1);
    let to = to.clamp(from + 1, BAR);
    let mut out = String::with_capacity(BAR * 3);
    out.extend(std::iter::repeat_n(' ', from));
    out.extend(std::iter::repeat_n('█', to - from));
    out.extend(std::iter::repeat_n(' ', BAR - to));
    out
}

fn status(view: &View<'_>, i: usize) -> String {
    let span = &view.trace.spans[i];
    let text = match (span.error, span.http_status) {
        (true, Some(code)) => format!("ERROR {code}"),
        (true, None) => "ERROR".into(),
        // A 404 is no error of the span, but worth seeing.
        (false, Some(code)) if code >= 400 => code.to_string(),
        _ => String::new(),
    };
    fit(&text, STATUS)
}

// === --last list ===

/// One row per trace, as given (the caller sorts).
pub fn list(views: &[View<'_>]) -> String {
    let mut out = String::new();
    let header = format!(
        "{:<32}  {:<20}  {:>8}  {:>5}  {:>3}  ROOT",
        "TRACE ID", "STARTED", "DURATION", "SPANS", "ERR"
    );
    line(&mut out, &header);
    for view in views {
        let started = i64::try_from(view.start_us / 1000).unwrap_or(i64::MAX);
        let row = format!(
            "{:<32}  {:<20}  {:>8}  {:>5}  {:>3}  {}",
            view.trace.id,
            output::timestamp(started),
            human(view.total_us),
            view.trace.spans.len(),
            view.errors(),
            view.root_label(),
        );
        line(&mut out, &fit(&row, LIST_WIDTH));
    }
    out
}

// === -o json ===

/// `-o json`: the trace as `weirctl` understood it, spans in waterfall order.
#[derive(Debug, Serialize)]
pub struct TraceJson<'a> {
    trace_id: &'a str,
    start_us: u64,
    duration_us: u64,
    span_count: usize,
    services: &'a [&'a str],
    spans: Vec<SpanJson<'a>>,
}

#[derive(Debug, Serialize)]
pub struct SpanJson<'a> {
    span_id: &'a str,
    parent_id: Option<&'a str>,
    service: &'a str,
    name: &'a str,
    depth: usize,
    offset_us: u64,
    duration_us: u64,
    critical: bool,
    /// `ok` or `error`.
    status: &'static str,
    http_status: Option<u16>,
    attempt: Option<u32>,
    /// `client`, `server` or `other`.
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<&'a str>,
    orphan: bool,
}

pub fn json<'a>(view: &'a View<'a>) -> TraceJson<'a> {
    let spans = view
        .tree
        .rows
        .iter()
        .map(|(i, depth)| {
            let span = &view.trace.spans[*i];
            SpanJson {
                span_id: &span.id,
                parent_id: span.parent.as_deref(),
                service: &span.service,
                name: &span.name,
                depth: *depth,
                offset_us: span.start_us.saturating_sub(view.start_us),
                duration_us: span.duration_us,
                critical: view.critical.get(*i).copied().unwrap_or(false),
                status: if span.error { "error" } else { "ok" },
                http_status: span.http_status,
                attempt: span.attempt,
                kind: span.kind.as_str(),
                peer: span.peer.as_deref(),
                orphan: view.tree.orphan[*i],
            }
        })
        .collect();
    TraceJson {
        trace_id: &view.trace.id,
        start_us: view.start_us,
        duration_us: view.total_us,
        span_count: view.trace.spans.len(),
        services: &view.services,
        spans,
    }
}

// === text helpers ===

/// Durations the way people read them: `850µs`, `1.25ms`, `30ms`, `2.5s`.
pub fn human(us: u64) -> String {
    let (value, unit) = match us {
        0..1_000 => return format!("{us}µs"),
        // Past 999.5ms the ms form would round to "1000ms".
        1_000..999_500 => (us as f64 / 1e3, "ms"),
        _ => (us as f64 / 1e6, "s"),
    };
    let digits = match value {
        v if v < 10.0 => 2,
        v if v < 100.0 => 1,
        _ => 0,
    };
    let text = format!("{value:.digits$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{text}{unit}")
}

fn line(out: &mut String, text: &str) {
    out.push_str(text);
    out.push('\n');
}

/// Cuts `text` to `width` display columns, marking the cut with `…`. Control characters (a
/// newline in an operation name) would break the layout, so they become spaces.
pub fn fit(text: &str, width: usize) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.width() <= width {
        return clean;
    }
    let mut out = String::new();
    let mut used = 0;
    for c in clean.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        used += w;
        out.push(c);
    }
    if width > 0 {
        out.push('…');
    }
    out
}

/// Pads to `width` display columns (after [`fit`]).
fn pad(text: &str, width: usize) -> String {
    let text = fit(text, width);
    let fill = width.saturating_sub(text.width());
    format!("{text}{:fill$}", "")
}
