//! How the rest of the process talks to the event loops: each loop has a command queue and
//! a waker; the acceptor hands it sockets, the push API hands it pushes and kicks, the
//! upstream task hands it replies. The loop drains the queue when woken, so no lock is ever
//! taken on a connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::Sender;

use bytes::Bytes;
use holdfast_codec::Code;
use mio::Waker;
use mio::net::TcpStream;
use tokio::sync::oneshot;

use crate::ids::ConnId;
use crate::upstream::UpstreamResult;

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
    /// Every authenticated connection of the loop.
    All,
}

/// Why a push was not written to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushFailure {
    /// The connection is gone (closed, or never existed).
    Closed,
    /// The connection is over its hard outbound cap or unacknowledged-push limit; it is
    /// closed as a slow consumer.
    SlowConsumer,
}

impl PushFailure {
    /// The label used in API answers.
    pub fn as_str(self) -> &'static str {
        match self {
            PushFailure::Closed => "closed",
            PushFailure::SlowConsumer => "slow_consumer",
        }
    }
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

/// A command for an event loop.
pub enum Command {
    /// Own this freshly accepted socket.
    Adopt(TcpStream, SocketAddr),
    /// Write a push to some connections; report on `reply`.
    Push {
        /// The message.
        msg: Arc<PushMsg>,
        /// Its targets on this loop.
        targets: Targets,
        /// Where the report goes.
        reply: oneshot::Sender<PushReport>,
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
    /// The backend's answer to an `UPSTREAM` request.
    Upstream(UpstreamResult),
    /// Close every connection (with `REDIRECT` `SERVER_SHUTDOWN`) and stop.
    Shutdown,
}

/// The sending side of one event loop's queue.
#[derive(Clone)]
pub struct WorkerHandle {
    tx: Sender<Command>,
    waker: Arc<Waker>,
}

impl WorkerHandle {
    /// A handle over a loop's queue and waker.
    pub fn new(tx: Sender<Command>, waker: Arc<Waker>) -> WorkerHandle {
        WorkerHandle { tx, waker }
    }

    /// Queues a command and wakes the loop. False if the loop has stopped.
    pub fn send(&self, cmd: Command) -> bool {
        if self.tx.send(cmd).is_err() {
            return false;
        }
        self.waker.wake().is_ok()
    }
}
