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
//! - `claims`: the token's `rooms` claim, only for connections whose token has one, as the
//!   id of a claim list interned in the loop (tokens of one service carry a handful of
//!   distinct lists: a connection pays a `u32` → `u32` entry, not its own copy).
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
    /// Slot → its claim list's id in `lists`.
    claims: HashMap<u32, u32>,
    lists: Lists,
}

/// A token's `rooms` claim, as a loop keeps it.
type ClaimList = Arc<[Box<str>]>;

/// Claim lists, interned: each with the number of connections holding it.
#[derive(Default)]
struct Lists {
    by_id: Vec<Option<(ClaimList, u32)>>,
    ids: HashMap<ClaimList, u32>,
    free: Vec<u32>,
}

impl Lists {
    /// The id of `list`, counted once more.
    fn take(&mut self, list: &[String]) -> u32 {
        let key: Vec<Box<str>> = list.iter().map(|r| Box::from(r.as_str())).collect();
        if let Some(&id) = self.ids.get(key.as_slice()) {
            if let Some(Some((_, n))) = self.by_id.get_mut(id as usize) {
                *n += 1;
            }
            return id;
        }
        let list: ClaimList = Arc::from(key);
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.by_id.push(None);
                (self.by_id.len() - 1) as u32
            }
        };
        self.by_id[id as usize] = Some((Arc::clone(&list), 1));
        self.ids.insert(list, id);
        id
    }

    /// Count `id` once less; forget it when no connection holds it.
    fn put(&mut self, id: u32) {
        let Some(slot) = self.by_id.get_mut(id as usize) else { return };
        let last = match slot {
            Some((_, n)) => {
                *n -= 1;
                *n == 0
            }
            None => false,
        };
        if last && let Some((list, _)) = slot.take() {
            self.ids.remove(&list);
            self.free.push(id);
        }
    }

    fn get(&self, id: u32) -> &[Box<str>] {
        match self.by_id.get(id as usize) {
            Some(Some((list, _))) => list,
            _ => &[],
        }
    }
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
        if let Some(id) = self.claims.remove(&slot) {
            self.lists.put(id);
        }
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
        let new = (!rooms.is_empty()).then(|| self.lists.take(rooms));
        let old = match new {
            Some(id) => self.claims.insert(slot, id),
            None => self.claims.remove(&slot),
        };
        if let Some(id) = old {
            self.lists.put(id);
        }
    }

    /// The token's `rooms` claim of `slot` (empty: none).
    pub(crate) fn claims(&self, slot: u32) -> &[Box<str>] {
        self.claims.get(&slot).map_or(&[], |&id| self.lists.get(id))
    }
}

/// A global allocator for this crate's unit tests that counts, per thread, the bytes
/// allocated and not yet freed: how `Index` is held to its memory budget.
#[cfg(test)]
pub(crate) mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static NET: Cell<isize> = const { Cell::new(0) };
    }

    /// The system allocator, counting.
    pub(crate) struct Counting;

    // SAFETY: every call is forwarded to `System` unchanged; the counter is a thread-local
    // `Cell` with a const initialiser, which allocates nothing.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = NET.try_with(|n| n.set(n.get() + layout.size() as isize));
            // SAFETY: the caller's contract is `System::alloc`'s.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            let _ = NET.try_with(|n| n.set(n.get() - layout.size() as isize));
            // SAFETY: the caller's contract is `System::dealloc`'s.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let _ = NET.try_with(|n| n.set(n.get() + new_size as isize - layout.size() as isize));
            // SAFETY: the caller's contract is `System::realloc`'s.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    /// Bytes this thread holds now (allocated minus freed since it started).
    pub(crate) fn held() -> isize {
        NET.with(Cell::get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Heap bytes per membership of `rooms` rooms with `per_room` members each, members
    /// joining in slot order as connections arrive (`per_conn` rooms per connection).
    fn bytes_per_membership(rooms: u32, per_room: u32, per_conn: u32) -> f64 {
        let before = counting::held();
        let mut ix = Index::default();
        let conns = rooms * per_room / per_conn;
        for slot in 0..conns {
            for k in 0..per_conn {
                ix.insert(slot, (slot * per_conn + k) % rooms);
            }
        }
        let bytes = counting::held() - before;
        let memberships = f64::from(conns * per_conn);
        assert_eq!(ix.of_conn.len() as f64, memberships);
        bytes as f64 / memberships
    }

    /// The budget of issue #13: at most 32 B of gateway memory per membership beyond the
    /// room's name. Heap bytes requested (the allocator adds its own few bytes per block;
    /// the B-tree's nodes are ~100-200 B blocks, the sets' tables one block each).
    #[test]
    fn a_membership_costs_at_most_32_bytes() {
        for (rooms, per_room, per_conn) in [(1, 100_000, 1), (1_000, 100, 1), (100, 1_000, 10)] {
            let b = bytes_per_membership(rooms, per_room, per_conn);
            println!("{rooms} rooms × {per_room} members, {per_conn} per connection: {b:.1} B");
            assert!(b <= 32.0, "{b:.1} B per membership ({rooms} × {per_room}, {per_conn})");
        }
    }

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
        ix.set_claims(2, &["live/*".to_owned()]);
        ix.set_claims(3, &["other".to_owned()]);
        assert_eq!(ix.claims(1).len(), 1);
        assert_eq!(ix.lists.ids.len(), 2, "one copy of each distinct list");
        ix.set_claims(3, &[]);
        assert_eq!(ix.lists.ids.len(), 1);
        ix.set_claims(2, &["live/*".to_owned(), "x".to_owned()]);
        assert_eq!(&*ix.claims(2)[1], "x");
        let mut left = ix.remove_conn(1);
        left.sort_unstable();
        assert_eq!(left, [10, 11]);
        assert_eq!(ix.len(10), 0);
        assert_eq!(ix.rooms_of(1), 0);
        assert!(ix.claims(1).is_empty());
        ix.remove_conn(2);
        assert!(ix.lists.ids.is_empty() && ix.claims.is_empty(), "nothing left behind");
        assert_eq!(ix.members(11).count(), 0);
    }
}
