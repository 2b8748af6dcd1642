//! Flapping clients: a user and device that logs in more than `admission.flap_max_logins`
//! times within `admission.flap_window_secs` is refused — `AUTH_FAIL` `THROTTLED` (603) —
//! for `admission.flap_ban_secs` (EMQX's flapping detection, by user and device rather
//! than client id). A client caught in a reconnect loop would otherwise cost a signature
//! check, a registry entry and two presence writes every time round.
//!
//! Checked after the token is verified (only then is the user known), so a banned client
//! still costs one verification per attempt; the client session waits at least a minute
//! after 603 (`codec::client::THROTTLED_MIN_DELAY`). The table is sharded by key and
//! bounded in size (beyond it new keys are not tracked: fail open). An entry (about 40-60
//! bytes with the table's slack) lives while its window or ban lasts: [`Flapping::sweep`],
//! run every window, forgets the rest and gives the memory back, and a shard that doubled
//! since its last pruning prunes itself at the next login. Off by default (as in EMQX): a
//! node that just took N logins holds N entries for a window.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;

/// Shards of the table (a power of two).
const SHARDS: usize = 16;
/// Entries one shard keeps at most (about 32 bytes each).
const SHARD_CAP: usize = 65_536;

/// One user and device's recent logins.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// When the current counting window began, seconds since the Unix epoch.
    window_start: u64,
    /// Logins in the current window.
    count: u32,
    /// Refused until then, seconds since the Unix epoch (0: not banned).
    banned_until: u64,
}

/// One shard: its entries, and the size at which it prunes itself at the next login.
#[derive(Debug, Default)]
struct Shard {
    map: HashMap<u64, Entry>,
    prune_at: usize,
}

/// The least [`Shard::prune_at`].
const MIN_PRUNE_AT: usize = 1_024;

/// The flapping detector of one node.
#[derive(Debug)]
pub(crate) struct Flapping {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    max_logins: u32,
    window_secs: u64,
    ban_secs: u64,
    shard_cap: usize,
}

impl Flapping {
    /// More than `max_logins` in `window_secs` bans for `ban_secs`.
    pub(crate) fn new(max_logins: u32, window_secs: u32, ban_secs: u32) -> Flapping {
        Flapping {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Shard { map: HashMap::new(), prune_at: MIN_PRUNE_AT }))
                .collect(),
            hasher: RandomState::new(),
            max_logins,
            window_secs: u64::from(window_secs.max(1)),
            ban_secs: u64::from(ban_secs),
            shard_cap: SHARD_CAP,
        }
    }

    /// A login of `user` on `device` at `now_secs`: `Ok`, or `Err` with the seconds the
    /// ban has left (this login included: it is the one that tipped it over, or one during
    /// the ban).
    pub(crate) fn login(&self, user: &str, device: &str, now_secs: u64) -> Result<(), u64> {
        let key = self.hasher.hash_one((user, device));
        let shard = &self.shards[(key as usize) & (SHARDS - 1)];
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        let full = shard.map.len() >= shard.prune_at.min(self.shard_cap);
        if full && !shard.map.contains_key(&key) {
            self.prune(&mut shard, now_secs);
            if shard.map.len() >= self.shard_cap {
                return Ok(()); // full of live entries: fail open
            }
        }
        let fresh = Entry { window_start: now_secs, count: 0, banned_until: 0 };
        let e = shard.map.entry(key).or_insert(fresh);
        if e.banned_until > now_secs {
            return Err(e.banned_until - now_secs);
        }
        if now_secs >= e.window_start + self.window_secs {
            *e = Entry { window_start: now_secs, count: 0, banned_until: 0 };
        }
        e.count += 1;
        if e.count > self.max_logins {
            e.banned_until = now_secs + self.ban_secs;
            e.count = 0;
            e.window_start = e.banned_until;
            return Err(self.ban_secs);
        }
        Ok(())
    }

    /// Forget a shard's entries whose window and ban are over, give the memory back, and
    /// prune again when it has doubled.
    fn prune(&self, shard: &mut Shard, now_secs: u64) {
        let window = self.window_secs;
        shard.map.retain(|_, e| e.banned_until > now_secs || now_secs < e.window_start + window);
        shard.map.shrink_to_fit();
        shard.prune_at = (shard.map.len() * 2).max(MIN_PRUNE_AT);
    }

    /// Forget every entry whose window and ban are over (run every window).
    pub(crate) fn sweep(&self, now_secs: u64) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            self.prune(&mut shard, now_secs);
        }
    }

    /// How often [`Flapping::sweep`] should run.
    pub(crate) fn sweep_every(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.window_secs)
    }

    /// Entries tracked now (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map_or(0, |s| s.map.len())).sum()
    }
}

/// Sweep `node`'s flapping table every window, until the runtime stops.
pub(crate) async fn sweeper(node: std::sync::Arc<crate::node::Node>) {
    let Some(every) = node.flapping.as_ref().map(Flapping::sweep_every) else { return };
    let mut tick = tokio::time::interval(every);
    tick.tick().await; // the first tick is immediate
    loop {
        tick.tick().await;
        if let Some(f) = &node.flapping {
            f.sweep(crate::api::wall_ms() / 1000);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_than_the_limit_in_a_window_bans_for_the_ban_time() {
        let f = Flapping::new(3, 60, 300);
        let t = 1_000_000;
        for i in 0..3 {
            assert_eq!(f.login("u", "d", t + i), Ok(()), "login {i}");
        }
        assert_eq!(f.login("u", "d", t + 3), Err(300), "the 4th within a minute");
        assert_eq!(f.login("u", "d", t + 100), Err(203), "still banned");
        assert_eq!(f.login("u", "other-device", t + 100), Ok(()), "per device");
        assert_eq!(f.login("v", "d", t + 100), Ok(()), "per user");
        assert_eq!(f.login("u", "d", t + 303), Ok(()), "the ban is over");
    }

    #[test]
    fn logins_spread_over_windows_are_never_banned() {
        let f = Flapping::new(3, 60, 300);
        for i in 0..100 {
            assert_eq!(f.login("u", "d", 1_000 + i * 21), Ok(()), "login {i}");
        }
    }

    #[test]
    fn the_table_is_bounded_and_forgets_what_is_over() {
        let f = Flapping { shard_cap: 100, ..Flapping::new(3, 60, 300) };
        // Distinct clients, all at one moment, well beyond the table's size.
        for i in 0..(SHARDS * 100 * 3) {
            let _ = f.login(&format!("user-{i}"), "d", 10_000);
        }
        assert!(f.len() <= SHARDS * 100, "{}", f.len());
        // A minute later old entries are pruned to make room for new ones.
        for i in 0..1_000 {
            assert_eq!(f.login(&format!("late-{i}"), "d", 10_061), Ok(()));
        }
        assert!(f.len() <= SHARDS * 100);
        // A sweep a window later forgets everything that is over.
        f.sweep(10_061 + 61);
        assert_eq!(f.len(), 0);
        for i in 0..1_000 {
            assert_eq!(f.login(&format!("late-{i}"), "d", 10_061), Ok(()));
        }
        // Tracked again: a new client flapping now is caught (one login above, two here).
        for _ in 0..2 {
            assert_eq!(f.login("late-1", "d", 10_062), Ok(()));
        }
        assert_eq!(f.login("late-1", "d", 10_062), Err(300));
    }
}
