//! A tiny deterministic PRNG (SplitMix64) for reconnect and redirect jitter.
//!
//! The session has no randomness source of its own: the caller seeds it
//! ([`Config::seed`](super::Config::seed)), so a test or a load generator replays the same
//! delays. SplitMix64 is not cryptographic; jitter only needs to spread clients out.

use std::time::Duration;

/// SplitMix64 (Steele, Lea and Flood, 2014): one `u64` of state, full period.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose sequence is fixed by `seed`.
    pub(crate) fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value uniform in `[0, max]`, both ends included (multiply-shift, no division).
    pub(crate) fn below_inclusive(&mut self, max: u64) -> u64 {
        let span = u128::from(max) + 1;
        ((u128::from(self.next_u64()) * span) >> 64) as u64
    }

    /// A duration uniform in `[0, max]`, at nanosecond resolution.
    pub(crate) fn duration_up_to(&mut self, max: Duration) -> Duration {
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.below_inclusive(nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_sequence_for_seed_zero() {
        // First outputs of SplitMix64 seeded with 0, as published with the algorithm.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn bounded_values_stay_in_range() {
        let mut rng = SplitMix64::new(42);
        for max in [0, 1, 2, 7, 1000, u64::MAX] {
            for _ in 0..1000 {
                assert!(rng.below_inclusive(max) <= max);
            }
        }
        assert_eq!(rng.duration_up_to(Duration::ZERO), Duration::ZERO);
        let d = rng.duration_up_to(Duration::MAX);
        assert!(d <= Duration::MAX);
    }
}
