//! Rooms on this node: the names, how many of the node's connections are in each, and what
//! the rest of the cluster is told about them.
//!
//! Membership itself (which connection is in which room) lives in each event loop
//! (`driver/rooms.rs`): a push to a room is delivered by every loop to its own members
//! without a lock. This module is what the loops share, touched only when a membership
//! changes (a join, a leave, a close of a connection in rooms), never per push or per
//! heartbeat:
//!
//! - [`Rooms`]: room name ↔ a small id (names are interned once per node), each room's
//!   member count, the node's membership total and cap, and — with a shared presence
//!   backend — the counts not yet written to the store (written in batches by
//!   [`flush_shares`], the room's *share* of `holdfast_status::rooms`);
//! - [`check_name`] and [`allowed`]: which names are valid, and what a token's `rooms` claim
//!   allows;
//! - [`Sticky`]: memberships a backend asked to keep for a user's later logins;
//! - [`rate`]: the per-room push rate and its overflow policy;
//! - [`hook`]: the join webhook, for `JOIN`s the token does not allow;
//! - [`ops`]: joins, leaves, pushes and counts as the API asks them, here and across the
//!   cluster.

pub(crate) mod hook;
pub(crate) mod ops;
pub(crate) mod rate;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use holdfast_codec::Code;
use holdfast_status::rooms::{share_conn, share_write};
use holdfast_status::{Session, UserId};
use prometheus::IntGauge;

/// A room's id on this node: an index into the directory, reused after the room empties.
pub(crate) type RoomNo = u32;

/// Why a room name is refused: `INVALID_ROOM` (703) with this text.
pub(crate) fn check_name(name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("the room name is empty".to_owned());
    }
    if name.len() > max {
        return Err(format!("the room name has {} bytes; at most {max}", name.len()));
    }
    if name.starts_with('$') {
        return Err("room names starting with '$' are reserved".to_owned());
    }
    if name.chars().any(char::is_control) {
        return Err("the room name contains control characters".to_owned());
    }
    Ok(())
}

/// Whether a token's `rooms` claim allows `room`: an entry equal to it, or an entry ending
/// in `*` whose part before the `*` starts it (`"*"` alone allows every room).
pub(crate) fn allowed(patterns: &[Box<str>], room: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => **p == *room,
    })
}

/// A user id's 64-bit hash, the same on every gateway: distinct users of a room spread over
/// several gateways are counted by the union of these.
pub(crate) fn user_hash(user: &str) -> u64 {
    // SipHash with fixed (zero) keys: stable across processes of this build.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    user.hash(&mut h);
    h.finish()
}

/// Why a join is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refused {
    /// The 7xx code.
    pub(crate) code: Code,
    /// Detail for the client.
    pub(crate) message: String,
}

impl Refused {
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Refused {
        Refused { code, message: message.into() }
    }
}

/// One room with members on this node.
struct Entry {
    name: Arc<str>,
    /// Connections of this node in the room.
    conns: u32,
    /// The share id this room's count is written under (`holdfast_status::rooms`).
    share: u64,
    /// The count last handed to the store; `None` if none yet.
    written: Option<u32>,
    /// Queued for the next share flush.
    dirty: bool,
}

#[derive(Default)]
struct Dir {
    by_name: HashMap<Arc<str>, RoomNo>,
    entries: Vec<Option<Entry>>,
    free: Vec<RoomNo>,
    dirty: Vec<RoomNo>,
    memberships: u64,
    next_incarnation: u64,
}

/// The node's rooms. See the module doc.
pub(crate) struct Rooms {
    dir: Mutex<Dir>,
    /// `holdfast_gateway_rooms` and `holdfast_gateway_room_memberships`.
    gauges: (IntGauge, IntGauge),
    gateway: u16,
    max_memberships: u64,
    /// Whether member counts are written to a shared store (a cluster): then an emptied
    /// room stays until its last count is flushed.
    shared: bool,
}

impl Rooms {
    /// No rooms yet; `shared` when the node writes counts to a shared presence store.
    pub(crate) fn new(
        gateway: u16,
        max_memberships: u64,
        shared: bool,
        gauges: (IntGauge, IntGauge),
    ) -> Rooms {
        Rooms { dir: Mutex::new(Dir::default()), gauges, gateway, max_memberships, shared }
    }

    fn lock(&self) -> MutexGuard<'_, Dir> {
        self.dir.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection of this node joins `name`: its id, or `ROOMS_FULL` at the node's cap.
    /// The caller has checked the name and that the connection is not in the room yet.
    pub(crate) fn join(&self, name: &str) -> Result<RoomNo, Refused> {
        let mut d = self.lock();
        if d.memberships >= self.max_memberships {
            return Err(Refused::new(
                Code::ROOMS_FULL,
                format!("the gateway holds its maximum of {} memberships", self.max_memberships),
            ));
        }
        d.memberships += 1;
        let no = match d.by_name.get(name) {
            Some(&no) => no,
            None => {
                let name: Arc<str> = Arc::from(name);
                d.next_incarnation += 1;
                let entry = Entry {
                    name: Arc::clone(&name),
                    conns: 0,
                    share: share_conn(self.gateway, d.next_incarnation),
                    written: None,
                    dirty: false,
                };
                let no = match d.free.pop() {
                    Some(no) => {
                        d.entries[no as usize] = Some(entry);
                        no
                    }
                    None => {
                        d.entries.push(Some(entry));
                        (d.entries.len() - 1) as RoomNo
                    }
                };
                d.by_name.insert(name, no);
                no
            }
        };
        self.changed(&mut d, no, 1);
        Ok(no)
    }

    /// A connection of this node left room `no` (or closed while in it).
    pub(crate) fn leave(&self, no: RoomNo) {
        let mut d = self.lock();
        d.memberships = d.memberships.saturating_sub(1);
        self.changed(&mut d, no, -1);
    }

    /// Count a member in or out, queue the new count for the store, and forget a room that
    /// emptied (at once without a store; after its flush with one).
    fn changed(&self, d: &mut Dir, no: RoomNo, by: i32) {
        let Some(Some(e)) = d.entries.get_mut(no as usize) else { return };
        e.conns = e.conns.saturating_add_signed(by);
        self.gauges.1.add(i64::from(by));
        match (by > 0, e.conns) {
            (true, 1) => self.gauges.0.inc(),
            (false, 0) => self.gauges.0.dec(),
            _ => {}
        }
        let mark = self.shared && !e.dirty;
        if mark {
            e.dirty = true;
        }
        let forget = e.conns == 0 && !self.shared;
        if mark {
            d.dirty.push(no);
        }
        if forget {
            Self::forget(d, no);
        }
    }

    fn forget(d: &mut Dir, no: RoomNo) {
        if let Some(e) = d.entries.get_mut(no as usize).and_then(Option::take) {
            d.by_name.remove(&e.name);
            d.free.push(no);
        }
    }

    /// The id of a room with members here.
    pub(crate) fn find(&self, name: &str) -> Option<RoomNo> {
        self.lock().by_name.get(name).copied()
    }

    /// Rooms with members here, and the memberships.
    pub(crate) fn totals(&self) -> (usize, u64) {
        let d = self.lock();
        let rooms = d.entries.iter().flatten().filter(|e| e.conns > 0).count();
        (rooms, d.memberships)
    }

    /// Every room with members here, with its count.
    pub(crate) fn list(&self) -> Vec<(Arc<str>, u32)> {
        let d = self.lock();
        d.entries
            .iter()
            .flatten()
            .filter(|e| e.conns > 0)
            .map(|e| (e.name.clone(), e.conns))
            .collect()
    }

    /// The counts changed since the last call, as store writes (`holdfast_status::rooms`);
    /// rooms that emptied are forgotten once their removal is written.
    pub(crate) fn take_dirty(&self) -> Vec<holdfast_status::Write> {
        let mut d = self.lock();
        let dirty = std::mem::take(&mut d.dirty);
        let mut writes = Vec::with_capacity(dirty.len());
        for no in dirty {
            let Some(Some(e)) = d.entries.get_mut(no as usize) else { continue };
            e.dirty = false;
            if e.written != Some(e.conns) && !(e.written.is_none() && e.conns == 0) {
                writes.push(share_write(&e.name, e.share, e.conns));
                e.written = Some(e.conns);
            }
            if e.conns == 0 {
                Self::forget(&mut d, no);
            }
        }
        writes
    }

    /// Every room's share as the store should hold it, for a resync (the `gateway` and
    /// `generation` fields are filled in by the store).
    pub(crate) fn shares(&self) -> Vec<(UserId, Session)> {
        let mut d = self.lock();
        let mut out = Vec::new();
        for e in d.entries.iter_mut().flatten() {
            if e.conns == 0 {
                continue;
            }
            e.written = Some(e.conns);
            out.push((
                holdfast_status::rooms::room_key(&e.name),
                Session {
                    conn: e.share,
                    gateway: 0,
                    device: Box::from(""),
                    platform: 0,
                    login_ms: u64::from(e.conns),
                    generation: 0,
                },
            ));
        }
        out
    }
}

/// Write changed member counts to the shared store every `rooms.share_flush_ms`, through
/// the presence batcher (so under the gateway's lease, in its batches).
pub(crate) async fn flush_shares(node: Arc<crate::node::Node>) {
    let Some(cluster) = node.cluster.as_ref() else { return };
    let every = std::time::Duration::from_millis(node.cfg.rooms.share_flush_ms.max(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for w in node.rooms.take_dirty() {
            cluster.batcher.write(w);
        }
    }
}

/// The topic of the online-count push (`rooms.count_interval_ms`).
pub(crate) const COUNT_TOPIC: &str = "$room.count";

/// Every `rooms.count_interval_ms`, push each room's online counts to its members (a
/// `PUSH` with topic [`COUNT_TOPIC`], no `ACK_REQUIRED`, payload
/// `{"room","connections","users"}`). In a cluster, one gateway does it for each room: the
/// lowest id among the gateways holding members, as every gateway reads the store alike.
pub(crate) async fn push_counts(node: Arc<crate::node::Node>) {
    let ms = node.cfg.rooms.count_interval_ms;
    if ms == 0 {
        return;
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let rooms: Vec<Arc<str>> = node.rooms.list().into_iter().map(|(r, _)| r).collect();
        for chunk in rooms.chunks(512) {
            let owned = match &node.cluster {
                None => chunk.to_vec(),
                Some(c) => match c.store.rooms_lookup(chunk.to_vec()).await {
                    Ok(shares) => chunk
                        .iter()
                        .zip(shares)
                        .filter(|(_, s)| s.iter().all(|r| r.gateway >= node.cfg.node.id))
                        .map(|(r, _)| Arc::clone(r))
                        .collect(),
                    Err(e) => {
                        tracing::debug!(error = %e, "room lookup for counts failed");
                        continue;
                    }
                },
            };
            for room in owned {
                let Ok(counts) = ops::counts(&node, &room).await else { continue };
                let payload = serde_json::json!({
                    "room": &*room,
                    "connections": counts["connections"],
                    "users": counts["users"],
                });
                let msg = Arc::new(crate::driver::PushMsg {
                    // 0: not a business message; clients do not de-duplicate it.
                    message_id: 0,
                    topic: COUNT_TOPIC.to_owned(),
                    payload: bytes::Bytes::from(payload.to_string()),
                    ack_required: false,
                });
                if let Err(e) = ops::push(&node, &room, Arc::from([msg])).await {
                    tracing::debug!(room = %room, error = %e, "room count push failed");
                }
            }
        }
    }
}

/// Memberships a backend asked to keep for a user (`"sticky": true`): the user's later
/// logins on this node join them too, until the backend makes the user leave the room.
/// Kept in this node's memory: the API sends a sticky join to every gateway.
#[derive(Default)]
pub(crate) struct Sticky {
    users: Mutex<HashMap<Arc<str>, Vec<Arc<str>>>>,
    /// Users with sticky rooms, readable without the lock (a login checks it).
    count: AtomicUsize,
}

impl Sticky {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Vec<Arc<str>>>> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keep `room` for `user` (at most `max` rooms per user: false when full).
    pub(crate) fn add(&self, user: &str, room: &str, max: usize) -> bool {
        let mut users = self.lock();
        let rooms = users.entry(Arc::from(user)).or_default();
        if rooms.iter().any(|r| **r == *room) {
            return true;
        }
        if rooms.len() >= max {
            return false;
        }
        rooms.push(Arc::from(room));
        self.count.store(users.len(), Ordering::Release);
        true
    }

    /// Stop keeping `room` for `user`.
    pub(crate) fn remove(&self, user: &str, room: &str) {
        let mut users = self.lock();
        if let Some(rooms) = users.get_mut(user) {
            rooms.retain(|r| **r != *room);
            if rooms.is_empty() {
                users.remove(user);
            }
        }
        self.count.store(users.len(), Ordering::Release);
    }

    /// No user has sticky rooms (one atomic load: what a login pays without them).
    pub(crate) fn is_empty(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// The rooms kept for `user`.
    pub(crate) fn of(&self, user: &str) -> Vec<Arc<str>> {
        self.lock().get(user).cloned().unwrap_or_default()
    }

    /// Users with sticky rooms.
    pub(crate) fn users(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_patterns() {
        assert!(check_name("live/42", 128).is_ok());
        assert!(check_name("", 128).is_err());
        assert!(check_name("$room.count", 128).is_err());
        assert!(check_name("a\nb", 128).is_err());
        assert!(check_name(&"x".repeat(129), 128).is_err());
        let p: Vec<Box<str>> = vec!["live/42".into(), "team/7/*".into()];
        assert!(allowed(&p, "live/42"));
        assert!(!allowed(&p, "live/43"));
        assert!(allowed(&p, "team/7/general"));
        assert!(!allowed(&p, "team/8/general"));
        assert!(allowed(&["*".into()], "anything"));
        assert!(!allowed(&[], "anything"));
        assert_eq!(user_hash("alice"), user_hash("alice"));
        assert_ne!(user_hash("alice"), user_hash("bob"));
    }

    fn gauges() -> (IntGauge, IntGauge) {
        let g = || IntGauge::new("g", "g").expect("gauge");
        (g(), g())
    }

    #[test]
    fn counts_ids_and_the_cap() {
        let rooms = Rooms::new(3, 3, false, gauges());
        let a = rooms.join("a").expect("a");
        assert_eq!(rooms.join("a").expect("a again"), a);
        let b = rooms.join("b").expect("b");
        assert_ne!(a, b);
        assert_eq!(rooms.join("c").expect_err("cap").code, Code::ROOMS_FULL);
        assert_eq!(rooms.list(), vec![(Arc::from("a"), 2), (Arc::from("b"), 1)]);
        rooms.leave(a);
        rooms.leave(a);
        assert_eq!(rooms.find("a"), None, "an empty room is forgotten without a store");
        assert_eq!(rooms.totals(), (1, 1));
        assert_eq!(rooms.join("c").expect("room again"), a, "ids are reused");
        assert_eq!((rooms.gauges.0.get(), rooms.gauges.1.get()), (2, 2));
    }

    #[test]
    fn shares_are_written_in_batches_and_removed_when_empty() {
        use holdfast_status::Write;
        let rooms = Rooms::new(5, 100, true, gauges());
        let a = rooms.join("a").expect("a");
        rooms.join("a").expect("a");
        let w = rooms.take_dirty();
        assert_eq!(w.len(), 1, "two joins, one write");
        let share = match &w[0] {
            Write::Online { conn, login_ms, .. } => {
                assert_eq!(*login_ms, 2);
                *conn
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(share >> 48, 5);
        assert!(rooms.take_dirty().is_empty());
        rooms.leave(a);
        rooms.leave(a);
        assert_eq!(rooms.find("a"), Some(a), "kept until its removal is written");
        let w = rooms.take_dirty();
        assert!(matches!(&w[..], [Write::Offline { conn, .. }] if *conn == share));
        assert_eq!(rooms.find("a"), None);
        // Joined and left between two flushes: nothing was written, nothing to remove.
        let b = rooms.join("b").expect("b");
        rooms.leave(b);
        assert!(rooms.take_dirty().is_empty());
        // A new incarnation gets a new share id.
        rooms.join("a").expect("a");
        match &rooms.take_dirty()[..] {
            [Write::Online { conn, .. }] => assert_ne!(*conn, share),
            other => panic!("{other:?}"),
        }
        assert_eq!(rooms.shares().len(), 1);
    }

    #[test]
    fn sticky_rooms_per_user() {
        let s = Sticky::default();
        assert!(s.add("u", "a", 2));
        assert!(s.add("u", "a", 2));
        assert!(s.add("u", "b", 2));
        assert!(!s.add("u", "c", 2));
        assert_eq!(s.of("u").len(), 2);
        s.remove("u", "a");
        s.remove("u", "b");
        assert_eq!(s.users(), 0);
        assert!(s.is_empty());
    }
}
