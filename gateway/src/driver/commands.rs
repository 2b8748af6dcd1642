//! How the rest of the process talks to the event loops.
//!
//! Each loop has two queues and one waker:
//!
//! - the **control** queue (bounded, `node.command_queue` entries) carries the push API's
//!   pushes and kicks. When it is full the API answers `503` with `Retry-After` instead of
//!   piling work onto a loop that is already behind.
//! - the **internal** queue (unbounded, but bounded in practice by `listen.max_connections`
//!   and the upstream admission limits) carries accepted sockets, upstream answers and kicks
//!   from another loop's logins: dropping any of those would lose a client or a reply.
//!
//! A loop handles at most `COMMAND_BUDGET` commands per turn, so a burst of API calls
//! cannot stall heartbeats; the rest wait for the next turn.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, SyncSender, TrySendError};

use bytes::Bytes;
use holdfast_codec::{Code, Redirect};
use mio::Waker;
use tokio::sync::oneshot;

use crate::ids::ConnId;
use crate::metrics::Refusal;
use crate::session::PushFailure;
use crate::upstream::UpstreamResult;

/// Commands a loop handles per turn before it goes back to its sockets.
pub(crate) const COMMAND_BUDGET: usize = 64;

/// One message to push, shared by every connection it goes to.
#[derive(Debug)]
pub struct PushMsg {
    /// The business message id (stable across redeliveries).
    pub message_id: u64,
    /// Content type or topic (at most 255 bytes).
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// Whether clients must acknowledge it.
    pub ack_required: bool,
}

/// Which connections of one event loop a push goes to.
#[derive(Debug)]
pub enum Targets {
    /// These connections (all owned by the receiving loop).
    Conns(Vec<ConnId>),
    /// Every authenticated connection of the loop, delivered in chunks.
    All,
    /// The loop's members of this room, delivered in chunks.
    Room(Arc<str>),
}

/// What one event loop did with a push.
#[derive(Debug, Default)]
pub struct PushReport {
    /// Connections the push was written (or queued) to, with the sequence it got.
    pub delivered: Vec<(ConnId, u32)>,
    /// Connections it could not be written to.
    pub failed: Vec<(ConnId, PushFailure)>,
    /// How many connections got it (for `Targets::All`, where `delivered` stays empty).
    pub delivered_count: usize,
}

/// A command from the push API.
pub enum Command {
    /// Write a push to some connections; report on `reply`.
    Push {
        /// The message.
        msg: Arc<PushMsg>,
        /// Its targets on this loop.
        targets: Targets,
        /// Where the report goes.
        reply: oneshot::Sender<PushReport>,
    },
    /// Write several pushes, in order, to each target, as one write per connection (a
    /// room's held pushes, `rooms::rate`); report on `reply`.
    PushMany {
        /// The messages, in order.
        msgs: Arc<[Arc<PushMsg>]>,
        /// Its targets on this loop.
        targets: Targets,
        /// Where the report goes.
        reply: oneshot::Sender<PushReport>,
    },
    /// Put connections of this loop in a room (server-side membership).
    Join {
        /// The room (a valid name).
        room: Arc<str>,
        /// The connections.
        conns: Vec<ConnId>,
        /// Each connection, with `None` if it is in the room now, or why not.
        reply: oneshot::Sender<Vec<(ConnId, Option<String>)>>,
    },
    /// Take connections of this loop out of a room.
    Leave {
        /// The room.
        room: Arc<str>,
        /// The connections.
        conns: Vec<ConnId>,
        /// The connections that were in it.
        reply: oneshot::Sender<Vec<ConnId>>,
    },
    /// The users of this loop's members of a room, as `rooms::user_hash`es (for distinct
    /// user counts).
    RoomUsers {
        /// The room.
        room: Arc<str>,
        /// The hashes, one per member (duplicates included).
        reply: oneshot::Sender<Vec<u64>>,
    },
    /// Send `KICK` with `code` to a connection and close it.
    Kick {
        /// The connection.
        conn: ConnId,
        /// The 3xx code.
        code: Code,
        /// Detail for the client.
        reason: String,
    },
}

/// Why a [`Sweep`] redirects clients: the `reason` label of `holdfast_gateway_redirects_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepReason {
    /// A scheduler's shed order (also counted in `holdfast_gateway_shed_pending`).
    Rebalance = 0,
    /// The gateway fenced itself (no presence lease).
    Fenced = 1,
    /// The gateway is draining.
    Drain = 2,
}

impl SweepReason {
    /// Every reason, in label order.
    pub const ALL: [SweepReason; 3] =
        [SweepReason::Rebalance, SweepReason::Fenced, SweepReason::Drain];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SweepReason::Rebalance => "rebalance",
            SweepReason::Fenced => "fenced",
            SweepReason::Drain => "drain",
        }
    }
}

/// Send `REDIRECT` to established connections of one event loop: a scheduler's shed order
/// (its share for this loop), a fence or a drain.
#[derive(Debug)]
pub struct Sweep {
    /// How many connections (`None`: every connection established when the sweep reaches
    /// it).
    pub count: Option<u64>,
    /// Spread the redirects evenly over this many ms (0: as fast as the loop's chunks of
    /// 1,024 per turn allow). With `count` `None`, the loop paces by the connections it
    /// holds when the sweep starts.
    pub over_ms: u64,
    /// The frame each connection gets. With its `OVERLAP` flag each connection stays open,
    /// delivering, until its client has moved (make-before-break) or `hold_ms` passes.
    pub redirect: Redirect,
    /// What TLS connections of a TCP loop get instead, when the addresses differ by
    /// transport (a rebalance names `tls://` targets for them); `None`: `redirect`.
    pub tls_redirect: Option<Redirect>,
    /// With `OVERLAP`: how long a redirected connection is held at most, in ms (the
    /// redirect's delay and jitter plus `drain.overlap_ms`).
    pub hold_ms: u32,
    /// Why.
    pub reason: SweepReason,
}

/// Why an accepted connection is refused before its `HELLO` is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// The node holds `listen.max_connections`: `REDIRECT` `SERVER_FULL` (404) naming less
    /// loaded gateways when the scheduler named some.
    Full,
    /// An admission limit: `AUTH_FAIL` `OVERLOADED` (602) with the refusal's message.
    Refused(Refusal),
}

/// A message from inside the node that must not be dropped.
pub enum Internal<T> {
    /// Own this freshly accepted transport; if refused admission, answer its `HELLO` at
    /// once ([`Admit`]) and close.
    Adopt(T, SocketAddr, Option<Admit>),
    /// The backend's answer to an `UPSTREAM` request.
    Upstream(UpstreamResult),
    /// Another loop's (or another gateway's) login displaced this connection: `KICK` 301 it.
    Displaced(ConnId),
    /// The join webhook's verdict on a `JOIN`.
    RoomVerdict(RoomVerdict),
    /// Redirect some or all established connections.
    Redirect(Sweep),
    /// Close every connection (authenticated ones with `REDIRECT` `SERVER_SHUTDOWN`), let
    /// them flush, and stop.
    Shutdown,
}

/// The join webhook's verdict on a connection's `JOIN` request.
#[derive(Debug)]
pub struct RoomVerdict {
    /// The connection.
    pub conn: ConnId,
    /// Its request id.
    pub request_id: u32,
    /// The room.
    pub room: String,
    /// Allowed, refused (`ROOM_FORBIDDEN`), or the webhook failed (`ROOM_CHECK_FAILED`).
    pub verdict: Result<bool, String>,
}

/// Why a command was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The loop's control queue is full: retry later.
    #[error("the event loop is busy")]
    Busy,
    /// The loop has stopped.
    #[error("the event loop has stopped")]
    Stopped,
}

/// The sending side of one event loop's queues.
pub struct WorkerHandle<T> {
    control: SyncSender<Command>,
    internal: Sender<Internal<T>>,
    waker: Arc<Waker>,
}

impl<T> Clone for WorkerHandle<T> {
    fn clone(&self) -> Self {
        WorkerHandle {
            control: self.control.clone(),
            internal: self.internal.clone(),
            waker: Arc::clone(&self.waker),
        }
    }
}

/// The receiving side of one event loop's queues.
pub(crate) struct Queues<T> {
    pub(crate) control: Receiver<Command>,
    pub(crate) internal: Receiver<Internal<T>>,
}

/// A loop's queues: the handle others send on, and the receivers the loop drains.
pub(crate) fn queues<T>(capacity: usize, waker: Arc<Waker>) -> (WorkerHandle<T>, Queues<T>) {
    let (control, control_rx) = std::sync::mpsc::sync_channel(capacity.max(1));
    let (internal, internal_rx) = std::sync::mpsc::channel();
    (
        WorkerHandle { control, internal, waker },
        Queues { control: control_rx, internal: internal_rx },
    )
}

impl<T> WorkerHandle<T> {
    /// Queue an API command and wake the loop; refused when the queue is full.
    pub fn send(&self, cmd: Command) -> Result<(), SendError> {
        match self.control.try_send(cmd) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(SendError::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(SendError::Stopped),
        }
        self.waker.wake().map_err(|_| SendError::Stopped)
    }

    /// Queue an internal message and wake the loop. False if the loop has stopped.
    pub fn send_internal(&self, msg: Internal<T>) -> bool {
        self.internal.send(msg).is_ok() && self.waker.wake().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kick() -> Command {
        Command::Kick { conn: ConnId(1), code: Code::KICKED_BY_ADMIN, reason: String::new() }
    }

    /// The API's queue is bounded: a loop that is behind refuses more (the API answers 503),
    /// while the internal queue never refuses a socket or a reply.
    #[test]
    fn the_control_queue_is_bounded_and_the_internal_one_is_not() {
        let poll = mio::Poll::new().expect("poll");
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).expect("waker"));
        let (handle, queues) = queues::<()>(2, waker);
        assert_eq!(handle.send(kick()), Ok(()));
        assert_eq!(handle.send(kick()), Ok(()));
        assert_eq!(handle.send(kick()), Err(SendError::Busy));
        for _ in 0..10_000 {
            assert!(handle.send_internal(Internal::Displaced(ConnId(2))));
        }
        // Draining makes room again.
        assert!(queues.control.try_recv().is_ok());
        assert_eq!(handle.send(kick()), Ok(()));
        drop(queues);
        assert_eq!(handle.send(kick()), Err(SendError::Stopped));
        assert!(!handle.send_internal(Internal::Shutdown));
    }
}
