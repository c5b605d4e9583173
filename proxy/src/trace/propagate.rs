//! Trace context for the next hop without a per-request allocation: the unsampled
//! `traceparent` carved out of a per-thread arena, and ids from a per-thread random word.

use std::cell::{Cell, RefCell};
use std::time::SystemTime;

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue};
use weir_trace::{Format, TraceContext};

pub(super) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Writes `traceparent: 00-{trace}-{span}-00`, or the request's own formats when it came in
/// with B3 ids but no decision.
pub(super) fn write_denied(headers: &mut HeaderMap, ctx: &TraceContext) {
    if ctx.format != Format::W3C {
        // B3 without a sampling field: rare enough to take the allocating path.
        weir_trace::inject(headers, ctx);
        return;
    }
    let mut buf = [b'-'; 55];
    buf[..2].copy_from_slice(b"00");
    buf[3..35].copy_from_slice(&ctx.trace_id.to_hex());
    buf[36..52].copy_from_slice(&ctx.span_id.to_hex());
    buf[53..].copy_from_slice(b"00");
    if let Some(value) = arena_value(&buf) {
        headers.insert(TRACEPARENT, value);
    }
}

/// Bytes for this many header values are allocated at once per thread.
pub(super) const ARENA_BYTES: usize = 4096;

thread_local! {
    static ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
    static RNG: Cell<u64> = const { Cell::new(0) };
}

/// A header value sharing one per-thread block with its neighbours (reference counted, so
/// the block is freed when the last request using it is gone): one allocation per ~70
/// values instead of one each.
fn arena_value(bytes: &[u8]) -> Option<HeaderValue> {
    ARENA.with_borrow_mut(|arena| {
        if arena.capacity() < bytes.len() {
            *arena = BytesMut::with_capacity(ARENA_BYTES.max(bytes.len()));
        }
        arena.extend_from_slice(bytes);
        HeaderValue::from_maybe_shared(arena.split().freeze()).ok()
    })
}

/// splitmix64 over a per-thread counter: no atomics shared between threads. Seeded per
/// thread from the clock, the pid and the cell's address, so proxies started together and
/// threads of one proxy draw different ids.
pub(super) fn random() -> u64 {
    RNG.with(|state| {
        let mut s = state.get();
        if s == 0 {
            let t = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            let here = std::ptr::from_ref(state) as usize as u64;
            s = t ^ u64::from(std::process::id()).rotate_left(32) ^ here.rotate_left(17);
        }
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(s.max(1));
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}
