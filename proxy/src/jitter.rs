//! Randomness for backoff and renewal jitter: a fleet of proxies that lost the same control
//! plane, or got certificates at the same moment, must not all come back at once. Spread is
//! what matters here, not unpredictability, so xorshift64* seeded from the clock and pid.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct Jitter(u64);

impl Jitter {
    pub fn seeded() -> Self {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter((t ^ u64::from(std::process::id()).rotate_left(32)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A duration in `[0, max)`.
    pub fn below(&mut self, max: Duration) -> Duration {
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.next() % nanos.max(1))
    }

    /// A number in `[0, 1)`.
    pub fn fraction(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_bounds() {
        let mut j = Jitter::seeded();
        for _ in 0..1000 {
            assert!(j.below(Duration::from_millis(100)) < Duration::from_millis(100));
            let f = j.fraction();
            assert!((0.0..1.0).contains(&f), "{f}");
        }
    }
}
