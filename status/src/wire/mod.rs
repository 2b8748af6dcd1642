//! The status binary protocol, sans-IO: frames between gateways (clients) and status
//! nodes, and between nodes. `docs/STATUS.md` § Binary protocol is the byte-by-byte spec.
//!
//! Every frame is the codec's 10-byte header (`length u32 | kind u8 | flags u8 | id u32`,
//! big-endian, [`holdfast_codec::Head`]) and a body. A request's `id` is chosen by the
//! client; the answer carries the same `id` and kind `request kind | 0x80`, or
//! [`ERROR`](Kind::Error). Answers come in request order on a connection, so a client may
//! pipeline any number of requests. All integers are big-endian; strings are UTF-8 with a
//! length prefix (`u16` for user ids, `u8` for device ids and addresses).
//!
//! Decoding never trusts a length: a count is checked against the bytes left before
//! anything is allocated, a truncated or trailing body is [`WireError`], and the caller
//! answers it with a fatal `ERROR` and closes.
//!
//! # Layout
//!
//! - this file: the kinds, codes, requests and answers, the `HELLO` MAC;
//! - `read.rs`: decoding, through a reader that checks every length first;
//! - `write.rs`: encoding.

use crate::error::FenceReason;
use crate::placement::{Member, NodeId};
use crate::table::LeaseTransfer;
use crate::types::{
    Counts, GatewayId, Generation, MAX_DEVICE_LEN, MAX_USER_LEN, Session, UserId, Write,
};

mod read;
#[cfg(test)]
mod tests;
mod write;

/// The protocol version carried in `CHALLENGE`.
pub const VERSION: u16 = 1;

/// The default largest frame (header + body) a node or client accepts: 16 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 16 * 1024 * 1024;

/// `ERROR` flag bit 0: the sender closes the connection after this frame.
pub const FLAG_FATAL: u8 = 1;

/// `RESYNC` flag bit 0: the first chunk of a resync (replace, not add).
pub const FLAG_FIRST: u8 = 1;

/// Frame kinds. Answers are `request | 0x80`.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Client proves it knows the cluster secret.
    Hello = 0x01,
    /// A gateway's batch of online/offline writes.
    Apply = 0x02,
    /// Sessions of many users.
    Lookup = 0x03,
    /// Renew a gateway lease.
    Renew = 0x04,
    /// Sessions of one gateway held by this node.
    List = 0x05,
    /// Replace a gateway's sessions on this node.
    Resync = 0x06,
    /// Counts held by this node.
    Counts = 0x07,
    /// The node's ring state.
    Ring = 0x08,
    /// Install a ring state (node to node).
    Install = 0x09,
    /// Merge copied leases and sessions (node to node, during a ring change).
    Merge = 0x0A,
    /// Copy the keys moving in the current ring change to their new owners.
    Migrate = 0x0B,
    /// The node's greeting: protocol version and a nonce.
    Challenge = 0xC0,
    /// An error answer.
    Error = 0xFF,
}

impl Kind {
    /// The request kind of a byte, if it is one.
    pub fn request(byte: u8) -> Option<Kind> {
        Some(match byte {
            0x01 => Kind::Hello,
            0x02 => Kind::Apply,
            0x03 => Kind::Lookup,
            0x04 => Kind::Renew,
            0x05 => Kind::List,
            0x06 => Kind::Resync,
            0x07 => Kind::Counts,
            0x08 => Kind::Ring,
            0x09 => Kind::Install,
            0x0A => Kind::Merge,
            0x0B => Kind::Migrate,
            _ => return None,
        })
    }

    /// A short name for metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Hello => "hello",
            Kind::Apply => "apply",
            Kind::Lookup => "lookup",
            Kind::Renew => "renew",
            Kind::List => "list",
            Kind::Resync => "resync",
            Kind::Counts => "counts",
            Kind::Ring => "ring",
            Kind::Install => "install",
            Kind::Merge => "merge",
            Kind::Migrate => "migrate",
            Kind::Challenge => "challenge",
            Kind::Error => "error",
        }
    }
}

/// Error codes of an `ERROR` frame; the one table of them.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// The request's epoch is older than the node's: refresh the ring (`epoch` = node's).
    Moved = 1,
    /// The request's epoch is newer than the node's: the change is still being installed;
    /// retry shortly.
    EpochAhead = 2,
    /// A newer generation holds the lease (`detail` = that generation).
    FencedStale = 3,
    /// This generation's lease lapsed.
    FencedExpired = 4,
    /// The node holds no lease of this generation: renew here, then retry (and resync).
    NeedLease = 5,
    /// The node restarted empty and is being refilled: read from a replica.
    Warming = 6,
    /// The node is not serving data (not in the ring, retired, or waiting to be added).
    NotServing = 7,
    /// The request was malformed (fatal).
    BadRequest = 8,
    /// The peer did not prove the cluster secret (fatal).
    Unauthenticated = 9,
    /// The frame exceeded the size limit (fatal).
    TooLarge = 10,
    /// The node failed to do what was asked (e.g. a migration target was unreachable).
    Internal = 11,
    /// The node is busy with a ring change.
    Busy = 12,
}

impl Code {
    /// Decode a code byte; unknown codes are `Internal`.
    pub fn from_u8(b: u8) -> Code {
        match b {
            1 => Code::Moved,
            2 => Code::EpochAhead,
            3 => Code::FencedStale,
            4 => Code::FencedExpired,
            5 => Code::NeedLease,
            6 => Code::Warming,
            7 => Code::NotServing,
            8 => Code::BadRequest,
            9 => Code::Unauthenticated,
            10 => Code::TooLarge,
            12 => Code::Busy,
            _ => Code::Internal,
        }
    }

    /// The code for a fence reason.
    pub fn fenced(reason: FenceReason) -> (Code, u64) {
        match reason {
            FenceReason::Stale { current } => (Code::FencedStale, current),
            FenceReason::Expired => (Code::FencedExpired, 0),
        }
    }
}

/// What can be wrong with inbound bytes.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The body ended before a field did.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A field has a value the protocol does not allow.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The frame kind is not one this side accepts.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
}

/// A ring state: epoch, placement parameters, the current members and, during a change,
/// the next members. See `docs/STATUS.md` § Epochs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingState {
    /// The epoch; every data request carries the epoch its client placed it with.
    pub epoch: u64,
    /// Virtual nodes per unit of weight.
    pub vnodes: u16,
    /// Replication factor.
    pub replicas: u8,
    /// The members before the change (or the only members when stable).
    pub current: Vec<Member>,
    /// The members after the change, while one is in progress.
    pub next: Option<Vec<Member>>,
    /// During a change: lookups already read from `next` (the copy is complete).
    pub read_next: bool,
}

impl RingState {
    /// The members lookups read from.
    pub fn read_members(&self) -> &[Member] {
        match (&self.next, self.read_next) {
            (Some(next), true) => next,
            _ => &self.current,
        }
    }

    /// Every member of either side.
    pub fn all_members(&self) -> Vec<Member> {
        let mut all = self.current.clone();
        if let Some(next) = &self.next {
            for m in next {
                if !all.iter().any(|a| a.id == m.id) {
                    all.push(m.clone());
                }
            }
        }
        all.sort_by_key(|m| m.id);
        all
    }

    /// A short phase name: `stable`, `copying` (writes to both, reads old), `switching`
    /// (writes to both, reads new).
    pub fn phase(&self) -> &'static str {
        match (&self.next, self.read_next) {
            (None, _) => "stable",
            (Some(_), false) => "copying",
            (Some(_), true) => "switching",
        }
    }
}

/// A request frame's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `HELLO`: the MAC of the challenge under the cluster secret.
    Hello {
        /// HMAC-SHA256(secret, "holdfast-status/1" ‖ nonce).
        mac: [u8; 32],
    },
    /// `APPLY`: a gateway's writes.
    Apply {
        /// The client's ring epoch.
        epoch: u64,
        /// The gateway.
        gateway: GatewayId,
        /// Its generation.
        generation: Generation,
        /// The writes, applied in order.
        writes: Vec<Write>,
    },
    /// `LOOKUP`: sessions of many users.
    Lookup {
        /// The client's ring epoch.
        epoch: u64,
        /// The users.
        users: Vec<UserId>,
    },
    /// `RENEW`: a lease renewal.
    Renew {
        /// The gateway.
        gateway: GatewayId,
        /// Its generation.
        generation: Generation,
        /// The lease's time to live, in milliseconds.
        ttl_ms: u32,
    },
    /// `LIST`: a gateway's sessions held here.
    List {
        /// The gateway.
        gateway: GatewayId,
    },
    /// `RESYNC`: replace (first chunk) or extend a gateway's sessions here.
    Resync {
        /// The client's ring epoch.
        epoch: u64,
        /// The gateway.
        gateway: GatewayId,
        /// Its generation.
        generation: Generation,
        /// Whether this is the first chunk.
        first: bool,
        /// The sessions this node owns.
        sessions: Vec<(UserId, Session)>,
    },
    /// `COUNTS`.
    Counts,
    /// `RING`: ask for the ring state.
    Ring,
    /// `INSTALL`: install a ring state.
    Install(RingState),
    /// `MERGE`: copied leases and sessions.
    Merge {
        /// Leases of the source.
        leases: Vec<LeaseTransfer>,
        /// Sessions for which the receiver is a new owner.
        sessions: Vec<(UserId, Session)>,
    },
    /// `MIGRATE`: copy moving keys of ring change `epoch`.
    Migrate {
        /// The epoch of the change (must be the node's).
        epoch: u64,
    },
}

/// An answer frame's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// `CHALLENGE`, sent by the node on accept.
    Challenge {
        /// Protocol version.
        version: u16,
        /// A fresh random nonce.
        nonce: [u8; 32],
    },
    /// `HELLO` accepted.
    HelloOk {
        /// The node's id.
        node: NodeId,
        /// Random per process start: a change means the node restarted (and lost its data).
        incarnation: u64,
        /// The node's epoch.
        epoch: u64,
    },
    /// `APPLY` done: writes applied.
    Applied(u16),
    /// `LOOKUP` answer, one list per user asked.
    Found(Vec<Vec<Session>>),
    /// `RENEW` done.
    Renewed {
        /// The node's incarnation.
        incarnation: u64,
        /// The node's epoch.
        epoch: u64,
        /// The lease did not exist here before.
        created: bool,
    },
    /// `LIST` answer.
    Listed(Vec<(UserId, Session)>),
    /// `RESYNC` done.
    Resynced,
    /// `COUNTS` answer.
    Counts {
        /// Live counts.
        counts: Counts,
        /// Records held (live or awaiting the sweep).
        stored: u64,
    },
    /// `RING` answer.
    Ring(RingState),
    /// `INSTALL` done: the node's epoch now.
    Installed(u64),
    /// `MERGE` done: sessions received.
    Merged(u32),
    /// `MIGRATE` done: sessions sent.
    Migrated(u64),
    /// An error.
    Error {
        /// What.
        code: Code,
        /// The node's epoch.
        epoch: u64,
        /// A code-specific number (the current generation for `FencedStale`).
        detail: u64,
        /// For humans.
        message: String,
        /// The node closes the connection after this frame.
        fatal: bool,
    },
}

impl Request {
    /// The frame kind of this request.
    pub fn kind(&self) -> Kind {
        match self {
            Request::Hello { .. } => Kind::Hello,
            Request::Apply { .. } => Kind::Apply,
            Request::Lookup { .. } => Kind::Lookup,
            Request::Renew { .. } => Kind::Renew,
            Request::List { .. } => Kind::List,
            Request::Resync { .. } => Kind::Resync,
            Request::Counts => Kind::Counts,
            Request::Ring => Kind::Ring,
            Request::Install(_) => Kind::Install,
            Request::Merge { .. } => Kind::Merge,
            Request::Migrate { .. } => Kind::Migrate,
        }
    }
}

/// The MAC a client sends in `HELLO` for `nonce` under `secret`.
pub fn hello_mac(secret: &[u8], nonce: &[u8; 32]) -> [u8; 32] {
    use hmac::Mac;
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(b"holdfast-status/1");
    mac.update(nonce);
    mac.finalize().into_bytes().into()
}

/// Whether `mac` is the right `HELLO` MAC for `nonce` under `secret` (constant time).
pub fn verify_hello(secret: &[u8], nonce: &[u8; 32], mac: &[u8; 32]) -> bool {
    use hmac::Mac;
    let Ok(mut m) = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(secret) else {
        return false;
    };
    m.update(b"holdfast-status/1");
    m.update(nonce);
    m.verify_slice(mac).is_ok()
}
