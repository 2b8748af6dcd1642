//! One event loop's room memberships: which of its connections are in which room.
//!
//! Owned by the loop, so a push to a room reads it without a lock. Kept compact, because a
//! membership is the unit a large room multiplies:
//!
//! - `members`: room → the slots of its members here, a hash set of `u32` (4 B plus
//!   hashbrown's control byte and load slack per member);
//! - `of_conn`: an ordered set of (slot, room) pairs (8 B per membership in a B-tree whose
//!   nodes hold up to 11), which answers "is this connection in that room", "how many rooms
//!   is it in" and, at its close, "which rooms was it in" without any per-connection
//!   allocation;
//! - `claims`: the token's `rooms` claim, only for connections whose token has one.
//!
//! Slots are reused only after a connection's close has removed its memberships, so a
//! slot in a room's set is always a member; a push that outlives a turn snapshots its
//! targets with their generations (`Worker`), so a slot reused meanwhile is never written.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use crate::rooms::RoomNo;

/// The memberships of one loop's connections.
#[derive(Default)]
pub(crate) struct Index {
    members: HashMap<RoomNo, HashSet<u32>>,
    of_conn: BTreeSet<(u32, RoomNo)>,
    claims: HashMap<u32, Arc<[Box<str>]>>,
}

impl Index {
    /// Whether connection `slot` is in room `room`.
    pub(crate) fn contains(&self, slot: u32, room: RoomNo) -> bool {
        self.of_conn.contains(&(slot, room))
    }

    /// Put `slot` in `room`; false if it was already there.
    pub(crate) fn insert(&mut self, slot: u32, room: RoomNo) -> bool {
        if !self.of_conn.insert((slot, room)) {
            return false;
        }
        self.members.entry(room).or_default().insert(slot);
        true
    }

    /// Take `slot` out of `room`; false if it was not there.
    pub(crate) fn remove(&mut self, slot: u32, room: RoomNo) -> bool {
        if !self.of_conn.remove(&(slot, room)) {
            return false;
        }
        self.drop_member(slot, room);
        true
    }

    fn drop_member(&mut self, slot: u32, room: RoomNo) {
        if let Some(set) = self.members.get_mut(&room) {
            set.remove(&slot);
            if set.is_empty() {
                self.members.remove(&room);
            } else if set.capacity() > 64 && set.len() < set.capacity() / 4 {
                set.shrink_to_fit();
            }
        }
    }

    /// How many rooms `slot` is in.
    pub(crate) fn rooms_of(&self, slot: u32) -> usize {
        self.of_conn.range((slot, 0)..=(slot, RoomNo::MAX)).count()
    }

    /// Take `slot` out of every room (its connection closed): the rooms it was in.
    pub(crate) fn remove_conn(&mut self, slot: u32) -> Vec<RoomNo> {
        self.claims.remove(&slot);
        let rooms: Vec<RoomNo> =
            self.of_conn.range((slot, 0)..=(slot, RoomNo::MAX)).map(|&(_, r)| r).collect();
        for &room in &rooms {
            self.of_conn.remove(&(slot, room));
            self.drop_member(slot, room);
        }
        rooms
    }

    /// The slots of `room`'s members here.
    pub(crate) fn members(&self, room: RoomNo) -> impl Iterator<Item = u32> + '_ {
        self.members.get(&room).into_iter().flatten().copied()
    }

    /// How many members `room` has here.
    pub(crate) fn len(&self, room: RoomNo) -> usize {
        self.members.get(&room).map_or(0, HashSet::len)
    }

    /// Keep (or, with an empty claim, forget) the token's `rooms` claim of `slot`.
    pub(crate) fn set_claims(&mut self, slot: u32, rooms: &[String]) {
        if rooms.is_empty() {
            self.claims.remove(&slot);
        } else {
            self.claims.insert(slot, rooms.iter().map(|r| Box::from(r.as_str())).collect());
        }
    }

    /// The token's `rooms` claim of `slot` (empty: none).
    pub(crate) fn claims(&self, slot: u32) -> &[Box<str>] {
        self.claims.get(&slot).map_or(&[], |c| c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memberships_both_ways() {
        let mut ix = Index::default();
        assert!(ix.insert(1, 10));
        assert!(!ix.insert(1, 10), "already in");
        assert!(ix.insert(1, 11));
        assert!(ix.insert(2, 10));
        assert!(ix.contains(1, 11));
        assert_eq!(ix.rooms_of(1), 2);
        assert_eq!(ix.len(10), 2);
        let mut members: Vec<u32> = ix.members(10).collect();
        members.sort_unstable();
        assert_eq!(members, [1, 2]);
        assert!(ix.remove(2, 10));
        assert!(!ix.remove(2, 10));
        ix.set_claims(1, &["live/*".to_owned()]);
        assert_eq!(ix.claims(1).len(), 1);
        let mut left = ix.remove_conn(1);
        left.sort_unstable();
        assert_eq!(left, [10, 11]);
        assert_eq!(ix.len(10), 0);
        assert_eq!(ix.rooms_of(1), 0);
        assert!(ix.claims(1).is_empty());
        assert_eq!(ix.members(11).count(), 0);
    }
}
