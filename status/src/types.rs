//! The presence data model: who is online, on which gateway, with which device, under
//! which gateway lease.
//!
//! A user has zero or more [`Session`]s, one per authenticated connection. Every session
//! belongs to a gateway's lease *generation*: it is live only while that gateway holds a
//! lease of exactly that generation (see [`crate::table`] for the rules).

use std::sync::Arc;
use std::time::Duration;

/// A user id, as the gateway has it from the token's `sub` claim. Placement hashes its
/// UTF-8 bytes (see [`crate::placement::key_hash`]).
pub type UserId = Arc<str>;

/// The node id of a gateway: the top 16 bits of its connection ids.
pub type GatewayId = u16;

/// A gateway's lease generation. A gateway picks a new, larger one each time it starts (for
/// example its start time in milliseconds since the Unix epoch) and whenever its lease
/// lapsed; writes that carry an older one are refused.
pub type Generation = u64;

/// The largest user id accepted, in bytes.
pub const MAX_USER_LEN: usize = 1024;

/// The largest device id accepted, in bytes.
pub const MAX_DEVICE_LEN: usize = 255;

/// One authenticated connection of a user, as stored and returned by lookups.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Session {
    /// The connection id (`node(16) | worker(8) | slot(24) | generation(16)`).
    pub conn: u64,
    /// The gateway holding the connection.
    pub gateway: GatewayId,
    /// The client's device id (at most [`MAX_DEVICE_LEN`] bytes).
    pub device: Box<str>,
    /// The client's platform byte (`holdfast_codec::Platform` on the wire).
    pub platform: u8,
    /// When the connection authenticated, in milliseconds since the Unix epoch.
    pub login_ms: u64,
    /// The gateway lease generation the session was written under.
    pub generation: Generation,
}

/// A write in a gateway's batch; the gateway and generation come from the batch's lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// A connection authenticated.
    Online {
        /// Its user.
        user: UserId,
        /// The connection id.
        conn: u64,
        /// The device id.
        device: Box<str>,
        /// The platform byte.
        platform: u8,
        /// Login time, in milliseconds since the Unix epoch.
        login_ms: u64,
    },
    /// A connection closed.
    Offline {
        /// Its user.
        user: UserId,
        /// The connection id.
        conn: u64,
    },
}

impl Write {
    /// The user the write is about.
    pub fn user(&self) -> &UserId {
        match self {
            Write::Online { user, .. } | Write::Offline { user, .. } => user,
        }
    }

    /// The connection the write is about.
    pub fn conn(&self) -> u64 {
        match self {
            Write::Online { conn, .. } | Write::Offline { conn, .. } => *conn,
        }
    }
}

/// A gateway's claim: "I am gateway `gateway`, generation `generation`".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseId {
    /// The gateway's node id.
    pub gateway: GatewayId,
    /// Its current generation.
    pub generation: Generation,
}

/// A lease renewal: the claim and how long it holds from when a store receives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Who renews.
    pub id: LeaseId,
    /// How long the lease lasts after this renewal; a gateway renews every `ttl / 3`.
    pub ttl: Duration,
}

/// What a renewal tells the gateway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Renewed {
    /// The store may have lost some of this gateway's sessions (a status node restarted
    /// empty, a write could not reach every replica, Redis lost the lease): the gateway must
    /// call [`crate::PresenceStore::resync`] with its full session set.
    pub resync: bool,
}

/// How much a store holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Live sessions (connections) of gateways holding a lease.
    pub sessions: u64,
    /// Users with at least one stored session, where the backend can count them cheaply.
    pub users: Option<u64>,
    /// Gateways holding a live lease.
    pub gateways: u32,
}
