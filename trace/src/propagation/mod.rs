//! Reading a trace context off a request, deciding this hop's span, and writing it into
//! the forwarded request in the format(s) the request came in.
//!
//! Cost model: an unsampled request pays a handful of header look-ups, a few integer
//! mixes and one small header value per format written; nothing here formats a
//! `String` or takes a lock.
use std::fmt;
use std::ops::{BitOr, BitOrAssign};

use http::HeaderMap;

use crate::id::{SpanId, SplitMix, TraceId};

mod b3;
mod w3c;

/// The header formats a context travels in, as a small set: a request may carry W3C and
/// B3 at once, and every one that came in is rewritten so no downstream tracer sees a
/// stale parent.
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Format(u8);

impl Format {
    pub const NONE: Format = Format(0);
    /// `traceparent` (and `tracestate`, which is passed through untouched).
    pub const W3C: Format = Format(1);
    /// `b3: {traceid}-{spanid}-{sampled}-{parentspanid}`.
    pub const B3_SINGLE: Format = Format(2);
    /// `x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`, `x-b3-sampled`, `x-b3-flags`.
    pub const B3_MULTI: Format = Format(4);

    pub const fn contains(self, other: Format) -> bool {
        other.0 != 0 && self.0 & other.0 == other.0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl BitOr for Format {
    type Output = Format;
    fn bitor(self, rhs: Format) -> Format {
        Format(self.0 | rhs.0)
    }
}

impl BitOrAssign for Format {
    fn bitor_assign(&mut self, rhs: Format) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [
            (Format::W3C, "W3C"),
            (Format::B3_SINGLE, "B3_SINGLE"),
            (Format::B3_MULTI, "B3_MULTI"),
        ];
        let mut set = f.debug_set();
        for (bit, name) in names {
            if self.contains(bit) {
                set.entry(&format_args!("{name}"));
            }
        }
        set.finish()
    }
}

/// The sampling decision a request carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampling {
    Accept,
    Deny,
    /// B3 debug (`b3: …-d`, `x-b3-flags: 1`): sample, and tell downstream it is debug.
    Debug,
    /// No decision yet (B3 ids without a sampling field): this hop's head sampling decides.
    Defer,
}

/// What a request carried, before this hop makes its own span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extracted {
    /// The sender's trace and span; `None` for a decision-only B3 header (`b3: 0`).
    pub parent: Option<(TraceId, SpanId)>,
    pub sampling: Sampling,
    /// Every format present and well formed.
    pub format: Format,
}

/// This hop's span: the ids to record it under and to propagate as the parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// The span this one is a child of; `None` when this hop started the trace.
    pub parent_id: Option<SpanId>,
    /// Whether the span is recorded. Downstream hops inherit it.
    pub sampled: bool,
    /// B3 debug, carried on so a debug trace stays debug end to end.
    pub debug: bool,
    /// Where `inject` writes: the formats the request came in, W3C for a new trace.
    pub format: Format,
}

/// Reads W3C `traceparent`, `b3` and `x-b3-*`. A malformed header counts as absent.
/// When several are present, ids come from the first of W3C, B3 single, B3 multi.
pub fn extract(headers: &HeaderMap) -> Option<Extracted> {
    let w3c = w3c::extract(headers);
    let single = b3::extract_single(headers);
    let multi = b3::extract_multi(headers);

    let mut format = Format::NONE;
    if w3c.is_some() {
        format |= Format::W3C;
    }
    if single.is_some() {
        format |= Format::B3_SINGLE;
    }
    if multi.is_some() {
        format |= Format::B3_MULTI;
    }

    if let Some(p) = w3c {
        let sampling = if p.sampled {
            Sampling::Accept
        } else {
            Sampling::Deny
        };
        return Some(Extracted {
            parent: Some((p.trace_id, p.span_id)),
            sampling,
            format,
        });
    }
    // Prefer a B3 encoding that has ids over one that carries only a decision.
    let b3 = match (single, multi) {
        (Some(s), _) if s.ids.is_some() => s,
        (_, Some(m)) if m.ids.is_some() => m,
        (Some(s), _) => s,
        (None, m) => m?,
    };
    Some(Extracted {
        parent: b3.ids,
        sampling: b3.sampling,
        format,
    })
}

/// Continues the request's trace with a new span, or starts a new trace when it carries
/// none. `sampling` (0.0..=1.0) is the head-sampling probability used only when no
/// upstream decision exists; `rand` is one random word from the caller, expanded into the
/// new ids and the sampling draw.
pub fn start_or_continue(headers: &HeaderMap, sampling: f64, rand: u64) -> TraceContext {
    TraceContext::new(extract(headers), sampling, rand)
}

/// Writes `ctx` into the forwarded request's headers as the parent of whatever the next
/// hop records, in every format of `ctx.format` (W3C if empty). `tracestate` is left as is.
pub fn inject(headers: &mut HeaderMap, ctx: &TraceContext) {
    let format = if ctx.format.is_empty() {
        Format::W3C
    } else {
        ctx.format
    };
    if format.contains(Format::W3C) {
        w3c::inject(headers, ctx);
    }
    if format.contains(Format::B3_SINGLE) {
        b3::inject_single(headers, ctx);
    }
    if format.contains(Format::B3_MULTI) {
        b3::inject_multi(headers, ctx);
    }
}

// === impl TraceContext ===

impl TraceContext {
    /// The span for this hop given what the request carried (see [`start_or_continue`]).
    pub fn new(incoming: Option<Extracted>, sampling: f64, rand: u64) -> TraceContext {
        let (parent, decision, format) = match incoming {
            Some(e) => (e.parent, e.sampling, e.format),
            None => (None, Sampling::Defer, Format::W3C),
        };
        let sampled = match decision {
            Sampling::Accept | Sampling::Debug => true,
            Sampling::Deny => false,
            Sampling::Defer => head_sample(sampling, rand),
        };
        let mut mix = SplitMix(rand);
        let (trace_id, parent_id) = match parent {
            Some((trace_id, span_id)) => (trace_id, Some(span_id)),
            None => (TraceId::random(&mut mix), None),
        };
        TraceContext {
            trace_id,
            span_id: SpanId::random(&mut mix),
            parent_id,
            sampled,
            debug: decision == Sampling::Debug,
            format,
        }
    }

    /// A child span in the same trace (one per retry attempt under the request's span),
    /// inheriting the sampling decision and formats.
    pub fn child(&self, rand: u64) -> TraceContext {
        TraceContext {
            span_id: SpanId::from_random(rand),
            parent_id: Some(self.span_id),
            ..*self
        }
    }
}

/// True with probability `sampling`: the top 53 bits of `rand` as a fraction in [0, 1),
/// so 0.0 (and NaN) never samples and 1.0 always does.
fn head_sample(sampling: f64, rand: u64) -> bool {
    let draw = (rand >> 11) as f64 / (1u64 << 53) as f64;
    draw < sampling
}

#[cfg(test)]
mod tests;
