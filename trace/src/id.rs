//! Trace and span ids, the lower-case hex that every propagation format uses, and the
//! expansion of one caller-supplied random word into fresh ids.
use std::fmt;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A 128-bit trace id. All zeros is invalid in both W3C and B3 and never produced here.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TraceId(pub [u8; 16]);

/// A 64-bit span id. All zeros is invalid and never produced here.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SpanId(pub [u8; 8]);

// === impl TraceId ===

impl TraceId {
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 16]
    }

    /// B3 allows 64-bit trace ids; they are kept left-padded with zeros (as the W3C and
    /// OpenTelemetry mappings do) so the id written back out has the width that came in.
    pub fn is_64_bit(&self) -> bool {
        self.0[..8] == [0; 8]
    }

    /// Parses 32 lower-case hex digits, or 16 (a B3 64-bit id).
    pub(crate) fn from_hex(s: &[u8]) -> Option<Self> {
        let id = match s.len() {
            32 => TraceId(decode(s)?),
            16 => {
                let low: [u8; 8] = decode(s)?;
                let mut id = [0; 16];
                id[8..].copy_from_slice(&low);
                TraceId(id)
            }
            _ => return None,
        };
        id.is_valid().then_some(id)
    }

    pub(crate) fn random(mix: &mut SplitMix) -> Self {
        let mut id = [0; 16];
        id[..8].copy_from_slice(&mix.next().to_be_bytes());
        id[8..].copy_from_slice(&mix.next().to_be_bytes());
        let id = TraceId(id);
        // Two zero words from a bijective mixer would need a crafted seed; never emit
        // an id every downstream tracer would reject.
        if id.is_valid() { id } else { TraceId([1; 16]) }
    }

    /// Lower-case hex of all 32 digits.
    pub fn to_hex(&self) -> [u8; 32] {
        let mut out = [0; 32];
        encode(&self.0, &mut out);
        out
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(hex_str(&self.to_hex()))
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

// === impl SpanId ===

impl SpanId {
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 8]
    }

    pub(crate) fn from_hex(s: &[u8]) -> Option<Self> {
        let id = SpanId(decode(s)?);
        id.is_valid().then_some(id)
    }

    pub(crate) fn random(mix: &mut SplitMix) -> Self {
        let id = SpanId(mix.next().to_be_bytes());
        if id.is_valid() { id } else { SpanId([1; 8]) }
    }

    /// A fresh span id from one random word (e.g. for a retry attempt's span).
    pub fn from_random(rand: u64) -> Self {
        SpanId::random(&mut SplitMix(rand))
    }

    pub fn to_hex(&self) -> [u8; 16] {
        let mut out = [0; 16];
        encode(&self.0, &mut out);
        out
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(hex_str(&self.to_hex()))
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

// === hex ===

/// Writes `2 * bytes.len()` lower-case hex digits to the front of `out`.
pub(crate) fn encode(bytes: &[u8], out: &mut [u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

/// Decodes exactly `2 * N` lower-case hex digits. Upper case is refused because both
/// W3C (HEXDIGLC) and B3 ("lower-hex") define their ids that way.
pub(crate) fn decode<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    for (b, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *b = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_str(digits: &[u8]) -> &str {
    // `encode` only writes ASCII hex digits.
    std::str::from_utf8(digits).unwrap_or("")
}

// === randomness ===

/// splitmix64: expands one caller-supplied random word into as many well-mixed words as
/// an id needs. It is a bijection of its state, so distinct seeds never collide on the
/// first word, and the caller keeps full control of the entropy source (tests pass fixed
/// seeds; the proxy passes its fast per-thread generator).
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let t = TraceId(*b"\x4b\xf9\x2f\x35\x77\xb3\x4d\xa6\xa3\xce\x92\x9d\x0e\x0e\x47\x36");
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(TraceId::from_hex(&t.to_hex()), Some(t));
        let s = SpanId(*b"\x00\xf0\x67\xaa\x0b\xa9\x02\xb7");
        assert_eq!(s.to_string(), "00f067aa0ba902b7");
        assert_eq!(SpanId::from_hex(&s.to_hex()), Some(s));
    }

    #[test]
    fn refuses_upper_case_bad_length_and_zero() {
        assert_eq!(SpanId::from_hex(b"00F067AA0BA902B7"), None);
        assert_eq!(SpanId::from_hex(b"00f067aa0ba902b"), None);
        assert_eq!(SpanId::from_hex(b"00f067aa0ba902bz"), None);
        assert_eq!(SpanId::from_hex(b"0000000000000000"), None);
        assert_eq!(TraceId::from_hex(&[b'0'; 32]), None);
        assert_eq!(TraceId::from_hex(&[b'a'; 24]), None);
    }

    #[test]
    fn b3_64_bit_trace_ids_are_left_padded() {
        let t = TraceId::from_hex(b"a3ce929d0e0e4736").unwrap();
        assert!(t.is_64_bit());
        assert_eq!(t.to_string(), "0000000000000000a3ce929d0e0e4736");
    }

    #[test]
    fn random_ids_are_valid_and_differ_by_seed() {
        let a = TraceId::random(&mut SplitMix(1));
        let b = TraceId::random(&mut SplitMix(2));
        assert!(a.is_valid() && b.is_valid() && !a.is_64_bit());
        assert_ne!(a, b);
        assert_ne!(SpanId::from_random(0), SpanId::from_random(1));
        assert!(SpanId::from_random(0).is_valid());
    }
}
