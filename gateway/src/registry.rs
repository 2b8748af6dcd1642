//! The node's session registry: user → live connections on this gateway, and the kick
//! policy that decides which older connections a new login displaces.
//!
//! Sharded maps behind short mutexes. Only logins, closes and push look-ups touch it; the
//! per-heartbeat path never does. User ids are interned: the registry's key `Arc<str>` is
//! the one the connection record shares, so a user id is stored once however many devices
//! the user has on this node.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use holdfast_codec::Platform;

use crate::config::KickPolicy;
use crate::ids::ConnId;

/// One live connection of a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    /// The connection.
    pub conn: ConnId,
    /// Its platform, for the per-platform kick policy.
    pub platform: Platform,
}

/// A user's sessions: inline for the common single-device case; several behind one thin
/// pointer, so the map's entry stays 16 bytes (the platform byte's spare values tag it).
#[derive(Debug)]
enum Sessions {
    One(Session),
    #[allow(clippy::box_collection)] // a thin pointer keeps the one-device entry small
    Many(Box<Vec<Session>>),
}

impl Sessions {
    fn as_slice(&self) -> &[Session] {
        match self {
            Sessions::One(s) => std::slice::from_ref(s),
            Sessions::Many(v) => v.as_slice(),
        }
    }
}

const SHARDS: usize = 64;

/// One shard of the user map.
type Shard = Mutex<HashMap<Arc<str>, Sessions>>;

/// User → connections on this node, with the kick policy applied at registration.
pub struct Registry {
    shards: Box<[Shard]>,
    policy: KickPolicy,
    max_per_user: usize,
}

/// What [`Registry::register`] decided.
#[derive(Debug)]
pub struct Registered {
    /// The interned user id to keep in the connection record.
    pub user: Arc<str>,
    /// Older connections the new one displaces; the caller kicks them.
    pub displaced: Vec<ConnId>,
}

impl Registry {
    /// An empty registry applying `policy`, with at most `max_per_user` connections a user.
    pub fn new(policy: KickPolicy, max_per_user: usize) -> Registry {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            policy,
            max_per_user: max_per_user.max(1),
        }
    }

    fn shard(&self, user: &str) -> MutexGuard<'_, HashMap<Arc<str>, Sessions>> {
        let mut h = DefaultHasher::new();
        user.hash(&mut h);
        let shard = &self.shards[(h.finish() as usize) % SHARDS];
        // A panic while holding the lock cannot leave the map half-updated (every update is
        // one insert or remove), so a poisoned shard is still consistent.
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new authenticated connection, removing (and returning) the connections
    /// it displaces under the kick policy.
    pub fn register(&self, user: &str, conn: ConnId, platform: Platform) -> Registered {
        let new = Session { conn, platform };
        let mut map = self.shard(user);
        if let Some((key, sessions)) = map.get_key_value(user) {
            let key = key.clone();
            let mut kept: Vec<Session> = Vec::with_capacity(sessions.as_slice().len() + 1);
            let mut displaced = Vec::new();
            for s in sessions.as_slice() {
                let displace = match self.policy {
                    KickPolicy::PerPlatform => s.platform == platform,
                    KickPolicy::PerUser => true,
                    KickPolicy::None => false,
                };
                if displace { displaced.push(s.conn) } else { kept.push(*s) }
            }
            // The oldest go first when the user is over the cap.
            while kept.len() >= self.max_per_user {
                displaced.push(kept.remove(0).conn);
            }
            kept.push(new);
            let sessions =
                if kept.len() == 1 { Sessions::One(new) } else { Sessions::Many(Box::new(kept)) };
            map.insert(key.clone(), sessions);
            return Registered { user: key, displaced };
        }
        let key: Arc<str> = Arc::from(user);
        map.insert(key.clone(), Sessions::One(new));
        Registered { user: key, displaced: Vec::new() }
    }

    /// Removes one connection of a user (a no-op if it was already displaced).
    pub fn unregister(&self, user: &str, conn: ConnId) {
        let mut map = self.shard(user);
        let Some(sessions) = map.get_mut(user) else { return };
        let now_empty = match sessions {
            Sessions::One(s) => s.conn == conn,
            Sessions::Many(v) => {
                v.retain(|s| s.conn != conn);
                if let [only] = v.as_slice() {
                    let only = *only;
                    *sessions = Sessions::One(only);
                    false
                } else {
                    v.is_empty()
                }
            }
        };
        if now_empty {
            map.remove(user);
        }
    }

    /// The user's connections on this node (empty if none).
    pub fn lookup(&self, user: &str) -> Vec<Session> {
        self.shard(user).get(user).map(|s| s.as_slice().to_vec()).unwrap_or_default()
    }

    /// Users with at least one connection on this node.
    pub fn users(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> ConnId {
        ConnId::new(1, 0, n, 1)
    }

    #[test]
    fn per_platform_displaces_same_platform_only() {
        let r = Registry::new(KickPolicy::PerPlatform, 16);
        assert!(r.register("u", id(1), Platform::Ios).displaced.is_empty());
        assert!(r.register("u", id(2), Platform::Windows).displaced.is_empty());
        let reg = r.register("u", id(3), Platform::Ios);
        assert_eq!(reg.displaced, vec![id(1)]);
        let conns: Vec<ConnId> = r.lookup("u").iter().map(|s| s.conn).collect();
        assert_eq!(conns, vec![id(2), id(3)]);
    }

    #[test]
    fn per_user_displaces_everything_and_none_caps() {
        let r = Registry::new(KickPolicy::PerUser, 16);
        r.register("u", id(1), Platform::Ios);
        assert_eq!(r.register("u", id(2), Platform::Web).displaced, vec![id(1)]);
        let r = Registry::new(KickPolicy::None, 2);
        r.register("u", id(1), Platform::Ios);
        r.register("u", id(2), Platform::Ios);
        assert_eq!(r.register("u", id(3), Platform::Ios).displaced, vec![id(1)]);
    }

    #[test]
    fn unregister_removes_only_that_connection_and_interns_user() {
        let r = Registry::new(KickPolicy::None, 16);
        let a = r.register("u", id(1), Platform::Ios).user;
        let b = r.register("u", id(2), Platform::Ios).user;
        assert!(Arc::ptr_eq(&a, &b));
        r.unregister("u", id(1));
        assert_eq!(r.lookup("u").len(), 1);
        r.unregister("u", id(1));
        assert_eq!(r.lookup("u").len(), 1);
        r.unregister("u", id(2));
        assert!(r.lookup("u").is_empty());
        assert_eq!(r.users(), 0);
    }
}

#[cfg(test)]
mod layout {
    use super::*;

    /// A user's entry in the map is its interned id and its sessions: 32 bytes, so the
    /// registry costs about 37–73 B per user with the table's slack (hashbrown keeps it at
    /// most 7/8 full, and doubles).
    #[test]
    fn registry_entry_size_is_pinned() {
        assert_eq!(std::mem::size_of::<Sessions>(), 16);
        assert_eq!(std::mem::size_of::<(Arc<str>, Sessions)>(), 32);
    }
}
