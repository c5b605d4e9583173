//! Which traces `--list`, `--errors` and `--slowest` show, wherever the traces came from (a
//! Jaeger search or `--file`). Pure functions, so the choice is tested without I/O.

use std::cmp::Reverse;

use super::model::Trace;

/// Earliest span start and latest span end, in microseconds; `None` for a trace without spans.
pub fn bounds(trace: &Trace) -> Option<(u64, u64)> {
    let start = trace.spans.iter().map(|s| s.start_us).min()?;
    let end = trace.spans.iter().map(|s| s.end_us()).max()?;
    Some((start, end.max(start)))
}

fn duration(trace: &Trace) -> u64 {
    bounds(trace).map_or(0, |(start, end)| end - start)
}

/// Whether a span of `service` is in the trace (Jaeger's search means the same).
pub fn involves(trace: &Trace, service: &str) -> bool {
    trace.spans.iter().any(|s| s.service == service)
}

pub fn has_error(trace: &Trace) -> bool {
    trace.spans.iter().any(|s| s.error)
}

/// The same trace id: Jaeger drops the leading zeros of 64-bit ids, and a 64-bit id from an
/// old tracer is the low half of a 128-bit OTLP one with zeros in front.
pub fn same_id(a: &str, b: &str) -> bool {
    let short = |s: &str| s.trim_start_matches('0').to_ascii_lowercase();
    short(a) == short(b)
}

/// Traces with spans, of `service` if given, newest (latest first span) first, ties by id so
/// the order does not depend on where the traces came from.
pub fn newest_first(traces: Vec<Trace>, service: Option<&str>) -> Vec<Trace> {
    let mut traces: Vec<Trace> = traces
        .into_iter()
        .filter(|t| !t.spans.is_empty() && service.is_none_or(|s| involves(t, s)))
        .collect();
    traces.sort_by(|a, b| {
        let start = |t: &Trace| bounds(t).map(|(s, _)| s);
        (Reverse(start(a)), &a.id).cmp(&(Reverse(start(b)), &b.id))
    });
    traces
}

/// The trace with the longest total time (earliest start to latest end); of equally long ones
/// the newest.
pub fn slowest(traces: Vec<Trace>, service: Option<&str>) -> Option<Trace> {
    // `newest_first` puts the newest first and `max_by_key` keeps the last maximum: reverse.
    newest_first(traces, service)
        .into_iter()
        .rev()
        .max_by_key(duration)
}

#[cfg(test)]
mod tests {
    use super::super::model::{Span, span};
    use super::*;

    fn trace(id: &str, spans: Vec<Span>) -> Trace {
        Trace {
            id: id.into(),
            spans,
        }
    }

    fn on(service: &str, mut span: Span) -> Span {
        span.service = service.into();
        span
    }

    fn ids(traces: &[Trace]) -> Vec<&str> {
        traces.iter().map(|t| t.id.as_str()).collect()
    }

    fn sample() -> Vec<Trace> {
        let mut failed = span("f2", Some("f1"), 1_010, 5);
        failed.error = true;
        vec![
            // Longest total time, though no single span is: a late child sets the end.
            trace(
                "old-slow",
                vec![span("a1", None, 100, 50), span("a2", Some("a1"), 140, 400)],
            ),
            trace(
                "new-error",
                vec![on("payment", span("f1", None, 1_000, 20)), failed],
            ),
            trace("empty", Vec::new()),
            trace("mid", vec![on("payment", span("m1", None, 500, 300))]),
        ]
    }

    #[test]
    fn newest_first_by_earliest_start() {
        assert_eq!(
            ids(&newest_first(sample(), None)),
            ["new-error", "mid", "old-slow"]
        );
        assert_eq!(
            ids(&newest_first(sample(), Some("payment"))),
            ["new-error", "mid"]
        );
        assert!(newest_first(sample(), Some("nobody")).is_empty());
    }

    #[test]
    fn slowest_is_earliest_start_to_latest_end() {
        assert_eq!(
            slowest(sample(), None).map(|t| t.id),
            Some("old-slow".into())
        );
        assert_eq!(
            slowest(sample(), Some("payment")).map(|t| t.id),
            Some("mid".into())
        );
        assert_eq!(slowest(Vec::new(), None), None);
        // Equally long: the newer one.
        let tie = vec![
            trace("older", vec![span("x", None, 0, 10)]),
            trace("newer", vec![span("y", None, 50, 10)]),
        ];
        assert_eq!(slowest(tie, None).map(|t| t.id), Some("newer".into()));
    }

    #[test]
    fn errors_and_ids() {
        let with: Vec<Trace> = sample().into_iter().filter(has_error).collect();
        assert_eq!(ids(&with), ["new-error"]);
        assert!(same_id(
            "00f067aa0ba902b7",
            "0000000000000000f067aa0ba902b7"
        ));
        assert!(same_id("ABC", "abc"));
        assert!(!same_id("abc", "abd"));
        assert_eq!(bounds(&sample()[0]), Some((100, 540)));
    }
}
