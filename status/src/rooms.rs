//! Rooms in the presence store: which gateways hold members of a room, and how many.
//!
//! A room is kept **as a reserved key of the same store**, so it is placed, replicated,
//! resharded, fenced by leases, cleaned on lease expiry and resynced exactly like a user's
//! sessions, by every backend, with no new store operation:
//!
//! - the key is [`room_key`]: `"\u{1}room\u{1}"` followed by the room name. A user id never
//!   starts with a control character (the gateway refuses such a `sub`), so no user can
//!   collide with a room;
//! - each gateway holding members has **one entry** under it (a [`Session`] record): its
//!   `gateway` is the gateway, its `conn` is the gateway's *share id* for the room
//!   ([`share_conn`]: the gateway id in the top 16 bits and an incarnation below, new each
//!   time the room becomes non-empty on that gateway, so a removal's tombstone during a ring
//!   change never blocks a later share), and its `login_ms` field carries the member
//!   count (connections of that gateway in the room). `device` is empty, `platform` 0;
//! - the gateway writes [`share_write`]s through its presence batcher: the current count,
//!   or an `Offline` of the share when the room became empty there. A lease expiry hides
//!   the gateway's shares with its sessions; a resync replaces them with its sessions.
//!
//! [`PresenceStore::rooms_lookup`](crate::PresenceStore::rooms_lookup) turns a lookup of
//! the keys back into [`RoomShare`]s.

use std::sync::Arc;

use crate::types::{GatewayId, Session, UserId, Write};

/// A room name: 1 to [`MAX_ROOM_LEN`] bytes of UTF-8.
pub type RoomId = Arc<str>;

/// The longest room name a store accepts, in bytes.
pub const MAX_ROOM_LEN: usize = 255;

/// What every room key starts with.
pub const ROOM_KEY_PREFIX: &str = "\u{1}room\u{1}";

/// One gateway's part of a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RoomShare {
    /// The gateway holding members.
    pub gateway: GatewayId,
    /// How many of its connections are members.
    pub conns: u32,
}

/// The store key of `room`'s shares.
pub fn room_key(room: &str) -> UserId {
    let mut key = String::with_capacity(ROOM_KEY_PREFIX.len() + room.len());
    key.push_str(ROOM_KEY_PREFIX);
    key.push_str(room);
    UserId::from(key)
}

/// Whether a store key is a room's (and not a user's).
pub fn is_room_key(key: &str) -> bool {
    key.starts_with(ROOM_KEY_PREFIX)
}

/// The share id of `gateway`'s `incarnation` of a room (only the low 48 bits are kept).
pub fn share_conn(gateway: GatewayId, incarnation: u64) -> u64 {
    (u64::from(gateway) << 48) | (incarnation & 0xFFFF_FFFF_FFFF)
}

/// The write that records `conns` members of `room` on the writing gateway under share id
/// `share` (from [`share_conn`]); `conns` 0 removes the share.
pub fn share_write(room: &str, share: u64, conns: u32) -> Write {
    let user = room_key(room);
    if conns == 0 {
        Write::Offline { user, conn: share }
    } else {
        Write::Online {
            user,
            conn: share,
            device: Box::from(""),
            platform: 0,
            login_ms: u64::from(conns),
        }
    }
}

/// The shares of a room from the sessions a lookup of its key returned: one per gateway
/// (counts of two incarnations of one gateway, seen only while a write is in flight, are
/// added), empty ones left out, by gateway id.
pub fn shares(sessions: &[Session]) -> Vec<RoomShare> {
    let mut out: Vec<RoomShare> = Vec::new();
    for s in sessions {
        let conns = u32::try_from(s.login_ms).unwrap_or(u32::MAX);
        if conns == 0 {
            continue;
        }
        match out.iter_mut().find(|r| r.gateway == s.gateway) {
            Some(r) => r.conns = r.conns.saturating_add(conns),
            None => out.push(RoomShare { gateway: s.gateway, conns }),
        }
    }
    out.sort_by_key(|r| r.gateway);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(gateway: GatewayId, conn: u64, count: u64) -> Session {
        Session {
            conn,
            gateway,
            device: Box::from(""),
            platform: 0,
            login_ms: count,
            generation: 1,
        }
    }

    #[test]
    fn keys_never_look_like_users() {
        let key = room_key("live/42");
        assert!(is_room_key(&key));
        assert!(!is_room_key("live/42"));
        assert_eq!(&key[ROOM_KEY_PREFIX.len()..], "live/42");
    }

    #[test]
    fn writes_and_shares_round_trip() {
        let share = share_conn(7, 3);
        assert_eq!(share >> 48, 7);
        match share_write("r", share, 12) {
            Write::Online { conn, login_ms, .. } => assert_eq!((conn, login_ms), (share, 12)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(share_write("r", share, 0), Write::Offline { .. }));
        let got = shares(&[session(2, 1, 5), session(1, 2, 3), session(2, 9, 1), session(3, 4, 0)]);
        assert_eq!(
            got,
            vec![RoomShare { gateway: 1, conns: 3 }, RoomShare { gateway: 2, conns: 6 }]
        );
    }
}
