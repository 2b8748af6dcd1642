//! One event loop: a mio `Poll` owning a slab of compact connection records.
//!
//! Every connection belongs to one worker for its whole life, so nothing on the
//! per-connection path takes a lock or touches another thread's memory: the read buffer is
//! the worker's (one per loop, reused), the connection's timer is one 4-byte entry in the
//! worker's [`Wheel`], and the record itself is [`Conn`]. The rest of the process reaches a
//! worker only through its command queue ([`Command`]).
//!
//! # The hot paths
//!
//! - **Heartbeat**: a `PING` is read into the loop buffer, answered with a `PONG` built on
//!   the stack and written straight to the socket; the only per-connection write is
//!   `last_rx_tick`. No allocation, no timer operation.
//! - **Idle**: an idle authenticated connection has no buffer at all; its one wheel entry
//!   fires at the idle deadline, finds that traffic arrived since (from `last_rx_tick`) and
//!   reschedules itself for the new deadline.
//! - **Push**: the frame is encoded once per worker, and each connection's copy gets its own
//!   sequence patched into the header before the write.
//!
//! # Timers
//!
//! A connection has at most one live wheel entry, whose tick it stores in `timer_tick`. When
//! an entry fires and the tick matches, the connection's deadline is computed from its
//! state (handshake, idle, slow-consumer grace or close linger): past → act, future →
//! schedule again. Entries whose tick no longer matches are stale and ignored.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use holdfast_codec::frame::head::set_id;
use holdfast_codec::rules::{self, ConnState, HeartbeatPolicy, Verdict};
use holdfast_codec::{
    AuthFail, AuthOk, Code, ErrorFrame, Frame, FrameType, HEADER_LEN, Head, Kick, PROTOCOL_VERSION,
    Push, Redirect, UpstreamReply, check_head,
};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::conn::{Conn, Phase};
use crate::dispatch::{Command, PushFailure, PushMsg, PushReport, Targets};
use crate::events::{Event, UnackedPush};
use crate::ids::ConnId;
use crate::metrics::CloseReason;
use crate::server::Shared;
use crate::upstream::{SubmitError, UpstreamOutcome, UpstreamRequest, UpstreamResult};
use crate::wheel::Wheel;

/// The token of the worker's waker.
pub(crate) const WAKER: Token = Token(usize::MAX);

/// Reads per readable event before the connection yields to the others (fairness).
const READ_BUDGET: u32 = 4;
/// Size of the loop's read buffer, at least.
const READ_BUF: usize = 64 * 1024;
/// How long a closing connection may linger to flush its final frame.
const LINGER: Duration = Duration::from_secs(1);
/// The versions this gateway speaks.
const VERSIONS: [u16; 1] = [PROTOCOL_VERSION];
/// Most slots a wheel gets; deadlines beyond the range are rescheduled when they fire.
const MAX_WHEEL_SLOTS: u64 = 32_768;

/// One event loop and the connections it owns.
pub(crate) struct Worker {
    index: u8,
    shared: Arc<Shared>,
    poll: Poll,
    rx: Receiver<Command>,
    conns: Slab<Conn>,
    wheel: Wheel,
    origin: Instant,
    tick: Duration,
    now: Instant,
    now_tick: u32,
    next_generation: u16,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    retry: Vec<(usize, u16)>,
    fired: Vec<(u32, u32)>,
    limits: Limits,
}

/// Configuration turned into the units the loop works in.
struct Limits {
    max_frame: u32,
    handshake_ticks: u32,
    slow_ticks: u32,
    linger_ticks: u32,
    heartbeat: HeartbeatPolicy,
    queue_high: usize,
    queue_low: usize,
    queue_max: usize,
    max_unacked: usize,
    max_inflight: u16,
}

fn ticks(d: Duration, tick: Duration) -> u32 {
    let t = d.as_nanos().div_ceil(tick.as_nanos().max(1));
    u32::try_from(t).unwrap_or(u32::MAX).max(1)
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Write as much of `bytes` as the socket takes now.
fn write_some(mut stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < bytes.len() {
        match stream.write(&bytes[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

impl Worker {
    /// A worker with its own poll, ready to [`run`](Self::run).
    pub(crate) fn new(index: u8, shared: Arc<Shared>, poll: Poll, rx: Receiver<Command>) -> Worker {
        let cfg = &shared.cfg;
        let tick = Duration::from_millis(cfg.heartbeat.wheel_tick_ms.max(1));
        let heartbeat = cfg.heartbeat.policy();
        let longest_ms = [
            cfg.listen.handshake_timeout_ms,
            u64::from(heartbeat.max_ms) * u64::from(heartbeat.idle_factor),
            cfg.backpressure.slow_consumer_ms,
            LINGER.as_millis() as u64,
        ]
        .into_iter()
        .max()
        .unwrap_or(1);
        let slots = (longest_ms / tick.as_millis().max(1) as u64 + 2).min(MAX_WHEEL_SLOTS);
        let origin = Instant::now();
        let per_worker = cfg.listen.max_connections / shared.worker_count.max(1) + 1;
        let limits = Limits {
            max_frame: cfg.listen.max_frame,
            handshake_ticks: ticks(Duration::from_millis(cfg.listen.handshake_timeout_ms), tick),
            slow_ticks: ticks(Duration::from_millis(cfg.backpressure.slow_consumer_ms), tick),
            linger_ticks: ticks(LINGER, tick),
            heartbeat,
            queue_high: cfg.backpressure.queue_bytes_high,
            queue_low: cfg.backpressure.queue_bytes_low,
            queue_max: cfg.backpressure.queue_bytes_max,
            max_unacked: cfg.push.max_unacked as usize,
            max_inflight: cfg.upstream.max_inflight_per_conn,
        };
        Worker {
            index,
            // Reserved address space only: pages of the slab become resident as they fill,
            // so this costs no memory up front and saves the doubling copies (and their
            // slack) as the worker fills.
            conns: Slab::with_capacity(per_worker.min(ConnId::MAX_SLOT as usize)),
            wheel: Wheel::new(tick, slots as usize, origin),
            origin,
            tick,
            now: origin,
            now_tick: 0,
            next_generation: 1,
            buf: vec![0; READ_BUF.max(limits.max_frame as usize)],
            scratch: Vec::with_capacity(256),
            retry: Vec::new(),
            fired: Vec::new(),
            limits,
            shared,
            poll,
            rx,
        }
    }

    /// Run until a [`Command::Shutdown`] arrives or the command queue is gone.
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = if self.retry.is_empty() {
                self.wheel.next_tick_at().map(|t| t.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(worker = self.index, error = %e, "poll failed; worker stops");
                return;
            }
            self.set_now(Instant::now());
            let mut woken = false;
            for ev in events.iter() {
                if ev.token() == WAKER {
                    woken = true;
                    continue;
                }
                let key = ev.token().0;
                if ev.is_writable() {
                    self.flush(key);
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    self.on_readable(key);
                }
            }
            if !self.retry.is_empty() {
                for (key, generation) in std::mem::take(&mut self.retry) {
                    if self.conns.get(key).is_some_and(|c| c.generation == generation) {
                        self.on_readable(key);
                    }
                }
            }
            if woken && !self.drain_commands() {
                return;
            }
            self.on_ticks();
        }
    }

    fn set_now(&mut self, now: Instant) {
        self.now = now;
        let t = now.saturating_duration_since(self.origin).as_nanos() / self.tick.as_nanos();
        self.now_tick = u32::try_from(t).unwrap_or(u32::MAX);
    }

    fn conn_id(&self, key: usize, conn: &Conn) -> ConnId {
        ConnId::new(self.shared.cfg.node.id, self.index, key as u32, conn.generation)
    }

    fn find(&self, id: ConnId) -> Option<usize> {
        if id.worker() != self.index || id.node() != self.shared.cfg.node.id {
            return None;
        }
        let key = id.slot() as usize;
        self.conns.get(key).filter(|c| c.generation == id.generation()).map(|_| key)
    }

    // ---- commands ------------------------------------------------------------------------

    /// Handle every queued command; false when the worker must stop.
    fn drain_commands(&mut self) -> bool {
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Command::Adopt(stream, peer) => self.adopt(stream, peer),
                Command::Push { msg, targets, reply } => {
                    let report = self.push(&msg, targets);
                    // The API side may have given up waiting; the push was still done.
                    let _ = reply.send(report);
                }
                Command::Kick { conn, code, reason } => {
                    if let Some(key) = self.find(conn) {
                        self.kick(key, code, &reason);
                    }
                }
                Command::Upstream(result) => self.on_upstream_result(result),
                Command::Shutdown => {
                    self.shutdown();
                    return false;
                }
            }
        }
        true
    }

    fn adopt(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        let m = &self.shared.metrics;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if key > ConnId::MAX_SLOT as usize {
            tracing::warn!(%peer, "worker slab full; connection refused");
            self.shared.open.fetch_sub(1, Ordering::Relaxed);
            m.rejected_max_connections.inc();
            return;
        }
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(%peer, error = %e, "cannot register socket");
            self.shared.open.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        entry.insert(Conn::new(stream, generation, self.now_tick));
        m.connections.inc();
        self.rearm(key);
    }

    fn push(&mut self, msg: &PushMsg, targets: Targets) -> PushReport {
        let mut report = PushReport::default();
        let frame = Frame::Push(Push {
            seq: 0,
            ack_required: msg.ack_required,
            message_id: msg.message_id,
            topic: msg.topic.clone(),
            payload: msg.payload.clone(),
        });
        let mut template = Vec::new();
        if let Err(e) = frame.encode(&mut template) {
            tracing::warn!(error = %e, "push not encodable");
            return report;
        }
        match targets {
            Targets::Conns(ids) => {
                for id in ids {
                    match self.find(id) {
                        Some(key) => match self.push_one(key, msg, &mut template) {
                            Ok(seq) => report.delivered.push((id, seq)),
                            Err(f) => report.failed.push((id, f)),
                        },
                        None => report.failed.push((id, PushFailure::Closed)),
                    }
                }
                report.delivered_count = report.delivered.len();
            }
            Targets::All => {
                let keys: Vec<usize> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.phase == Phase::Established)
                    .map(|(k, _)| k)
                    .collect();
                for key in keys {
                    match self.push_one(key, msg, &mut template) {
                        Ok(_) => report.delivered_count += 1,
                        Err(f) => {
                            let id = self.conns.get(key).map(|c| self.conn_id(key, c));
                            if let Some(id) = id {
                                report.failed.push((id, f));
                            }
                        }
                    }
                }
            }
        }
        let m = &self.shared.metrics;
        m.pushes_out.inc_by(report.delivered_count as u64);
        m.pushes_failed.inc_by(report.failed.len() as u64);
        report
    }

    /// Write one push to one connection; the sequence it got, or why not.
    fn push_one(
        &mut self,
        key: usize,
        msg: &PushMsg,
        template: &mut [u8],
    ) -> Result<u32, PushFailure> {
        let Some(conn) = self.conns.get_mut(key) else { return Err(PushFailure::Closed) };
        if conn.phase != Phase::Established {
            return Err(PushFailure::Closed);
        }
        if conn.push_seq == u32::MAX {
            self.close_error(key, Code::SEQUENCE_EXHAUSTED, "push sequence exhausted");
            return Err(PushFailure::Closed);
        }
        let unacked = conn.extra.as_ref().map_or(0, |e| e.unacked.len());
        if msg.ack_required && unacked >= self.limits.max_unacked {
            self.close_error(key, Code::SLOW_CONSUMER, "too many unacknowledged pushes");
            return Err(PushFailure::SlowConsumer);
        }
        conn.push_seq += 1;
        let seq = conn.push_seq;
        if msg.ack_required {
            conn.extra().unacked.push_back((seq, msg.message_id));
        }
        set_id(template, seq);
        if self.send(key, template) { Ok(seq) } else { Err(PushFailure::SlowConsumer) }
    }

    fn kick(&mut self, key: usize, code: Code, reason: &str) {
        let m = &self.shared.metrics;
        if code == Code::LOGGED_IN_ELSEWHERE {
            m.kicks_logged_in_elsewhere.inc();
        } else {
            m.kicks_admin.inc();
        }
        let frame = Frame::Kick(Kick { code, reason: reason.to_owned() });
        self.close_with(key, &frame, CloseReason::Kicked);
    }

    fn on_upstream_result(&mut self, result: UpstreamResult) {
        let Some(key) = self.find(result.conn) else { return };
        let Some(conn) = self.conns.get_mut(key) else { return };
        if let Some(extra) = conn.extra.as_mut() {
            extra.upstream_inflight = extra.upstream_inflight.saturating_sub(1);
        }
        if conn.phase != Phase::Established {
            return;
        }
        let frame = match result.outcome {
            UpstreamOutcome::Reply { status, payload } => Frame::UpstreamReply(UpstreamReply {
                request_id: result.request_id,
                status,
                payload,
            }),
            UpstreamOutcome::Failed(code) => Frame::Error(ErrorFrame {
                request_id: result.request_id,
                fatal: false,
                code,
                message: code.name().unwrap_or("upstream failed").to_owned(),
            }),
        };
        if self.send_frame(key, &frame) {
            self.release(key);
        }
    }

    fn shutdown(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        let redirect = Frame::Redirect(Redirect {
            code: Code::SERVER_SHUTDOWN,
            delay_ms: 0,
            jitter_ms: 5_000,
            addresses: Vec::new(),
        });
        for key in keys {
            if self.conns.get(key).is_some_and(|c| c.phase == Phase::Established) {
                self.close_with(key, &redirect, CloseReason::Shutdown);
            }
            self.finish(key, CloseReason::Shutdown);
        }
    }

    // ---- input ---------------------------------------------------------------------------

    fn on_readable(&mut self, key: usize) {
        let mut buf = std::mem::take(&mut self.buf);
        let mut budget = READ_BUDGET;
        while let Some(conn) = self.conns.get_mut(key) {
            match (&conn.stream).read(&mut buf) {
                Ok(0) => {
                    self.finish(key, CloseReason::PeerClosed);
                    break;
                }
                Ok(n) => {
                    if !self.ingest(key, &buf[..n]) {
                        break;
                    }
                    if n < buf.len() {
                        // A short read emptied the socket; the next arrival is a new edge.
                        break;
                    }
                    budget -= 1;
                    if budget == 0 {
                        let generation = self.conns[key].generation;
                        self.retry.push((key, generation));
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.finish(key, CloseReason::IoError);
                    break;
                }
            }
        }
        self.buf = buf;
    }

    /// Feed freshly read bytes to a connection; false once it is closing or gone.
    fn ingest(&mut self, key: usize, data: &[u8]) -> bool {
        let conn = &mut self.conns[key];
        if conn.phase == Phase::Closing {
            return true; // read and discarded until the close
        }
        let pending = conn.extra.as_mut().map(|e| std::mem::take(&mut e.partial));
        match pending {
            Some(mut partial) if !partial.is_empty() => {
                partial.extend_from_slice(data);
                let Some(used) = self.parse(key, &partial) else { return false };
                partial.drain(..used);
                self.keep_partial(key, partial)
            }
            _ => {
                let Some(used) = self.parse(key, data) else { return false };
                if used < data.len() {
                    self.keep_partial(key, data[used..].to_vec())
                } else {
                    self.release(key);
                    true
                }
            }
        }
    }

    fn keep_partial(&mut self, key: usize, mut partial: Vec<u8>) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return false };
        if partial.is_empty() {
            partial = Vec::new();
        } else if partial.capacity() > 2 * partial.len() + 1024 {
            partial.shrink_to_fit();
        }
        conn.extra().partial = partial;
        self.release(key);
        true
    }

    /// Handle every whole frame at the front of `data`: the bytes used, or `None` once the
    /// connection is closing or gone.
    fn parse(&mut self, key: usize, data: &[u8]) -> Option<usize> {
        let mut pos = 0;
        while pos < data.len() {
            let rest = &data[pos..];
            let head = match check_head(rest, self.limits.max_frame) {
                Ok(Some(head)) => head,
                Ok(None) => break,
                Err(e) => {
                    self.protocol_error(key, e.code(), &e.to_string());
                    return None;
                }
            };
            let total = HEADER_LEN + head.length as usize;
            if rest.len() < total {
                break;
            }
            if !self.on_frame(key, head, &rest[HEADER_LEN..total]) {
                return None;
            }
            pos += total;
        }
        Some(pos)
    }

    /// Handle one whole inbound frame; false once the connection is closing or gone.
    fn on_frame(&mut self, key: usize, head: Head, body: &[u8]) -> bool {
        let m = &self.shared.metrics;
        m.frames_in.inc();
        let conn = &mut self.conns[key];
        // "Any complete inbound frame counts as liveness, not only `PING`."
        conn.last_rx_tick = self.now_tick;
        let state = match conn.phase {
            Phase::AwaitHello => ConnState::AwaitHello,
            Phase::Established => ConnState::Established,
            Phase::Closing => return false,
        };
        match rules::server_accepts(state, head.kind) {
            Verdict::Accept => {}
            Verdict::Skip => return true,
            Verdict::Reject(code) => {
                let why = format!("frame type {:#04x} not allowed now", head.kind);
                self.protocol_error(key, code, &why);
                return false;
            }
        }
        if head.kind == FrameType::Ping as u8 {
            m.heartbeats.inc();
            return self.pong(key, head.id, body);
        }
        if head.kind == FrameType::Ack as u8 && body == [0, 0] {
            return self.on_ack(key, head.id, &[]);
        }
        let frame = match Frame::decode(head, Bytes::copy_from_slice(body)) {
            Ok(frame) => frame,
            Err(e) => {
                if state == ConnState::AwaitHello {
                    m.auth_failure("malformed_hello").inc();
                }
                self.protocol_error(key, e.code(), &e.to_string());
                return false;
            }
        };
        match frame {
            Frame::Hello(hello) => self.on_hello(key, hello),
            Frame::Ack(ack) => self.on_ack(key, ack.cumulative, &ack.message_ids),
            Frame::Upstream(up) => self.on_upstream(key, up),
            Frame::Error(err) if err.fatal => {
                tracing::debug!(code = %err.code, message = %err.message, "client closes with error");
                self.finish(key, CloseReason::PeerClosed);
                false
            }
            // PONG, a non-fatal ERROR from the client, and extensions need nothing.
            _ => true,
        }
    }

    fn pong(&mut self, key: usize, id: u32, body: &[u8]) -> bool {
        // "The body is either empty (length 0) or exactly 8 bytes."
        if !(body.is_empty() || body.len() == 8) {
            self.protocol_error(key, Code::MALFORMED_FRAME, "PING body must be empty or 8 bytes");
            return false;
        }
        let mut out = [0u8; HEADER_LEN + 8];
        let head = Head { length: body.len() as u32, kind: FrameType::Pong as u8, flags: 0, id };
        head.encode(&mut &mut out[..HEADER_LEN]);
        out[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
        self.send(key, &out[..HEADER_LEN + body.len()])
    }

    fn on_hello(&mut self, key: usize, hello: holdfast_codec::Hello) -> bool {
        let shared = Arc::clone(&self.shared);
        let m = &shared.metrics;
        let version = match rules::negotiate_version(&hello.versions, &VERSIONS) {
            Ok(v) => v,
            Err(code) => {
                m.auth_failure("unsupported_version").inc();
                return self.auth_fail(key, code, "server speaks versions 1".to_owned());
            }
        };
        let now_secs = wall_ms() / 1000;
        let claims = match shared.verifier.verify(&hello.token, now_secs).and_then(|c| {
            shared.verifier.check_binding(&c, &hello.device_id, hello.platform).map(|()| c)
        }) {
            Ok(c) => c,
            Err(f) => {
                m.auth_failure(f.label()).inc();
                return self.auth_fail(key, f.code(), f.reason());
            }
        };
        let (heartbeat_ms, idle_timeout_ms) = self.limits.heartbeat.grant(hello.heartbeat_ms);
        let conn = &self.conns[key];
        let id = self.conn_id(key, conn);
        let registered = shared.registry.register(&claims.sub, id, hello.platform);
        let conn = &mut self.conns[key];
        conn.phase = Phase::Established;
        conn.platform = hello.platform;
        conn.idle_ticks = ticks(Duration::from_millis(u64::from(idle_timeout_ms)), self.tick);
        conn.user = Some(Arc::clone(&registered.user));
        // The device id is only ever read by the webhooks; without them an idle connection
        // does not pay an allocation for it.
        let keep_device = shared.upstream.enabled() || shared.events.enabled();
        conn.device = (keep_device && !hello.device_id.is_empty())
            .then(|| Arc::from(hello.device_id.as_str()));
        let remote = conn.stream.peer_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
        m.handshakes_ok.inc();
        m.connections_established.inc();
        let ok = Frame::AuthOk(AuthOk {
            version,
            capabilities: 0,
            conn_id: id.0,
            heartbeat_ms,
            idle_timeout_ms,
            max_frame: self.limits.max_frame,
            max_unacked: u32::try_from(self.limits.max_unacked).unwrap_or(u32::MAX),
            token_expires_ms: claims.exp.saturating_mul(1000),
            server_time_ms: wall_ms(),
        });
        shared.presence.online(&registered.user, id, hello.platform);
        shared.events.emit(Event::Connected {
            conn: id,
            user: Arc::clone(&registered.user),
            device: Arc::from(hello.device_id.as_str()),
            platform: hello.platform,
            remote,
            region: claims.region.clone(),
            at_ms: wall_ms(),
        });
        for old in registered.displaced {
            if let Some(old_key) = self.find(old) {
                self.kick(old_key, Code::LOGGED_IN_ELSEWHERE, "logged in elsewhere");
            } else if let Some(worker) = shared.worker(old.worker()) {
                worker.send(Command::Kick {
                    conn: old,
                    code: Code::LOGGED_IN_ELSEWHERE,
                    reason: "logged in elsewhere".to_owned(),
                });
            }
        }
        if !self.send_frame(key, &ok) {
            return false;
        }
        self.rearm(key);
        true
    }

    fn auth_fail(&mut self, key: usize, code: Code, reason: String) -> bool {
        self.close_with(key, &Frame::AuthFail(AuthFail { code, reason }), CloseReason::AuthFailed);
        false
    }

    fn on_ack(&mut self, key: usize, cumulative: u32, ids: &[u64]) -> bool {
        let conn = &mut self.conns[key];
        if let Err(code) = rules::check_ack(cumulative, conn.push_seq) {
            self.protocol_error(key, code, "ACK covers a sequence never sent");
            return false;
        }
        let mut acked = 0u64;
        if let Some(extra) = conn.extra.as_mut() {
            while extra.unacked.front().is_some_and(|(seq, _)| *seq <= cumulative) {
                extra.unacked.pop_front();
                acked += 1;
            }
            if !ids.is_empty() {
                let before = extra.unacked.len();
                extra.unacked.retain(|(_, mid)| !ids.contains(mid));
                acked += (before - extra.unacked.len()) as u64;
            }
            if extra.unacked.is_empty() && extra.unacked.capacity() > 0 {
                extra.unacked = Default::default();
            }
        }
        self.shared.metrics.pushes_acked.inc_by(acked);
        self.release(key);
        true
    }

    fn on_upstream(&mut self, key: usize, up: holdfast_codec::Upstream) -> bool {
        let shared = Arc::clone(&self.shared);
        let conn = &mut self.conns[key];
        let id = ConnId::new(shared.cfg.node.id, self.index, key as u32, conn.generation);
        let inflight = conn.extra.as_ref().map_or(0, |e| e.upstream_inflight);
        let refuse = |code: Code| {
            Frame::Error(ErrorFrame {
                request_id: up.request_id,
                fatal: false,
                code,
                message: code.name().unwrap_or("refused").to_owned(),
            })
        };
        if inflight >= self.limits.max_inflight {
            shared.metrics.upstream.rejected.inc();
            return self.send_frame(key, &refuse(Code::TOO_MANY_REQUESTS));
        }
        let request = UpstreamRequest {
            conn: id,
            request_id: up.request_id,
            user: conn.user.clone().unwrap_or_else(|| Arc::from("")),
            device: conn.device.clone().unwrap_or_else(|| Arc::from("")),
            platform: conn.platform,
            route: up.route,
            payload: up.payload,
        };
        match shared.upstream.try_submit(request) {
            Ok(()) => {
                if up.request_id != 0 {
                    conn.extra().upstream_inflight += 1;
                }
                true
            }
            Err(SubmitError::Disabled) => self.send_frame(key, &refuse(Code::UPSTREAM_UNAVAILABLE)),
            Err(SubmitError::Full) => self.send_frame(key, &refuse(Code::TOO_MANY_REQUESTS)),
        }
    }

    // ---- output --------------------------------------------------------------------------

    fn send_frame(&mut self, key: usize, frame: &Frame) -> bool {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let ok = match frame.encode(&mut scratch) {
            Ok(()) => self.send(key, &scratch),
            Err(e) => {
                tracing::warn!(error = %e, "frame not encodable; not sent");
                true
            }
        };
        if scratch.capacity() > 4096 {
            scratch = Vec::with_capacity(256);
        }
        self.scratch = scratch;
        ok
    }

    /// Write `bytes` or queue what the socket does not take; false once the connection is
    /// gone (a write error, or over the hard outbound cap).
    fn send(&mut self, key: usize, bytes: &[u8]) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return false };
        let mut written = 0;
        if conn.queued() == 0 {
            match write_some(&conn.stream, bytes) {
                Ok(n) => written = n,
                Err(_) => {
                    self.finish(key, CloseReason::IoError);
                    return false;
                }
            }
        }
        if written == bytes.len() {
            return true;
        }
        let rest = &bytes[written..];
        if conn.queued() + rest.len() > self.limits.queue_max {
            // Over the hard cap: the client takes nothing; it is dropped, not buffered.
            self.finish(key, CloseReason::SlowConsumer);
            return false;
        }
        let extra = conn.extra();
        if extra.out_pos > 0 && extra.out_pos * 2 >= extra.out.len() {
            extra.out.drain(..extra.out_pos);
            extra.out_pos = 0;
        }
        extra.out.extend_from_slice(rest);
        self.shared.metrics.outbound_queue_bytes.add(rest.len() as i64);
        if extra.queued() > self.limits.queue_high && extra.above_high_since.is_none() {
            extra.above_high_since = Some(self.now_tick);
            self.rearm(key);
        }
        true
    }

    /// Write queued bytes after the socket became writable.
    fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Some(extra) = conn.extra.as_mut() else { return };
        if extra.queued() == 0 {
            return;
        }
        let n = match write_some(&conn.stream, &extra.out[extra.out_pos..]) {
            Ok(n) => n,
            Err(_) => {
                self.finish(key, CloseReason::IoError);
                return;
            }
        };
        extra.out_pos += n;
        self.shared.metrics.outbound_queue_bytes.sub(n as i64);
        if extra.queued() == 0 {
            extra.out = Vec::new();
            extra.out_pos = 0;
            if conn.phase == Phase::Closing {
                let _ = conn.stream.shutdown(Shutdown::Write);
            }
        }
        if extra.queued() <= self.limits.queue_low {
            extra.above_high_since = None;
        }
        self.release(key);
    }

    /// Free the connection's rare state if it holds nothing live.
    fn release(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.release_extra();
        }
    }

    // ---- closing -------------------------------------------------------------------------

    fn protocol_error(&mut self, key: usize, code: Code, message: &str) {
        self.shared.metrics.protocol_errors.inc();
        self.close_error_reason(key, code, message, CloseReason::ProtocolError);
    }

    fn close_error(&mut self, key: usize, code: Code, message: &str) {
        let reason = if code == Code::SLOW_CONSUMER {
            CloseReason::SlowConsumer
        } else {
            CloseReason::ProtocolError
        };
        self.close_error_reason(key, code, message, reason);
    }

    fn close_error_reason(&mut self, key: usize, code: Code, message: &str, reason: CloseReason) {
        let mut message = message.to_owned();
        message.truncate(512);
        let frame = Frame::Error(ErrorFrame { request_id: 0, fatal: true, code, message });
        self.close_with(key, &frame, reason);
    }

    /// Send a final frame, stop reading, and close once it is written or after the linger.
    fn close_with(&mut self, key: usize, frame: &Frame, reason: CloseReason) {
        let Some(conn) = self.conns.get(key) else { return };
        if conn.phase == Phase::Closing {
            return;
        }
        self.depart(key, reason);
        // The final frame may exceed the soft marks, never the hard cap (checked in send).
        if !self.send_frame(key, frame) {
            return;
        }
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.phase = Phase::Closing;
        conn.last_rx_tick = self.now_tick;
        if conn.queued() == 0 {
            let _ = conn.stream.shutdown(Shutdown::Write);
        }
        // Nothing inbound matters any more.
        if let Some(extra) = conn.extra.as_mut() {
            extra.partial = Vec::new();
            extra.above_high_since = None;
        }
        self.rearm(key);
    }

    /// Drop a connection now.
    fn finish(&mut self, key: usize, reason: CloseReason) {
        if !self.conns.contains(key) {
            return;
        }
        self.depart(key, reason);
        let mut conn = self.conns.remove(key);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let m = &self.shared.metrics;
        m.connections.dec();
        m.outbound_queue_bytes.sub(conn.queued() as i64);
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// The bookkeeping of a connection leaving, done once: the close is counted, and an
    /// authenticated connection is unregistered and reported with its unacknowledged pushes.
    fn depart(&mut self, key: usize, reason: CloseReason) {
        let shared = Arc::clone(&self.shared);
        let conn = &mut self.conns[key];
        if conn.phase == Phase::Closing {
            return;
        }
        let m = &shared.metrics;
        m.close(reason).inc();
        let was_established = conn.phase == Phase::Established;
        conn.phase = Phase::Closing;
        if !was_established {
            return;
        }
        m.connections_established.dec();
        let id = ConnId::new(shared.cfg.node.id, self.index, key as u32, conn.generation);
        let Some(user) = conn.user.clone() else { return };
        let unacked: Vec<UnackedPush> = conn
            .extra
            .as_mut()
            .map(|e| std::mem::take(&mut e.unacked))
            .unwrap_or_default()
            .into_iter()
            .map(|(seq, message_id)| UnackedPush { seq, message_id })
            .collect();
        m.pushes_unacked_on_close.inc_by(unacked.len() as u64);
        shared.registry.unregister(&user, id);
        shared.presence.offline(&user, id);
        shared.events.emit(Event::Disconnected {
            conn: id,
            user,
            device: conn.device.clone().unwrap_or_else(|| Arc::from("")),
            platform: conn.platform,
            reason: reason.as_str(),
            at_ms: wall_ms(),
            unacked,
        });
    }

    // ---- timers --------------------------------------------------------------------------

    /// The tick at which the connection's state needs attention.
    fn deadline(&self, conn: &Conn) -> u32 {
        let l = &self.limits;
        match conn.phase {
            Phase::AwaitHello => conn.last_rx_tick.saturating_add(l.handshake_ticks),
            Phase::Established => {
                let idle = conn.last_rx_tick.saturating_add(conn.idle_ticks);
                match conn.extra.as_ref().and_then(|e| e.above_high_since) {
                    Some(since) => idle.min(since.saturating_add(l.slow_ticks)),
                    None => idle,
                }
            }
            Phase::Closing => conn.last_rx_tick.saturating_add(l.linger_ticks),
        }
    }

    fn instant_of(&self, tick: u32) -> Instant {
        self.origin + self.tick * tick
    }

    /// Make sure a wheel entry fires no later than the connection's deadline.
    fn rearm(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else { return };
        let due = self.deadline(conn);
        if conn.timer_tick != 0 && conn.timer_tick <= due {
            return; // the live entry fires first and reschedules
        }
        let tick = self.wheel.schedule(key as u32, self.instant_of(due));
        self.conns[key].timer_tick = tick;
    }

    fn on_ticks(&mut self) {
        let mut fired = std::mem::take(&mut self.fired);
        self.wheel.advance(self.now, &mut fired);
        for (key, tick) in fired.drain(..) {
            let key = key as usize;
            let Some(conn) = self.conns.get_mut(key) else { continue };
            if conn.timer_tick != tick {
                continue; // stale: the connection rescheduled, or the slot was reused
            }
            conn.timer_tick = 0;
            let conn = &self.conns[key];
            if self.now_tick >= self.deadline(conn) {
                self.expire(key);
            } else {
                self.rearm(key);
            }
        }
        self.fired = fired;
    }

    fn expire(&mut self, key: usize) {
        let conn = &self.conns[key];
        match conn.phase {
            // "without sending anything (`HANDSHAKE_TIMEOUT`, 106, is what it records)"
            Phase::AwaitHello => self.finish(key, CloseReason::HandshakeTimeout),
            Phase::Established => {
                if self.now_tick >= conn.last_rx_tick.saturating_add(conn.idle_ticks) {
                    // "It sends nothing first: the peer is presumed gone."
                    self.finish(key, CloseReason::IdleTimeout);
                } else {
                    self.close_error(
                        key,
                        Code::SLOW_CONSUMER,
                        "outbound queue above its high mark too long",
                    );
                }
            }
            Phase::Closing => self.finish(key, CloseReason::PeerClosed),
        }
    }
}
