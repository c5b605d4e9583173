//! W3C Trace Context `traceparent` (https://www.w3.org/TR/trace-context/#traceparent-header).
//! `tracestate` is never read or written: the proxy does not add a vendor entry, and the
//! header travels on untouched with the rest of the request.
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::id::{self, SpanId, TraceId};
use crate::propagation::TraceContext;

pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// `00-` + 32 + `-` + 16 + `-` + 2.
const LEN: usize = 55;

pub(crate) struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
}

/// Reads `traceparent`; anything the spec calls invalid (including the header sent
/// twice) is `None`, which makes the caller restart the trace as the spec asks.
pub(crate) fn extract(headers: &HeaderMap) -> Option<Parent> {
    let mut values = headers.get_all(&TRACEPARENT).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    parse(value.as_bytes())
}

fn parse(v: &[u8]) -> Option<Parent> {
    if v.len() < LEN {
        return None;
    }
    let [version] = id::decode::<1>(&v[0..2])?;
    // 00 has exactly four fields. A later version may append fields after a `-`, and a
    // reader that knows only 00 parses the first four of it; ff is forbidden.
    let length_ok = match version {
        0xff => false,
        0x00 => v.len() == LEN,
        _ => v.len() == LEN || v[LEN] == b'-',
    };
    if !length_ok || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let trace_id = TraceId(id::decode(&v[3..35])?);
    let span_id = SpanId(id::decode(&v[36..52])?);
    let [flags] = id::decode::<1>(&v[53..55])?;
    if !trace_id.is_valid() || !span_id.is_valid() {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 0x01 != 0,
    })
}

/// Always version 00, the only version this code knows how to produce: the spec has a
/// participant that received a higher version send the version it supports.
pub(crate) fn inject(headers: &mut HeaderMap, ctx: &TraceContext) {
    let mut buf = [b'-'; LEN];
    buf[0..2].copy_from_slice(b"00");
    id::encode(&ctx.trace_id.0, &mut buf[3..35]);
    id::encode(&ctx.span_id.0, &mut buf[36..52]);
    buf[53..55].copy_from_slice(if ctx.sampled { b"01" } else { b"00" });
    // The buffer holds only hex digits and dashes, which are always a valid header value.
    if let Ok(value) = HeaderValue::from_bytes(&buf) {
        headers.insert(TRACEPARENT, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn parse_str(s: &str) -> Option<Parent> {
        parse(s.as_bytes())
    }

    #[test]
    fn parses_the_spec_example() {
        let p = parse_str(VALID).unwrap();
        assert_eq!(p.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.span_id.to_string(), "00f067aa0ba902b7");
        assert!(p.sampled);
        let p = parse_str("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!p.sampled);
        // Only bit 0 means sampled; other flag bits are carried by later levels.
        assert!(parse_str("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03").is_some());
        assert!(
            !parse_str("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02")
                .unwrap()
                .sampled
        );
    }

    #[test]
    fn refuses_malformed_values() {
        let bad = [
            // wrong lengths
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b77-01",
            // upper-case hex anywhere
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // forbidden version, non-hex
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            // all-zero ids
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // bad separators
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            // a future version's extra field must follow a dash
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ];
        for s in bad {
            assert!(parse_str(s).is_none(), "accepted {s:?}");
        }
    }

    #[test]
    fn future_versions_parse_the_first_four_fields() {
        let p = parse_str(
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
        )
        .unwrap();
        assert_eq!(p.span_id.to_string(), "00f067aa0ba902b7");
        assert!(p.sampled);
        assert!(parse_str("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").is_some());
    }

    #[test]
    fn a_repeated_header_is_invalid() {
        let mut h = HeaderMap::new();
        h.append(&TRACEPARENT, HeaderValue::from_static(VALID));
        assert!(extract(&h).is_some());
        h.append(&TRACEPARENT, HeaderValue::from_static(VALID));
        assert!(extract(&h).is_none());
    }
}
