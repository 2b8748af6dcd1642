//! The event loop's table of connections: slab slots with a generation each, so a stale
//! [`ConnId`](crate::ids::ConnId) never reaches a later occupant of the same slot.
//!
//! Each slot counts its own generations (1, 2, ... 65,535; 0 is never handed out). A slot
//! whose generation space is used up is **retired**: it stays occupied by a tombstone and is
//! never reused, so an id from any earlier occupant can never match again. That costs one
//! empty slot per 65,535 connections the slot served (a slab entry, no socket).

use slab::Slab;

/// Connection records by slot, with per-slot generations.
#[derive(Debug)]
pub(crate) struct Slots<T> {
    /// `None` marks a retired slot.
    slab: Slab<Option<T>>,
    /// The generation of each slot's current (or last) occupant.
    generations: Vec<u16>,
    /// One past the highest slot ever used (where a sweep over all slots ends).
    high: usize,
    /// Slots retired so far.
    retired: usize,
    /// The largest slot a record may take.
    max_slot: usize,
}

impl<T> Slots<T> {
    /// An empty table; `capacity` is reserved address space (pages become resident as the
    /// table fills); slots above `max_slot` are refused.
    pub(crate) fn new(capacity: usize, max_slot: usize) -> Slots<T> {
        Slots {
            slab: Slab::with_capacity(capacity),
            generations: Vec::new(),
            high: 0,
            retired: 0,
            max_slot,
        }
    }

    /// Store `value`: its slot and generation, or `None` when the table is full.
    pub(crate) fn insert(&mut self, value: T) -> Option<(usize, u16)> {
        loop {
            let key = self.slab.vacant_key();
            if key > self.max_slot {
                return None;
            }
            if self.generations.len() <= key {
                self.generations.resize(key + 1, 0);
            }
            let generation = self.generations[key].wrapping_add(1);
            if generation == 0 {
                // Every generation of this slot has been handed out: retire it for good.
                self.slab.insert(None);
                self.retired += 1;
                continue;
            }
            self.generations[key] = generation;
            self.slab.insert(Some(value));
            self.high = self.high.max(key + 1);
            return Some((key, generation));
        }
    }

    /// The record in `key`, if live.
    pub(crate) fn get(&self, key: usize) -> Option<&T> {
        self.slab.get(key)?.as_ref()
    }

    /// The record in `key`, if live.
    pub(crate) fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        self.slab.get_mut(key)?.as_mut()
    }

    /// The slot of a live record with this generation.
    pub(crate) fn find(&self, key: usize, generation: u16) -> Option<usize> {
        (self.get(key).is_some() && self.generations.get(key) == Some(&generation)).then_some(key)
    }

    /// The generation of the record in `key` (live or last).
    pub(crate) fn generation(&self, key: usize) -> u16 {
        self.generations.get(key).copied().unwrap_or(0)
    }

    /// Take the record out of `key`, freeing the slot for a later generation.
    pub(crate) fn remove(&mut self, key: usize) -> Option<T> {
        self.get(key)?;
        self.slab.try_remove(key).flatten()
    }

    /// Live records.
    pub(crate) fn len(&self) -> usize {
        self.slab.len() - self.retired
    }

    /// One past the highest slot ever used: sweeps run over `0..end()`.
    pub(crate) fn end(&self) -> usize {
        self.high
    }

    /// Every live slot, in order.
    pub(crate) fn keys(&self) -> Vec<usize> {
        self.slab.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| k).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_id_never_matches_a_later_occupant_of_its_slot() {
        let mut slots = Slots::new(4, 100);
        let (key, first) = slots.insert("alice").unwrap();
        slots.remove(key);
        // Churn the same slot through more than a generation space's worth of occupants.
        let mut last = first;
        for i in 0..70_000u32 {
            let (k, g) = slots.insert("churn").unwrap();
            if k == key {
                assert_ne!(g, first, "occupant {i} of slot {key} got alice's generation");
                last = g;
            }
            assert!(slots.find(key, first).is_none());
            slots.remove(k);
        }
        assert_ne!(last, first);
        // The retired slot is never handed out again, and every other one still works.
        assert_eq!(slots.len(), 0);
        let (k, g) = slots.insert("bob").unwrap();
        assert_eq!(slots.find(k, g), Some(k));
        assert!(slots.find(key, first).is_none());
    }

    #[test]
    fn generations_are_per_slot() {
        let mut slots = Slots::new(4, 100);
        let (a, ga) = slots.insert(1).unwrap();
        let (b, gb) = slots.insert(2).unwrap();
        assert_eq!((ga, gb), (1, 1));
        slots.remove(a);
        let (a2, ga2) = slots.insert(3).unwrap();
        assert_eq!((a2, ga2), (a, 2));
        assert_eq!(slots.generation(b), 1);
        assert_eq!(slots.keys(), vec![a, b]);
        assert_eq!(slots.end(), 2);
    }

    #[test]
    fn a_full_table_refuses() {
        let mut slots = Slots::new(2, 1);
        assert!(slots.insert(1).is_some());
        assert!(slots.insert(2).is_some());
        assert!(slots.insert(3).is_none());
    }
}
