use http::{HeaderMap, HeaderValue};

use super::*;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_static(v));
    }
    h
}

fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

#[test]
fn no_headers_starts_a_w3c_trace() {
    let ctx = start_or_continue(&HeaderMap::new(), 1.0, 42);
    assert!(ctx.trace_id.is_valid() && ctx.span_id.is_valid());
    assert_eq!(ctx.parent_id, None);
    assert!(ctx.sampled);
    assert_eq!(ctx.format, Format::W3C);

    let mut out = HeaderMap::new();
    inject(&mut out, &ctx);
    let written = get(&out, "traceparent").unwrap();
    assert_eq!(written, format!("00-{}-{}-01", ctx.trace_id, ctx.span_id));
    assert!(out.get("b3").is_none() && out.get("x-b3-traceid").is_none());
}

#[test]
fn w3c_round_trip_keeps_trace_and_tracestate() {
    let mut h = headers(&[
        ("traceparent", TRACEPARENT),
        ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
    ]);
    let ctx = start_or_continue(&h, 0.0, 7);
    assert_eq!(ctx.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(ctx.parent_id.unwrap().to_string(), "00f067aa0ba902b7");
    assert_ne!(ctx.span_id, ctx.parent_id.unwrap());
    assert!(
        ctx.sampled,
        "the parent's decision wins over a 0.0 head sampler"
    );

    inject(&mut h, &ctx);
    assert_eq!(
        get(&h, "traceparent").unwrap(),
        format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", ctx.span_id)
    );
    assert_eq!(
        get(&h, "tracestate").unwrap(),
        "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    );
    assert!(h.get("b3").is_none());

    // The next hop sees this hop's span as its parent.
    let next = start_or_continue(&h, 0.0, 8);
    assert_eq!(next.trace_id, ctx.trace_id);
    assert_eq!(next.parent_id, Some(ctx.span_id));
}

#[test]
fn w3c_higher_version_is_rewritten_as_00() {
    let mut h = headers(&[(
        "traceparent",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-xyz",
    )]);
    let ctx = start_or_continue(&h, 1.0, 1);
    assert!(!ctx.sampled);
    inject(&mut h, &ctx);
    assert!(
        get(&h, "traceparent")
            .unwrap()
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    );
    assert!(get(&h, "traceparent").unwrap().ends_with("-00"));
}

#[test]
fn malformed_w3c_restarts_the_trace_and_replaces_the_header() {
    let mut h = headers(&[(
        "traceparent",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
    )]);
    assert_eq!(extract(&h), None);
    let ctx = start_or_continue(&h, 1.0, 3);
    assert_eq!(ctx.parent_id, None);
    assert_ne!(ctx.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    inject(&mut h, &ctx);
    assert_eq!(h.get_all("traceparent").iter().count(), 1);
    assert!(
        get(&h, "traceparent")
            .unwrap()
            .contains(&ctx.trace_id.to_string())
    );
}

#[test]
fn b3_single_round_trip_rewrites_only_b3() {
    let mut h = headers(&[(
        "b3",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
    )]);
    let ctx = start_or_continue(&h, 0.0, 11);
    assert_eq!(ctx.format, Format::B3_SINGLE);
    assert_eq!(ctx.parent_id.unwrap().to_string(), "e457b5a2e4d86bd1");
    assert!(ctx.sampled);
    inject(&mut h, &ctx);
    assert_eq!(
        get(&h, "b3").unwrap(),
        format!(
            "80f198ee56343ba864fe8b2a57d3eff7-{}-1-e457b5a2e4d86bd1",
            ctx.span_id
        )
    );
    assert!(h.get("traceparent").is_none());
    assert_eq!(start_or_continue(&h, 0.0, 12).parent_id, Some(ctx.span_id));
}

#[test]
fn b3_keeps_64_bit_trace_ids_64_bit() {
    let mut h = headers(&[
        ("x-b3-traceid", "a3ce929d0e0e4736"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-sampled", "1"),
    ]);
    let ctx = start_or_continue(&h, 0.0, 13);
    assert_eq!(ctx.format, Format::B3_MULTI);
    inject(&mut h, &ctx);
    assert_eq!(get(&h, "x-b3-traceid").unwrap(), "a3ce929d0e0e4736");
    assert_eq!(get(&h, "x-b3-spanid").unwrap(), ctx.span_id.to_string());
    assert_eq!(get(&h, "x-b3-parentspanid").unwrap(), "e457b5a2e4d86bd1");
    assert_eq!(get(&h, "x-b3-sampled").unwrap(), "1");
    assert!(h.get("traceparent").is_none() && h.get("b3").is_none());
}

#[test]
fn b3_debug_is_sampled_and_stays_debug() {
    let mut h = headers(&[
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-sampled", "0"),
        ("x-b3-flags", "1"),
    ]);
    let ctx = start_or_continue(&h, 0.0, 14);
    assert!(ctx.sampled && ctx.debug);
    inject(&mut h, &ctx);
    assert_eq!(get(&h, "x-b3-flags").unwrap(), "1");
    assert!(h.get("x-b3-sampled").is_none());

    let h = headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-d")]);
    let ctx = start_or_continue(&h, 0.0, 15);
    let mut out = HeaderMap::new();
    inject(&mut out, &ctx);
    assert!(get(&out, "b3").unwrap().ends_with("-d-e457b5a2e4d86bd1"));
}

#[test]
fn b3_deny_is_honoured_even_at_full_sampling() {
    let h = headers(&[("b3", "0")]);
    let e = extract(&h).unwrap();
    assert_eq!(
        (e.parent, e.sampling, e.format),
        (None, Sampling::Deny, Format::B3_SINGLE)
    );
    let ctx = start_or_continue(&h, 1.0, 16);
    assert!(!ctx.sampled);
    assert_eq!(ctx.parent_id, None);
    let mut out = HeaderMap::new();
    inject(&mut out, &ctx);
    assert!(get(&out, "b3").unwrap().ends_with("-0"));

    let h = headers(&[("x-b3-sampled", "0")]);
    assert!(!start_or_continue(&h, 1.0, 17).sampled);
}

#[test]
fn b3_deferred_decision_uses_head_sampling() {
    let h = headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1")]);
    assert!(!start_or_continue(&h, 0.0, u64::MAX).sampled);
    assert!(start_or_continue(&h, 1.0, u64::MAX).sampled);
}

#[test]
fn both_formats_are_rewritten_with_the_w3c_ids() {
    let mut h = headers(&[
        ("traceparent", TRACEPARENT),
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0"),
    ]);
    let ctx = start_or_continue(&h, 0.0, 18);
    assert_eq!(ctx.format, Format::W3C | Format::B3_SINGLE);
    assert_eq!(ctx.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(ctx.sampled);
    inject(&mut h, &ctx);
    assert!(
        get(&h, "b3")
            .unwrap()
            .starts_with("4bf92f3577b34da6a3ce929d0e0e4736-")
    );
    assert!(get(&h, "traceparent").unwrap().ends_with("-01"));
}

#[test]
fn malformed_w3c_falls_back_to_valid_b3() {
    let h = headers(&[
        (
            "traceparent",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
    ]);
    let e = extract(&h).unwrap();
    assert_eq!(e.format, Format::B3_MULTI);
    assert_eq!(e.sampling, Sampling::Defer);
    assert_eq!(e.parent.unwrap().1.to_string(), "e457b5a2e4d86bd1");
}

#[test]
fn head_sampling_bounds_and_rate() {
    for r in [0, 1, u64::MAX / 2, u64::MAX] {
        assert!(!start_or_continue(&HeaderMap::new(), 0.0, r).sampled);
        assert!(start_or_continue(&HeaderMap::new(), 1.0, r).sampled);
        assert!(!start_or_continue(&HeaderMap::new(), f64::NAN, r).sampled);
        assert!(!start_or_continue(&HeaderMap::new(), -1.0, r).sampled);
    }
    let mut mix = SplitMix(99);
    let hits = (0..10_000)
        .filter(|_| start_or_continue(&HeaderMap::new(), 0.25, mix.next()).sampled)
        .count();
    assert!((2_200..2_800).contains(&hits), "{hits} of 10000 at 0.25");
}

#[test]
fn parent_decision_is_honoured() {
    let deny = headers(&[(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
    )]);
    let accept = headers(&[("traceparent", TRACEPARENT)]);
    for r in [0, u64::MAX] {
        assert!(!start_or_continue(&deny, 1.0, r).sampled);
        assert!(start_or_continue(&accept, 0.0, r).sampled);
    }
}

#[test]
fn children_share_the_trace_and_point_at_the_parent() {
    let ctx = start_or_continue(&HeaderMap::new(), 1.0, 5);
    let a = ctx.child(6);
    let b = ctx.child(7);
    assert_eq!(
        (a.trace_id, a.parent_id, a.sampled, a.format),
        (ctx.trace_id, Some(ctx.span_id), true, ctx.format)
    );
    assert_ne!(a.span_id, b.span_id);
    assert_ne!(a.span_id, ctx.span_id);
}

#[test]
fn format_set_debug_and_contains() {
    let f = Format::W3C | Format::B3_MULTI;
    assert!(f.contains(Format::W3C) && !f.contains(Format::B3_SINGLE));
    assert!(!f.contains(Format::NONE));
    assert_eq!(format!("{f:?}"), "{W3C, B3_MULTI}");
}
