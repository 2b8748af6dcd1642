//! The message ids of the latest pushes, so one that arrives twice (on two connections
//! during a make-before-break move, or redelivered by the backend) reaches the application
//! once (`docs/PROTOCOL.md` § Push and acknowledgement, § Kick and redirect).

use std::collections::{HashSet, VecDeque};

/// A bounded set of recent message ids: the oldest is forgotten when it is full.
#[derive(Debug)]
pub(super) struct RecentIds {
    order: VecDeque<u64>,
    set: HashSet<u64>,
    cap: usize,
}

impl RecentIds {
    /// Remember at most `cap` ids (0: remember none, so nothing is a duplicate).
    pub(super) fn new(cap: usize) -> RecentIds {
        RecentIds { order: VecDeque::new(), set: HashSet::new(), cap }
    }

    /// True the first time `id` is seen (and remembers it); false for a duplicate. Id 0 is
    /// "no id": never remembered, always new.
    pub(super) fn first_time(&mut self, id: u64) -> bool {
        if id == 0 || self.cap == 0 {
            return true;
        }
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_caught_within_the_window_and_forgotten_after() {
        let mut r = RecentIds::new(3);
        assert!(r.first_time(1) && r.first_time(2) && r.first_time(3));
        assert!(!r.first_time(2));
        assert!(r.first_time(4)); // forgets 1
        assert!(r.first_time(1)); // forgets 2
        assert!(!r.first_time(4));
        assert!(r.first_time(0) && r.first_time(0), "id 0 is never a duplicate");
        let mut off = RecentIds::new(0);
        assert!(off.first_time(7) && off.first_time(7));
    }
}
