//! Human-written durations: `250ms`, `2s`, `1m`, `1h`, and combinations such as `1m30s`.
//!
//! Integers only: `1.5s` is rejected with a hint to write `1500ms`, because fractional values
//! invite rounding questions the proxy should not have to answer.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A policy duration. Wraps [`std::time::Duration`] so it can carry its own serde format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

/// Units from largest to smallest; a compound value must use them in this order, once each.
const UNITS: [(&str, u128); 6] = [
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

const HINT: &str = "expected a duration such as 250ms, 2s, 1m or 1m30s";

/// Parses `250ms`, `2s`, `1m`, `1h`, `1m30s` (units `h`, `m`, `s`, `ms`, `us`, `ns`).
pub fn parse(text: &str) -> Result<std::time::Duration, String> {
    if text.is_empty() {
        return Err(format!("empty duration; {HINT}"));
    }
    if text.starts_with('-') {
        return Err(format!(
            "invalid duration {text:?}: durations cannot be negative"
        ));
    }
    let mut rest = text;
    let mut total: u128 = 0;
    // Index into UNITS of the last unit seen, so `1s1m` and `1s1s` are rejected.
    let mut last_unit: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("invalid duration {text:?}: {HINT}"));
        }
        let (number, after) = rest.split_at(digits);
        let unit_len = after.bytes().take_while(|b| !b.is_ascii_digit()).count();
        let (unit, after) = after.split_at(unit_len);
        if unit.starts_with('.') {
            return Err(format!(
                "invalid duration {text:?}: fractions are not supported; use a smaller unit (1500ms, not 1.5s)"
            ));
        }
        if unit.is_empty() {
            return Err(format!(
                "invalid duration {text:?}: missing unit after {number}; use h, m, s or ms"
            ));
        }
        let Some(index) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(format!(
                "invalid duration {text:?}: unknown unit {:?}; use h, m, s or ms",
                unit.trim()
            ));
        };
        if last_unit.is_some_and(|last| index <= last) {
            return Err(format!(
                "invalid duration {text:?}: units must go from largest to smallest, each at most once"
            ));
        }
        last_unit = Some(index);
        let too_large = || format!("invalid duration {text:?}: too large");
        let value: u128 = number.parse().map_err(|_| too_large())?;
        total = value
            .checked_mul(UNITS[index].1)
            .and_then(|nanos| total.checked_add(nanos))
            .ok_or_else(too_large)?;
        rest = after;
    }
    let secs = u64::try_from(total / 1_000_000_000)
        .map_err(|_| format!("invalid duration {text:?}: too large"))?;
    // The remainder of a division by 1e9 always fits in u32.
    let nanos = (total % 1_000_000_000) as u32;
    Ok(std::time::Duration::new(secs, nanos))
}

// === impl Duration ===

impl Duration {
    pub const ZERO: Duration = Duration(std::time::Duration::ZERO);

    pub fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }

    pub fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub fn as_std(&self) -> std::time::Duration {
        self.0
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s).map(Duration)
    }
}

/// Compact form that [`parse`] accepts again: `90s` prints as `1m30s`, zero as `0s`.
impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        for (name, size) in UNITS {
            let count = nanos / size;
            if count > 0 {
                write!(f, "{count}{name}")?;
                nanos %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"250ms\" or \"2s\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse(v).map(Duration).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

    #[test]
    fn parses_simple_units() {
        assert_eq!(parse("250ms"), Ok(Std::from_millis(250)));
        assert_eq!(parse("2s"), Ok(Std::from_secs(2)));
        assert_eq!(parse("1m"), Ok(Std::from_secs(60)));
        assert_eq!(parse("1h"), Ok(Std::from_secs(3600)));
        assert_eq!(parse("0s"), Ok(Std::ZERO));
        assert_eq!(parse("15us"), Ok(Std::from_micros(15)));
        assert_eq!(parse("7ns"), Ok(Std::from_nanos(7)));
    }

    #[test]
    fn parses_compound() {
        assert_eq!(parse("1m30s"), Ok(Std::from_secs(90)));
        assert_eq!(parse("1h2m3s4ms"), Ok(Std::from_millis(3_723_004)));
    }

    #[test]
    fn rejects_garbage() {
        let cases = [
            ("", "empty duration"),
            ("-1s", "cannot be negative"),
            ("10 parsecs", "unknown unit \"parsecs\""),
            ("10", "missing unit after 10"),
            ("1.5s", "fractions are not supported"),
            ("s", "expected a duration"),
            ("1s1m", "largest to smallest"),
            ("1s1s", "largest to smallest"),
            ("2d", "unknown unit \"d\""),
            ("99999999999999999999999h", "too large"),
            ("6000000000000000h", "too large"),
        ];
        for (input, expected) in cases {
            let err = parse(input).expect_err(input);
            assert!(err.contains(expected), "{input:?}: {err}");
        }
    }

    #[test]
    fn display_is_compact_and_round_trips() {
        let cases = [
            (Std::ZERO, "0s"),
            (Std::from_millis(250), "250ms"),
            (Std::from_secs(2), "2s"),
            (Std::from_secs(90), "1m30s"),
            (Std::from_secs(3600), "1h"),
            (Std::from_millis(1500), "1s500ms"),
            (Std::from_nanos(1_001_001), "1ms1us1ns"),
        ];
        for (value, text) in cases {
            assert_eq!(Duration(value).to_string(), text);
            assert_eq!(parse(text), Ok(value));
        }
    }

    #[test]
    fn serde_uses_strings() {
        let d: Duration = serde_json::from_str("\"1m30s\"").expect("valid");
        assert_eq!(d, Duration::from_secs(90));
        assert_eq!(serde_json::to_string(&d).expect("serialises"), "\"1m30s\"");
        let err = serde_json::from_str::<Duration>("5").expect_err("integers are not durations");
        assert!(
            err.to_string().contains("expected a duration string"),
            "{err}"
        );
    }
}
