//! Rate limits for the public dispatch endpoint: GCRA (the generic cell rate algorithm, a
//! leaky bucket kept as one timestamp), per source and for the whole instance.
//!
//! Time is a parameter (`now_ns` on a monotonic clock), so tests drive it directly. A
//! source is an IPv4 address or an IPv6 /64 (one host usually holds a whole /64, so keying
//! on full IPv6 addresses would let it rotate through them). The per-source table is
//! sharded and bounded: when a shard is full, sources whose bucket has fully drained are
//! dropped (they lose nothing); if none has, the new source is refused until one does.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::hash::fmix64;

const SHARDS: usize = 16;

/// One GCRA: an emission interval and a burst tolerance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gcra {
    interval_ns: u64,
    tolerance_ns: u64,
}

impl Gcra {
    /// `rate` requests per second (at least 1), with `burst` more allowed at once.
    pub fn new(rate: u32, burst: u32) -> Gcra {
        let interval_ns = 1_000_000_000 / u64::from(rate.max(1));
        Gcra { interval_ns, tolerance_ns: interval_ns.saturating_mul(u64::from(burst)) }
    }

    /// Admit one request at `now_ns` against the bucket state `tat` (the theoretical
    /// arrival time): `Ok` and update it, or `Err(ns to wait)` and leave it.
    pub fn check(&self, tat: &mut u64, now_ns: u64) -> Result<(), u64> {
        let next = (*tat).max(now_ns).saturating_add(self.interval_ns);
        let allowed_at = next.saturating_sub(self.interval_ns + self.tolerance_ns);
        if now_ns < allowed_at {
            Err(allowed_at - now_ns)
        } else {
            *tat = next;
            Ok(())
        }
    }
}

/// A limit shared by every request of the instance.
#[derive(Debug)]
pub struct GlobalLimiter {
    gcra: Gcra,
    tat: AtomicU64,
}

impl GlobalLimiter {
    /// A limit of `rate`/s with `burst`.
    pub fn new(rate: u32, burst: u32) -> GlobalLimiter {
        GlobalLimiter { gcra: Gcra::new(rate, burst), tat: AtomicU64::new(0) }
    }

    /// Admit one request, or the ns to wait.
    pub fn check(&self, now_ns: u64) -> Result<(), u64> {
        let mut current = self.tat.load(Ordering::Relaxed);
        loop {
            let mut tat = current;
            self.gcra.check(&mut tat, now_ns)?;
            match self.tat.compare_exchange_weak(current, tat, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }
}

/// Per-source limits over a bounded table.
#[derive(Debug)]
pub struct SourceLimiter {
    gcra: Gcra,
    shards: Vec<Mutex<HashMap<u128, u64>>>,
    max_per_shard: usize,
}

/// The table key of a source: IPv4 (or v4-mapped) as-is, IPv6 by its /64.
fn source_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            None => (u128::from(a) & !((1u128 << 64) - 1)) | 1,
        },
    }
}

impl SourceLimiter {
    /// `rate`/s with `burst` per source, tracking at most about `max_sources` at once.
    pub fn new(rate: u32, burst: u32, max_sources: usize) -> SourceLimiter {
        SourceLimiter {
            gcra: Gcra::new(rate, burst),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            max_per_shard: max_sources.div_ceil(SHARDS).max(1),
        }
    }

    /// Admit one request from `ip`, or the ns to wait.
    pub fn check(&self, ip: IpAddr, now_ns: u64) -> Result<(), u64> {
        let key = source_key(ip);
        let shard = (fmix64(key as u64 ^ (key >> 64) as u64) % SHARDS as u64) as usize;
        let mut map = match self.shards[shard].lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(tat) = map.get_mut(&key) {
            return self.gcra.check(tat, now_ns);
        }
        if map.len() >= self.max_per_shard {
            map.retain(|_, tat| *tat > now_ns);
            if map.len() >= self.max_per_shard {
                return Err(self.gcra.interval_ns.max(1_000_000_000));
            }
        }
        let mut tat = 0;
        let result = self.gcra.check(&mut tat, now_ns);
        map.insert(key, tat);
        result
    }

    /// Sources tracked now.
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map_or(0, |m| m.len())).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn gcra_allows_rate_plus_burst() {
        let g = Gcra::new(10, 5);
        let mut tat = 0;
        let t0 = 100 * S;
        let admitted = (0..20).filter(|_| g.check(&mut tat, t0).is_ok()).count();
        assert_eq!(admitted, 6, "one plus a burst of five at once");
        let wait = g.check(&mut tat, t0).expect_err("over the burst");
        assert_eq!(wait, S / 10, "one interval until the next slot");
        assert!(g.check(&mut tat, t0 + S / 10).is_ok());
        // Over a long run the rate holds: 10/s for 10 s (the burst is already spent).
        let mut ok = 0;
        for ms in 0..10_000u64 {
            if g.check(&mut tat, t0 + S / 10 + ms * 1_000_000).is_ok() {
                ok += 1;
            }
        }
        assert!((99..=101).contains(&ok), "{ok}");
    }

    #[test]
    fn sources_are_independent_and_v6_is_keyed_by_slash_64() {
        let l = SourceLimiter::new(1, 0, 100);
        let t = 10 * S;
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        assert!(l.check(a, t).is_ok());
        assert!(l.check(a, t).is_err());
        assert!(l.check(b, t).is_ok(), "another source has its own bucket");
        let v6a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let v6b: IpAddr = "2001:db8:1:2::ffff".parse().expect("ip");
        let v6c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert!(l.check(v6a, t).is_ok());
        assert!(l.check(v6b, t).is_err(), "same /64");
        assert!(l.check(v6c, t).is_ok(), "another /64");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert!(l.check(mapped, t).is_err(), "v4-mapped is the v4 source");
    }

    #[test]
    fn the_table_is_bounded_and_drops_idle_sources_first() {
        let l = SourceLimiter::new(1, 0, SHARDS);
        let t = 10 * S;
        let mut refused = 0;
        for i in 0..200u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            if l.check(ip, t).is_err() {
                refused += 1;
            }
        }
        assert!(l.tracked() <= SHARDS, "bounded: {}", l.tracked());
        assert!(refused > 0, "new sources refused while every tracked one is busy");
        // Two seconds later every bucket has drained: new sources get in again.
        let later = IpAddr::from(std::net::Ipv4Addr::new(192, 0, 2, 1));
        assert!(l.check(later, t + 2 * S).is_ok());
    }

    #[test]
    fn global_limit() {
        let g = GlobalLimiter::new(100, 10);
        let t = 5 * S;
        let ok = (0..50).filter(|_| g.check(t).is_ok()).count();
        assert_eq!(ok, 11);
        assert!(g.check(t + S).is_ok());
    }
}
