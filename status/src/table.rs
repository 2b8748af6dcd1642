//! The presence table: sessions and gateway leases, sans-IO.
//!
//! [`Table`] is what a status node (and the in-process store) holds. It owns no socket,
//! no lock and no clock: every call takes `now`, and the caller serialises calls (the node
//! keeps it behind one mutex, so a migration snapshot and a write are totally ordered).
//!
//! # Leases and fencing
//!
//! Every session carries the lease generation of its gateway. A session is *live* iff its
//! gateway holds an unexpired lease of exactly that generation, so an expired or superseded
//! lease takes all that gateway's sessions offline at the instant it lapses, for every
//! reader, without a scan; [`Table::sweep`] drops the dead records afterwards. The rules
//! ([`Table::renew`]):
//!
//! - no lease yet, or a larger generation: a new lease (`created`); older sessions die;
//! - the same generation, unexpired: extended;
//! - the same generation, expired: refused ([`FenceReason::Expired`]): a gateway that was
//!   cut off past its TTL must start a new generation and resync, never revive;
//! - a smaller generation: refused ([`FenceReason::Stale`]).
//!
//! Writes ([`Table::apply`], [`Table::resync`]) need a live lease of their generation.
//!
//! # Tombstones
//!
//! While a ring change copies keys between nodes ([`Table::set_tracking`]), offline writes
//! leave a tombstone `(conn, generation)`, and [`Table::merge`] never inserts a tombstoned
//! session: a copy taken before an offline cannot bring the session back. A connection id
//! never comes online again within one generation, so "offline wins" is exact.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::error::FenceReason;
use crate::types::{Counts, GatewayId, Generation, LeaseId, Session, UserId, Write};

/// Why a write's lease claim is not accepted here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseError {
    /// This table has no lease for the gateway (a node that restarted or just joined):
    /// renew here, then retry, and resync.
    Unknown,
    /// The claim's generation is newer than the lease held here: renew here first.
    Newer,
    /// The claim is fenced.
    Fenced(FenceReason),
}

/// A gateway lease as a table holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseState {
    /// The newest generation seen.
    pub generation: Generation,
    /// When it lapses.
    pub expires: Instant,
    /// Whether its expiry was already counted by [`Table::sweep`].
    counted: bool,
}

/// A lease as it travels in a migration: the generation and the time it has left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTransfer {
    /// The gateway.
    pub gateway: GatewayId,
    /// Its generation.
    pub generation: Generation,
    /// Time left before it lapses (0 if lapsed).
    pub remaining: Duration,
}

/// The outcome of a renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenewResult {
    /// The lease did not exist here (or had an older generation) before this renewal.
    pub created: bool,
}

/// Sessions by user and leases by gateway. See the module doc.
#[derive(Debug, Default)]
pub struct Table {
    users: HashMap<Box<str>, Vec<Session>>,
    leases: HashMap<GatewayId, LeaseState>,
    tombstones: Option<HashSet<(u64, Generation)>>,
    stored: usize,
    dirty: bool,
}

impl Table {
    /// An empty table.
    pub fn new() -> Table {
        Table::default()
    }

    fn live(&self, s: &Session, now: Instant) -> bool {
        self.leases.get(&s.gateway).is_some_and(|l| l.generation == s.generation && now < l.expires)
    }

    /// Renew (or create) a lease; see the module doc for the rules.
    pub fn renew(
        &mut self,
        id: LeaseId,
        ttl: Duration,
        now: Instant,
    ) -> Result<RenewResult, FenceReason> {
        let expires = now + ttl;
        match self.leases.get_mut(&id.gateway) {
            None => {
                self.leases.insert(
                    id.gateway,
                    LeaseState { generation: id.generation, expires, counted: false },
                );
                Ok(RenewResult { created: true })
            }
            Some(l) if l.generation < id.generation => {
                *l = LeaseState { generation: id.generation, expires, counted: false };
                self.dirty = true;
                Ok(RenewResult { created: true })
            }
            Some(l) if l.generation > id.generation => {
                Err(FenceReason::Stale { current: l.generation })
            }
            Some(l) if now >= l.expires => Err(FenceReason::Expired),
            Some(l) => {
                l.expires = l.expires.max(expires);
                Ok(RenewResult { created: false })
            }
        }
    }

    /// Whether `id` may write here now.
    pub fn check(&self, id: LeaseId, now: Instant) -> Result<(), LeaseError> {
        match self.leases.get(&id.gateway) {
            None => Err(LeaseError::Unknown),
            Some(l) if l.generation < id.generation => Err(LeaseError::Newer),
            Some(l) if l.generation > id.generation => {
                Err(LeaseError::Fenced(FenceReason::Stale { current: l.generation }))
            }
            Some(l) if now >= l.expires => Err(LeaseError::Fenced(FenceReason::Expired)),
            Some(_) => Ok(()),
        }
    }

    /// Apply a gateway's batch of writes, in order, under its lease. All or nothing: a
    /// refused lease applies none.
    pub fn apply(
        &mut self,
        id: LeaseId,
        writes: &[Write],
        now: Instant,
    ) -> Result<usize, LeaseError> {
        self.check(id, now)?;
        for w in writes {
            match w {
                Write::Online { user, conn, device, platform, login_ms } => {
                    let session = Session {
                        conn: *conn,
                        gateway: id.gateway,
                        device: device.clone(),
                        platform: *platform,
                        login_ms: *login_ms,
                        generation: id.generation,
                    };
                    self.insert(user, session, false);
                }
                Write::Offline { user, conn } => {
                    self.remove(user, *conn, id);
                }
            }
        }
        Ok(writes.len())
    }

    /// Insert or replace (same conn and gateway) a session; with `merge`, a tombstoned or
    /// already present session is left alone.
    fn insert(&mut self, user: &str, session: Session, merge: bool) {
        if let Some(t) = &self.tombstones
            && t.contains(&(session.conn, session.generation))
        {
            return;
        }
        let list = match self.users.get_mut(user) {
            Some(list) => list,
            None => self.users.entry(Box::from(user)).or_default(),
        };
        let gateway = session.gateway;
        let generation = session.generation;
        let before = list.len();
        // A newer generation of the gateway replaces its older sessions of this user.
        if !merge {
            list.retain(|s| !(s.gateway == gateway && s.generation < generation));
        }
        if let Some(existing) =
            list.iter_mut().find(|s| s.conn == session.conn && s.gateway == gateway)
        {
            if !merge || existing.generation < generation {
                *existing = session;
            }
        } else {
            list.push(session);
        }
        self.stored = self.stored + list.len() - before;
    }

    fn remove(&mut self, user: &str, conn: u64, id: LeaseId) {
        if let Some(t) = &mut self.tombstones {
            t.insert((conn, id.generation));
        }
        if let Some(list) = self.users.get_mut(user) {
            let before = list.len();
            list.retain(|s| !(s.conn == conn && s.gateway == id.gateway));
            self.stored -= before - list.len();
            if list.is_empty() {
                self.users.remove(user);
            }
        }
    }

    /// The live sessions of `user`.
    pub fn lookup(&self, user: &str, now: Instant) -> Vec<Session> {
        self.users
            .get(user)
            .map(|list| list.iter().filter(|s| self.live(s, now)).cloned().collect())
            .unwrap_or_default()
    }

    /// The live sessions of `gateway`, with their users.
    pub fn list(&self, gateway: GatewayId, now: Instant) -> Vec<(UserId, Session)> {
        let mut out = Vec::new();
        for (user, list) in &self.users {
            for s in list.iter().filter(|s| s.gateway == gateway && self.live(s, now)) {
                out.push((UserId::from(&**user), s.clone()));
            }
        }
        out
    }

    /// Replace the sessions of `id.gateway` held here by `sessions` (when `first`), or add
    /// to them (a later chunk of the same resync).
    pub fn resync(
        &mut self,
        id: LeaseId,
        first: bool,
        sessions: &[(UserId, Session)],
        now: Instant,
    ) -> Result<(), LeaseError> {
        self.check(id, now)?;
        if first {
            let keep: HashSet<u64> = sessions.iter().map(|(_, s)| s.conn).collect();
            let gateway = id.gateway;
            let mut removed = 0;
            let tombstones = &mut self.tombstones;
            self.users.retain(|_, list| {
                list.retain(|s| {
                    let drop = s.gateway == gateway && !keep.contains(&s.conn);
                    if drop {
                        removed += 1;
                        if let Some(t) = tombstones.as_mut() {
                            t.insert((s.conn, s.generation));
                        }
                    }
                    !drop
                });
                !list.is_empty()
            });
            self.stored -= removed;
        }
        for (user, s) in sessions {
            let mut s = s.clone();
            s.gateway = id.gateway;
            s.generation = id.generation;
            self.insert(user, s, false);
        }
        Ok(())
    }

    /// Turn tombstone tracking on (a migration starts) or off (it ended; tombstones go).
    pub fn set_tracking(&mut self, on: bool) {
        match (on, self.tombstones.is_some()) {
            (true, false) => self.tombstones = Some(HashSet::new()),
            (false, true) => self.tombstones = None,
            _ => {}
        }
    }

    /// Copy out the leases and the sessions of users for which `pick(user)` holds.
    pub fn export(
        &self,
        now: Instant,
        mut pick: impl FnMut(&str) -> bool,
    ) -> (Vec<LeaseTransfer>, Vec<(UserId, Session)>) {
        let leases = self
            .leases
            .iter()
            .map(|(&gateway, l)| LeaseTransfer {
                gateway,
                generation: l.generation,
                remaining: l.expires.saturating_duration_since(now),
            })
            .collect();
        let mut sessions = Vec::new();
        for (user, list) in &self.users {
            if pick(user) {
                let user = UserId::from(&**user);
                for s in list.iter().filter(|s| self.live(s, now)) {
                    sessions.push((user.clone(), s.clone()));
                }
            }
        }
        (leases, sessions)
    }

    /// The users held here (for a migration plan).
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(|u| &**u)
    }

    /// Merge what another node copied here: leases (newer generation or later expiry
    /// wins) and sessions (inserted unless tombstoned or present).
    pub fn merge(
        &mut self,
        leases: &[LeaseTransfer],
        sessions: &[(UserId, Session)],
        now: Instant,
    ) {
        for l in leases {
            let expires = now + l.remaining;
            let e = self.leases.entry(l.gateway).or_insert(LeaseState {
                generation: l.generation,
                expires,
                counted: false,
            });
            if e.generation < l.generation {
                *e = LeaseState { generation: l.generation, expires, counted: false };
                self.dirty = true;
            } else if e.generation == l.generation && e.expires < expires {
                e.expires = expires;
                e.counted = false;
            }
        }
        for (user, s) in sessions {
            self.insert(user, s.clone(), true);
        }
    }

    /// Keep only the users for which `keep(user)` holds (after a ring change, the keys
    /// this node no longer owns).
    pub fn retain_users(&mut self, mut keep: impl FnMut(&str) -> bool) -> usize {
        let mut removed = 0;
        self.users.retain(|u, list| {
            let k = keep(u);
            if !k {
                removed += list.len();
            }
            k
        });
        self.stored -= removed;
        removed
    }

    /// Count newly lapsed leases and drop the records of dead sessions (expired or
    /// superseded generation). Returns the number of leases that lapsed since the last call.
    pub fn sweep(&mut self, now: Instant) -> u32 {
        let mut lapsed = 0;
        for l in self.leases.values_mut() {
            if !l.counted && now >= l.expires {
                l.counted = true;
                lapsed += 1;
            }
        }
        if lapsed > 0 || self.dirty {
            self.dirty = false;
            let leases = &self.leases;
            let mut removed = 0;
            self.users.retain(|_, list| {
                let before = list.len();
                list.retain(|s| {
                    leases
                        .get(&s.gateway)
                        .is_some_and(|l| l.generation == s.generation && now < l.expires)
                });
                removed += before - list.len();
                !list.is_empty()
            });
            self.stored -= removed;
        }
        lapsed
    }

    /// Session records held (live or not yet swept).
    pub fn stored(&self) -> usize {
        self.stored
    }

    /// Users with at least one record.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// Gateways holding a live lease.
    pub fn live_leases(&self, now: Instant) -> u32 {
        self.leases.values().filter(|l| now < l.expires).count() as u32
    }

    /// Counts of live sessions, users and leases. Walks the table: for admin calls only.
    pub fn counts(&self, now: Instant) -> Counts {
        self.counts_where(now, |_| true)
    }

    /// [`Table::counts`] restricted to the users for which `pick` holds.
    pub fn counts_where(&self, now: Instant, mut pick: impl FnMut(&str) -> bool) -> Counts {
        let mut sessions = 0u64;
        let mut users = 0u64;
        for (user, list) in &self.users {
            // Rooms' shares are kept as reserved keys (`crate::rooms`): not users.
            if crate::rooms::is_room_key(user) || !pick(user) {
                continue;
            }
            let live = list.iter().filter(|s| self.live(s, now)).count() as u64;
            sessions += live;
            users += u64::from(live > 0);
        }
        Counts { sessions, users: Some(users), gateways: self.live_leases(now) }
    }

    /// The lease held for `gateway`, if any.
    pub fn lease(&self, gateway: GatewayId) -> Option<LeaseState> {
        self.leases.get(&gateway).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn online(user: &str, conn: u64, platform: u8) -> Write {
        Write::Online { user: user.into(), conn, device: "d".into(), platform, login_ms: 7 }
    }

    fn offline(user: &str, conn: u64) -> Write {
        Write::Offline { user: user.into(), conn }
    }

    fn lease(gateway: u16, generation: u64) -> LeaseId {
        LeaseId { gateway, generation }
    }

    #[test]
    fn online_offline_and_multi_device() {
        let t0 = Instant::now();
        let mut t = Table::new();
        t.renew(lease(1, 1), TTL, t0).unwrap();
        t.apply(lease(1, 1), &[online("a", 10, 1), online("a", 11, 2), online("b", 12, 1)], t0)
            .unwrap();
        assert_eq!(t.lookup("a", t0).len(), 2);
        assert_eq!(t.stored(), 3);
        t.apply(lease(1, 1), &[offline("a", 10)], t0).unwrap();
        let a = t.lookup("a", t0);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].conn, 11);
        assert_eq!(a[0].platform, 2);
        assert_eq!(t.counts(t0), Counts { sessions: 2, users: Some(2), gateways: 1 });
    }

    #[test]
    fn lease_expiry_hides_then_sweeps() {
        let t0 = Instant::now();
        let mut t = Table::new();
        t.renew(lease(1, 1), TTL, t0).unwrap();
        t.apply(lease(1, 1), &[online("a", 10, 1)], t0).unwrap();
        let later = t0 + TTL;
        assert!(t.lookup("a", later).is_empty());
        assert_eq!(t.check(lease(1, 1), later), Err(LeaseError::Fenced(FenceReason::Expired)));
        assert_eq!(t.renew(lease(1, 1), TTL, later), Err(FenceReason::Expired));
        assert_eq!(t.sweep(later), 1);
        assert_eq!(t.sweep(later), 0);
        assert_eq!(t.stored(), 0);
        // a new generation is accepted
        assert_eq!(t.renew(lease(1, 2), TTL, later), Ok(RenewResult { created: true }));
    }

    #[test]
    fn stale_generation_is_fenced_and_new_generation_replaces() {
        let t0 = Instant::now();
        let mut t = Table::new();
        t.renew(lease(1, 5), TTL, t0).unwrap();
        t.apply(lease(1, 5), &[online("a", 10, 1)], t0).unwrap();
        assert_eq!(t.renew(lease(1, 6), TTL, t0), Ok(RenewResult { created: true }));
        assert!(t.lookup("a", t0).is_empty(), "old generation's session died with it");
        assert_eq!(
            t.apply(lease(1, 5), &[online("a", 10, 1)], t0),
            Err(LeaseError::Fenced(FenceReason::Stale { current: 6 }))
        );
        assert_eq!(t.renew(lease(1, 5), TTL, t0), Err(FenceReason::Stale { current: 6 }));
        assert_eq!(t.apply(lease(1, 7), &[], t0), Err(LeaseError::Newer));
        assert_eq!(t.apply(lease(2, 1), &[], t0), Err(LeaseError::Unknown));
        t.apply(lease(1, 6), &[online("a", 20, 1)], t0).unwrap();
        assert_eq!(t.lookup("a", t0).len(), 1);
        t.sweep(t0);
        assert_eq!(t.stored(), 1);
    }

    #[test]
    fn merge_never_resurrects_a_tombstoned_session() {
        let t0 = Instant::now();
        let mut src = Table::new();
        src.renew(lease(1, 1), TTL, t0).unwrap();
        src.apply(lease(1, 1), &[online("a", 10, 1)], t0).unwrap();
        let (leases, sessions) = src.export(t0, |_| true);

        let mut dst = Table::new();
        dst.set_tracking(true);
        dst.renew(lease(1, 1), TTL, t0).unwrap();
        dst.apply(lease(1, 1), &[offline("a", 10)], t0).unwrap();
        dst.merge(&leases, &sessions, t0);
        assert!(dst.lookup("a", t0).is_empty());
        dst.set_tracking(false);
        dst.merge(&leases, &sessions, t0);
        assert_eq!(dst.lookup("a", t0).len(), 1);
    }

    #[test]
    fn resync_replaces_a_gateways_sessions() {
        let t0 = Instant::now();
        let mut t = Table::new();
        t.renew(lease(1, 1), TTL, t0).unwrap();
        t.renew(lease(2, 1), TTL, t0).unwrap();
        t.apply(lease(1, 1), &[online("a", 10, 1), online("b", 11, 1)], t0).unwrap();
        t.apply(lease(2, 1), &[online("a", 99, 1)], t0).unwrap();
        let s = Session {
            conn: 12,
            gateway: 1,
            device: "x".into(),
            platform: 3,
            login_ms: 1,
            generation: 1,
        };
        t.resync(lease(1, 1), true, &[("c".into(), s)], t0).unwrap();
        assert_eq!(t.lookup("a", t0).iter().map(|s| s.conn).collect::<Vec<_>>(), vec![99]);
        assert!(t.lookup("b", t0).is_empty());
        assert_eq!(t.lookup("c", t0).len(), 1);
        assert_eq!(t.list(1, t0).len(), 1);
        assert_eq!(t.stored(), 2);
    }

    #[test]
    fn retain_users_drops_keys() {
        let t0 = Instant::now();
        let mut t = Table::new();
        t.renew(lease(1, 1), TTL, t0).unwrap();
        t.apply(lease(1, 1), &[online("a", 1, 1), online("b", 2, 1)], t0).unwrap();
        assert_eq!(t.retain_users(|u| u == "a"), 1);
        assert_eq!(t.stored(), 1);
        assert!(t.lookup("b", t0).is_empty());
    }
}
