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

use bytes::{BufMut, BytesMut};
use holdfast_codec::{HEADER_LEN, Head};

use crate::error::FenceReason;
use crate::placement::{Member, NodeId};
use crate::table::LeaseTransfer;
use crate::types::{
    Counts, GatewayId, Generation, MAX_DEVICE_LEN, MAX_USER_LEN, Session, UserId, Write,
};

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

// ---------------------------------------------------------------- reading

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::Truncated(what));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn str_u8(&mut self, what: &'static str) -> Result<&'a str, WireError> {
        let n = usize::from(self.u8(what)?);
        std::str::from_utf8(self.take(n, what)?).map_err(|_| WireError::Malformed(what))
    }

    fn user(&mut self) -> Result<UserId, WireError> {
        let n = usize::from(self.u16("user id length")?);
        if n == 0 || n > MAX_USER_LEN {
            return Err(WireError::Malformed("user id length"));
        }
        let s = std::str::from_utf8(self.take(n, "user id")?)
            .map_err(|_| WireError::Malformed("user id"))?;
        Ok(UserId::from(s))
    }

    /// A count of elements each at least `min` bytes long; checked against what is left.
    fn count(&mut self, wide: bool, min: usize, what: &'static str) -> Result<usize, WireError> {
        let n = if wide { self.u32(what)? as usize } else { usize::from(self.u16(what)?) };
        if n.saturating_mul(min) > self.buf.len() {
            return Err(WireError::Truncated(what));
        }
        Ok(n)
    }

    fn session(&mut self) -> Result<Session, WireError> {
        let conn = self.u64("conn")?;
        let gateway = self.u16("gateway")?;
        let generation = self.u64("generation")?;
        let platform = self.u8("platform")?;
        let login_ms = self.u64("login time")?;
        let device = Box::from(self.str_u8("device id")?);
        Ok(Session { conn, gateway, device, platform, login_ms, generation })
    }

    fn entries(&mut self) -> Result<Vec<(UserId, Session)>, WireError> {
        let n = self.count(true, 3 + SESSION_MIN, "entry count")?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let user = self.user()?;
            out.push((user, self.session()?));
        }
        Ok(out)
    }

    fn members(&mut self) -> Result<Vec<Member>, WireError> {
        let n = self.count(false, 5, "member count")?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = NodeId(self.u16("member id")?);
            let weight = self.u16("member weight")?;
            let addr = self.str_u8("member address")?.to_owned();
            if weight == 0 {
                return Err(WireError::Malformed("member weight"));
            }
            out.push(Member { id, addr, weight });
        }
        Ok(out)
    }

    fn ring(&mut self) -> Result<RingState, WireError> {
        let epoch = self.u64("epoch")?;
        let vnodes = self.u16("vnodes")?;
        let replicas = self.u8("replicas")?;
        let read_next = match self.u8("read_next")? {
            0 => false,
            1 => true,
            _ => return Err(WireError::Malformed("read_next")),
        };
        let current = self.members()?;
        let next = match self.u8("has next")? {
            0 => None,
            1 => Some(self.members()?),
            _ => return Err(WireError::Malformed("has next")),
        };
        if vnodes == 0 || replicas == 0 {
            return Err(WireError::Malformed("ring parameters"));
        }
        Ok(RingState { epoch, vnodes, replicas, current, next, read_next })
    }

    fn end(&self) -> Result<(), WireError> {
        if self.buf.is_empty() { Ok(()) } else { Err(WireError::Malformed("trailing bytes")) }
    }
}

/// Smallest encoded session: conn, gateway, generation, platform, login time, device length.
const SESSION_MIN: usize = 8 + 2 + 8 + 1 + 8 + 1;

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

    /// Decode a request body of the frame with header `head`.
    pub fn decode(head: &Head, body: &[u8]) -> Result<Request, WireError> {
        let kind = Kind::request(head.kind).ok_or(WireError::UnknownKind(head.kind))?;
        let mut r = Reader { buf: body };
        let req = match kind {
            Kind::Hello => {
                let mut mac = [0u8; 32];
                mac.copy_from_slice(r.take(32, "mac")?);
                Request::Hello { mac }
            }
            Kind::Apply => {
                let epoch = r.u64("epoch")?;
                let gateway = r.u16("gateway")?;
                let generation = r.u64("generation")?;
                let n = r.count(false, 1 + 3 + 8, "write count")?;
                let mut writes = Vec::with_capacity(n);
                for _ in 0..n {
                    let tag = r.u8("write tag")?;
                    let user = r.user()?;
                    let conn = r.u64("conn")?;
                    writes.push(match tag {
                        1 => {
                            let platform = r.u8("platform")?;
                            let login_ms = r.u64("login time")?;
                            let device = Box::from(r.str_u8("device id")?);
                            Write::Online { user, conn, device, platform, login_ms }
                        }
                        2 => Write::Offline { user, conn },
                        _ => return Err(WireError::Malformed("write tag")),
                    });
                }
                Request::Apply { epoch, gateway, generation, writes }
            }
            Kind::Lookup => {
                let epoch = r.u64("epoch")?;
                let n = r.count(false, 3, "user count")?;
                let mut users = Vec::with_capacity(n);
                for _ in 0..n {
                    users.push(r.user()?);
                }
                Request::Lookup { epoch, users }
            }
            Kind::Renew => Request::Renew {
                gateway: r.u16("gateway")?,
                generation: r.u64("generation")?,
                ttl_ms: r.u32("ttl")?,
            },
            Kind::List => Request::List { gateway: r.u16("gateway")? },
            Kind::Resync => Request::Resync {
                epoch: r.u64("epoch")?,
                gateway: r.u16("gateway")?,
                generation: r.u64("generation")?,
                first: head.flags & FLAG_FIRST != 0,
                sessions: r.entries()?,
            },
            Kind::Counts => Request::Counts,
            Kind::Ring => Request::Ring,
            Kind::Install => Request::Install(r.ring()?),
            Kind::Merge => {
                let n = r.count(false, 14, "lease count")?;
                let mut leases = Vec::with_capacity(n);
                for _ in 0..n {
                    leases.push(LeaseTransfer {
                        gateway: r.u16("gateway")?,
                        generation: r.u64("generation")?,
                        remaining: std::time::Duration::from_millis(u64::from(r.u32("remaining")?)),
                    });
                }
                Request::Merge { leases, sessions: r.entries()? }
            }
            Kind::Migrate => Request::Migrate { epoch: r.u64("epoch")? },
            Kind::Challenge | Kind::Error => return Err(WireError::UnknownKind(head.kind)),
        };
        r.end()?;
        Ok(req)
    }

    /// Append this request as a frame with request id `id`.
    pub fn encode(&self, id: u32, dst: &mut BytesMut) {
        let flags = match self {
            Request::Resync { first: true, .. } => FLAG_FIRST,
            _ => 0,
        };
        frame(dst, self.kind() as u8, flags, id, |b| match self {
            Request::Hello { mac } => b.put_slice(mac),
            Request::Apply { epoch, gateway, generation, writes } => {
                b.put_u64(*epoch);
                b.put_u16(*gateway);
                b.put_u64(*generation);
                b.put_u16(writes.len() as u16);
                for w in writes {
                    match w {
                        Write::Online { user, conn, device, platform, login_ms } => {
                            b.put_u8(1);
                            put_user(b, user);
                            b.put_u64(*conn);
                            b.put_u8(*platform);
                            b.put_u64(*login_ms);
                            put_str_u8(b, device);
                        }
                        Write::Offline { user, conn } => {
                            b.put_u8(2);
                            put_user(b, user);
                            b.put_u64(*conn);
                        }
                    }
                }
            }
            Request::Lookup { epoch, users } => {
                b.put_u64(*epoch);
                b.put_u16(users.len() as u16);
                for u in users {
                    put_user(b, u);
                }
            }
            Request::Renew { gateway, generation, ttl_ms } => {
                b.put_u16(*gateway);
                b.put_u64(*generation);
                b.put_u32(*ttl_ms);
            }
            Request::List { gateway } => b.put_u16(*gateway),
            Request::Resync { epoch, gateway, generation, sessions, .. } => {
                b.put_u64(*epoch);
                b.put_u16(*gateway);
                b.put_u64(*generation);
                put_entries(b, sessions);
            }
            Request::Counts | Request::Ring => {}
            Request::Install(ring) => put_ring(b, ring),
            Request::Merge { leases, sessions } => {
                b.put_u16(leases.len() as u16);
                for l in leases {
                    b.put_u16(l.gateway);
                    b.put_u64(l.generation);
                    b.put_u32(u32::try_from(l.remaining.as_millis()).unwrap_or(u32::MAX));
                }
                put_entries(b, sessions);
            }
            Request::Migrate { epoch } => b.put_u64(*epoch),
        });
    }
}

impl Response {
    /// Decode an answer of kind `head.kind` to a request of kind `asked` (`None` for the
    /// unsolicited `CHALLENGE`).
    pub fn decode(head: &Head, body: &[u8], asked: Option<Kind>) -> Result<Response, WireError> {
        let mut r = Reader { buf: body };
        let resp = if head.kind == Kind::Error as u8 {
            Response::Error {
                code: Code::from_u8(r.u8("code")?),
                epoch: r.u64("epoch")?,
                detail: r.u64("detail")?,
                message: {
                    let n = usize::from(r.u16("message length")?);
                    String::from_utf8_lossy(r.take(n, "message")?).into_owned()
                },
                fatal: head.flags & FLAG_FATAL != 0,
            }
        } else if head.kind == Kind::Challenge as u8 && asked.is_none() {
            let version = r.u16("version")?;
            let mut nonce = [0u8; 32];
            nonce.copy_from_slice(r.take(32, "nonce")?);
            Response::Challenge { version, nonce }
        } else {
            let asked = asked.ok_or(WireError::UnknownKind(head.kind))?;
            if head.kind != asked as u8 | 0x80 {
                return Err(WireError::UnknownKind(head.kind));
            }
            match asked {
                Kind::Hello => Response::HelloOk {
                    node: NodeId(r.u16("node")?),
                    incarnation: r.u64("incarnation")?,
                    epoch: r.u64("epoch")?,
                },
                Kind::Apply => Response::Applied(r.u16("count")?),
                Kind::Lookup => {
                    let n = r.count(false, 2, "user count")?;
                    let mut all = Vec::with_capacity(n);
                    for _ in 0..n {
                        let k = r.count(false, SESSION_MIN, "session count")?;
                        let mut list = Vec::with_capacity(k);
                        for _ in 0..k {
                            list.push(r.session()?);
                        }
                        all.push(list);
                    }
                    Response::Found(all)
                }
                Kind::Renew => Response::Renewed {
                    incarnation: r.u64("incarnation")?,
                    epoch: r.u64("epoch")?,
                    created: r.u8("created")? != 0,
                },
                Kind::List => Response::Listed(r.entries()?),
                Kind::Resync => Response::Resynced,
                Kind::Counts => {
                    let sessions = r.u64("sessions")?;
                    let users = r.u64("users")?;
                    let gateways = r.u32("gateways")?;
                    let stored = r.u64("stored")?;
                    Response::Counts {
                        counts: Counts { sessions, users: Some(users), gateways },
                        stored,
                    }
                }
                Kind::Ring => Response::Ring(r.ring()?),
                Kind::Install => Response::Installed(r.u64("epoch")?),
                Kind::Merge => Response::Merged(r.u32("count")?),
                Kind::Migrate => Response::Migrated(r.u64("count")?),
                Kind::Challenge | Kind::Error => return Err(WireError::UnknownKind(head.kind)),
            }
        };
        r.end()?;
        Ok(resp)
    }

    /// Append this answer as a frame with id `id`; `asked` is the request's kind (ignored
    /// for `CHALLENGE` and `ERROR`).
    pub fn encode(&self, id: u32, asked: Kind, dst: &mut BytesMut) {
        let (kind, flags) = match self {
            Response::Challenge { .. } => (Kind::Challenge as u8, 0),
            Response::Error { fatal, .. } => {
                (Kind::Error as u8, if *fatal { FLAG_FATAL } else { 0 })
            }
            _ => (asked as u8 | 0x80, 0),
        };
        frame(dst, kind, flags, id, |b| match self {
            Response::Challenge { version, nonce } => {
                b.put_u16(*version);
                b.put_slice(nonce);
            }
            Response::HelloOk { node, incarnation, epoch } => {
                b.put_u16(node.0);
                b.put_u64(*incarnation);
                b.put_u64(*epoch);
            }
            Response::Applied(n) => b.put_u16(*n),
            Response::Found(all) => {
                b.put_u16(all.len() as u16);
                for list in all {
                    b.put_u16(list.len() as u16);
                    for s in list {
                        put_session(b, s);
                    }
                }
            }
            Response::Renewed { incarnation, epoch, created } => {
                b.put_u64(*incarnation);
                b.put_u64(*epoch);
                b.put_u8(u8::from(*created));
            }
            Response::Listed(entries) => put_entries(b, entries),
            Response::Resynced => {}
            Response::Counts { counts, stored } => {
                b.put_u64(counts.sessions);
                b.put_u64(counts.users.unwrap_or(0));
                b.put_u32(counts.gateways);
                b.put_u64(*stored);
            }
            Response::Ring(ring) => put_ring(b, ring),
            Response::Installed(e) => b.put_u64(*e),
            Response::Merged(n) => b.put_u32(*n),
            Response::Migrated(n) => b.put_u64(*n),
            Response::Error { code, epoch, detail, message, .. } => {
                b.put_u8(*code as u8);
                b.put_u64(*epoch);
                b.put_u64(*detail);
                let m = &message.as_bytes()[..message.len().min(1024)];
                b.put_u16(m.len() as u16);
                b.put_slice(m);
            }
        });
    }
}

// ---------------------------------------------------------------- writing

fn frame(dst: &mut BytesMut, kind: u8, flags: u8, id: u32, body: impl FnOnce(&mut BytesMut)) {
    let start = dst.len();
    dst.put_bytes(0, HEADER_LEN);
    body(dst);
    let length = (dst.len() - start - HEADER_LEN) as u32;
    let mut head = Vec::with_capacity(HEADER_LEN);
    Head { length, kind, flags, id }.encode(&mut head);
    dst[start..start + HEADER_LEN].copy_from_slice(&head);
}

fn put_user(b: &mut BytesMut, u: &str) {
    let bytes = &u.as_bytes()[..u.len().min(MAX_USER_LEN)];
    b.put_u16(bytes.len() as u16);
    b.put_slice(bytes);
}

fn put_str_u8(b: &mut BytesMut, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(MAX_DEVICE_LEN)];
    b.put_u8(bytes.len() as u8);
    b.put_slice(bytes);
}

fn put_session(b: &mut BytesMut, s: &Session) {
    b.put_u64(s.conn);
    b.put_u16(s.gateway);
    b.put_u64(s.generation);
    b.put_u8(s.platform);
    b.put_u64(s.login_ms);
    put_str_u8(b, &s.device);
}

fn put_entries(b: &mut BytesMut, entries: &[(UserId, Session)]) {
    b.put_u32(entries.len() as u32);
    for (u, s) in entries {
        put_user(b, u);
        put_session(b, s);
    }
}

fn put_members(b: &mut BytesMut, members: &[Member]) {
    b.put_u16(members.len() as u16);
    for m in members {
        b.put_u16(m.id.0);
        b.put_u16(m.weight.max(1));
        put_str_u8(b, &m.addr);
    }
}

fn put_ring(b: &mut BytesMut, ring: &RingState) {
    b.put_u64(ring.epoch);
    b.put_u16(ring.vnodes);
    b.put_u8(ring.replicas);
    b.put_u8(u8::from(ring.read_next));
    put_members(b, &ring.current);
    match &ring.next {
        None => b.put_u8(0),
        Some(next) => {
            b.put_u8(1);
            put_members(b, next);
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

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_codec::check_head;

    fn roundtrip(req: Request) {
        let mut buf = BytesMut::new();
        req.encode(7, &mut buf);
        let head = check_head(&buf, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!(head.id, 7);
        assert_eq!(head.frame_len() as usize, buf.len());
        let got = Request::decode(&head, &buf[HEADER_LEN..]).unwrap();
        assert_eq!(got, req);
        // every strict prefix of the body is an error, never a panic
        for cut in 0..buf.len() - HEADER_LEN {
            let _ = Request::decode(&head, &buf[HEADER_LEN..HEADER_LEN + cut]);
        }
    }

    fn session() -> Session {
        Session {
            conn: 1 << 50,
            gateway: 3,
            device: "phone".into(),
            platform: 2,
            login_ms: 99,
            generation: 5,
        }
    }

    fn members() -> Vec<Member> {
        vec![Member { id: NodeId(1), addr: "127.0.0.1:1".into(), weight: 2 }]
    }

    #[test]
    fn requests_roundtrip() {
        roundtrip(Request::Hello { mac: [9; 32] });
        roundtrip(Request::Apply {
            epoch: 4,
            gateway: 2,
            generation: 77,
            writes: vec![
                Write::Online {
                    user: "alice".into(),
                    conn: 5,
                    device: "d".into(),
                    platform: 1,
                    login_ms: 3,
                },
                Write::Offline { user: "bob".into(), conn: 6 },
            ],
        });
        roundtrip(Request::Lookup { epoch: 1, users: vec!["a".into(), "bé".into()] });
        roundtrip(Request::Renew { gateway: 1, generation: 2, ttl_ms: 3000 });
        roundtrip(Request::List { gateway: 9 });
        roundtrip(Request::Resync {
            epoch: 3,
            gateway: 3,
            generation: 5,
            first: true,
            sessions: vec![("u".into(), session())],
        });
        roundtrip(Request::Counts);
        roundtrip(Request::Ring);
        roundtrip(Request::Install(RingState {
            epoch: 2,
            vnodes: 160,
            replicas: 2,
            current: members(),
            next: Some(vec![]),
            read_next: true,
        }));
        roundtrip(Request::Merge {
            leases: vec![LeaseTransfer {
                gateway: 1,
                generation: 2,
                remaining: std::time::Duration::from_millis(1500),
            }],
            sessions: vec![("u".into(), session())],
        });
        roundtrip(Request::Migrate { epoch: 8 });
    }

    #[test]
    fn responses_roundtrip() {
        let cases = [
            (Kind::Hello, Response::HelloOk { node: NodeId(2), incarnation: 3, epoch: 4 }),
            (Kind::Apply, Response::Applied(16)),
            (Kind::Lookup, Response::Found(vec![vec![session()], vec![]])),
            (Kind::Renew, Response::Renewed { incarnation: 1, epoch: 2, created: true }),
            (Kind::List, Response::Listed(vec![("x".into(), session())])),
            (Kind::Resync, Response::Resynced),
            (
                Kind::Counts,
                Response::Counts {
                    counts: Counts { sessions: 1, users: Some(2), gateways: 3 },
                    stored: 4,
                },
            ),
            (
                Kind::Ring,
                Response::Ring(RingState {
                    epoch: 2,
                    vnodes: 160,
                    replicas: 2,
                    current: members(),
                    next: None,
                    read_next: false,
                }),
            ),
            (Kind::Install, Response::Installed(5)),
            (Kind::Merge, Response::Merged(6)),
            (Kind::Migrate, Response::Migrated(7)),
            (
                Kind::Lookup,
                Response::Error {
                    code: Code::Moved,
                    epoch: 9,
                    detail: 0,
                    message: "moved".into(),
                    fatal: false,
                },
            ),
        ];
        for (asked, resp) in cases {
            let mut buf = BytesMut::new();
            resp.encode(3, asked, &mut buf);
            let head = Head::peek(&buf).unwrap();
            assert_eq!(Response::decode(&head, &buf[HEADER_LEN..], Some(asked)).unwrap(), resp);
        }
        let ch = Response::Challenge { version: VERSION, nonce: [1; 32] };
        let mut buf = BytesMut::new();
        ch.encode(0, Kind::Challenge, &mut buf);
        let head = Head::peek(&buf).unwrap();
        assert_eq!(Response::decode(&head, &buf[HEADER_LEN..], None).unwrap(), ch);
    }

    #[test]
    fn hostile_counts_do_not_allocate() {
        // APPLY claiming 65535 writes in a 20-byte body
        let mut body = BytesMut::new();
        body.put_u64(1);
        body.put_u16(1);
        body.put_u64(1);
        body.put_u16(u16::MAX);
        let head = Head { length: body.len() as u32, kind: Kind::Apply as u8, flags: 0, id: 1 };
        assert_eq!(Request::decode(&head, &body), Err(WireError::Truncated("write count")));
        let head = Head { length: 0, kind: 0x55, flags: 0, id: 1 };
        assert_eq!(Request::decode(&head, &[]), Err(WireError::UnknownKind(0x55)));
        let head = Head { length: 2, kind: Kind::Counts as u8, flags: 0, id: 1 };
        assert_eq!(Request::decode(&head, &[0, 0]), Err(WireError::Malformed("trailing bytes")));
    }

    #[test]
    fn hello_mac_depends_on_secret_and_nonce() {
        let m = hello_mac(b"s", &[1; 32]);
        assert!(verify_hello(b"s", &[1; 32], &m));
        assert!(!verify_hello(b"t", &[1; 32], &m));
        assert!(!verify_hello(b"s", &[2; 32], &m));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(kind in 0u8..=0x0C, flags: u8, body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let head = Head { length: body.len() as u32, kind, flags, id: 1 };
            if let Ok(req) = Request::decode(&head, &body) {
                // whatever decodes re-encodes to the same request
                let mut buf = BytesMut::new();
                req.encode(1, &mut buf);
                let h = Head::peek(&buf).unwrap();
                proptest::prop_assert_eq!(Request::decode(&h, &buf[HEADER_LEN..]).unwrap(), req);
            }
        }
    }
}
