//! Flapping clients: a user and device that logs in more than `admission.flap_max_logins`
//! times within `admission.flap_window_secs` is refused — `AUTH_FAIL` `THROTTLED` (603) —
//! for `admission.flap_ban_secs` (EMQX's flapping detection, by user and device rather
//! than client id). A client caught in a reconnect loop would otherwise cost a signature
//! check, a registry entry and two presence writes every time round.
//!
//! Checked after the token is verified (only then is the user known), so a banned client
//! still costs one verification per attempt; the client session waits at least a minute
//! after 603 (`codec::client::THROTTLED_MIN_DELAY`). The table is sharded by key, bounded
//! in size (beyond it new keys are not tracked: fail open), and forgets an entry once its
//! window and ban are over.

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

/// The flapping detector of one node.
#[derive(Debug)]
pub(crate) struct Flapping {
    shards: Box<[Mutex<HashMap<u64, Entry>>]>,
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
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
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
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&key) && map.len() >= self.shard_cap {
            self.prune(&mut map, now_secs);
            if map.len() >= self.shard_cap {
                return Ok(()); // full of live entries: fail open
            }
        }
        let e =
            map.entry(key).or_insert(Entry { window_start: now_secs, count: 0, banned_until: 0 });
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

    /// Forget entries whose window and ban are over.
    fn prune(&self, map: &mut HashMap<u64, Entry>, now_secs: u64) {
        let window = self.window_secs;
        map.retain(|_, e| e.banned_until > now_secs || now_secs < e.window_start + window);
    }

    /// Entries tracked now (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map_or(0, |m| m.len())).sum()
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
        // Tracked again: a new client flapping now is caught (one login above, two here).
        for _ in 0..2 {
            assert_eq!(f.login("late-1", "d", 10_062), Ok(()));
        }
        assert_eq!(f.login("late-1", "d", 10_062), Err(300));
    }
}
