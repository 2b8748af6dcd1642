//! Reconnect backoff: capped exponential with full jitter (`docs/PROTOCOL.md` § Reconnecting).
//!
//! > before attempt `n` (n = 0 for the first retry) it waits `uniform(0, min(cap, base ×
//! > 2^n))`, with base 500 ms and cap 30 s by default. The attempt counter resets once a
//! > connection reaches `ESTABLISHED` and stays up for one heartbeat interval.
//!
//! Full jitter spreads a fleet's reconnects evenly over the whole window, so the clients of a
//! failed gateway do not arrive at the next one in waves.

use std::time::Duration;

use super::rng::SplitMix64;

/// Parameters of the reconnect backoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Window of the first retry (default 500 ms); the window doubles per failed attempt.
    pub base: Duration,
    /// Largest window (default 30 s): the longest a client may wait between attempts.
    pub cap: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig { base: Duration::from_millis(500), cap: Duration::from_secs(30) }
    }
}

impl BackoffConfig {
    /// The window before attempt `attempt`: `min(cap, base × 2^attempt)`, saturating.
    pub fn window(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

/// The reconnect delay generator: counts failed attempts and draws jittered delays.
#[derive(Clone, Debug)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    rng: SplitMix64,
}

impl Backoff {
    /// A backoff at attempt 0 whose random draws are fixed by `seed`.
    pub fn new(config: BackoffConfig, seed: u64) -> Backoff {
        Backoff { config, attempt: 0, rng: SplitMix64::new(seed) }
    }

    /// The delay before the next attempt, uniform in `[0, window(n)]`; then `n += 1`.
    ///
    /// The counter saturates, so any number of failures is safe.
    pub fn next_delay(&mut self) -> Duration {
        let window = self.config.window(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        self.rng.duration_up_to(window)
    }

    /// Forget past failures: the next delay is drawn from the base window again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were drawn since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The parameters in force.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_doubles_then_caps_without_overflow() {
        let c = BackoffConfig::default();
        assert_eq!(c.window(0), Duration::from_millis(500));
        assert_eq!(c.window(1), Duration::from_millis(1000));
        assert_eq!(c.window(5), Duration::from_millis(16_000));
        assert_eq!(c.window(6), Duration::from_secs(30));
        assert_eq!(c.window(1000), Duration::from_secs(30));
        assert_eq!(c.window(u32::MAX), Duration::from_secs(30));
        let uncapped = BackoffConfig { base: Duration::MAX, cap: Duration::MAX };
        assert_eq!(uncapped.window(1000), Duration::MAX);
    }

    #[test]
    fn counter_saturates_and_resets() {
        let mut b = Backoff::new(BackoffConfig::default(), 7);
        for _ in 0..1000 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
        assert_eq!(b.attempt(), 1000);
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert!(b.next_delay() <= Duration::from_millis(500));
    }
}
