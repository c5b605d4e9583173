//! The `x-chaos` spec language (grammar in the parent module's docs).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use http::StatusCode;

/// Longest `delay=` accepted, so a typo cannot stall a test run; `hang` is the
/// explicit way to never answer.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// What one call does when it falls inside the spec's scope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Spec {
    /// Waited out before the fault (or the 200).
    pub delay: Option<Duration>,
    /// `None` = answer 200.
    pub fault: Option<Fault>,
    /// Only calls `1..=first` of the key misbehave.
    pub first: Option<u64>,
    /// Only this share of calls misbehaves, spread evenly (see [`Spec::misbehaves`]).
    pub percent: Option<u8>,
    /// Counting key; `None` = the request path.
    pub key: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    Status(StatusCode),
    /// HTTP/1: RST the connection. HTTP/2: RST_STREAM only this stream.
    Reset,
    /// RST the whole TCP connection, whatever the protocol.
    ResetConnection,
    /// Go down: close the listener and RST every open connection; come back after
    /// the duration, or on `refuse_connections(false)` when there is none.
    Refuse(Option<Duration>),
    /// Never answer.
    Hang,
}

impl Spec {
    /// Whether call number `seq` (1-based, per key) gets the delay and fault.
    ///
    /// `percent` uses an even spread rather than a PRNG: call `n` misbehaves iff
    /// ⌊n·P/100⌋ > ⌊(n−1)·P/100⌋, so after n calls exactly ⌊n·P/100⌋ have
    /// misbehaved. Tests can then assert exact counts, and a rerun sees the same
    /// sequence whatever the timing.
    pub fn misbehaves(&self, seq: u64) -> bool {
        if self.first.is_some_and(|first| seq > first) {
            return false;
        }
        match self.percent {
            None => true,
            Some(p) => {
                let p = u128::from(p);
                let n = u128::from(seq);
                n * p / 100 > n.saturating_sub(1) * p / 100
            }
        }
    }
}

/// A spec that does not parse; the message names the offending item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError(pub String);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad x-chaos spec: {}", self.0)
    }
}

impl std::error::Error for SpecError {}

fn err<T>(msg: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError(msg.into()))
}

impl FromStr for Spec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<Self, SpecError> {
        let mut spec = Spec::default();
        // `ok` is a fault slot too: "ok,status=503" is a contradiction, not a 503.
        let mut fault_item: Option<&str> = None;
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, value) = match item.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim())),
                None => (item, None),
            };
            let fault = match (name, value) {
                ("ok", None) => None,
                ("status", Some(v)) => Some(Fault::Status(parse_status(v)?)),
                ("reset", None) => Some(Fault::Reset),
                ("reset", Some("conn")) => Some(Fault::ResetConnection),
                ("refuse", None) => Some(Fault::Refuse(None)),
                ("refuse", Some(v)) => Some(Fault::Refuse(Some(parse_duration(v)?))),
                ("hang", None) => Some(Fault::Hang),
                ("delay", Some(v)) => {
                    let d = parse_duration(v)?;
                    if d > MAX_DELAY {
                        return err(format!("{item}: above {MAX_DELAY:?}; use `hang`"));
                    }
                    set_once(&mut spec.delay, d, item)?;
                    continue;
                }
                ("first", Some(v)) => {
                    let n = v.parse().or_else(|_| err(format!("{item}: not a count")))?;
                    set_once(&mut spec.first, n, item)?;
                    continue;
                }
                ("percent", Some(v)) => {
                    let p = v
                        .parse::<u8>()
                        .ok()
                        .filter(|p| *p <= 100)
                        .map_or_else(|| err(format!("{item}: must be 0..=100")), Ok)?;
                    set_once(&mut spec.percent, p, item)?;
                    continue;
                }
                ("key", Some(v)) if !v.is_empty() => {
                    set_once(&mut spec.key, v.to_string(), item)?;
                    continue;
                }
                _ => return err(format!("unknown item {item:?}")),
            };
            if let Some(previous) = fault_item {
                return err(format!(
                    "{item:?} conflicts with {previous:?}: one outcome per spec"
                ));
            }
            fault_item = Some(item);
            spec.fault = fault;
        }
        Ok(spec)
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, item: &str) -> Result<(), SpecError> {
    if slot.is_some() {
        return err(format!("{item}: given twice"));
    }
    *slot = Some(value);
    Ok(())
}

fn parse_status(text: &str) -> Result<StatusCode, SpecError> {
    // 1xx are not final responses; hyper would not send them as the answer.
    match text.parse::<u16>().ok().map(StatusCode::from_u16) {
        Some(Ok(s)) if s.as_u16() >= 200 => Ok(s),
        _ => err(format!("status={text}: must be 200..=999")),
    }
}

/// `250ms`, `2s`, `1m`: the units the policy format uses.
pub fn parse_duration(text: &str) -> Result<Duration, SpecError> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .or_else(|_| err(format!("{text:?}: not a duration like 250ms, 2s, 1m")))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .map_or_else(|| err(format!("{text:?}: too long")), Ok),
        _ => err(format!("{text:?}: unit must be ms, s or m")),
    }
}
