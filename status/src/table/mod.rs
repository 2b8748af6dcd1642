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

mod record;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use self::record::{Filtered, Part, Record, View};
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
///
/// Users are kept in one open-addressing table of packed `Record`s (16 bytes a slot, one
/// allocation per user), hashed with xxh3 under a per-table random seed, so ids chosen to
/// collide cannot be precomputed.
#[derive(Debug)]
pub struct Table {
    users: HashTable<Record>,
    seed: u64,
    leases: HashMap<GatewayId, LeaseState>,
    tombstones: Option<HashSet<(u64, Generation)>>,
    stored: usize,
    dirty: bool,
}

impl Default for Table {
    fn default() -> Table {
        Table::new()
    }
}

/// Whether a packed session is live under `leases` at `now`.
fn live_in(leases: &HashMap<GatewayId, LeaseState>, v: &View<'_>, now: Instant) -> bool {
    leases.get(&v.gateway()).is_some_and(|l| l.generation == v.generation() && now < l.expires)
}

impl Table {
    /// An empty table.
    pub fn new() -> Table {
        let mut seed = [0u8; 8];
        // Without randomness the seed is fixed: placement never depends on it, only the
        // table's resistance to chosen collisions does.
        let _ = getrandom::getrandom(&mut seed);
        Table {
            users: HashTable::new(),
            seed: u64::from_le_bytes(seed),
            leases: HashMap::new(),
            tombstones: None,
            stored: 0,
            dirty: false,
        }
    }

    fn hash(&self, user: &[u8]) -> u64 {
        xxh3_64_with_seed(user, self.seed)
    }

    fn find(&self, user: &str) -> Option<&Record> {
        let user = user.as_bytes();
        self.users.find(self.hash(user), |r| r.user() == user)
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
                    self.insert(user, &session, false);
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
    fn insert(&mut self, user: &str, session: &Session, merge: bool) {
        if let Some(t) = &self.tombstones
            && t.contains(&(session.conn, session.generation))
        {
            return;
        }
        let hash = self.hash(user.as_bytes());
        let seed = self.seed;
        let key = user.as_bytes();
        let Some(record) = self.users.find_mut(hash, |r| r.user() == key) else {
            if let Some(r) = Record::one(user, session) {
                self.users.insert_unique(hash, r, |r| xxh3_64_with_seed(r.user(), seed));
                self.stored += 1;
            }
            return;
        };
        let (gateway, generation, conn) = (session.gateway, session.generation, session.conn);
        let before = record.len();
        let mut replaced = false;
        let mut parts = Vec::with_capacity(before + 1);
        for v in record.sessions() {
            // A newer generation of the gateway replaces its older sessions of this user.
            if !merge && v.gateway() == gateway && v.generation() < generation {
                continue;
            }
            if !replaced && v.conn() == conn && v.gateway() == gateway {
                replaced = true;
                if !merge || v.generation() < generation {
                    parts.push(Part::New(session));
                } else {
                    parts.push(Part::Packed(v));
                }
                continue;
            }
            parts.push(Part::Packed(v));
        }
        if !replaced {
            parts.push(Part::New(session));
        }
        let after = parts.len();
        if let Some(r) = Record::build(key, parts.into_iter()) {
            *record = r;
        }
        self.stored = self.stored + after - before;
    }

    fn remove(&mut self, user: &str, conn: u64, id: LeaseId) {
        if let Some(t) = &mut self.tombstones {
            t.insert((conn, id.generation));
        }
        let key = user.as_bytes();
        let Ok(entry) = self.users.find_entry(self.hash(key), |r| r.user() == key) else {
            return;
        };
        match entry.get().filtered(|v| !(v.conn() == conn && v.gateway() == id.gateway)) {
            Filtered::Unchanged => {}
            Filtered::Changed { record: Some(r), dropped } => {
                self.stored -= dropped;
                *entry.into_mut() = r;
            }
            Filtered::Changed { record: None, dropped } => {
                self.stored -= dropped;
                entry.remove();
            }
        }
    }

    /// Apply `keep` to every session, dropping those it refuses (and users left with
    /// none). Returns how many were dropped.
    fn filter_all(users: &mut HashTable<Record>, mut keep: impl FnMut(View<'_>) -> bool) -> usize {
        let mut removed = 0;
        users.retain(|record| match record.filtered(&mut keep) {
            Filtered::Unchanged => true,
            Filtered::Changed { record: Some(r), dropped } => {
                removed += dropped;
                *record = r;
                true
            }
            Filtered::Changed { record: None, dropped } => {
                removed += dropped;
                false
            }
        });
        removed
    }

    /// The live sessions of `user`.
    pub fn lookup(&self, user: &str, now: Instant) -> Vec<Session> {
        self.find(user)
            .map(|r| {
                r.sessions()
                    .filter(|v| live_in(&self.leases, v, now))
                    .map(|v| v.session())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The live sessions of `gateway`, with their users.
    pub fn list(&self, gateway: GatewayId, now: Instant) -> Vec<(UserId, Session)> {
        let mut out = Vec::new();
        for r in &self.users {
            let mut user: Option<UserId> = None;
            for v in
                r.sessions().filter(|v| v.gateway() == gateway && live_in(&self.leases, v, now))
            {
                let u = user.get_or_insert_with(|| UserId::from(r.user_str()));
                out.push((u.clone(), v.session()));
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
            let tombstones = &mut self.tombstones;
            let removed = Table::filter_all(&mut self.users, |v| {
                let drop = v.gateway() == gateway && !keep.contains(&v.conn());
                if drop && let Some(t) = tombstones.as_mut() {
                    t.insert((v.conn(), v.generation()));
                }
                !drop
            });
            self.stored -= removed;
        }
        for (user, s) in sessions {
            let mut s = s.clone();
            s.gateway = id.gateway;
            s.generation = id.generation;
            self.insert(user, &s, false);
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
        for r in &self.users {
            if pick(r.user_str()) {
                let user = UserId::from(r.user_str());
                for v in r.sessions().filter(|v| live_in(&self.leases, v, now)) {
                    sessions.push((user.clone(), v.session()));
                }
            }
        }
        (leases, sessions)
    }

    /// The users held here (for a migration plan).
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.users.iter().map(|r| r.user_str())
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
            self.insert(user, s, true);
        }
    }

    /// Keep only the users for which `keep(user)` holds (after a ring change, the keys
    /// this node no longer owns).
    pub fn retain_users(&mut self, mut keep: impl FnMut(&str) -> bool) -> usize {
        let mut removed = 0;
        self.users.retain(|r| {
            let k = keep(r.user_str());
            if !k {
                removed += r.len();
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
            let removed = Table::filter_all(&mut self.users, |v| live_in(leases, &v, now));
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
        for r in &self.users {
            let user = r.user_str();
            // Rooms' shares are kept as reserved keys (`crate::rooms`): not users.
            if crate::rooms::is_room_key(user) || !pick(user) {
                continue;
            }
            let live = r.sessions().filter(|v| live_in(&self.leases, v, now)).count() as u64;
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

    /// One step of the model test: gateway index, user index, connection index.
    #[derive(Clone, Debug)]
    enum Op {
        Online(u16, u8, u8),
        Offline(u16, u8, u8),
        /// The gateway restarts with a new generation.
        Restart(u16),
        Sweep,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0u16..3, 0u8..8, 0u8..6).prop_map(|(g, u, c)| Op::Online(g, u, c)),
            4 => (0u16..3, 0u8..8, 0u8..6).prop_map(|(g, u, c)| Op::Offline(g, u, c)),
            1 => (0u16..3).prop_map(Op::Restart),
            1 => Just(Op::Sweep),
        ]
    }

    proptest::proptest! {
        /// Against a model of the rules (a session lives while its gateway's generation is
        /// current; online replaces the same connection; offline removes it), every lookup
        /// answers exactly the model's live sessions, and the record count is exact after a
        /// sweep.
        #[test]
        fn lookups_match_a_model(ops in proptest::collection::vec(op(), 1..200)) {
            let t0 = Instant::now();
            let mut t = Table::new();
            let mut generation = [1u64; 3];
            // (gateway, conn) -> (user, platform, generation)
            let mut model: HashMap<(u16, u64), (String, u8, u64)> = HashMap::new();
            for g in 0..3 {
                t.renew(lease(g, 1), TTL, t0).unwrap();
            }
            for (step, op) in ops.iter().enumerate() {
                match *op {
                    Op::Online(g, u, c) => {
                        let (user, conn) = (format!("user-{u}"), u64::from(c));
                        let platform = (step % 7) as u8;
                        let w = Write::Online {
                            user: user.as_str().into(),
                            conn,
                            device: format!("dev-{step}").into(),
                            platform,
                            login_ms: step as u64,
                        };
                        t.apply(lease(g, generation[usize::from(g)]), &[w], t0).unwrap();
                        // A connection id never moves between users within a generation.
                        if model.get(&(g, conn)).is_none_or(|(mu, _, _)| *mu == user) {
                            model.insert((g, conn), (user, platform, generation[usize::from(g)]));
                        } else {
                            // Keep the model simple: the same conn under two users is a
                            // gateway bug; undo it in the table the way the model ignores it.
                            t.apply(
                                lease(g, generation[usize::from(g)]),
                                &[offline(&user, conn)],
                                t0,
                            )
                            .unwrap();
                        }
                    }
                    Op::Offline(g, u, c) => {
                        let (user, conn) = (format!("user-{u}"), u64::from(c));
                        t.apply(lease(g, generation[usize::from(g)]), &[offline(&user, conn)], t0)
                            .unwrap();
                        if model.get(&(g, conn)).is_some_and(|(mu, _, _)| *mu == user) {
                            model.remove(&(g, conn));
                        }
                    }
                    Op::Restart(g) => {
                        generation[usize::from(g)] += 1;
                        t.renew(lease(g, generation[usize::from(g)]), TTL, t0).unwrap();
                        model.retain(|&(mg, _), _| mg != g);
                    }
                    Op::Sweep => {
                        t.sweep(t0);
                        proptest::prop_assert_eq!(t.stored(), model.len());
                    }
                }
                for u in 0..8u8 {
                    let user = format!("user-{u}");
                    let mut got: Vec<(u16, u64, u8, u64)> = t
                        .lookup(&user, t0)
                        .iter()
                        .map(|s| (s.gateway, s.conn, s.platform, s.generation))
                        .collect();
                    let mut want: Vec<(u16, u64, u8, u64)> = model
                        .iter()
                        .filter(|(_, (mu, _, _))| *mu == user)
                        .map(|(&(g, c), &(_, p, gen_))| (g, c, p, gen_))
                        .collect();
                    got.sort_unstable();
                    want.sort_unstable();
                    proptest::prop_assert_eq!(got, want);
                }
            }
        }
    }
}
