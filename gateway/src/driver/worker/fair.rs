//! [`BacklogShare`]: the share of a loop's time that connections resumed with work left
//! over may take (`limits.backlog_share_percent`).

use std::time::Duration;

/// The most backlog time a loop may bank while its backlog is light, in µs: after a quiet
/// spell, pipelining peers get at most this much beyond their share at once.
const BACKLOG_BURST_US: i64 = 2_000;

/// The share of a loop's time that connections resumed with work left over may take
/// (`limits.backlog_share_percent`): time credit accrues at that share of the wall clock
/// and each pass over the resumed connections spends what it took. In debt, they wait
/// (the loop sleeps or serves others) until the credit is back.
pub(super) struct BacklogShare {
    /// Percent of the loop's time; 100 turns the cap off.
    percent: i64,
    /// Credit in µs (negative: in debt).
    credit_us: i64,
    /// When credit last accrued, in the loop's µs.
    at_us: u64,
    /// Turns in which the backlog waited, since the last flush.
    pub(super) waits: u64,
}

impl BacklogShare {
    pub(super) fn new(percent: u8) -> BacklogShare {
        BacklogShare { percent: i64::from(percent.clamp(1, 100)), credit_us: 0, at_us: 0, waits: 0 }
    }

    /// Accrue credit up to `now_us`; whether the backlog may run now.
    pub(super) fn may_run(&mut self, now_us: u64) -> bool {
        if self.percent >= 100 {
            return true;
        }
        let elapsed = now_us.saturating_sub(self.at_us).min(1_000_000) as i64;
        self.at_us = now_us;
        self.credit_us = (self.credit_us + elapsed * self.percent / 100).min(BACKLOG_BURST_US);
        if self.credit_us < 0 {
            self.waits += 1;
            return false;
        }
        true
    }

    /// A pass over the backlog took `us`.
    pub(super) fn spent(&mut self, us: u64) {
        if self.percent < 100 {
            self.credit_us -= us.min(1_000_000) as i64;
        }
    }

    /// How long until the backlog may run again (zero if it may now).
    pub(super) fn wait(&self) -> Duration {
        if self.credit_us >= 0 {
            return Duration::ZERO;
        }
        Duration::from_micros((-self.credit_us * 100 / self.percent) as u64 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drive a share on a virtual clock: a backlog whose every pass costs `pass_us` and
    /// that always has more to do; the loop sleeps as `wait` says while in debt. Returns
    /// the fraction of time spent on the backlog.
    fn run(percent: u8, pass_us: u64, total_us: u64) -> f64 {
        let mut share = BacklogShare::new(percent);
        let (mut now, mut busy) = (0u64, 0u64);
        while now < total_us {
            if share.may_run(now) {
                share.spent(pass_us);
                now += pass_us;
                busy += pass_us;
            } else {
                now += share.wait().as_micros() as u64;
            }
        }
        busy as f64 / now as f64
    }

    #[test]
    fn the_backlog_gets_its_share_of_a_busy_loop_and_no_more() {
        for (percent, pass_us) in [(50, 300), (50, 1_500), (10, 200), (90, 700)] {
            let got = run(percent, pass_us, 10_000_000);
            let want = f64::from(percent) / 100.0;
            assert!((got - want).abs() < 0.02, "{percent}% with {pass_us} µs passes: {got:.3}");
        }
        assert_eq!(run(100, 500, 1_000_000), 1.0, "100 % is no cap");
    }

    #[test]
    fn a_quiet_spell_banks_at_most_the_burst() {
        let mut share = BacklogShare::new(50);
        assert!(share.may_run(60_000_000));
        assert_eq!(share.credit_us, BACKLOG_BURST_US);
        share.spent(10_000);
        assert!(!share.may_run(60_000_001));
        assert_eq!(share.waits, 1);
        // 8 ms of debt at 50 % takes 16 ms to repay.
        let wait = share.wait().as_micros() as i64;
        assert!((wait - 16_000).abs() <= 2, "{wait}");
        assert!(share.may_run(60_000_001 + wait as u64));
    }
}
