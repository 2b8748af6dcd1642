//! The server session on a virtual clock: no sockets, no sleeps. A [`Peer`] plays both the
//! client (frames in) and the driver (a transport that takes everything, or nothing).

use bytes::{Bytes, BytesMut};
use holdfast_codec::{
    Ack, Code, ErrorFrame, Frame, Hello, Ping, Platform, Refresh, Upstream, decode,
};

use super::*;

const CONN: u64 = 0x0001_0000_0001_0001;
/// A wall clock far from zero, in ms.
const WALL0: u64 = 1_800_000_000_000;

struct Peer {
    limits: Limits,
    now: Now,
    tx: Vec<u8>,
    events: Vec<Event>,
    stats: Stats,
    s: Session,
    /// What the "transport" received, not yet read by the test.
    wire: BytesMut,
    /// When false the transport takes nothing: everything is queued.
    writable: bool,
}

impl Peer {
    fn new(limits: Limits) -> Peer {
        Peer::at(limits, 5_000_000)
    }

    fn at(limits: Limits, mono_us: u64) -> Peer {
        let now = Now { mono_us, wall_ms: WALL0 };
        Peer {
            limits,
            now,
            tx: Vec::new(),
            events: Vec::new(),
            stats: Stats::default(),
            s: Session::new(now),
            wire: BytesMut::new(),
            writable: true,
        }
    }

    /// Run one session call with a fresh context, then play the driver: write `tx`, or,
    /// when the transport takes nothing, hand it back to the session's queue.
    fn call<R>(&mut self, f: impl FnOnce(&mut Session, &mut Ctx<'_>) -> R) -> R {
        let mut tx = std::mem::take(&mut self.tx);
        let r = self.raw(&mut tx, f);
        if !tx.is_empty() {
            if self.writable {
                self.wire.extend_from_slice(&tx);
            } else {
                let bytes = std::mem::take(&mut tx);
                let mut more = Vec::new();
                self.raw(&mut more, |s, ctx| s.enqueue(ctx, &bytes, 0));
                assert!(more.is_empty(), "a session with a queue writes behind it");
            }
        }
        tx.clear();
        self.tx = tx;
        r
    }

    fn raw<R>(&mut self, tx: &mut Vec<u8>, f: impl FnOnce(&mut Session, &mut Ctx<'_>) -> R) -> R {
        let mut ctx = Ctx {
            limits: &self.limits,
            now: self.now,
            conn_id: CONN,
            tx,
            events: &mut self.events,
            stats: &mut self.stats,
        };
        f(&mut self.s, &mut ctx)
    }

    fn send(&mut self, frame: Frame) -> Input {
        let mut bytes = Vec::new();
        frame.encode(&mut bytes).unwrap();
        self.send_bytes(&bytes)
    }

    fn send_bytes(&mut self, bytes: &[u8]) -> Input {
        self.call(|s, ctx| s.handle_input(ctx, bytes))
    }

    fn advance_ms(&mut self, ms: u64) {
        self.now.mono_us += ms * 1000;
        self.now.wall_ms += ms;
    }

    /// Advance to the session's next deadline and fire it.
    fn fire(&mut self) {
        let due = self.s.poll_timeout(&self.limits, self.now).expect("a deadline");
        if due > self.now.ms() {
            self.advance_ms(due - self.now.ms());
        }
        self.call(|s, ctx| s.handle_timeout(ctx));
    }

    fn timeout(&mut self) {
        self.call(|s, ctx| s.handle_timeout(ctx));
    }

    fn frames(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = decode(&mut self.wire, 1 << 24).expect("server frames decode") {
            out.push(f);
        }
        out
    }

    fn events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn closed(&mut self) -> Closed {
        let closed: Vec<Closed> = self
            .events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Closed(c) => Some(c),
                _ => None,
            })
            .collect();
        assert_eq!(closed.len(), 1, "exactly one Closed event");
        closed.into_iter().next().unwrap()
    }

    /// HELLO, then accept with a token valid until `exp` (0 = never).
    fn login(&mut self, exp: u64) -> holdfast_codec::AuthOk {
        assert_eq!(self.send(hello(30_000)), Input::Paused);
        let ev = self.events();
        assert!(matches!(ev.as_slice(), [Event::Hello(_)]), "{ev:?}");
        self.call(|s, ctx| s.accept(ctx, exp));
        match self.frames().as_slice() {
            [Frame::AuthOk(ok)] => ok.clone(),
            other => panic!("expected AUTH_OK, got {other:?}"),
        }
    }

    fn push(&mut self, ack: bool, mid: u64) -> Result<u32, PushFailure> {
        self.call(|s, ctx| s.push(ctx, 64, ack, mid))
    }
}

fn hello(heartbeat_ms: u32) -> Frame {
    Frame::Hello(Hello {
        versions: vec![1],
        capabilities: 0,
        heartbeat_ms,
        max_frame: 0,
        platform: Platform::Android,
        token: "t".into(),
        device_id: "d".into(),
        app_version: String::new(),
    })
}

fn ping(id: u32) -> Frame {
    Frame::Ping(Ping { id, timestamp: Some(7) })
}

fn limits() -> Limits {
    Limits::default()
}

#[test]
fn session_record_is_compact() {
    // The per-connection budget is 256 B all included; growing this is a decision.
    assert_eq!(std::mem::size_of::<Session>(), 32);
}

#[test]
fn hello_pauses_until_accepted_and_auth_ok_carries_the_grant() {
    let mut p = Peer::new(limits());
    let ok = p.login((WALL0 / 1000) + 3600);
    assert_eq!(p.s.phase(), Phase::Established);
    assert_eq!(ok.conn_id, CONN);
    assert_eq!(ok.heartbeat_ms, 30_000);
    assert_eq!(ok.idle_timeout_ms, 90_000);
    assert_eq!(ok.max_frame, p.limits.max_frame_in);
    assert_eq!(ok.max_unacked, p.limits.max_unacked);
    assert_eq!(ok.token_expires_ms, WALL0 + 3_600_000);
    assert_eq!(ok.server_time_ms, WALL0);
    assert_eq!(p.s.platform(), Platform::Android);
}

#[test]
fn frames_pipelined_after_hello_are_answered_after_auth_ok() {
    let mut p = Peer::new(limits());
    let mut bytes = Vec::new();
    hello(0).encode(&mut bytes).unwrap();
    ping(9).encode(&mut bytes).unwrap();
    assert_eq!(p.send_bytes(&bytes), Input::Paused);
    assert!(p.s.has_backlog());
    assert!(p.frames().is_empty(), "nothing before the verdict");
    p.call(|s, ctx| s.accept(ctx, 0));
    assert_eq!(p.send_bytes(&[]), Input::Done);
    assert!(!p.s.has_backlog());
    let frames = p.frames();
    assert!(matches!(frames.as_slice(), [Frame::AuthOk(_), Frame::Pong(Ping { id: 9, .. })]));
    assert!(p.s.extra.is_none(), "the rare state is freed once idle");
}

#[test]
fn handshake_deadline_closes_silently_and_partial_frames_are_not_liveness() {
    let mut p = Peer::new(limits());
    let mut bytes = Vec::new();
    hello(0).encode(&mut bytes).unwrap();
    // A peer trickling the first bytes of a HELLO is still evicted on time.
    p.send_bytes(&bytes[..5]);
    p.advance_ms(9_999);
    p.timeout();
    assert_eq!(p.s.phase(), Phase::AwaitHello);
    p.advance_ms(1);
    p.timeout();
    assert!(p.s.is_closed());
    assert!(p.frames().is_empty(), "nothing is sent on a handshake timeout");
    assert_eq!(
        p.closed(),
        Closed {
            reason: CloseReason::HandshakeTimeout,
            established: false,
            moving: false,
            unacked: vec![]
        }
    );
}

#[test]
fn pre_auth_buffering_is_bounded_by_the_largest_hello() {
    let mut p = Peer::new(limits());
    // A header announcing a body larger than any legal HELLO is refused at once, before a
    // byte of it is buffered.
    let head = holdfast_codec::Head { length: MAX_HELLO_FRAME, kind: 0x01, flags: 0, id: 0 };
    let mut bytes = Vec::new();
    head.encode(&mut bytes);
    p.send_bytes(&bytes);
    assert!(matches!(
        p.frames().as_slice(),
        [Frame::Error(ErrorFrame { code: Code::FRAME_TOO_LARGE, fatal: true, .. })]
    ));
    assert_eq!(p.closed().reason, CloseReason::ProtocolError);
    assert!(p.s.extra.is_none(), "nothing buffered");
    // The largest legal HELLO itself fits.
    let mut q = Peer::new(limits());
    let big = Frame::Hello(Hello {
        versions: vec![1; 16],
        capabilities: 0,
        heartbeat_ms: 0,
        max_frame: 0,
        platform: Platform::Ios,
        token: "t".repeat(8192),
        device_id: "d".repeat(255),
        app_version: "v".repeat(255),
    });
    assert_eq!(big.encoded_len().unwrap(), MAX_HELLO_FRAME as usize);
    assert_eq!(q.send(big), Input::Paused);
}

#[test]
fn frames_before_hello_and_unknown_versions_are_refused() {
    let mut p = Peer::new(limits());
    p.send(ping(1));
    assert!(matches!(
        p.frames().as_slice(),
        [Frame::Error(ErrorFrame { code: Code::UNEXPECTED_FRAME, fatal: true, .. })]
    ));
    assert_eq!(p.closed().reason, CloseReason::ProtocolError);

    let mut p = Peer::new(limits());
    let Frame::Hello(mut h) = hello(0) else { unreachable!() };
    h.versions = vec![7, 9];
    p.send(Frame::Hello(h));
    match p.frames().as_slice() {
        [Frame::AuthFail(f)] => {
            assert_eq!(f.code, Code::UNSUPPORTED_VERSION);
            assert_eq!(f.reason, "server speaks versions 1");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.closed().reason, CloseReason::AuthFailed);
    assert_eq!(p.stats.unsupported_versions, 1);
}

#[test]
fn a_refused_hello_gets_auth_fail_then_lingers_until_the_peer_closes() {
    let mut p = Peer::new(limits());
    p.send(hello(0));
    p.events();
    p.call(|s, ctx| s.refuse(ctx, Code::TOKEN_EXPIRED, "exp passed".into()));
    assert!(matches!(p.frames().as_slice(), [Frame::AuthFail(f)] if f.code == Code::TOKEN_EXPIRED));
    assert_eq!(p.s.phase(), Phase::Closing);
    assert!(p.s.poll_shutdown());
    assert!(!p.s.poll_shutdown(), "once");
    // Input while closing is discarded.
    assert_eq!(p.send(ping(1)), Input::Done);
    assert!(p.frames().is_empty());
    p.call(|s, ctx| s.handle_eof(ctx));
    assert!(p.s.is_closed());
    assert_eq!(p.closed().reason, CloseReason::AuthFailed);
}

#[test]
fn a_closing_connection_is_dropped_after_the_linger_even_if_the_peer_stays() {
    let mut p = Peer::new(limits());
    p.login(0);
    p.call(|s, ctx| s.close(ctx, Close::Kick(Code::KICKED_BY_ADMIN, "bye".into())));
    assert!(matches!(p.frames().as_slice(), [Frame::Kick(k)] if k.code == Code::KICKED_BY_ADMIN));
    assert_eq!(
        p.closed(),
        Closed { reason: CloseReason::Kicked, established: true, moving: false, unacked: vec![] }
    );
    p.advance_ms(999);
    p.timeout();
    assert!(!p.s.is_closed());
    p.fire();
    assert!(p.s.is_closed());
    assert!(p.events().is_empty(), "the close is recorded once");
}

#[test]
fn pings_are_answered_and_silence_is_evicted_at_the_idle_timeout() {
    let mut p = Peer::new(limits());
    let ok = p.login(0);
    p.advance_ms(80_000);
    p.send(ping(3));
    assert!(matches!(p.frames().as_slice(), [Frame::Pong(Ping { id: 3, timestamp: Some(7) })]));
    assert_eq!(p.stats.heartbeats, 1);
    // The deadline moved: idle counts from the PING.
    p.advance_ms(u64::from(ok.idle_timeout_ms) - 1);
    p.timeout();
    assert_eq!(p.s.phase(), Phase::Established);
    p.advance_ms(1);
    p.timeout();
    assert!(p.s.is_closed());
    assert!(p.frames().is_empty(), "nothing is sent to a peer presumed gone");
    assert_eq!(p.closed().reason, CloseReason::IdleTimeout);
}

#[test]
fn deadlines_stay_right_across_the_32_bit_millisecond_wrap() {
    // Start 10 s before the stored milliseconds wrap (49.7 days of uptime) and far beyond.
    for start_ms in [(1u64 << 32) - 10_000, (1u64 << 33) + 123, 1u64 << 40] {
        let mut p = Peer::at(limits(), start_ms * 1000);
        let ok = p.login(0);
        let due = p.s.poll_timeout(&p.limits, p.now).unwrap();
        assert_eq!(due, start_ms + u64::from(ok.idle_timeout_ms));
        p.advance_ms(60_000);
        p.send(ping(1));
        p.advance_ms(60_000);
        p.timeout();
        assert_eq!(p.s.phase(), Phase::Established, "not expired early at {start_ms}");
        p.advance_ms(30_000);
        p.timeout();
        assert!(p.s.is_closed(), "expired on time at {start_ms}");
    }
}

#[test]
fn an_expiring_token_is_kicked_unless_refreshed() {
    let mut p = Peer::new(limits());
    let exp = WALL0 / 1000 + 100;
    p.login(exp);
    // A refresh with a bad token is refused with a non-fatal 2xx ERROR; the connection stays.
    p.send(Frame::Refresh(Refresh { request_id: 5, token: "bad".into() }));
    let ev = p.events();
    assert!(matches!(ev.as_slice(), [Event::Refresh { request_id: 5, token }] if token == "bad"));
    p.call(|s, ctx| s.refresh_done(ctx, 5, Err((Code::INVALID_TOKEN, "bad signature".into()))));
    assert!(matches!(
        p.frames().as_slice(),
        [Frame::Error(ErrorFrame { request_id: 5, fatal: false, code: Code::INVALID_TOKEN, .. })]
    ));
    // A good refresh moves the expiry.
    p.send(Frame::Refresh(Refresh { request_id: 6, token: "good".into() }));
    p.events();
    p.call(|s, ctx| s.refresh_done(ctx, 6, Ok(exp + 60)));
    match p.frames().as_slice() {
        [Frame::RefreshOk(r)] => {
            assert_eq!(r.request_id, 6);
            assert_eq!(r.token_expires_ms, (exp + 60) * 1000);
        }
        other => panic!("{other:?}"),
    }
    // Heartbeats keep it alive until the new expiry, then KICK 303.
    for _ in 0..5 {
        p.advance_ms(30_000);
        p.send(ping(1));
        p.timeout();
    }
    assert_eq!(p.s.phase(), Phase::Established, "150 s < 160 s");
    p.advance_ms(10_000);
    p.timeout();
    let frames = p.frames();
    assert!(
        matches!(frames.last(), Some(Frame::Kick(k)) if k.code == Code::TOKEN_EXPIRED_KICK),
        "{frames:?}"
    );
    assert_eq!(p.closed().reason, CloseReason::TokenExpired);
}

#[test]
fn acks_cover_cumulatively_and_selectively_and_out_of_range_is_fatal() {
    let mut p = Peer::new(limits());
    p.login(0);
    for mid in 1..=20 {
        assert_eq!(p.push(true, 100 + mid), Ok(mid as u32));
    }
    assert_eq!(p.push(false, 999), Ok(21));
    assert_eq!(p.s.unacked(), 20);
    p.send(Frame::Ack(Ack { cumulative: 5, message_ids: vec![] }));
    assert_eq!(p.s.unacked(), 15);
    // Selective: a few (linear) and many (sorted) ids, unknown ids harmless.
    p.send(Frame::Ack(Ack { cumulative: 0, message_ids: vec![107, 42] }));
    assert_eq!(p.s.unacked(), 14);
    let many: Vec<u64> = (108..=116).chain([1, 2, 3]).collect();
    p.send(Frame::Ack(Ack { cumulative: 0, message_ids: many }));
    assert_eq!(p.s.unacked(), 14 - 9);
    assert_eq!(p.stats.pushes_acked, 5 + 1 + 9);
    p.send(Frame::Ack(Ack { cumulative: 21, message_ids: vec![] }));
    assert_eq!(p.s.unacked(), 0);
    assert!(p.s.extra.is_none());
    p.send(Frame::Ack(Ack { cumulative: 22, message_ids: vec![] }));
    assert!(matches!(
        p.frames().last(),
        Some(Frame::Error(ErrorFrame { code: Code::ACK_OUT_OF_RANGE, fatal: true, .. }))
    ));
}

#[test]
fn the_unacked_limit_closes_a_slow_consumer_and_reports_what_was_pending() {
    let mut l = limits();
    l.max_unacked = 3;
    let mut p = Peer::new(l);
    let ok = p.login(0);
    assert_eq!(ok.max_unacked, 3);
    for mid in 1..=3 {
        p.push(true, mid).unwrap();
    }
    assert_eq!(p.push(true, 4), Err(PushFailure::SlowConsumer));
    assert!(matches!(
        p.frames().last(),
        Some(Frame::Error(ErrorFrame { code: Code::SLOW_CONSUMER, fatal: true, .. }))
    ));
    let closed = p.closed();
    assert_eq!(closed.reason, CloseReason::SlowConsumer);
    assert_eq!(closed.unacked, vec![(1, 1), (2, 2), (3, 3)]);
    assert_eq!(p.push(false, 5), Err(PushFailure::Closed));
}

#[test]
fn a_backlog_above_the_high_mark_too_long_is_a_slow_consumer() {
    let mut l = limits();
    l.queue_high = 1_000;
    l.queue_low = 100;
    l.queue_max = 10_000;
    l.slow_consumer_ms = 5_000;
    let mut p = Peer::new(l);
    p.login(0);
    p.writable = false;
    for _ in 0..30 {
        p.send(ping(1)); // 18-byte PONGs pile up
    }
    assert!(p.s.queued() > 500);
    assert!(p.call(|s, ctx| s.enqueue(ctx, &[0; 600], 0)));
    // The grace started; draining to the low mark ends it.
    p.advance_ms(4_000);
    let n = p.s.queued() - 50;
    p.call(|s, ctx| s.handle_transmitted(ctx, n, 0));
    p.advance_ms(2_000);
    p.timeout();
    assert_eq!(p.s.phase(), Phase::Established);
    // Kernel bytes count too: above the mark again, and this time it lasts.
    assert!(p.call(|s, ctx| s.enqueue(ctx, &[0; 10], 5_000)));
    p.fire();
    assert!(matches!(p.s.phase(), Phase::Closing));
    assert_eq!(p.closed().reason, CloseReason::SlowConsumer);
}

#[test]
fn over_the_hard_cap_the_client_is_dropped_not_buffered() {
    let mut l = limits();
    l.queue_max = 1_000;
    let mut p = Peer::new(l);
    p.login(0);
    assert!(p.call(|s, ctx| s.enqueue(ctx, &[0; 900], 0)));
    assert!(!p.call(|s, ctx| s.enqueue(ctx, &[0; 200], 0)));
    assert!(p.s.is_closed());
    assert_eq!(p.closed().reason, CloseReason::SlowConsumer);
}

#[test]
fn one_turn_handles_at_most_the_frame_budget() {
    let mut l = limits();
    l.frames_per_turn = 16;
    l.rate = None;
    let mut p = Peer::new(l);
    p.login(0);
    let mut bytes = Vec::new();
    for id in 0..100 {
        ping(id).encode(&mut bytes).unwrap();
    }
    assert_eq!(p.send_bytes(&bytes), Input::Yield);
    assert!(p.s.has_backlog());
    assert_eq!(p.frames().len(), 16);
    let mut turns = 1;
    while p.send_bytes(&[]) == Input::Yield {
        turns += 1;
        assert!(turns < 10);
    }
    assert_eq!(turns, 6, "16 frames a turn, 100 frames: 7 calls, 6 of them yielding");
    let pongs = p.frames();
    assert_eq!(pongs.len(), 84);
    assert!(matches!(pongs.last(), Some(Frame::Pong(Ping { id: 99, .. }))));
    assert!(!p.s.has_backlog());
    assert_eq!(p.stats.yields, 6);
}

#[test]
fn the_rate_limit_allows_its_rate_and_closes_sustained_excess() {
    let mut l = limits();
    l.rate = RateLimit::new(100, 20);
    let mut p = Peer::new(l);
    p.login(0);
    // 100 frames/s for 10 s, evenly: never limited.
    for _ in 0..1_000 {
        p.advance_ms(10);
        p.send(ping(1));
    }
    assert_eq!(p.s.phase(), Phase::Established);
    p.frames();
    // A burst of 20 passes; a sustained excess does not.
    let mut sent = 0;
    while p.s.phase() == Phase::Established {
        p.send(ping(2));
        sent += 1;
        assert!(sent < 100);
    }
    assert!((20..=22).contains(&sent), "closed after {sent}");
    assert!(matches!(
        p.frames().last(),
        Some(Frame::Error(ErrorFrame { code: Code::RATE_LIMITED, fatal: true, .. }))
    ));
    assert_eq!(p.closed().reason, CloseReason::RateLimited);
}

#[test]
fn upstream_in_flight_counts_fire_and_forget_and_replies_respect_the_client_limit() {
    let mut l = limits();
    l.max_inflight = 2;
    let mut p = Peer::new(l);
    p.login(0);
    let up =
        |id| Frame::Upstream(Upstream { request_id: id, route: "r".into(), payload: Bytes::new() });
    p.send(up(0));
    p.send(up(0));
    p.send(up(5));
    assert!(matches!(
        p.frames().as_slice(),
        [Frame::Error(ErrorFrame {
            request_id: 5,
            code: Code::TOO_MANY_REQUESTS,
            fatal: false,
            ..
        })]
    ));
    assert_eq!(p.events().len(), 2, "two requests forwarded");
    // A fire-and-forget finishing frees a place, silently.
    p.call(|s, ctx| s.handle_upstream_result(ctx, 0, Ok((0, Bytes::new()))));
    assert!(p.frames().is_empty());
    p.send(up(6));
    assert!(matches!(p.events().as_slice(), [Event::Upstream(u)] if u.request_id == 6));
    // A reply over the client's 64 KiB becomes REPLY_TOO_LARGE.
    let big = Bytes::from(vec![0u8; 70_000]);
    p.call(|s, ctx| s.handle_upstream_result(ctx, 6, Ok((0, big))));
    assert!(matches!(
        p.frames().as_slice(),
        [Frame::Error(ErrorFrame { request_id: 6, code: Code::REPLY_TOO_LARGE, fatal: false, .. })]
    ));
    p.call(|s, ctx| s.upstream_refused(ctx, 0, Code::TOO_MANY_REQUESTS));
    assert!(p.s.extra.is_none(), "nothing in flight any more");
}

#[test]
fn pushes_larger_than_the_client_accepts_are_refused_and_the_connection_stays() {
    let mut p = Peer::new(limits());
    let Frame::Hello(mut h) = hello(0) else { unreachable!() };
    h.max_frame = 4_096;
    p.send(Frame::Hello(h));
    p.events();
    p.call(|s, ctx| s.accept(ctx, 0));
    assert_eq!(p.s.client_max_frame(), 4_096);
    assert_eq!(p.call(|s, ctx| s.push(ctx, 4_097, true, 1)), Err(PushFailure::TooLarge));
    assert_eq!(p.call(|s, ctx| s.push(ctx, 4_096, true, 1)), Ok(1));
    assert_eq!(p.s.phase(), Phase::Established);
}

#[test]
fn a_fatal_error_from_the_client_is_a_peer_close() {
    let mut p = Peer::new(limits());
    p.login(0);
    p.push(true, 77).unwrap();
    p.send(Frame::Error(ErrorFrame {
        request_id: 0,
        fatal: true,
        code: Code::INTERNAL_ERROR,
        message: "bye".into(),
    }));
    assert!(p.s.is_closed());
    assert_eq!(
        p.closed(),
        Closed {
            reason: CloseReason::PeerClosed,
            established: true,
            moving: false,
            unacked: vec![(1, 77)]
        }
    );
}

#[test]
fn eof_closes_once_with_the_pending_pushes() {
    let mut p = Peer::new(limits());
    p.login(0);
    p.push(true, 1).unwrap();
    p.push(true, 2).unwrap();
    // The client's logout: an ACK and the end of the stream, handled together.
    p.send(Frame::Ack(Ack { cumulative: 1, message_ids: vec![] }));
    p.call(|s, ctx| s.handle_eof(ctx));
    p.call(|s, ctx| s.handle_eof(ctx));
    assert!(p.s.is_closed());
    assert_eq!(
        p.closed(),
        Closed {
            reason: CloseReason::PeerClosed,
            established: true,
            moving: false,
            unacked: vec![(2, 2)]
        }
    );
}

#[test]
fn every_close_reason_is_reachable() {
    use std::collections::HashSet;
    let mut seen = HashSet::new();
    let closes = [
        Close::PeerClosed,
        Close::Moved,
        Close::HandshakeTimeout,
        Close::IdleTimeout,
        Close::IoError,
        Close::ProxyRefused,
        Close::AuthFail(Code::INVALID_TOKEN, String::new()),
        Close::Kick(Code::TOKEN_EXPIRED_KICK, String::new()),
        Close::Kick(Code::BANNED, String::new()),
        Close::Redirect(holdfast_codec::Redirect {
            code: Code::SERVER_SHUTDOWN,
            delay_ms: 0,
            jitter_ms: 0,
            addresses: vec![],
            overlap: false,
        }),
        Close::Redirect(holdfast_codec::Redirect {
            code: Code::REBALANCE,
            delay_ms: 0,
            jitter_ms: 0,
            addresses: vec![],
            overlap: false,
        }),
        Close::Violation(Code::SLOW_CONSUMER, String::new()),
        Close::Violation(Code::RATE_LIMITED, String::new()),
        Close::Violation(Code::MALFORMED_FRAME, String::new()),
    ];
    for close in closes {
        let mut p = Peer::new(limits());
        p.login(0);
        let expect_frame = close.clone().into_frame().is_some();
        p.call(|s, ctx| s.close(ctx, close));
        assert_eq!(p.frames().len(), usize::from(expect_frame));
        seen.insert(p.closed().reason);
    }
    assert_eq!(seen.len(), CloseReason::ALL.len());
}

// ----- make-before-break ------------------------------------------------------------------

fn overlap(code: Code) -> holdfast_codec::Redirect {
    holdfast_codec::Redirect {
        code,
        delay_ms: 0,
        jitter_ms: 2_000,
        addresses: vec!["10.0.0.2:7100".into()],
        overlap: true,
    }
}

#[test]
fn a_moving_connection_keeps_delivering_until_the_client_closes_it() {
    let mut p = Peer::new(limits());
    p.login(0);
    p.call(|s, ctx| s.redirect(ctx, overlap(Code::SERVER_DRAINING), 12_000));
    match p.frames().as_slice() {
        [Frame::Redirect(r)] => assert!(r.overlap && r.code == Code::SERVER_DRAINING),
        other => panic!("{other:?}"),
    }
    assert_eq!(p.s.phase(), Phase::Moving);
    assert!(p.s.is_established() && p.events().is_empty(), "no close yet");
    // Pushes, acks and pings work as when established.
    assert_eq!(p.push(true, 41), Ok(1));
    assert_eq!(p.s.unacked(), 1);
    p.send(Frame::Ack(Ack { cumulative: 0, message_ids: vec![41] }));
    assert_eq!(p.s.unacked(), 0);
    p.send(Frame::Ping(Ping { id: 3, timestamp: None }));
    assert!(matches!(p.frames().as_slice(), [Frame::Pong(_)]));
    // A second redirect (another sweep) leaves it alone.
    p.call(|s, ctx| s.redirect(ctx, overlap(Code::REBALANCE), 12_000));
    assert!(p.frames().is_empty());
    // The client, established elsewhere, closes it: recorded as redirected, nothing sent.
    p.call(|s, ctx| s.handle_eof(ctx));
    assert!(p.frames().is_empty());
    let closed = p.closed();
    assert_eq!((closed.reason, closed.established), (CloseReason::Redirected, true));
    assert!(closed.moving, "recorded as a moving connection's close");
    assert!(p.s.is_closed());
}

#[test]
fn a_moving_connection_ended_by_the_client_writes_what_is_queued_first() {
    for drained in [true, false] {
        let mut p = Peer::new(limits());
        p.login(0);
        p.call(|s, ctx| s.redirect(ctx, overlap(Code::SERVER_DRAINING), 12_000));
        p.frames();
        // A push the transport did not take (the driver encodes the frame): queued.
        assert_eq!(p.push(true, 51), Ok(1));
        assert!(p.call(|s, ctx| s.enqueue(ctx, &[0x5A; 64], 0)));
        let queued = p.s.queued();
        assert_eq!(queued, 64);
        // The client half-closes its old connection: the close is recorded at once, the
        // push as unacknowledged ...
        p.call(|s, ctx| s.handle_eof(ctx));
        let closed = p.closed();
        assert_eq!((closed.reason, closed.moving), (CloseReason::Redirected, true));
        assert_eq!(closed.unacked, vec![(1, 51)]);
        assert_eq!(p.push(true, 52), Err(PushFailure::Closed), "nothing more is taken");
        // ... but the queued push still goes out before the write side is shut.
        assert!(!p.s.is_closed() && !p.s.poll_shutdown(), "bytes left to write");
        if drained {
            assert_eq!(p.s.poll_transmit().map(<[u8]>::len), Some(queued));
            p.call(|s, ctx| s.handle_transmitted(ctx, queued, 0));
            assert!(p.s.poll_shutdown(), "all written: shut the write side");
            assert!(!p.s.poll_shutdown(), "once");
            // Then, as after any final frame, until the client's close (or the linger).
            assert_eq!(p.s.phase(), Phase::Lingering);
            p.call(|s, ctx| s.handle_eof(ctx));
            assert!(p.s.is_closed());
        } else {
            // A client that reads nothing more is given up at the linger.
            p.fire();
            assert!(p.s.is_closed());
        }
        assert!(p.events().is_empty(), "one close event");
    }
}

#[test]
fn the_hold_deadline_ends_a_moving_connection_with_a_plain_redirect() {
    let mut p = Peer::new(limits());
    p.login(0);
    p.call(|s, ctx| s.redirect(ctx, overlap(Code::REBALANCE), 12_000));
    p.frames();
    let start = p.now.ms();
    // Input does not extend the hold, and the idle timeout no longer applies.
    for _ in 0..11 {
        p.advance_ms(1_000);
        p.send(Frame::Ping(Ping { id: 1, timestamp: None }));
        p.timeout();
    }
    assert_eq!(p.s.phase(), Phase::Moving);
    assert_eq!(p.push(true, 7), Ok(1), "still delivering");
    p.frames();
    p.fire();
    assert_eq!(p.now.ms(), start + 12_000, "the hold is measured from the redirect");
    match p.frames().as_slice() {
        [Frame::Redirect(r)] => {
            assert_eq!((r.code, r.overlap, r.delay_ms, r.jitter_ms), (Code::REBALANCE, false, 0, 0))
        }
        other => panic!("{other:?}"),
    }
    let closed = p.closed();
    assert_eq!(closed.reason, CloseReason::Redirected);
    assert_eq!(closed.unacked, vec![(1, 7)], "unacknowledged pushes are reported");
}

#[test]
fn a_redirect_without_overlap_or_before_authentication_closes_at_once() {
    let mut p = Peer::new(limits());
    p.login(0);
    let plain = holdfast_codec::Redirect { overlap: false, ..overlap(Code::SERVER_DRAINING) };
    p.call(|s, ctx| s.redirect(ctx, plain, 12_000));
    assert!(matches!(p.frames().as_slice(), [Frame::Redirect(r)] if !r.overlap));
    assert_eq!(p.s.phase(), Phase::Closing);
    assert_eq!(p.closed().reason, CloseReason::Redirected);
    // Before AUTH_OK there is nothing to move: a plain REDIRECT.
    let mut p = Peer::new(limits());
    p.call(|s, ctx| s.redirect(ctx, overlap(Code::SERVER_DRAINING), 12_000));
    assert!(p.s.phase() != Phase::Moving);
}

#[test]
fn join_and_leave_are_asked_of_the_node_and_answered_room_ok_or_a_7xx_error() {
    use holdfast_codec::{RoomOk, RoomRequest};
    let mut p = Peer::new(limits());
    p.login(0);
    p.send(Frame::Join(RoomRequest { request_id: 3, room: "live/1".into() }));
    p.send(Frame::Leave(RoomRequest { request_id: 4, room: "live/2".into() }));
    let ev = p.events();
    assert!(
        matches!(ev.as_slice(), [
            Event::Join { request_id: 3, room: a },
            Event::Leave { request_id: 4, room: b },
        ] if a == "live/1" && b == "live/2"),
        "{ev:?}"
    );
    p.call(|s, ctx| s.room_done(ctx, 3, Ok(1)));
    p.call(|s, ctx| s.room_done(ctx, 4, Err((Code::ROOM_FORBIDDEN, "no".into()))));
    assert_eq!(
        p.frames(),
        vec![
            Frame::RoomOk(RoomOk { request_id: 3, rooms: 1 }),
            Frame::Error(ErrorFrame {
                request_id: 4,
                fatal: false,
                code: Code::ROOM_FORBIDDEN,
                message: "no".into()
            }),
        ]
    );
    assert_eq!(p.s.phase(), Phase::Established, "a refusal keeps the connection");
}
