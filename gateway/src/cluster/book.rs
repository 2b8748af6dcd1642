//! The sessions this gateway has registered with the shared presence store: what a resync
//! sends when the store asks for the full set.
//!
//! The node registry keeps only what the event loops need (user → connections, platform);
//! the store also wants each session's device and login time, so a shared backend keeps
//! them here, one entry per authenticated connection (~100 B plus the device id; nothing
//! with the in-process backend). Sharded maps behind short mutexes, touched only at login
//! and close.
//!
//! An entry is added *before* its online write is queued and removed before its offline
//! write is, so a snapshot taken while writes are queued already contains them (the batcher
//! drops its queue after a resync). Entries carry the [`Fence`] epoch they were registered
//! in: once the gateway fenced itself, the sessions it is redirecting are left out of
//! resyncs, so a new lease never brings them back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use holdfast_status::batcher::SessionSource;
use holdfast_status::{Session, UserId};

use crate::fence::Fence;
use crate::rooms::Rooms;

const SHARDS: usize = 64;

struct Entry {
    user: UserId,
    device: Box<str>,
    platform: u8,
    login_ms: u64,
    epoch: u32,
}

/// Connection id → session, for resyncs; with the node's rooms, whose member counts a
/// resync sends too.
pub(crate) struct Book {
    shards: Box<[Mutex<HashMap<u64, Entry>>]>,
    fence: Arc<Fence>,
    rooms: Arc<Rooms>,
}

impl Book {
    /// An empty book; resyncs consult `fence`.
    pub(crate) fn new(fence: Arc<Fence>, rooms: Arc<Rooms>) -> Book {
        Book { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), fence, rooms }
    }

    fn shard(&self, conn: u64) -> MutexGuard<'_, HashMap<u64, Entry>> {
        // Connection ids differ in their low bits (slot, generation).
        let i = ((conn >> 16) ^ conn) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection authenticated.
    pub(crate) fn insert(
        &self,
        user: UserId,
        conn: u64,
        device: &str,
        platform: u8,
        login_ms: u64,
    ) {
        let entry =
            Entry { user, device: device.into(), platform, login_ms, epoch: self.fence.epoch() };
        self.shard(conn).insert(conn, entry);
    }

    /// A connection closed.
    pub(crate) fn remove(&self, conn: u64) {
        self.shard(conn).remove(&conn);
    }

    /// Registered sessions.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }
}

impl SessionSource for Book {
    /// Every session to keep. Called by the presence task when it resyncs, which it does
    /// after a lost lease among other reasons: if the lease is gone the gateway fences
    /// itself first, so the sessions it is about to redirect are not in the set.
    fn snapshot(&self) -> Vec<(UserId, Session)> {
        if self.fence.is_fenced() {
            self.fence.raise();
        }
        let epoch = self.fence.epoch();
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            all.extend(shard.iter().filter(|(_, e)| e.epoch == epoch).map(|(conn, e)| {
                let session = Session {
                    conn: *conn,
                    gateway: 0,
                    device: e.device.clone(),
                    platform: e.platform,
                    login_ms: e.login_ms,
                    generation: 0,
                };
                (e.user.clone(), session)
            }));
        }
        // Rooms' member counts (`holdfast_status::rooms`): a fenced gateway's redirected
        // clients leave their rooms as they close, and the counts follow.
        all.extend(self.rooms.shares());
        all
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;

    #[test]
    fn a_resync_after_a_fence_leaves_out_the_sessions_being_redirected() {
        let fence =
            Arc::new(Fence::new(Arc::new(OnceLock::new()), crate::metrics::Metrics::new().cluster));
        let m = crate::metrics::Metrics::new();
        let rooms =
            Arc::new(Rooms::new(1, 10, true, (m.rooms.clone(), m.room_memberships.clone())));
        rooms.join("r").expect("join");
        let book = Book::new(Arc::clone(&fence), rooms);
        book.insert("old".into(), 1, "d", 1, 10);
        assert_eq!(book.snapshot().len(), 2, "the session and the room's share");
        fence.raise();
        fence.lower();
        book.insert("new".into(), 2, "d", 1, 20);
        let users: Vec<String> = book
            .snapshot()
            .into_iter()
            .map(|(u, _)| u.to_string())
            .filter(|u| !holdfast_status::rooms::is_room_key(u))
            .collect();
        assert_eq!(users, vec!["new".to_owned()]);
        assert_eq!(book.len(), 2, "the old one stays until its connection closes");
        book.remove(1);
        assert_eq!(book.len(), 1);
    }
}
