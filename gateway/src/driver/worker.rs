//! One event loop: a mio `Poll` that pumps the [`Session`] of every connection it owns.
//!
//! Every connection belongs to one worker for its whole life, so nothing on the
//! per-connection path takes a lock or touches another thread's memory: the read buffer and
//! the output buffers are the worker's (one per loop, reused), the connection's timer is one
//! 4-byte entry in the worker's [`Wheel`], and the record is a [`Conn`]. The rest of the
//! process reaches a worker through its queues ([`commands`](super::commands)).
//!
//! # One turn of the loop
//!
//! 1. `poll` with a timeout: zero when work is left over from the last turn, else the next
//!    wheel tick (or the next counter flush).
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
//! - **Heartbeat**: one `read`, the session answers `PONG` into the loop's `tx` buffer, one
//!   `write`. No allocation, no timer operation, no shared counter (the loop counts locally).
//! - **Idle**: an idle authenticated connection has no buffer at all; its one wheel entry
//!   fires at its deadline and reschedules itself if traffic arrived since.
//! - **Push**: the frame is encoded once per worker; each connection's copy gets its own
//!   sequence patched into the header before the write.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::TryRecvError;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use holdfast_codec::frame::head::set_id;
use holdfast_codec::{Code, Frame, Hello, Push, Redirect};
use mio::{Events, Interest, Poll, Token};

use super::Stream;
use super::commands::{
    Admit, COMMAND_BUDGET, Command, Internal, PushMsg, PushReport, Queues, RoomVerdict, Sweep,
    SweepReason, Targets,
};
use super::conn::{Carrier, Conn};
use super::feed::Feed;
use super::proxy::ProxyRefusal;
use super::rooms::Index;
use super::slots::Slots;
use super::tls::TlsFailure;
use super::transport::write_some;
use super::wheel::Wheel;
use crate::events::{Event as NodeEvent, UnackedPush};
use crate::ids::ConnId;
use crate::metrics::Refusal;
use crate::node::Node;
use crate::rooms::{Refused, allowed, check_name, user_hash};
use crate::session::{
    Close, CloseReason, Closed, Ctx, Event, Input, Limits, Now, Phase, PushFailure, Session, Stats,
};
use crate::upstream::{SubmitError, UpstreamOutcome, UpstreamRequest, UpstreamResult};

/// The token of the worker's waker.
pub(crate) const WAKER: Token = Token(usize::MAX);

/// Size of the loop's read buffer: the most one connection reads per turn.
const READ_BUF: usize = 64 * 1024;
/// Connections served between two looks at the command queues, so a push waits for a slice
/// of a busy turn, not the whole of it (a look at empty queues costs tens of nanoseconds).
/// Connections resumed with work left over do up to `limits.frames_per_turn` frames each:
/// the queues are looked at after every one of them.
const SLICE: usize = 16;
/// Connections a broadcast writes to per turn before the loop serves its sockets again.
const BROADCAST_CHUNK: usize = 1024;
/// How often the loop's local counters are added to the node's metrics, in ms.
const FLUSH_MS: u64 = 100;
/// Most slots a wheel gets; deadlines beyond the range are rescheduled when they fire.
const MAX_WHEEL_SLOTS: u64 = 32_768;
/// A shutdown waits at most this long past the linger for clients to take their redirect.
const SHUTDOWN_GRACE_MS: u64 = 500;
/// The jitter of `REDIRECT` `SERVER_FULL`: refused clients reach the next gateway spread
/// over this many ms.
const FULL_JITTER_MS: u32 = 2_000;

/// A connection to come back to next turn.
#[derive(Clone, Copy)]
struct Resume {
    key: usize,
    generation: u16,
    /// The peer's end of stream was signalled: keep reading until it is seen.
    read_closed: bool,
}

/// A push to every connection of the loop, or to a large room's members here, delivered
/// a chunk per turn.
struct Broadcast {
    msgs: Arc<[Arc<PushMsg>]>,
    templates: Vec<Vec<u8>>,
    /// `None`: every slot; else these connections (a room's members when the push was
    /// taken; a slot reused since fails the generation check).
    targets: Option<Vec<ConnId>>,
    /// The next slot (or target) to visit.
    cursor: usize,
    report: PushReport,
    reply: tokio::sync::oneshot::Sender<PushReport>,
}

/// A sweep of `REDIRECT`s in progress (a shed order's share, or a fence).
struct ActiveSweep {
    sweep: Sweep,
    /// When it started, in the loop's ms.
    started_ms: u64,
    /// Connections redirected so far.
    done: u64,
    /// The next slot to visit.
    cursor: usize,
}

/// How often a loop wakes to go on with a sweep spread over time, in ms.
const SWEEP_PACE_MS: u64 = 10;

/// The most backlog time a loop may bank while its backlog is light, in µs: after a quiet
/// spell, pipelining peers get at most this much beyond their share at once.
const BACKLOG_BURST_US: i64 = 2_000;

/// The share of a loop's time that connections resumed with work left over may take
/// (`limits.backlog_share_percent`): time credit accrues at that share of the wall clock
/// and each pass over the resumed connections spends what it took. In debt, they wait
/// (the loop sleeps or serves others) until the credit is back.
struct BacklogShare {
    /// Percent of the loop's time; 100 turns the cap off.
    percent: i64,
    /// Credit in µs (negative: in debt).
    credit_us: i64,
    /// When credit last accrued, in the loop's µs.
    at_us: u64,
    /// Turns in which the backlog waited, since the last flush.
    waits: u64,
}

impl BacklogShare {
    fn new(percent: u8) -> BacklogShare {
        BacklogShare { percent: i64::from(percent.clamp(1, 100)), credit_us: 0, at_us: 0, waits: 0 }
    }

    /// Accrue credit up to `now_us`; whether the backlog may run now.
    fn may_run(&mut self, now_us: u64) -> bool {
        if self.percent >= 100 {
            return true;
        }
        let elapsed = now_us.saturating_sub(self.at_us).min(1_000_000) as i64;
        self.at_us = now_us;
        self.credit_us = (self.credit_us + elapsed * self.percent / 100).min(BACKLOG_BURST_US);
        if self.credit_us < 0 {
            self.waits += 1;
            return false;
        }
        true
    }

    /// A pass over the backlog took `us`.
    fn spent(&mut self, us: u64) {
        if self.percent < 100 {
            self.credit_us -= us.min(1_000_000) as i64;
        }
    }

    /// How long until the backlog may run again (zero if it may now).
    fn wait(&self) -> Duration {
        if self.credit_us >= 0 {
            return Duration::ZERO;
        }
        Duration::from_micros((-self.credit_us * 100 / self.percent) as u64 + 1)
    }
}

/// One event loop and the connections it owns, over transport `T` (a TCP [`Stream`] for
/// the accepting loops; a QUIC stream for the QUIC loop, `driver/quic/`).
pub(crate) struct Worker<T: Carrier> {
    index: u8,
    node: Arc<Node>,
    poll: Poll,
    queues: Queues<Stream>,
    /// Readiness and arrivals of transports that wake by `Waker` instead of by `mio`.
    feed: Option<Feed<T>>,
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

    /// Adopt the transports that arrived on the feed, then serve the ones that woke: what
    /// a readiness event does for a socket (write what is queued, read once).
    fn drain_feed(&mut self) {
        let Some(feed) = self.feed.as_mut() else { return };
        let (arrivals, ready) = feed.take();
        for a in arrivals {
            self.adopt(a.transport, a.peer, a.refusal);
        }
        for (i, &token) in ready.iter().enumerate() {
            if i % SLICE == SLICE - 1 {
                self.drain_commands();
            }
            let (key, generation) = Feed::<T>::untoken(token);
            if self.conns.find(key, generation).is_some() {
                self.on_writable(key);
                self.on_readable(key, false);
            }
        }
        if let Some(feed) = self.feed.as_mut() {
            feed.give_back(ready);
        }
    }

    /// Run until shutdown completes. An error is a failure of the loop itself (its `poll`
    /// failed): the caller aborts the process (see [`supervise`](super::supervise)).
    pub(crate) fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                return Err(e);
            }
            self.set_now();
            let mut woken = false;
            for (i, ev) in events.iter().enumerate() {
                if ev.token() == WAKER {
                    woken = true;
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
                self.abandon_all();
                self.flush_stats(true);
                return Ok(());
            }
        }
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
        let Some(conn) = self.conns.get_mut(key) else { return Err(PushFailure::Closed) };
        let mut rest = bytes;
        let was_empty = conn.session.queued() == 0;
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

    // ----- readiness --------------------------------------------------------------------

    /// Write what the session queued while the transport was full.
    fn on_writable(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        // Records the transport holds (TLS) go first: the session's bytes follow them.
        if conn.transport.flush_output().is_err() {
            self.call(key, |c, ctx| c.session.close(ctx, Close::IoError));
            return;
        }
        if let Some(bytes) = conn.session.poll_transmit() {
            let written = write_some(&mut conn.transport, bytes);
            let kernel = conn.transport.unsent_bytes();
            self.call(key, |c, ctx| match written {
                Ok(n) => c.session.handle_transmitted(ctx, n, kernel),
                Err(_) => c.session.close(ctx, Close::IoError),
            });
        }
        if self
            .conns
            .get(key)
            .is_some_and(|c| c.session.queued() == 0 && !c.transport.pending_output())
        {
            self.want_writable(key, false);
        }
    }

    /// Read once and feed the session; come back next turn if there may be more.
    ///
    /// A short read means the socket is empty and the next arrival is a new edge, except
    /// when the event also signalled the peer's close: data and FIN can arrive in one
    /// readiness event, and no further event comes, so then reading goes on until the end
    /// of stream is seen.
    fn on_readable(&mut self, key: usize, read_closed: bool) {
        let Some(conn) = self.conns.get(key) else { return };
        if conn.session.has_backlog() {
            return; // resumed in turn; reading more now would only grow its buffer
        }
        let generation = self.conns.generation(key);
        let mut buf = std::mem::take(&mut self.buf);
        while let Some(conn) = self.conns.get_mut(key) {
            match conn.transport.read(&mut buf) {
                Ok(0) => {
                    self.call(key, |c, ctx| c.session.handle_eof(ctx));
                    break;
                }
                Ok(n) => {
                    let more = self.feed(key, &buf[..n])
                        || self.conns.get_mut(key).is_some_and(|c| c.transport.read_again());
                    if more || n == buf.len() {
                        self.resume.push(Resume { key, generation, read_closed });
                        break;
                    }
                    if !read_closed || self.conns.get(key).is_none() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let close = match ProxyRefusal::of(&e) {
                        Some(refusal) => {
                            self.node.metrics.proxy_refused(refusal).inc();
                            tracing::debug!(reason = refusal.as_str(), "PROXY header refused");
                            Close::ProxyRefused
                        }
                        // TLS failures are counted when the connection departs.
                        None => Close::IoError,
                    };
                    self.call(key, |c, ctx| c.session.close(ctx, close));
                    break;
                }
            }
        }
        self.buf = buf;
        self.after_read_tls(key);
    }

    /// TLS, after a read: count a handshake that just completed, and keep writable interest
    /// while records wait for the socket (a handshake flight, a key update). For a plain
    /// connection both are a look at a null pointer.
    fn after_read_tls(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.transport.take_tls_established() {
            self.node.metrics.tls_handshakes.inc();
        }
        if conn.transport.pending_output() {
            self.want_writable(key, true);
        }
    }

    /// Feed bytes to a session; true when it has frames left for another turn.
    fn feed(&mut self, key: usize, data: &[u8]) -> bool {
        let mut input = self.call(key, |c, ctx| c.session.handle_input(ctx, data));
        // A HELLO was answered while settling: go on with what was pipelined after it.
        while input == Some(Input::Paused)
            && self.conns.get(key).is_some_and(|c| c.session.phase() != Phase::Authenticating)
        {
            input = self.call(key, |c, ctx| c.session.handle_input(ctx, &[]));
        }
        matches!(input, Some(Input::Yield | Input::Paused))
    }

    /// [`Self::resume_connections`], when the backlog has not used up its share of the
    /// loop's time (`limits.backlog_share_percent`).
    fn resume_within_share(&mut self) {
        if self.resume.is_empty() || !self.backlog.may_run(self.now.mono_us) {
            return;
        }
        let started = Instant::now();
        self.resume_connections();
        self.backlog.spent(started.elapsed().as_micros() as u64);
    }

    /// Give the connections that yielded last turn their next turn.
    fn resume_connections(&mut self) {
        for (i, r) in std::mem::take(&mut self.resume).into_iter().enumerate() {
            if i > 0 {
                self.drain_commands();
            }
            if self.conns.find(r.key, r.generation).is_none() {
                continue;
            }
            if self.conns.get(r.key).is_some_and(|c| c.session.has_backlog())
                && self.feed(r.key, &[])
            {
                self.resume.push(r);
                continue;
            }
            self.on_readable(r.key, r.read_closed);
        }
    }

    // ----- what sessions ask of the node ------------------------------------------------

    fn on_session_event(&mut self, key: usize, event: Event) {
        match event {
            Event::Hello(hello) => self.authenticate(key, *hello),
            Event::Upstream(up) => self.forward_upstream(key, up),
            Event::Refresh { request_id, token } => self.refresh(key, request_id, &token),
            Event::Join { request_id, room } => self.on_join(key, request_id, room),
            Event::Leave { request_id, room } => {
                let rooms = self.leave_room(key, &room);
                self.node.metrics.room_leaves.inc();
                self.with(key, |c, ctx| c.session.room_done(ctx, request_id, Ok(rooms)));
            }
            Event::Closed(closed) => self.depart(key, closed),
        }
    }

    // ----- rooms ------------------------------------------------------------------------

    /// A client's `JOIN`: allowed by its token's `rooms` claim, or else asked of the join
    /// webhook (the answer comes back as [`Internal::RoomVerdict`]), or refused.
    fn on_join(&mut self, key: usize, request_id: u32, room: String) {
        let node = Arc::clone(&self.node);
        let verdict = if let Err(why) = check_name(&room, node.cfg.rooms.name_max) {
            Err(Refused::new(Code::INVALID_ROOM, why))
        } else if allowed(self.rooms.claims(key as u32), &room) {
            self.join_room(key, &room)
        } else if let Some(hook) = &node.join_hook {
            let id = self.conn_id(key);
            let Some(conn) = self.conns.get(key) else { return };
            let user = conn.user.clone().unwrap_or_else(|| Arc::from(""));
            let device = conn.transport.device().cloned();
            if hook.ask(id, request_id, user, device, room) {
                return;
            }
            Err(Refused::new(Code::ROOM_CHECK_FAILED, "too many room checks in flight"))
        } else {
            Err(Refused::new(Code::ROOM_FORBIDDEN, "the token does not allow this room"))
        };
        self.answer_join(key, request_id, verdict);
    }

    /// Answer a `JOIN` and count the outcome.
    fn answer_join(&mut self, key: usize, request_id: u32, verdict: Result<u16, Refused>) {
        self.node.metrics.room_join(verdict.as_ref().err().map(|r| r.code)).inc();
        let verdict = verdict.map_err(|r| (r.code, r.message));
        self.with(key, |c, ctx| c.session.room_done(ctx, request_id, verdict));
    }

    fn on_room_verdict(&mut self, v: RoomVerdict) {
        let Some(key) = self.find(v.conn) else { return };
        if !self.conns.get(key).is_some_and(|c| c.session.is_established()) {
            return;
        }
        let verdict = match v.verdict {
            Ok(true) => self.join_room(key, &v.room),
            Ok(false) => Err(Refused::new(Code::ROOM_FORBIDDEN, "the join webhook refused")),
            Err(why) => Err(Refused::new(Code::ROOM_CHECK_FAILED, why)),
        };
        self.answer_join(key, v.request_id, verdict);
        self.settle(key);
    }

    /// Put connection `key` in `room` (already checked and allowed): how many rooms it is
    /// in now, or why not (its own limit, the node's).
    fn join_room(&mut self, key: usize, room: &str) -> Result<u16, Refused> {
        let slot = key as u32;
        let node = &self.node;
        if let Some(no) = node.rooms.find(room)
            && self.rooms.contains(slot, no)
        {
            return Ok(self.rooms.rooms_of(slot) as u16);
        }
        let max = node.cfg.rooms.max_per_conn;
        if self.rooms.rooms_of(slot) >= max {
            return Err(Refused::new(
                Code::TOO_MANY_ROOMS,
                format!("the connection is in its maximum of {max} rooms"),
            ));
        }
        let no = node.rooms.join(room)?;
        if !self.rooms.insert(slot, no) {
            node.rooms.leave(no);
        }
        Ok(self.rooms.rooms_of(slot) as u16)
    }

    /// Take connection `key` out of `room` (nothing if it was not in it): how many rooms it
    /// is in now.
    fn leave_room(&mut self, key: usize, room: &str) -> u16 {
        let slot = key as u32;
        if let Some(no) = self.node.rooms.find(room)
            && self.rooms.remove(slot, no)
        {
            self.node.rooms.leave(no);
        }
        self.rooms.rooms_of(slot) as u16
    }

    /// Server-side joins of this loop's connections.
    fn join_conns(&mut self, room: &str, conns: Vec<ConnId>) -> Vec<(ConnId, Option<String>)> {
        let mut out = Vec::with_capacity(conns.len());
        for id in conns {
            let established = self
                .find(id)
                .filter(|&k| self.conns.get(k).is_some_and(|c| c.session.is_established()));
            let result = match established {
                None => Some("closed".to_owned()),
                Some(key) => {
                    let joined = self.join_room(key, room);
                    let refused = joined.as_ref().err().map(|r| r.code);
                    self.node.metrics.room_join(refused).inc();
                    refused.map(|c| c.name().unwrap_or("refused").to_ascii_lowercase())
                }
            };
            out.push((id, result));
        }
        out
    }

    /// The members of `room` here, as connection ids (a snapshot).
    fn room_targets(&self, room: &str) -> Vec<ConnId> {
        let Some(no) = self.node.rooms.find(room) else { return Vec::new() };
        self.rooms.members(no).map(|slot| self.conn_id(slot as usize)).collect()
    }

    /// Verify a `HELLO`'s token, register the login and answer it.
    fn authenticate(&mut self, key: usize, hello: Hello) {
        let node = Arc::clone(&self.node);
        let m = &node.metrics;
        let id = self.conn_id(key);
        let _span = tracing::info_span!("conn", conn_id = %id).entered();
        if node.fence.is_fenced() {
            // No lease: this login could not be registered. `REDIRECT` is not allowed
            // before `AUTH_OK`, so the client just sees the connection close and tries
            // another gateway (see `fence.rs`).
            m.cluster.rejected_fenced.inc();
            self.with(key, |c, ctx| c.session.close(ctx, Close::Shutdown));
            return;
        }
        // Admission before the token is verified: refusals cost no signature check.
        let refusal = if node.draining.load(Ordering::Acquire) {
            // Accepted before the drain began: retry elsewhere, with backoff.
            Some(Refusal::Draining)
        } else {
            let ip = self.conns.get(key).and_then(|c| c.transport.peer_addr()).map(|a| a.ip());
            match (&node.sources, ip) {
                (Some(limiter), Some(ip)) if limiter.check(ip, node.mono_ns()).is_err() => {
                    Some(Refusal::SourceRate)
                }
                _ => None,
            }
        };
        if let Some(r) = refusal {
            m.admission_refused(r).inc();
            let reason = r.message().to_owned();
            self.with(key, |c, ctx| {
                c.session.close(ctx, Close::AuthFail(Code::OVERLOADED, reason))
            });
            return;
        }
        let now_secs = self.now.wall_ms / 1000;
        let verifier = node.verifier();
        let verdict = verifier
            .verify(&hello.token, now_secs)
            .and_then(|c| verifier.check_binding(&c, &hello.device_id, hello.platform).map(|()| c));
        let claims = match verdict {
            Ok(claims) => claims,
            Err(f) => {
                m.auth_failure(f.label()).inc();
                tracing::debug!(code = %f.code(), "authentication failed");
                self.with(key, |c, ctx| c.session.refuse(ctx, f.code(), f.reason()));
                return;
            }
        };
        if let Some(flapping) = &node.flapping
            && let Err(left) = flapping.login(&claims.sub, &hello.device_id, now_secs)
        {
            m.admission_refused(Refusal::Flapping).inc();
            tracing::debug!(user = %claims.sub, left_secs = left, "flapping client refused");
            let reason = format!("{}: {left} s left", Refusal::Flapping.message());
            self.with(key, |c, ctx| c.session.refuse(ctx, Code::THROTTLED, reason));
            return;
        }
        let registered = node.registry.register(&claims.sub, id, hello.platform);
        let keep_device = node.keeps_device() || claims.device.is_some();
        let expires = claims.exp.saturating_add(verifier.leeway_secs());
        let Some(remote) = self.with(key, |c, ctx| {
            c.user = Some(Arc::clone(&registered.user));
            // The device id is read only by the webhooks and by a refresh's device check;
            // without them an idle connection does not pay an allocation for it.
            if keep_device && !hello.device_id.is_empty() {
                c.transport.keep_device(Arc::from(hello.device_id.as_str()));
            }
            c.session.accept(ctx, expires);
            c.transport.peer_addr()
        }) else {
            return;
        };
        m.handshakes_ok.inc();
        m.connections_established.inc();
        node.handshake_ended();
        if !claims.rooms.is_empty() {
            self.rooms.set_claims(key as u32, &claims.rooms);
        }
        if !node.sticky.is_empty() {
            for room in node.sticky.of(&registered.user) {
                let joined = self.join_room(key, &room);
                m.room_join(joined.as_ref().err().map(|r| r.code)).inc();
                if let Err(r) = joined {
                    tracing::debug!(room = %room, code = %r.code, "sticky room not joined");
                }
            }
        }
        node.presence.online(
            &registered.user,
            id,
            hello.platform,
            &hello.device_id,
            self.now.wall_ms,
        );
        node.events.emit(NodeEvent::Connected {
            conn: id,
            user: Arc::clone(&registered.user),
            device: Arc::from(hello.device_id.as_str()),
            platform: hello.platform,
            remote: remote.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            region: claims.region.clone(),
            at_ms: self.now.wall_ms,
        });
        self.displaced.extend(registered.displaced);
    }

    /// Verify a refreshed token: same user, same device and platform bindings.
    fn refresh(&mut self, key: usize, request_id: u32, token: &str) {
        let node = Arc::clone(&self.node);
        let Some(conn) = self.conns.get(key) else { return };
        let user = conn.user.clone();
        let device = conn.transport.device().cloned();
        let platform = conn.session.platform();
        let now_secs = self.now.wall_ms / 1000;
        let verifier = node.verifier();
        let verdict = verifier
            .verify(token, now_secs)
            .and_then(|c| {
                let device = device.as_deref().unwrap_or("");
                verifier.check_binding(&c, device, platform).map(|()| c)
            })
            .map_err(|f| (f.code(), f.reason()))
            .and_then(|c| {
                if user.as_deref() == Some(c.sub.as_str()) {
                    Ok((c.exp.saturating_add(verifier.leeway_secs()), c.rooms))
                } else {
                    Err((Code::CLAIM_MISMATCH, "the new token is for another user".to_owned()))
                }
            });
        node.metrics.token_refresh(verdict.is_ok()).inc();
        let verdict = verdict.map(|(exp, rooms)| {
            // The new token's `rooms` claim governs later joins; joined rooms stay.
            self.rooms.set_claims(key as u32, &rooms);
            exp
        });
        self.with(key, |c, ctx| c.session.refresh_done(ctx, request_id, verdict));
    }

    /// Hand an `UPSTREAM` to the webhook, or answer why not.
    fn forward_upstream(&mut self, key: usize, up: holdfast_codec::Upstream) {
        let id = self.conn_id(key);
        let Some(conn) = self.conns.get(key) else { return };
        let request = UpstreamRequest {
            conn: id,
            request_id: up.request_id,
            user: conn.user.clone().unwrap_or_else(|| Arc::from("")),
            device: conn.transport.device().cloned().unwrap_or_else(|| Arc::from("")),
            platform: conn.session.platform(),
            route: up.route,
            payload: up.payload,
        };
        let code = match self.node.upstream.try_submit(request) {
            Ok(()) => return,
            Err(SubmitError::Disabled) => Code::UPSTREAM_UNAVAILABLE,
            Err(SubmitError::Full) => Code::TOO_MANY_REQUESTS,
        };
        self.with(key, |c, ctx| c.session.upstream_refused(ctx, up.request_id, code));
    }

    /// The bookkeeping of a connection leaving, done once: the close is counted, and an
    /// authenticated connection is unregistered and reported with its unacknowledged pushes.
    fn depart(&mut self, key: usize, closed: Closed) {
        let node = Arc::clone(&self.node);
        let m = &node.metrics;
        let id = self.conn_id(key);
        let _span = tracing::info_span!("conn", conn_id = %id).entered();
        tracing::debug!(reason = closed.reason.as_str(), "connection closing");
        m.close(closed.reason).inc();
        if let Some(failure) = self.conns.get(key).and_then(|c| c.transport.tls_unfinished()) {
            let failure = match (failure, closed.reason) {
                (TlsFailure::Closed, CloseReason::HandshakeTimeout) => TlsFailure::Timeout,
                (f, _) => f,
            };
            tracing::debug!(reason = failure.as_str(), "TLS handshake failed");
            m.tls_handshake_failed(failure).inc();
        }
        if !closed.established {
            node.handshake_ended();
            return;
        }
        m.connections_established.dec();
        if closed.moving {
            m.connections_moving.dec();
        }
        for no in self.rooms.remove_conn(key as u32) {
            node.rooms.leave(no);
        }
        let Some(conn) = self.conns.get(key) else { return };
        let Some(user) = conn.user.clone() else { return };
        let unacked: Vec<UnackedPush> = closed
            .unacked
            .into_iter()
            .map(|(seq, message_id)| UnackedPush { seq, message_id })
            .collect();
        m.pushes_unacked_on_close.inc_by(unacked.len() as u64);
        node.registry.unregister(&user, id);
        node.presence.offline(&user, id);
        node.events.emit(NodeEvent::Disconnected {
            conn: id,
            user,
            device: conn.transport.device().cloned().unwrap_or_else(|| Arc::from("")),
            platform: conn.session.platform(),
            reason: closed.reason.as_str(),
            at_ms: self.now.wall_ms,
            unacked,
        });
    }

    /// Drop a closed connection: the socket, its slot, the node's counts.
    fn release(&mut self, key: usize) {
        let Some(mut conn) = self.conns.remove(key) else { return };
        let _ = self.poll.registry().deregister(&mut conn.transport);
        self.queued_delta -= conn.session.queued() as i64;
        self.node.metrics.connections.dec();
        self.node.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// A login on this node displaced `id`: `KICK` 301, here or through its own loop.
    fn displace(&mut self, id: ConnId) {
        if let Some(key) = self.find(id) {
            if self.conns.get(key).is_some_and(|c| c.session.phase() == Phase::Moving) {
                // The newer login is this client moving (make-before-break): the old
                // connection closes when the client has moved, or at its hold deadline.
                self.node.metrics.kicks_skipped_moving.inc();
                return;
            }
            self.node.metrics.kicks_logged_in_elsewhere.inc();
            let reason = "logged in elsewhere".to_owned();
            self.call(key, |c, ctx| {
                c.session.close(ctx, Close::Kick(Code::LOGGED_IN_ELSEWHERE, reason))
            });
        } else if id.worker() != self.index
            && let Some(worker) = self.node.worker(id.worker())
        {
            worker.send_internal(Internal::Displaced(id));
        }
    }

    // ----- commands ---------------------------------------------------------------------

    /// Handle queued commands, internal ones first, at most [`COMMAND_BUDGET`] this turn.
    fn drain_commands(&mut self) {
        let mut budget = COMMAND_BUDGET;
        while budget > 0 {
            match self.queues.internal.try_recv() {
                Ok(msg) => self.on_internal(msg),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
            budget -= 1;
        }
        while budget > 0 {
            match self.queues.control.try_recv() {
                Ok(cmd) => self.on_command(cmd),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
            budget -= 1;
        }
        self.commands_pending = budget == 0;
    }

    fn on_internal(&mut self, msg: Internal<Stream>) {
        match msg {
            Internal::Adopt(stream, peer, refusal) => match T::from_accepted(stream) {
                Some(transport) => self.adopt(transport, peer, refusal),
                // Not a loop the acceptor feeds: give the socket back to the counts.
                None => self.forget_arrival(),
            },
            Internal::Upstream(result) => self.on_upstream_result(result),
            Internal::Displaced(id) => self.displace(id),
            Internal::RoomVerdict(v) => self.on_room_verdict(v),
            Internal::Redirect(mut sweep) => {
                if sweep.count.is_none() && sweep.over_ms > 0 {
                    // Paced over time: by the connections held now (an upper bound on the
                    // established ones, so the pace errs on the fast side).
                    sweep.count = Some(self.conns.len() as u64);
                }
                self.sweeps.push_back(ActiveSweep {
                    sweep,
                    started_ms: self.now.ms(),
                    done: 0,
                    cursor: 0,
                });
            }
            Internal::Shutdown => self.begin_shutdown(),
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Push { msg, targets, reply } => {
                self.start_push(Arc::from([msg]), targets, reply)
            }
            Command::PushMany { msgs, targets, reply } => self.start_push(msgs, targets, reply),
            Command::Join { room, conns, reply } => {
                let _ = reply.send(self.join_conns(&room, conns));
            }
            Command::Leave { room, conns, reply } => {
                let mut left = Vec::new();
                for id in conns {
                    let Some(key) = self.find(id) else { continue };
                    let before = self.rooms.rooms_of(key as u32);
                    if usize::from(self.leave_room(key, &room)) < before {
                        self.node.metrics.room_leaves.inc();
                        left.push(id);
                    }
                }
                let _ = reply.send(left);
            }
            Command::RoomUsers { room, reply } => {
                let mut hashes = Vec::new();
                if let Some(no) = self.node.rooms.find(&room) {
                    hashes.reserve(self.rooms.len(no));
                    for slot in self.rooms.members(no) {
                        if let Some(user) =
                            self.conns.get(slot as usize).and_then(|c| c.user.as_ref())
                        {
                            hashes.push(user_hash(user));
                        }
                    }
                }
                let _ = reply.send(hashes);
            }
            Command::Kick { conn, code, reason } => {
                if let Some(key) = self.find(conn) {
                    self.node.metrics.kicks_admin.inc();
                    self.call(key, |c, ctx| c.session.close(ctx, Close::Kick(code, reason)));
                }
            }
        }
    }

    /// A transport that will not be adopted after all: the node's counts forget it.
    fn forget_arrival(&self) {
        self.node.admission_dropped();
    }

    fn adopt(&mut self, mut transport: T, peer: SocketAddr, refusal: Option<Admit>) {
        let m = &self.node.metrics;
        if self.stopping.is_some() {
            self.forget_arrival();
            return;
        }
        let conn = Conn::new(transport, Session::new(self.now));
        let Some((key, generation)) = self.conns.insert(conn) else {
            tracing::warn!(%peer, "worker connection table full; connection refused");
            self.forget_arrival();
            m.rejected_max_connections.inc();
            return;
        };
        let Some(conn) = self.conns.get_mut(key) else { return };
        // Writable interest is added only while bytes are queued (`want_writable`).
        let interest = Interest::READABLE;
        if let Err(e) = self.poll.registry().register(&mut conn.transport, Token(key), interest) {
            tracing::warn!(%peer, error = %e, "cannot register socket");
            if let Some(c) = self.conns.remove(key) {
                transport = c.transport;
                drop(transport);
            }
            self.forget_arrival();
            return;
        }
        conn.transport.adopted(Feed::<T>::token(key, generation));
        m.connections.inc();
        if let Some(r) = refusal {
            // Told at once: the client reads it as the answer to its HELLO, and the close
            // lingers until the client goes, so its HELLO is read, not answered with a reset.
            let close = match r {
                // Full: go to a less loaded gateway (or ask the scheduler).
                Admit::Full => Close::Redirect(Redirect {
                    code: Code::SERVER_FULL,
                    delay_ms: 0,
                    jitter_ms: FULL_JITTER_MS,
                    // Addresses of the transport the client came over.
                    addresses: self.node.alternatives(self.transport_of(key)),
                    overlap: false,
                }),
                Admit::Refused(r) => Close::AuthFail(Code::OVERLOADED, r.message().to_owned()),
            };
            self.call(key, |c, ctx| c.session.close(ctx, close));
            return;
        }
        self.rearm(key);
    }

    /// The transport connection `key` came over: QUIC on the QUIC loop (after the TCP
    /// ones), TLS or plain TCP on a TCP loop.
    fn transport_of(&self, key: usize) -> holdfast_scheduler::model::Transport {
        use holdfast_scheduler::model::Transport;
        if usize::from(self.index) >= self.node.worker_count {
            Transport::Quic
        } else if self.conns.get(key).is_some_and(|c| c.transport.is_tls()) {
            Transport::Tls
        } else {
            Transport::Tcp
        }
    }

    fn on_upstream_result(&mut self, result: UpstreamResult) {
        let Some(key) = self.find(result.conn) else { return };
        let outcome = match result.outcome {
            UpstreamOutcome::Reply { status, payload } => Ok((status, payload)),
            UpstreamOutcome::Failed(code) => Err(code),
        };
        self.call(key, |c, ctx| c.session.handle_upstream_result(ctx, result.request_id, outcome));
    }

    /// Close every connection: authenticated ones hear `REDIRECT` `SERVER_SHUTDOWN` and get
    /// up to the linger to take it; the loop stops when all are gone or the time is up.
    fn begin_shutdown(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        let linger = u64::from(self.limits.linger_ms);
        self.stopping = Some(self.now.ms() + linger + SHUTDOWN_GRACE_MS);
        for key in self.conns.keys() {
            let established = self.conns.get(key).is_some_and(|c| c.session.is_established());
            let close = if established {
                Close::Redirect(Redirect {
                    code: Code::SERVER_SHUTDOWN,
                    delay_ms: 0,
                    jitter_ms: 5_000,
                    addresses: Vec::new(),
                    overlap: false,
                })
            } else {
                Close::Shutdown
            };
            self.call(key, |c, ctx| c.session.close(ctx, close));
        }
        for b in self.broadcasts.drain(..) {
            let _ = b.reply.send(b.report);
        }
        for s in std::mem::take(&mut self.sweeps) {
            self.end_sweep(&s);
        }
    }

    /// Drop whatever is left when the shutdown's time is up.
    fn abandon_all(&mut self) {
        for key in self.conns.keys() {
            self.release(key);
        }
    }

    // ----- pushes -----------------------------------------------------------------------

    fn encode_push(msg: &PushMsg) -> Option<Vec<u8>> {
        let frame = Frame::Push(Push {
            seq: 0,
            ack_required: msg.ack_required,
            message_id: msg.message_id,
            topic: msg.topic.clone(),
            payload: msg.payload.clone(),
        });
        let mut template = Vec::new();
        match frame.encode(&mut template) {
            Ok(()) => Some(template),
            Err(e) => {
                tracing::warn!(error = %e, "push not encodable");
                None
            }
        }
    }

    /// Take a push command: deliver to a list of connections (or a small room) now, start
    /// a broadcast (every connection, or a large room's members) delivered in chunks.
    fn start_push(
        &mut self,
        msgs: Arc<[Arc<PushMsg>]>,
        targets: Targets,
        reply: tokio::sync::oneshot::Sender<PushReport>,
    ) {
        let mut templates = Vec::with_capacity(msgs.len());
        for msg in msgs.iter() {
            match Self::encode_push(msg) {
                Some(t) => templates.push(t),
                None => {
                    let _ = reply.send(PushReport::default());
                    return;
                }
            }
        }
        let targets = match targets {
            Targets::Conns(ids) => {
                let report = self.push_to(&msgs, &mut templates, ids, true);
                // The API side may have given up waiting; the push was still done.
                let _ = reply.send(report);
                return;
            }
            Targets::All => None,
            Targets::Room(room) => {
                let ids = self.room_targets(&room);
                if ids.len() <= BROADCAST_CHUNK {
                    let _ = reply.send(self.push_to(&msgs, &mut templates, ids, false));
                    return;
                }
                Some(ids)
            }
        };
        self.broadcasts.push_back(Broadcast {
            msgs,
            templates,
            targets,
            cursor: 0,
            report: PushReport::default(),
            reply,
        });
    }

    /// Deliver to `ids` now; `listed`: report each connection with its sequence (else only
    /// the count).
    fn push_to(
        &mut self,
        msgs: &[Arc<PushMsg>],
        templates: &mut [Vec<u8>],
        ids: Vec<ConnId>,
        listed: bool,
    ) -> PushReport {
        let mut report = PushReport::default();
        for id in ids {
            let result = match self.find(id) {
                Some(key) => self.push_many(key, msgs, templates),
                None => Err(PushFailure::Closed),
            };
            match result {
                Ok(seq) if listed => report.delivered.push((id, seq)),
                Ok(_) => report.delivered_count += 1,
                Err(f) => report.failed.push((id, f)),
            }
        }
        if listed {
            report.delivered_count = report.delivered.len();
        }
        self.count_pushes(&report);
        report
    }

    /// Write every message, in order, to one connection as one write; the sequence of the
    /// last one written, or why none was.
    fn push_many(
        &mut self,
        key: usize,
        msgs: &[Arc<PushMsg>],
        templates: &mut [Vec<u8>],
    ) -> Result<u32, PushFailure> {
        if let ([msg], [template]) = (msgs, &mut *templates) {
            return self.push_one(key, msg, template);
        }
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        let mut result = Err(PushFailure::Closed);
        for (msg, template) in msgs.iter().zip(templates.iter()) {
            let (len, ack, id) = (template.len(), msg.ack_required, msg.message_id);
            match self.with(key, |c, ctx| c.session.push(ctx, len, ack, id)) {
                Some(Ok(seq)) => {
                    let at = out.len();
                    out.extend_from_slice(template);
                    set_id(&mut out[at..], seq);
                    result = Ok(seq);
                }
                // Too large for this client: the others still go.
                Some(Err(PushFailure::TooLarge)) if result.is_err() => {
                    result = Err(PushFailure::TooLarge);
                }
                Some(Err(PushFailure::TooLarge)) => {}
                // The session is closing (its final frame is queued): nothing more goes.
                Some(Err(f)) => {
                    out.clear();
                    result = Err(f);
                    break;
                }
                None => {
                    out.clear();
                    result = Err(PushFailure::Closed);
                    break;
                }
            }
        }
        if !out.is_empty()
            && let Err(f) = self.transmit(key, &out)
        {
            result = Err(f);
        }
        if out.capacity() > 64 * 1024 {
            out = Vec::new();
        }
        self.scratch = out;
        self.settle(key);
        result
    }

    /// Write one push to one connection; the sequence it got, or why not.
    fn push_one(
        &mut self,
        key: usize,
        msg: &PushMsg,
        template: &mut [u8],
    ) -> Result<u32, PushFailure> {
        let len = template.len();
        let taken =
            self.with(key, |c, ctx| c.session.push(ctx, len, msg.ack_required, msg.message_id));
        let result = match taken {
            None => Err(PushFailure::Closed),
            Some(Err(f)) => Err(f),
            Some(Ok(seq)) => {
                set_id(template, seq);
                self.transmit(key, template).map(|()| seq)
            }
        };
        self.settle(key);
        result
    }

    /// Deliver the next chunk of the oldest broadcast; report it once it has visited every
    /// slot (or target). Connections established when the push was accepted get it unless
    /// they close first; ones that authenticate (or join the room) meanwhile may or may not.
    fn continue_broadcast(&mut self) {
        let Some(mut b) = self.broadcasts.pop_front() else { return };
        let total = b.targets.as_ref().map_or(self.conns.end(), Vec::len);
        let end = (b.cursor + BROADCAST_CHUNK).min(total);
        for i in b.cursor..end {
            let (key, id) = match &b.targets {
                None => (Some(i), self.conn_id(i)),
                Some(ids) => (self.find(ids[i]), ids[i]),
            };
            let established =
                key.is_some_and(|k| self.conns.get(k).is_some_and(|c| c.session.is_established()));
            let Some(key) = key.filter(|_| established) else {
                if b.targets.is_some() {
                    b.report.failed.push((id, PushFailure::Closed));
                }
                continue;
            };
            match self.push_many(key, &b.msgs, &mut b.templates) {
                Ok(_) => b.report.delivered_count += 1,
                Err(f) => b.report.failed.push((id, f)),
            }
        }
        b.cursor = end;
        let total = b.targets.as_ref().map_or(self.conns.end(), Vec::len);
        if b.cursor >= total {
            self.count_pushes(&b.report);
            let _ = b.reply.send(b.report);
        } else {
            self.broadcasts.push_front(b);
        }
    }

    /// Redirect the next connections of the oldest sweep: as many as its pace allows by
    /// now, at most [`BROADCAST_CHUNK`] per turn.
    fn continue_sweep(&mut self) {
        let Some(mut s) = self.sweeps.pop_front() else { return };
        let due = match s.sweep.count {
            None => u64::MAX,
            Some(n) if s.sweep.over_ms == 0 => n,
            Some(n) => {
                let elapsed = self.now.ms().saturating_sub(s.started_ms).min(s.sweep.over_ms);
                // At least one as soon as it starts, then evenly over `over_ms`.
                (n.saturating_mul(elapsed) / s.sweep.over_ms).max(1).min(n)
            }
        };
        let mut budget = due.saturating_sub(s.done).min(BROADCAST_CHUNK as u64);
        let end = self.conns.end();
        // Empty slots cost a visit too: bound those as well.
        let mut visits = 4 * BROADCAST_CHUNK;
        let shed = s.sweep.reason == SweepReason::Rebalance;
        while budget > 0 && visits > 0 && s.cursor < end {
            let key = s.cursor;
            s.cursor += 1;
            visits -= 1;
            let established =
                self.conns.get(key).is_some_and(|c| c.session.phase() == Phase::Established);
            if !established {
                continue;
            }
            let tls = self.conns.get(key).is_some_and(|c| c.transport.is_tls());
            let redirect = match &s.sweep.tls_redirect {
                Some(r) if tls => r.clone(),
                _ => s.sweep.redirect.clone(),
            };
            let hold_ms = s.sweep.hold_ms;
            self.call(key, |c, ctx| c.session.redirect(ctx, redirect, hold_ms));
            if self.conns.get(key).is_some_and(|c| c.session.phase() == Phase::Moving) {
                self.node.metrics.connections_moving.inc();
            }
            s.done += 1;
            budget -= 1;
            let m = &self.node.metrics.cluster;
            m.redirects[s.sweep.reason as usize].inc();
            if shed {
                m.shed_pending.dec();
            }
        }
        let finished = s.cursor >= self.conns.end() || s.sweep.count.is_some_and(|n| s.done >= n);
        if finished {
            self.end_sweep(&s);
        } else {
            self.sweeps.push_front(s);
        }
    }

    /// A sweep is over: what a shed order could not redirect is no longer pending.
    fn end_sweep(&self, s: &ActiveSweep) {
        if s.sweep.reason == SweepReason::Rebalance
            && let Some(n) = s.sweep.count
        {
            self.node.metrics.cluster.shed_pending.sub(n.saturating_sub(s.done) as i64);
        }
    }

    fn count_pushes(&self, report: &PushReport) {
        let m = &self.node.metrics;
        m.pushes_out.inc_by(report.delivered_count as u64);
        m.pushes_failed.inc_by(report.failed.len() as u64);
    }

    // ----- timers and counters ----------------------------------------------------------

    /// Make sure a wheel entry fires no later than the connection's deadline.
    fn rearm(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else { return };
        let Some(due_ms) = conn.session.poll_timeout(&self.limits, self.now) else { return };
        let at = self.origin + Duration::from_millis(due_ms);
        let due = self.wheel.due_tick(at);
        let live = conn.transport.timer_tick();
        if live != 0 && (due.wrapping_sub(live) as i32) >= 0 {
            return; // the live entry fires first and reschedules
        }
        let tick = self.wheel.schedule(key as u32, at);
        if let Some(conn) = self.conns.get_mut(key) {
            conn.transport.set_timer_tick(tick);
        }
    }

    fn on_ticks(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.advance(self.origin + Duration::from_micros(self.now.mono_us), &mut fired);
        for (key, tick) in fired.drain(..) {
            let key = key as usize;
            let Some(conn) = self.conns.get_mut(key) else { continue };
            if conn.transport.timer_tick() != tick {
                continue; // stale: the connection rescheduled, or the slot was reused
            }
            conn.transport.set_timer_tick(0);
            self.call(key, |c, ctx| c.session.handle_timeout(ctx));
        }
        self.fired = fired;
    }

    /// Add the loop's local counters to the node's metrics (every [`FLUSH_MS`], or now).
    fn flush_stats(&mut self, force: bool) {
        if !force && self.now.ms() < self.flushed_at + FLUSH_MS {
            return;
        }
        self.flushed_at = self.now.ms();
        let s = std::mem::take(&mut self.stats);
        let m = &self.node.metrics;
        m.frames_in.inc_by(s.frames_in);
        m.heartbeats.inc_by(s.heartbeats);
        m.pushes_acked.inc_by(s.pushes_acked);
        m.protocol_errors.inc_by(s.protocol_errors);
        m.yields.inc_by(s.yields);
        m.backlog_waits.inc_by(std::mem::take(&mut self.backlog.waits));
        m.upstream.rejected.inc_by(s.upstream_refused);
        if s.malformed_hellos > 0 {
            m.auth_failure("malformed_hello").inc_by(s.malformed_hellos);
        }
        if s.unsupported_versions > 0 {
            m.auth_failure("unsupported_version").inc_by(s.unsupported_versions);
        }
        let delta = std::mem::take(&mut self.queued_delta);
        if delta != 0 {
            m.outbound_queue_bytes.add(delta);
            // The high-water mark the memory reclaimer compares with (`memory::reclaim`).
            self.node.queue_peak.fetch_max(m.outbound_queue_bytes.get(), Ordering::Relaxed);
        }
    }
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drive a share on a virtual clock: a backlog whose every pass costs `pass_us` and
    /// that always has more to do; the loop sleeps as `wait` says while in debt. Returns
    /// the fraction of time spent on the backlog.
    fn run(percent: u8, pass_us: u64, total_us: u64) -> f64 {
        let mut share = BacklogShare::new(percent);
        let (mut now, mut busy) = (0u64, 0u64);
        while now < total_us {
            if share.may_run(now) {
                share.spent(pass_us);
                now += pass_us;
                busy += pass_us;
            } else {
                now += share.wait().as_micros() as u64;
            }
        }
        busy as f64 / now as f64
    }

    #[test]
    fn the_backlog_gets_its_share_of_a_busy_loop_and_no_more() {
        for (percent, pass_us) in [(50, 300), (50, 1_500), (10, 200), (90, 700)] {
            let got = run(percent, pass_us, 10_000_000);
            let want = f64::from(percent) / 100.0;
            assert!((got - want).abs() < 0.02, "{percent}% with {pass_us} µs passes: {got:.3}");
        }
        assert_eq!(run(100, 500, 1_000_000), 1.0, "100 % is no cap");
    }

    #[test]
    fn a_quiet_spell_banks_at_most_the_burst() {
        let mut share = BacklogShare::new(50);
        assert!(share.may_run(60_000_000));
        assert_eq!(share.credit_us, BACKLOG_BURST_US);
        share.spent(10_000);
        assert!(!share.may_run(60_000_001));
        assert_eq!(share.waits, 1);
        // 8 ms of debt at 50 % takes 16 ms to repay.
        let wait = share.wait().as_micros() as i64;
        assert!((wait - 16_000).abs() <= 2, "{wait}");
        assert!(share.may_run(60_000_001 + wait as u64));
    }
}
