//! Power-of-two-choices endpoint selection (Mitzenmacher): pick two endpoints at random and
//! use the less loaded one. Nearly as good as least-loaded, O(1), and without the herd effect
//! of every proxy sending to the same "best" endpoint.
//!
//! Why not `tower::balance::p2c::Balance` (tower 0.5.3)? It owns its endpoints: services come
//! from a `Discover` stream into a `ReadyCache` (an `IndexMap` of ready services plus a
//! `FuturesUnordered` of pending ones), and choosing happens in `poll_ready(&mut self)` /
//! `call(&mut self)`, which remember the chosen index in between and move the called service
//! back into the pending set (a push into `FuturesUnordered` per call). Weir keeps a backend's
//! endpoints as an immutable `Arc` list inside the config snapshot, read by many request tasks
//! at once; using tower's balancer would mean a `Mutex` or a `Buffer` task in front of it. A
//! pure function over a shared slice needs neither.

/// SplitMix64 step: turns one caller-supplied `u64` into as many well-mixed values as the
/// pick needs, so the caller's random source is called once per pick.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform index in `0..n` (Lemire's multiply-shift; no modulo bias worth measuring).
fn below(r: u64, n: usize) -> usize {
    ((u128::from(r) * n as u128) >> 64) as usize
}

/// Random draws before falling back to a scan when the drawn endpoints are ineligible. With at
/// most `maxPercent` ejected, a few draws almost always succeed.
const DRAWS: usize = 4;

/// A random eligible index other than `exclude`, or None when there is none.
fn pick<T>(
    items: &[T],
    eligible: &impl Fn(&T) -> bool,
    state: &mut u64,
    exclude: Option<usize>,
) -> Option<usize> {
    let n = items.len();
    // Drawing from n-1 slots and skipping over `exclude` keeps the two picks distinct without
    // rejection.
    let choices = n - usize::from(exclude.is_some());
    if choices == 0 {
        return None;
    }
    let skip = |i: usize| match exclude {
        Some(x) if i >= x => i + 1,
        _ => i,
    };
    for _ in 0..DRAWS {
        let i = skip(below(splitmix64(state), choices));
        if eligible(&items[i]) {
            return Some(i);
        }
    }
    let start = below(splitmix64(state), n);
    (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| Some(i) != exclude && eligible(&items[i]))
}

/// Picks the less loaded of two distinct random eligible items. One eligible item is returned
/// as is; none gives None. `rand` is the caller's random `u64`, so tests are deterministic.
pub fn p2c<T>(
    items: &[T],
    load: impl Fn(&T) -> f64,
    eligible: impl Fn(&T) -> bool,
    rand: u64,
) -> Option<&T> {
    let mut state = rand;
    let a = pick(items, &eligible, &mut state, None)?;
    let Some(b) = pick(items, &eligible, &mut state, Some(a)) else {
        return items.get(a);
    };
    // NaN (a broken load metric) counts as the worst load so it never wins.
    let key = |i: usize| {
        let l = load(&items[i]);
        if l.is_nan() { f64::INFINITY } else { l }
    };
    let chosen = if key(b) < key(a) { b } else { a };
    items.get(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
    }

    fn counts(loads: &[f64], eligible: &[bool], picks: usize) -> Vec<usize> {
        let idx: Vec<usize> = (0..loads.len()).collect();
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let mut seen = vec![0; loads.len()];
        for _ in 0..picks {
            if let Some(&i) = p2c(&idx, |&i| loads[i], |&i| eligible[i], rng.next()) {
                seen[i] += 1;
            }
        }
        seen
    }

    #[test]
    fn the_slow_endpoint_gets_little_traffic() {
        let seen = counts(&[10.0, 1.0, 1.0], &[true; 3], 3000);
        assert!(seen[0] < 450, "slow endpoint got {} of 3000", seen[0]);
        // The two fast ones share the rest roughly evenly.
        assert!(seen[1] > 1200 && seen[2] > 1200, "{seen:?}");
    }

    #[test]
    fn lower_load_wins_against_a_random_baseline() {
        // Loads 1..=10: p2c should favour the low end far more than uniform (10% each).
        let loads: Vec<f64> = (1..=10).map(f64::from).collect();
        let seen = counts(&loads, &[true; 10], 10_000);
        assert!(seen[0] > 1600, "{seen:?}");
        assert!(seen[9] < 200, "{seen:?}");
    }

    #[test]
    fn ineligible_items_are_never_picked() {
        let seen = counts(&[1.0, 5.0, 5.0, 1.0], &[false, true, true, false], 1000);
        assert_eq!(seen[0] + seen[3], 0);
        assert_eq!(seen[1] + seen[2], 1000);
    }

    #[test]
    fn a_single_eligible_item_is_always_picked() {
        let seen = counts(
            &[1.0, 9.0, 1.0, 1.0, 1.0],
            &[false, true, false, false, false],
            500,
        );
        assert_eq!(seen, [0, 500, 0, 0, 0]);
    }

    #[test]
    fn nothing_eligible_or_empty_gives_none() {
        let idx = [0usize, 1];
        assert!(p2c(&idx, |_| 1.0, |_| false, 7).is_none());
        let empty: [usize; 0] = [];
        assert!(p2c(&empty, |_| 1.0, |_| true, 7).is_none());
        assert_eq!(p2c(&[42], |_| 1.0, |_| true, 7), Some(&42));
    }

    #[test]
    fn both_choices_are_distinct() {
        // With two items and distinct picks the lower load always wins; a repeated index
        // would sometimes return the heavier one.
        let seen = counts(&[2.0, 1.0], &[true, true], 1000);
        assert_eq!(seen, [0, 1000]);
    }

    #[test]
    fn a_nan_load_never_wins() {
        let seen = counts(&[f64::NAN, 1.0], &[true, true], 100);
        assert_eq!(seen, [0, 100]);
        let seen = counts(&[1.0, f64::NAN], &[true, true], 100);
        assert_eq!(seen, [100, 0]);
    }
}
