//! One event loop: a mio `Poll` that pumps the [`Session`] of every connection it owns.
//!
//! Every connection belongs to one worker for its whole life, so nothing on the
//! per-connection path takes a lock or touches another thread's memory: the read buffer and
//! the output buffers are the worker's (one per loop, reused), the connection's timer is one
//! 4-byte entry in the worker's [`Wheel`], and the record is a [`Conn`]. The rest of the
//! process reaches a worker through its queues ([`commands`](super::commands)). An idle loop
//! may be run by loop 0's thread instead of its own (`lend.rs`), but always by one thread
//! at a time, moved there and back whole.
//!
//! # One turn of the loop
//!
//! 1. Sleep until something is ready, for at most a timeout: zero when work is left over
//!    from the last turn, else the earliest of the next wheel tick, the next counter flush,
//!    the resumed connections' share coming back, a redirect sweep's next step and the
//!    shutdown deadline. With heartbeat answers deferred from the last turn, they go to the
//!    kernel in the same `io_uring_enter` that sleeps (`outbox.rs`) and `poll` only
//!    collects what is ready; otherwise `poll` sleeps.
//! 2. For each ready connection: write what it has queued (writable), then read **once**
//!    (readable) and feed the bytes to its session, which handles at most
//!    `limits.frames_per_turn` frames; a connection with more to do (a full read, or frames
//!    left over) is resumed next turn, after every other ready connection had its turn.
//!    On the QUIC loop (`driver/quic/`), whose transports wake it through its feed
//!    (`driver/feed.rs`) instead of `poll`, the same for each woken connection, after
//!    adopting the ones that arrived.
//! 3. Connections resumed from the last turn, while they have not used up their share of
//!    the loop's time (`limits.backlog_share_percent`, [`BacklogShare`]); past it they
//!    wait and the poll sleeps until the share is back, unless other work is due.
//! 4. Commands, at most [`COMMAND_BUDGET`] at a time (also after every [`SLICE`] connections
//!    of a busy turn and after every resumed connection, so pushes are not kept waiting
//!    behind pipelining clients); broadcasts, one chunk per turn.
//! 5. Timers that fired; counters flushed to the node's metrics every 100 ms.
//!
//! # The hot paths
//!
//! - **Heartbeat**: one `read`, the session answers `PONG` into the loop's `tx` buffer, and
//!   the answer waits in the thread's [`Outbox`] for the end of the turn, when every answer
//!   goes to the kernel in the `io_uring_enter` that also sleeps (`outbox.rs`; without
//!   `io_uring`, one `write`). No allocation, no timer operation, no shared counter (the
//!   loop counts locally).
//! - **Idle**: an idle authenticated connection has no buffer at all; its one wheel entry
//!   fires at its deadline and reschedules itself if traffic arrived since.
//! - **Push**: the frame is encoded once per worker; each connection's copy gets its own
//!   sequence patched into the header before the write.
//!
//! # Layout
//!
//! - this file: the [`Worker`] and its construction, the loop ([`Worker::run`], the poll's
//!   timeout), and driving a session (calling into it, writing what it queued, settling
//!   what it decided);
//! - `readiness.rs`: serving a ready connection (write, read once, resume next turn);
//! - `fair.rs`: [`BacklogShare`], the resumed connections' share of the loop's time;
//! - `lifecycle.rs`: what sessions ask of the node (login, token refresh, upstream,
//!   departure), adoption of new connections, shutdown;
//! - `joins.rs`: room joins and leaves of this loop's connections;
//! - `lend.rs`: an idle loop lent to loop 0's thread, and taken back when there is work;
//! - `outbox.rs`: heartbeat answers deferred to the end of the turn and submitted with
//!   `io_uring` in the call that sleeps;
//! - `control.rs`: the command queues (the API's commands, the node's internal messages);
//! - `push.rs`: pushes, broadcasts in chunks, redirect sweeps;
//! - `timers.rs`: the connections' timers and the loop's counters.
//!
//! [`Session`]: crate::session::Session
//! [`COMMAND_BUDGET`]: super::commands::COMMAND_BUDGET

mod control;
mod fair;
mod joins;
pub(crate) mod lend;
mod lifecycle;
mod outbox;
mod push;
mod readiness;
mod timers;

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use holdfast_codec::{FrameType, Head};
use mio::{Events, Interest, Poll, Token};

use super::Stream;
use super::commands::Queues;
use super::conn::{Carrier, Conn};
use super::feed::Feed;
use super::rooms::Index;
use super::slots::Slots;
use super::transport::write_some;
use super::wheel::Wheel;
use crate::ids::ConnId;
use crate::node::Node;
use crate::session::{Close, Ctx, Event, Limits, Now, PushFailure, Stats};
use outbox::{Outbox, Unsent};

use fair::BacklogShare;
use push::{ActiveSweep, Broadcast, SWEEP_PACE_MS};
use readiness::Resume;

/// The token of the worker's waker.
pub(crate) const WAKER: Token = Token(usize::MAX);

/// Size of the loop's read buffer: the most one connection reads per turn.
const READ_BUF: usize = 64 * 1024;
/// Connections served between two looks at the command queues, so a push waits for a slice
/// of a busy turn, not the whole of it (a look at empty queues costs tens of nanoseconds).
/// Connections resumed with work left over do up to `limits.frames_per_turn` frames each:
/// the queues are looked at after every one of them.
const SLICE: usize = 16;
/// How often the loop's local counters are added to the node's metrics, in ms.
const FLUSH_MS: u64 = 100;
/// Most slots a wheel gets; deadlines beyond the range are rescheduled when they fire.
const MAX_WHEEL_SLOTS: u64 = 32_768;

/// One event loop and the connections it owns, over transport `T` (a TCP [`Stream`] for
/// the accepting loops; a QUIC stream for the QUIC loop, `driver/quic/`).
pub(crate) struct Worker<T: Carrier> {
    index: u8,
    node: Arc<Node>,
    poll: Poll,
    queues: Queues<Stream>,
    /// Readiness and arrivals of transports that wake by `Waker` instead of by `mio`.
    feed: Option<Feed<T>>,
    /// This thread's heartbeat answers waiting for the end of the turn (`outbox.rs`); lent
    /// to a loop served on this thread for its turn. `None`: every write goes out at once.
    outbox: Option<Outbox>,
    /// Served by loop 0's thread now (`lend.rs`): its turns leave deferred answers for the
    /// host's sleep.
    hosted: bool,
    conns: Slots<Conn<T>>,
    wheel: Wheel,
    origin: Instant,
    now: Now,
    limits: Limits,
    buf: Vec<u8>,
    tx: Vec<u8>,
    events: Vec<Event>,
    stats: Stats,
    /// Change of the bytes queued in sessions since the last flush.
    queued_delta: i64,
    flushed_at: u64,
    resume: Vec<Resume>,
    /// How much of the loop's time `resume` may take.
    backlog: BacklogShare,
    displaced: Vec<ConnId>,
    broadcasts: VecDeque<Broadcast>,
    commands_pending: bool,
    fired: Vec<(u32, u32)>,
    /// Redirect sweeps in progress, oldest first.
    sweeps: VecDeque<ActiveSweep>,
    /// Set once shutdown began: stop at this monotonic ms, or when every connection is gone.
    stopping: Option<u64>,
    /// Room memberships of this loop's connections.
    rooms: Index,
    /// Reused buffer for several pushes written to one connection at once.
    scratch: Vec<u8>,
}

impl Worker<Stream> {
    /// A TCP loop with its own poll, ready to [`run`](Self::run).
    pub(crate) fn new(
        index: u8,
        node: Arc<Node>,
        poll: Poll,
        queues: Queues<Stream>,
    ) -> Worker<Stream> {
        Worker::build(index, node, poll, queues)
    }
}

impl<T: Carrier> Worker<T> {
    /// A loop over transport `T` with its own poll, ready to [`run`](Self::run).
    pub(crate) fn build(
        index: u8,
        node: Arc<Node>,
        poll: Poll,
        queues: Queues<Stream>,
    ) -> Worker<T> {
        let cfg = &node.cfg;
        let limits = Limits::from_config(cfg);
        let tick = Duration::from_millis(cfg.heartbeat.wheel_tick_ms.max(1));
        let longest_ms = [
            cfg.listen.handshake_timeout_ms,
            u64::from(limits.heartbeat.max_ms) * u64::from(limits.heartbeat.idle_factor),
            cfg.backpressure.slow_consumer_ms,
            u64::from(limits.linger_ms),
        ]
        .into_iter()
        .max()
        .unwrap_or(1);
        let slots = (longest_ms / tick.as_millis().max(1) as u64 + 2).min(MAX_WHEEL_SLOTS);
        let origin = Instant::now();
        let per_worker = cfg.listen.max_connections / node.worker_count.max(1) + 1;
        let outbox = match T::DEFERS && cfg.node.io_uring {
            false => None,
            true => Outbox::new()
                .inspect_err(|e| {
                    tracing::info!(event_loop = index, error = %e,
                        "io_uring unavailable: heartbeat answers are written at once");
                })
                .ok(),
        };
        if outbox.is_some() {
            node.metrics.io_uring_loops.inc();
        }
        let max_slot = ConnId::MAX_SLOT as usize;
        Worker {
            index,
            // Reserved address space only: pages of the table become resident as they fill.
            conns: Slots::new(per_worker.min(max_slot), max_slot),
            wheel: Wheel::new(tick, slots as usize, origin),
            origin,
            now: Now { mono_us: 0, wall_ms: wall_ms() },
            buf: vec![0; READ_BUF],
            tx: Vec::with_capacity(4096),
            events: Vec::new(),
            stats: Stats::default(),
            queued_delta: 0,
            flushed_at: 0,
            resume: Vec::new(),
            backlog: BacklogShare::new(cfg.limits.backlog_share_percent),
            displaced: Vec::new(),
            broadcasts: VecDeque::new(),
            commands_pending: false,
            fired: Vec::new(),
            sweeps: VecDeque::new(),
            stopping: None,
            rooms: Index::default(),
            scratch: Vec::new(),
            feed: None,
            outbox,
            hosted: false,
            limits,
            node,
            poll,
            queues,
        }
    }

    /// The same loop, also woken for `feed`'s transports (the QUIC loop).
    pub(crate) fn with_feed(mut self, feed: Feed<T>) -> Worker<T> {
        self.feed = Some(feed);
        self
    }

    /// Run until shutdown completes. An error is a failure of the loop itself (its `poll`
    /// failed): the caller aborts the process (see [`supervise`](super::supervise)).
    pub(crate) fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if self.turn(&mut events, timeout)? {
                return Ok(());
            }
        }
    }

    /// One turn of the loop: poll for at most `timeout`, serve what is ready, then the
    /// loop's own work (module doc). True once shutdown has completed. Tokens of loops
    /// lent to this one's thread (`lend.rs`) are left in `events` for the caller.
    fn turn(&mut self, events: &mut Events, timeout: Option<Duration>) -> io::Result<bool> {
        let timeout = self.flush_before_poll(timeout);
        if let Err(e) = self.poll.poll(events, timeout)
            && e.kind() != io::ErrorKind::Interrupted
        {
            return Err(e);
        }
        self.set_now();
        // What the kernel did not take of the last deferred answers goes first.
        self.settle_unsent();
        let mut woken = false;
        for (i, ev) in events.iter().enumerate() {
            if ev.token() == WAKER {
                woken = true;
                continue;
            }
            if lend::is_guest(ev.token()) {
                continue;
            }
            // Commands (pushes above all) are not kept waiting for a whole busy turn.
            if i % SLICE == SLICE - 1 {
                self.drain_commands();
            }
            let key = ev.token().0;
            if ev.is_writable() {
                self.on_writable(key);
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                self.on_readable(key, ev.is_read_closed() || ev.is_error());
            }
        }
        if woken {
            self.drain_feed();
        }
        self.resume_within_share();
        if woken || self.commands_pending {
            self.drain_commands();
        }
        self.continue_broadcast();
        self.continue_sweep();
        self.on_ticks();
        self.flush_stats(false);
        if let Some(deadline) = self.stopping
            && (self.conns.len() == 0 || self.now.ms() >= deadline)
        {
            self.flush_outbox(None);
            self.abandon_all();
            self.flush_stats(true);
            return Ok(true);
        }
        Ok(false)
    }

    /// Microseconds since the last poll returned: how long the turn has been busy.
    fn busy_us(&self) -> u64 {
        let mono = Instant::now().saturating_duration_since(self.origin).as_micros() as u64;
        mono.saturating_sub(self.now.mono_us)
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if self.commands_pending || !self.broadcasts.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut at = self.wheel.next_tick_at();
        if !self.resume.is_empty() {
            let wait = self.backlog.wait();
            if wait.is_zero() {
                return Some(Duration::ZERO);
            }
            let next = Instant::now() + wait;
            at = Some(at.map_or(next, |t| t.min(next)));
        }
        let dirty = self.stats != Stats::default() || self.queued_delta != 0;
        if dirty {
            let flush = self.origin + Duration::from_millis(self.flushed_at + FLUSH_MS);
            at = Some(at.map_or(flush, |t| t.min(flush)));
        }
        if let Some(stop) = self.stopping {
            let stop = self.origin + Duration::from_millis(stop);
            at = Some(at.map_or(stop, |t| t.min(stop)));
        }
        if let Some(s) = self.sweeps.front() {
            let pace = if s.sweep.over_ms == 0 { 0 } else { SWEEP_PACE_MS };
            let next = Instant::now() + Duration::from_millis(pace);
            at = Some(at.map_or(next, |t| t.min(next)));
        }
        at.map(|t| t.saturating_duration_since(Instant::now()))
    }

    fn set_now(&mut self) {
        let mono = Instant::now().saturating_duration_since(self.origin);
        self.now = Now { mono_us: mono.as_micros() as u64, wall_ms: wall_ms() };
    }

    fn conn_id(&self, key: usize) -> ConnId {
        ConnId::new(self.node.cfg.node.id, self.index, key as u32, self.conns.generation(key))
    }

    /// The slot of a live connection of this worker.
    fn find(&self, id: ConnId) -> Option<usize> {
        if id.worker() != self.index || id.node() != self.node.cfg.node.id {
            return None;
        }
        self.conns.find(id.slot() as usize, id.generation())
    }

    // ----- driving a session ------------------------------------------------------------

    /// Call into a connection's session with the loop's context, without settling.
    fn with<R>(
        &mut self,
        key: usize,
        f: impl FnOnce(&mut Conn<T>, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        let conn_id = self.conn_id(key).0;
        let conn = self.conns.get_mut(key)?;
        let before = conn.session.queued();
        let mut ctx = Ctx {
            limits: &self.limits,
            now: self.now,
            conn_id,
            tx: &mut self.tx,
            events: &mut self.events,
            stats: &mut self.stats,
        };
        let r = f(conn, &mut ctx);
        self.queued_delta += conn.session.queued() as i64 - before as i64;
        Some(r)
    }

    /// Call into a session, then carry out everything it decided ([`Worker::settle`]).
    fn call<R>(
        &mut self,
        key: usize,
        f: impl FnOnce(&mut Conn<T>, &mut Ctx<'_>) -> R,
    ) -> Option<R> {
        let r = self.with(key, f);
        self.settle(key);
        r
    }

    /// After a session call: write its output, act on its events (which may call it again),
    /// shut the write side once a final frame is out, release a closed connection or re-arm
    /// its timer, and kick the connections a login displaced.
    fn settle(&mut self, key: usize) {
        loop {
            if !self.tx.is_empty() {
                let tx = std::mem::take(&mut self.tx);
                // A failure closed the session; the events below record it.
                let _ = self.transmit(key, &tx);
                self.tx = tx;
                self.tx.clear();
            }
            if self.events.is_empty() {
                break;
            }
            let events = std::mem::take(&mut self.events);
            for event in events {
                self.on_session_event(key, event);
            }
        }
        if self.tx.capacity() > 64 * 1024 {
            self.tx = Vec::with_capacity(4096);
        }
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.session.poll_shutdown() {
            if self.outbox.as_ref().is_some_and(|o| o.holds(self.index, key)) {
                self.flush_outbox(None); // a deferred answer goes before the end of stream
            }
            let Some(conn) = self.conns.get_mut(key) else { return };
            conn.transport.shutdown_write();
            if conn.transport.pending_output() {
                self.want_writable(key, true); // close_notify still to go
            }
        }
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.session.is_closed() {
            self.release(key);
        } else {
            self.rearm(key);
        }
        for id in std::mem::take(&mut self.displaced) {
            self.displace(id);
        }
    }

    /// Hand `bytes` to the connection's transport, queueing in its session what the
    /// transport does not take; what went wrong, if anything.
    fn transmit(&mut self, key: usize, bytes: &[u8]) -> Result<(), PushFailure> {
        if self.outbox.as_ref().is_some_and(|o| o.holds(self.index, key)) {
            self.flush_outbox(None); // what was deferred for it goes first
        }
        let generation = self.conns.generation(key);
        let Some(conn) = self.conns.get_mut(key) else { return Err(PushFailure::Closed) };
        let mut rest = bytes;
        let was_empty = conn.session.queued() == 0;
        if was_empty
            && is_lone_pong(bytes)
            && let Some(out) = self.outbox.as_mut().filter(|o| o.usable())
            && let Some(fd) = conn.transport.plain_fd()
        {
            out.defer(self.index, key, generation, fd, bytes);
            return Ok(());
        }
        if was_empty {
            match write_some(&mut conn.transport, bytes) {
                Ok(n) => rest = &bytes[n..],
                Err(_) => {
                    self.with(key, |c, ctx| c.session.close(ctx, Close::IoError));
                    return Err(PushFailure::IoError);
                }
            }
        }
        if rest.is_empty() {
            if was_empty && conn.transport.pending_output() {
                // TLS took the bytes but the socket did not take all of the record.
                self.want_writable(key, true);
            }
            return Ok(());
        }
        let kernel = conn.transport.unsent_bytes();
        match self.with(key, |c, ctx| c.session.enqueue(ctx, rest, kernel)) {
            Some(true) => {
                if was_empty {
                    self.want_writable(key, true);
                }
                Ok(())
            }
            _ => Err(PushFailure::SlowConsumer),
        }
    }

    /// Before the poll: submit the deferred answers. A loop on its own thread sleeps in the
    /// same call (the poll after it only collects what is ready); a hosted loop leaves them
    /// for the host's sleep.
    fn flush_before_poll(&mut self, timeout: Option<Duration>) -> Option<Duration> {
        if self.hosted || self.outbox.as_ref().is_none_or(|o| o.is_empty()) {
            return timeout;
        }
        self.flush_outbox(Some(timeout));
        Some(Duration::ZERO)
    }

    /// Submit the deferred writes now (with `wait`, then sleep until the poll is ready, see
    /// [`Outbox::flush`]), and settle what the kernel did not take of this loop's.
    fn flush_outbox(&mut self, wait: Option<Option<Duration>>) {
        let Some(out) = self.outbox.as_mut() else { return };
        if out.is_empty() && wait.is_none() {
            return;
        }
        let usable = out.usable();
        if let Err(e) = out.flush(self.poll.as_raw_fd(), wait) {
            tracing::warn!(error = %e, "io_uring failed: heartbeat answers are written at once");
            if usable {
                self.node.metrics.io_uring_loops.dec();
            }
        }
        self.settle_unsent();
    }

    /// Settle what the kernel did not take of this loop's deferred writes.
    fn settle_unsent(&mut self) {
        let Some(out) = self.outbox.as_mut() else { return };
        let unsent = out.take_unsent(self.index);
        self.settle_unsent_of(unsent);
    }

    /// Queue the rest of each write the kernel did not take whole (it goes out before
    /// anything else for that connection), or close a connection whose socket failed.
    fn settle_unsent_of(&mut self, unsent: Vec<Unsent>) {
        for u in unsent {
            if self.conns.find(u.key, u.generation).is_none() {
                continue;
            }
            if u.failed {
                self.call(u.key, |c, ctx| c.session.close(ctx, Close::IoError));
                continue;
            }
            let kernel = self.conns.get(u.key).map_or(0, |c| c.transport.unsent_bytes());
            match self.with(u.key, |c, ctx| c.session.enqueue(ctx, &u.rest, kernel)) {
                Some(true) => self.want_writable(u.key, true),
                _ => self.settle(u.key),
            }
        }
    }

    /// Ask for writable events only while bytes are queued: a socket registered for them all
    /// the time gets one after every write whose ACK frees send buffer space, a wake-up per
    /// heartbeat for nothing.
    fn want_writable(&mut self, key: usize, writable: bool) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let interest =
            if writable { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        if self.poll.registry().reregister(&mut conn.transport, Token(key), interest).is_err() {
            self.call(key, |c, ctx| c.session.close(ctx, Close::IoError));
        }
    }
}

/// Whether `bytes` are one `PONG` frame and nothing else: the writes the outbox defers.
fn is_lone_pong(bytes: &[u8]) -> bool {
    Head::peek(bytes)
        .is_some_and(|h| h.kind == FrameType::Pong as u8 && h.frame_len() == bytes.len() as u64)
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
