//! Zipkin B3 propagation (https://github.com/openzipkin/b3-propagation), both the single
//! `b3` header and the multi `x-b3-*` headers. Either may carry only a sampling decision
//! (`b3: 0`, a lone `x-b3-sampled: 0`), which must still be honoured.
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::id::{self, SpanId, TraceId};
use crate::propagation::{Sampling, TraceContext};

pub(crate) const B3: HeaderName = HeaderName::from_static("b3");
pub(crate) const TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
pub(crate) const SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
pub(crate) const PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub(crate) const SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub(crate) const FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// What one B3 encoding carried: ids (absent for a decision-only header) and a decision.
pub(crate) struct B3Context {
    pub ids: Option<(TraceId, SpanId)>,
    pub sampling: Sampling,
}

// === single header ===

pub(crate) fn extract_single(headers: &HeaderMap) -> Option<B3Context> {
    parse_single(headers.get(&B3)?.as_bytes())
}

/// `{traceid}-{spanid}[-{sampling}[-{parentspanid}]]` or a bare `{sampling}`.
fn parse_single(v: &[u8]) -> Option<B3Context> {
    if v.len() == 1 {
        return Some(B3Context {
            ids: None,
            sampling: sampling_state(v)?,
        });
    }
    let mut fields = v.split(|&c| c == b'-');
    let trace_id = TraceId::from_hex(fields.next()?)?;
    let span_id = SpanId::from_hex(fields.next()?)?;
    let sampling = match fields.next() {
        None => Sampling::Defer,
        Some(s) => sampling_state(s)?,
    };
    // The parent id is not needed (the sender's span is our parent) but a malformed one
    // means a malformed header.
    if let Some(parent) = fields.next() {
        SpanId::from_hex(parent)?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(B3Context {
        ids: Some((trace_id, span_id)),
        sampling,
    })
}

fn sampling_state(s: &[u8]) -> Option<Sampling> {
    match s {
        b"0" => Some(Sampling::Deny),
        b"1" => Some(Sampling::Accept),
        b"d" => Some(Sampling::Debug),
        _ => None,
    }
}

pub(crate) fn inject_single(headers: &mut HeaderMap, ctx: &TraceContext) {
    // 32 + 1 + 16 + 1 + 1 + 1 + 16: the longest value, with a 128-bit trace id and a parent.
    let mut buf = [b'-'; 68];
    let mut n = write_trace_id(&mut buf, &ctx.trace_id);
    n += 1;
    id::encode(&ctx.span_id.0, &mut buf[n..n + 16]);
    n += 17;
    buf[n] = if ctx.debug {
        b'd'
    } else if ctx.sampled {
        b'1'
    } else {
        b'0'
    };
    n += 1;
    if let Some(parent) = ctx.parent_id {
        n += 1;
        id::encode(&parent.0, &mut buf[n..n + 16]);
        n += 16;
    }
    // Only hex digits and dashes: always a valid header value.
    if let Ok(value) = HeaderValue::from_bytes(&buf[..n]) {
        headers.insert(B3, value);
    }
}

/// Writes the trace id at the front of `buf` in the width B3 received it and returns the
/// number of bytes written.
fn write_trace_id(buf: &mut [u8], trace_id: &TraceId) -> usize {
    if trace_id.is_64_bit() {
        id::encode(&trace_id.0[8..], &mut buf[..16]);
        16
    } else {
        id::encode(&trace_id.0, &mut buf[..32]);
        32
    }
}

// === multiple headers ===

pub(crate) fn extract_multi(headers: &HeaderMap) -> Option<B3Context> {
    let trace_id = headers.get(&TRACE_ID);
    let span_id = headers.get(&SPAN_ID);
    // A debug flag implies accept; `true`/`false` predate the spec and readers must accept them.
    let sampling = if headers.get(&FLAGS).is_some_and(|f| f.as_bytes() == b"1") {
        Sampling::Debug
    } else {
        match headers.get(&SAMPLED).map(HeaderValue::as_bytes) {
            Some(b"1" | b"true") => Sampling::Accept,
            Some(b"0" | b"false") => Sampling::Deny,
            _ => Sampling::Defer,
        }
    };
    let ids = match (trace_id, span_id) {
        (None, None) if sampling == Sampling::Defer => return None,
        (None, None) => None,
        (Some(t), Some(s)) => Some((
            TraceId::from_hex(t.as_bytes())?,
            SpanId::from_hex(s.as_bytes())?,
        )),
        _ => return None,
    };
    Some(B3Context { ids, sampling })
}

pub(crate) fn inject_multi(headers: &mut HeaderMap, ctx: &TraceContext) {
    let mut trace = [0; 32];
    let n = write_trace_id(&mut trace, &ctx.trace_id);
    if let Ok(value) = HeaderValue::from_bytes(&trace[..n]) {
        headers.insert(TRACE_ID, value);
    }
    if let Ok(value) = HeaderValue::from_bytes(&ctx.span_id.to_hex()) {
        headers.insert(SPAN_ID, value);
    }
    match ctx.parent_id.map(|p| HeaderValue::from_bytes(&p.to_hex())) {
        Some(Ok(value)) => {
            headers.insert(PARENT_SPAN_ID, value);
        }
        _ => {
            headers.remove(&PARENT_SPAN_ID);
        }
    }
    // The spec has debug replace the sampled header rather than accompany it.
    if ctx.debug {
        headers.remove(&SAMPLED);
        headers.insert(FLAGS, HeaderValue::from_static("1"));
    } else {
        headers.remove(&FLAGS);
        let sampled = if ctx.sampled { "1" } else { "0" };
        headers.insert(SAMPLED, HeaderValue::from_static(sampled));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single(s: &str) -> Option<B3Context> {
        parse_single(s.as_bytes())
    }

    fn multi(pairs: &[(&'static str, &'static str)]) -> Option<B3Context> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        extract_multi(&h)
    }

    #[test]
    fn single_header_forms() {
        let c =
            single("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90").unwrap();
        let (t, s) = c.ids.unwrap();
        assert_eq!(t.to_string(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(s.to_string(), "e457b5a2e4d86bd1");
        assert_eq!(c.sampling, Sampling::Accept);

        let c = single("64fe8b2a57d3eff7-e457b5a2e4d86bd1").unwrap();
        assert!(c.ids.unwrap().0.is_64_bit());
        assert_eq!(c.sampling, Sampling::Defer);
        assert_eq!(
            single("64fe8b2a57d3eff7-e457b5a2e4d86bd1-d")
                .unwrap()
                .sampling,
            Sampling::Debug
        );
        assert_eq!(
            single("64fe8b2a57d3eff7-e457b5a2e4d86bd1-0")
                .unwrap()
                .sampling,
            Sampling::Deny
        );
    }

    #[test]
    fn single_decision_only() {
        for (v, want) in [
            ("0", Sampling::Deny),
            ("1", Sampling::Accept),
            ("d", Sampling::Debug),
        ] {
            let c = single(v).unwrap();
            assert!(c.ids.is_none());
            assert_eq!(c.sampling, want);
        }
    }

    #[test]
    fn single_refuses_malformed() {
        let bad = [
            "",
            "2",
            "true",
            "80f198ee56343ba864fe8b2a57d3eff7",
            "80f198ee56343ba864fe8b2a57d3eff7-",
            "80F198EE56343BA864FE8B2A57D3EFF7-e457b5a2e4d86bd1-1",
            "80f198ee56343ba864fe8b2a57d3eff7-E457B5A2E4D86BD1-1",
            "80f198ee56343ba864fe8b2a57d3ef-e457b5a2e4d86bd1-1",
            "00000000000000000000000000000000-e457b5a2e4d86bd1-1",
            "80f198ee56343ba864fe8b2a57d3eff7-0000000000000000-1",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-2",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-x",
            "80f198ee56343ba864fe8b2a57d3eff7_e457b5a2e4d86bd1_1",
        ];
        for s in bad {
            assert!(single(s).is_none(), "accepted {s:?}");
        }
    }

    #[test]
    fn multi_header_forms() {
        let c = multi(&[
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
            ("x-b3-sampled", "1"),
        ])
        .unwrap();
        assert_eq!(c.ids.unwrap().1.to_string(), "e457b5a2e4d86bd1");
        assert_eq!(c.sampling, Sampling::Accept);

        let c = multi(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "false"),
        ])
        .unwrap();
        assert!(c.ids.unwrap().0.is_64_bit());
        assert_eq!(c.sampling, Sampling::Deny);

        let c = multi(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "0"),
            ("x-b3-flags", "1"),
        ])
        .unwrap();
        assert_eq!(c.sampling, Sampling::Debug);

        let c = multi(&[("x-b3-sampled", "0")]).unwrap();
        assert!(c.ids.is_none());
        assert_eq!(c.sampling, Sampling::Deny);
        assert!(multi(&[]).is_none());
        assert!(multi(&[("x-b3-sampled", "maybe")]).is_none());
    }

    #[test]
    fn multi_refuses_malformed_ids() {
        let bad: [&[(&'static str, &'static str)]; 5] = [
            &[("x-b3-traceid", "a3ce929d0e0e4736")],
            &[("x-b3-spanid", "e457b5a2e4d86bd1"), ("x-b3-sampled", "1")],
            &[
                ("x-b3-traceid", "A3CE929D0E0E4736"),
                ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ],
            &[
                ("x-b3-traceid", "a3ce929d0e0e47"),
                ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ],
            &[
                ("x-b3-traceid", "a3ce929d0e0e4736"),
                ("x-b3-spanid", "0000000000000000"),
            ],
        ];
        for pairs in bad {
            assert!(multi(pairs).is_none(), "accepted {pairs:?}");
        }
    }
}
