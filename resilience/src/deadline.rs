//! Deadline propagation headers (design §7a): the caller's remaining budget travels as a
//! relative duration, so clocks on different hosts need not agree.
//!
//! - `x-weir-timeout-ms`: decimal milliseconds.
//! - `grpc-timeout`: gRPC over HTTP/2 spec, `TimeoutValue TimeoutUnit`: at most 8 ASCII digits
//!   followed by one of `H` hours, `M` minutes, `S` seconds, `m` ms, `u` µs, `n` ns.
//!
//! Malformed values are ignored rather than rejected: a broken header from a client must not
//! fail the request, it just does not shorten the deadline.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

pub const WEIR_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-weir-timeout-ms");
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// gRPC limits TimeoutValue to 8 digits.
const GRPC_MAX_VALUE: u64 = 99_999_999;

/// Finest first, so the chosen unit loses the least precision.
const GRPC_UNITS: [(u8, u64); 6] = [
    (b'n', 1),
    (b'u', 1_000),
    (b'm', 1_000_000),
    (b'S', 1_000_000_000),
    (b'M', 60 * 1_000_000_000),
    (b'H', 3_600 * 1_000_000_000),
];

fn digits(bytes: &[u8], max_len: usize) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > max_len {
        return None;
    }
    bytes.iter().try_fold(0u64, |acc, &b| {
        let d = b.is_ascii_digit().then(|| u64::from(b - b'0'))?;
        acc.checked_mul(10)?.checked_add(d)
    })
}

/// Parses an `x-weir-timeout-ms` value.
pub fn parse_timeout_ms(value: &[u8]) -> Option<Duration> {
    // 20 digits is the most a u64 can hold; `digits` still checks for overflow.
    digits(value.trim_ascii(), 20).map(Duration::from_millis)
}

/// Parses a `grpc-timeout` value.
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, number) = value.trim_ascii().split_last()?;
    let n = digits(number, 8)?;
    let nanos_per_unit = GRPC_UNITS.iter().find(|(u, _)| *u == unit)?.1;
    // 99_999_999 H is ~1.1e24 ns: beyond u64 nanoseconds, so go through seconds.
    Some(match unit {
        b'H' | b'M' | b'S' => Duration::from_secs(n * (nanos_per_unit / 1_000_000_000)),
        _ => Duration::from_nanos(n * nanos_per_unit),
    })
}

/// The caller's remaining time from either header (the smaller when both are present or a
/// header is repeated), or None when neither carries a valid value.
pub fn remaining_from_headers(headers: &HeaderMap) -> Option<Duration> {
    let ms = headers
        .get_all(&WEIR_TIMEOUT_MS)
        .iter()
        .filter_map(|v| parse_timeout_ms(v.as_bytes()));
    let grpc = headers
        .get_all(&GRPC_TIMEOUT)
        .iter()
        .filter_map(|v| parse_grpc_timeout(v.as_bytes()));
    ms.chain(grpc).min()
}

/// Encodes `d` as a `grpc-timeout` value in the finest unit that fits 8 digits. Rounds down, so
/// the next hop's deadline never outlives ours.
pub fn write_grpc_timeout(d: Duration) -> HeaderValue {
    let nanos = d.as_nanos();
    let (unit, value) = GRPC_UNITS
        .iter()
        .map(|&(unit, per)| (unit, nanos / u128::from(per)))
        .find(|&(_, v)| v <= u128::from(GRPC_MAX_VALUE))
        .unwrap_or((b'H', u128::from(GRPC_MAX_VALUE)));
    // Digits into a stack buffer, right to left: at most 8 digits plus the unit.
    let mut buf = [0u8; 9];
    let mut pos = buf.len() - 1;
    buf[pos] = unit;
    let mut v = value as u64;
    loop {
        pos -= 1;
        buf[pos] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // ASCII digits and a unit letter are always valid header bytes; HeaderValue has no
    // infallible constructor for non-'static bytes.
    HeaderValue::from_bytes(&buf[pos..]).expect("digits and a unit letter are a valid header value")
}

/// Encodes `d` as an `x-weir-timeout-ms` value, rounded down like `write_grpc_timeout`.
pub fn write_timeout_ms(d: Duration) -> HeaderValue {
    HeaderValue::from(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc(s: &str) -> Option<Duration> {
        parse_grpc_timeout(s.as_bytes())
    }

    #[test]
    fn parses_every_grpc_unit() {
        assert_eq!(grpc("5H"), Some(Duration::from_secs(5 * 3600)));
        assert_eq!(grpc("2M"), Some(Duration::from_secs(120)));
        assert_eq!(grpc("3S"), Some(Duration::from_secs(3)));
        assert_eq!(grpc("250m"), Some(Duration::from_millis(250)));
        assert_eq!(grpc("7u"), Some(Duration::from_micros(7)));
        assert_eq!(grpc("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(
            grpc("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
        assert_eq!(grpc("0m"), Some(Duration::ZERO));
    }

    #[test]
    fn rejects_malformed_grpc_values() {
        for bad in [
            "",
            "m",
            "100",
            "123456789n",
            "10x",
            "-5m",
            "+5m",
            "1.5S",
            "5 m",
            "5mm",
            "５m",
        ] {
            assert_eq!(grpc(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn parses_and_rejects_ms_values() {
        let ms = |s: &str| parse_timeout_ms(s.as_bytes());
        assert_eq!(ms("1500"), Some(Duration::from_millis(1500)));
        assert_eq!(ms(" 20 "), Some(Duration::from_millis(20)));
        assert_eq!(
            ms("18446744073709551615"),
            Some(Duration::from_millis(u64::MAX))
        );
        for bad in [
            "",
            "-1",
            "1e3",
            "1.5",
            "18446744073709551616",
            "123456789012345678901",
            "0x10",
        ] {
            assert_eq!(ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn remaining_takes_the_smallest_valid_value() {
        let mut h = HeaderMap::new();
        assert_eq!(remaining_from_headers(&h), None);
        h.insert(WEIR_TIMEOUT_MS, HeaderValue::from_static("800"));
        h.insert(GRPC_TIMEOUT, HeaderValue::from_static("500m"));
        assert_eq!(remaining_from_headers(&h), Some(Duration::from_millis(500)));
        h.insert(GRPC_TIMEOUT, HeaderValue::from_static("2S"));
        assert_eq!(remaining_from_headers(&h), Some(Duration::from_millis(800)));
        h.insert(GRPC_TIMEOUT, HeaderValue::from_static("garbage"));
        assert_eq!(remaining_from_headers(&h), Some(Duration::from_millis(800)));
        h.append(WEIR_TIMEOUT_MS, HeaderValue::from_static("300"));
        assert_eq!(remaining_from_headers(&h), Some(Duration::from_millis(300)));
        h.insert(WEIR_TIMEOUT_MS, HeaderValue::from_static("soon"));
        assert_eq!(remaining_from_headers(&h), None);
    }

    #[test]
    fn writes_the_finest_unit_that_fits() {
        let w = |d: Duration| write_grpc_timeout(d);
        assert_eq!(w(Duration::ZERO), "0n");
        assert_eq!(w(Duration::from_nanos(99_999_999)), "99999999n");
        assert_eq!(w(Duration::from_millis(100)), "100000u");
        assert_eq!(w(Duration::from_secs(2 * 3600)), "7200000m");
        assert_eq!(w(Duration::from_secs(1_000_000)), "1000000S");
        assert_eq!(w(Duration::from_secs(200_000_000)), "3333333M");
        assert_eq!(w(Duration::from_secs(400_000_000_000)), "99999999H");
        assert_eq!(w(Duration::MAX), "99999999H");
    }

    #[test]
    fn grpc_round_trip_loses_under_one_part_in_a_hundred_thousand() {
        let mut ns: u64 = 1;
        while ns < 1_000_000_000_000_000 {
            let d = Duration::from_nanos(ns.wrapping_mul(7) / 3 + 1);
            let back = grpc(write_grpc_timeout(d).to_str().expect("ascii")).expect("parses");
            assert!(back <= d, "{d:?} came back as {back:?}");
            let lost = (d - back).as_nanos() as f64;
            // A coarser unit is only chosen once the finer one needs ≥ 1e8, so the kept value
            // has at least 5 digits (units step by 1000 at most).
            assert!(
                lost <= d.as_nanos() as f64 * 1e-5,
                "{d:?} came back as {back:?}"
            );
            ns = ns.saturating_mul(3);
        }
    }

    #[test]
    fn ms_header_rounds_down() {
        assert_eq!(write_timeout_ms(Duration::from_micros(2_999)), "2");
        assert_eq!(write_timeout_ms(Duration::from_secs(3)), "3000");
        assert_eq!(write_timeout_ms(Duration::MAX), "18446744073709551615");
        let back = parse_timeout_ms(write_timeout_ms(Duration::from_millis(42)).as_bytes());
        assert_eq!(back, Some(Duration::from_millis(42)));
    }
}
