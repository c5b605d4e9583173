//! Randomness shared by every request of one proxy: P2C choices, backoff jitter, fault rolls.
//! A splitmix64 step over one atomic counter: lock-free, no per-thread state, and good enough
//! spread for choosing endpoints (nothing here needs unpredictability).
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub struct SharedRng(AtomicU64);

impl SharedRng {
    pub fn seeded() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        SharedRng(AtomicU64::new(
            t ^ u64::from(std::process::id()).rotate_left(32),
        ))
    }

    pub fn next(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn fraction(&self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_spread_over_the_unit_interval() {
        let rng = SharedRng::seeded();
        let mut buckets = [0u32; 10];
        for _ in 0..10_000 {
            let f = rng.fraction();
            assert!((0.0..1.0).contains(&f));
            buckets[(f * 10.0) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (800..1200).contains(&b)),
            "{buckets:?}"
        );
    }
}
