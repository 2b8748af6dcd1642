//! Session tests: a conversation with a scripted server on a virtual clock.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::rng::SplitMix64;
use super::*;
use crate::{
    Ack, AuthFail, Code, DEFAULT_MAX_FRAME, ErrorFrame, Extension, Kick, Ping, Platform, Push,
    Redirect, RefreshOk, RoomOk, RoomRequest, UpstreamReply, encode,
};

/// A session plus a virtual clock: `at(ms)` is the base instant plus `ms` milliseconds.
struct Harness {
    s: Session,
    t0: Instant,
}

fn config() -> Config {
    Config {
        token: "tok".into(),
        device_id: "dev-1".into(),
        app_version: "5.2.1".into(),
        platform: Platform::Android,
        heartbeat_wish: Duration::from_secs(60),
        seed: 7,
        ..Config::default()
    }
}

/// What the test server grants unless a test says otherwise.
fn auth_ok() -> AuthOk {
    AuthOk {
        version: 1,
        capabilities: 0,
        conn_id: 0xABCD,
        heartbeat_ms: 10_000,
        idle_timeout_ms: 30_000,
        max_frame: DEFAULT_MAX_FRAME,
        max_unacked: 1_024,
        token_expires_ms: 1_700_003_600_000,
        server_time_ms: 1_700_000_000_000,
    }
}

fn bytes_of(frames: &[Frame]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for f in frames {
        encode(f, &mut out).unwrap();
    }
    out.to_vec()
}

fn push(seq: u32, ack_required: bool) -> Frame {
    Frame::Push(Push {
        seq,
        ack_required,
        message_id: 1000 + u64::from(seq),
        topic: "chat.msg".into(),
        payload: Bytes::from_static(b"hi"),
    })
}

impl Harness {
    fn new(config: Config) -> Harness {
        let t0 = Instant::now();
        Harness { s: Session::new(config, t0).unwrap(), t0 }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Connected at `ms` and established with `auth`; HELLO and the events drained.
    fn established_with(config: Config, auth: AuthOk) -> Harness {
        let mut h = Harness::new(config);
        h.s.connect(h.at(0));
        h.sent();
        h.feed(&[Frame::AuthOk(auth)], 0);
        assert_eq!(h.s.state(), State::Established);
        h.events();
        h
    }

    fn established() -> Harness {
        Harness::established_with(config(), auth_ok())
    }

    fn feed(&mut self, frames: &[Frame], ms: u64) {
        let now = self.at(ms);
        self.s.receive(&bytes_of(frames), now);
    }

    fn tick(&mut self, ms: u64) {
        let now = self.at(ms);
        self.s.handle_timeout(now);
    }

    /// Every frame the session queued since the last call, decoded.
    fn sent(&mut self) -> Vec<Frame> {
        let mut buf = BytesMut::new();
        while let Some(b) = self.s.poll_transmit() {
            buf.extend_from_slice(&b);
        }
        let mut frames = Vec::new();
        while let Some(f) = decode(&mut buf, DEFAULT_MAX_FRAME).unwrap() {
            frames.push(f);
        }
        assert!(buf.is_empty(), "partial frame queued");
        frames
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.s.poll_event()).collect()
    }

    fn closed_reason(&mut self) -> (CloseReason, Reconnect) {
        assert_eq!(self.s.state(), State::Closed);
        match self.events().pop() {
            Some(Event::Closed { reason, reconnect }) => (reason, reconnect),
            other => panic!("last event is not Closed: {other:?}"),
        }
    }
}

// ----- handshake ---------------------------------------------------------------------------

#[test]
fn handshake_against_hand_built_auth_ok() {
    let mut h = Harness::new(config());
    assert_eq!(h.s.state(), State::Idle);
    assert_eq!(h.s.poll_timeout(), None);
    assert_eq!(h.s.reconnect(), Reconnect::After { delay: Duration::ZERO, addresses: vec![] });

    h.s.connect(h.at(0));
    assert_eq!(h.s.state(), State::AwaitAuth);
    let hello = Hello {
        versions: vec![1],
        capabilities: 0,
        heartbeat_ms: 60_000,
        max_frame: 65_536,
        platform: Platform::Android,
        token: "tok".into(),
        device_id: "dev-1".into(),
        app_version: "5.2.1".into(),
    };
    assert_eq!(h.sent(), vec![Frame::Hello(hello.clone())]);
    assert_eq!(h.s.poll_timeout(), Some(h.at(10_000)), "handshake deadline");

    #[rustfmt::skip]
    let auth_ok_bytes: [u8; 56] = [
        0, 0, 0, 46,             // length
        0x02, 0x01,              // AUTH_OK, reserved flag bit 0 set: ignored
        0, 0, 0, 0,              // id
        0, 1,                    // version 1
        0, 0, 0, 0,              // capabilities
        0, 0, 0, 0, 0, 0, 0xAB, 0xCD, // conn_id
        0, 0, 0x27, 0x10,        // heartbeat_ms 10,000
        0, 0, 0x75, 0x30,        // idle_timeout_ms 30,000
        0, 1, 0, 0,              // max_frame 65,536
        0, 0, 0, 8,              // max_unacked 8
        0, 0, 1, 0x8B, 0xD0, 0x1C, 0x56, 0x80, // token_expires_ms, 1 h after server_time_ms
        0, 0, 1, 0x8B, 0xCF, 0xE5, 0x68, 0x00, // server_time_ms
    ];
    h.s.receive(&auth_ok_bytes, h.at(30));
    assert_eq!(h.s.state(), State::Established);
    let expected = AuthOk { max_unacked: 8, ..auth_ok() };
    assert_eq!(h.events(), vec![Event::Authenticated(expected.clone())]);
    assert_eq!(h.s.auth(), Some(&expected));
    assert_eq!(h.s.token_expires_ms(), Some(1_700_003_600_000));
    assert_eq!(h.s.token_expires_at(), Some(h.at(30 + 3_600_000)), "on the session's clock");
    assert!(h.sent().is_empty(), "nothing to say yet");
    // Next PING one interval after HELLO, the last frame sent.
    assert_eq!(h.s.poll_timeout(), Some(h.at(10_000)));

    // The next connection starts afresh: nothing in HELLO refers to the previous one.
    h.s.transport_closed(h.at(1_000));
    assert_eq!(h.s.token_expires_ms(), Some(1_700_003_600_000), "kept until connect");
    h.s.connect(h.at(2_000));
    match h.sent().as_slice() {
        [Frame::Hello(second)] => assert_eq!(second, &hello),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.s.auth(), None, "cleared by connect");
    assert_eq!(h.s.token_expires_ms(), None);
}

#[test]
fn hello_announces_the_clients_max_frame() {
    let mut h = Harness::new(Config { max_frame: 4_096, ..config() });
    h.s.connect(h.at(0));
    match h.sent().as_slice() {
        [Frame::Hello(hello)] => assert_eq!(hello.max_frame, 4_096),
        other => panic!("{other:?}"),
    }
    let small = Config { max_frame: 1_023, ..config() };
    assert_eq!(
        Session::new(small, Instant::now()).unwrap_err(),
        ConfigError::MaxFrameTooSmall(1_023),
        "HELLO could not carry it: below 1,024 is MALFORMED_FRAME"
    );
}

#[test]
fn a_frame_over_the_clients_max_frame_is_refused() {
    let cfg = Config { max_frame: 2_048, ..config() };
    let big_push = |seq, len| {
        Frame::Push(Push {
            seq,
            ack_required: false,
            message_id: 1,
            topic: String::new(),
            payload: Bytes::from(vec![0; len]),
        })
    };
    // Header 10 + message_id 8 + empty topic 1: a payload of 2,029 bytes is exactly 2,048.
    let mut h = Harness::established_with(cfg.clone(), auth_ok());
    h.feed(&[big_push(1, 2_029)], 100);
    assert!(matches!(h.events().as_slice(), [Event::Push(_)]));
    assert!(h.sent().is_empty());
    h.feed(&[big_push(2, 2_030)], 200);
    match h.sent().as_slice() {
        [Frame::Error(e)] => assert_eq!((e.code, e.fatal), (Code::FRAME_TOO_LARGE, true)),
        other => panic!("{other:?}"),
    }
    let events = h.events();
    assert!(matches!(
        events.as_slice(),
        [
            Event::ProtocolViolation {
                error: SessionError::Decode(crate::DecodeError::FrameTooLarge {
                    size: 2_049,
                    max: 2_048
                })
            },
            Event::Closed { reason: CloseReason::ProtocolViolation(Code::FRAME_TOO_LARGE), .. }
        ]
    ));
}

#[test]
fn handshake_timeout_closes_with_backoff() {
    let mut h = Harness::new(config());
    h.s.connect(h.at(0));
    h.tick(9_999);
    assert_eq!(h.s.state(), State::AwaitAuth);
    h.tick(10_000);
    let (reason, reconnect) = h.closed_reason();
    assert_eq!(reason, CloseReason::HandshakeTimeout);
    assert!(reconnect.delay().unwrap() <= Duration::from_millis(500));
    assert_eq!(h.s.poll_timeout(), None);
}

#[test]
fn auth_fail_code_decides_the_reconnect_policy() {
    enum Want {
        Never,
        NewToken,
        Backoff,
    }
    let cases = [
        (Code::TOKEN_EXPIRED, Want::NewToken),
        (Code::INVALID_TOKEN, Want::Never),
        (Code::TOKEN_MISSING, Want::Never),
        (Code::CLAIM_MISMATCH, Want::Never),
        (Code::UNSUPPORTED_VERSION, Want::Never),
        (Code::TOKEN_NOT_YET_VALID, Want::Backoff),
        (Code::OVERLOADED, Want::Backoff),
        (Code(299), Want::Backoff),
    ];
    for (code, want) in cases {
        let mut h = Harness::new(config());
        h.s.connect(h.at(0));
        h.feed(&[Frame::AuthFail(AuthFail { code, reason: "no".into() })], 5);
        let events = h.events();
        let [
            Event::AuthFailed { code: c, reason, reconnect },
            Event::Closed { reason: r, reconnect: r2 },
        ] = events.as_slice()
        else {
            panic!("{code}: {events:?}");
        };
        assert_eq!((*c, reason.as_str(), *r), (code, "no", CloseReason::AuthFailed(code)));
        assert_eq!(reconnect, r2);
        assert_eq!(&h.s.reconnect(), reconnect);
        match (want, reconnect) {
            (Want::Never, Reconnect::Never) => {}
            (Want::NewToken, Reconnect::NewToken { delay })
            | (Want::Backoff, Reconnect::After { delay, .. }) => {
                assert!(*delay <= Duration::from_millis(500), "{code}: first window");
            }
            (_, other) => panic!("{code}: {other:?}"),
        }
        h.s.transport_closed(h.at(6));
        assert!(h.events().is_empty(), "{code}: one Closed per connection");
    }
}

#[test]
fn new_token_is_used_by_the_next_hello() {
    let mut h = Harness::new(config());
    assert!(h.s.set_token("t".repeat(8193)).is_err());
    h.s.set_token("fresh").unwrap();
    h.s.connect(h.at(0));
    match h.sent().as_slice() {
        [Frame::Hello(hello)] => assert_eq!(hello.token, "fresh"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn auth_ok_with_a_version_not_offered_is_a_violation() {
    let mut h = Harness::new(config());
    h.s.connect(h.at(0));
    h.sent();
    h.feed(&[Frame::AuthOk(AuthOk { version: 9, ..auth_ok() })], 1);
    match h.sent().as_slice() {
        [Frame::Error(e)] => assert_eq!((e.code, e.fatal), (Code::UNSUPPORTED_VERSION, true)),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.closed_reason().0, CloseReason::ProtocolViolation(Code::UNSUPPORTED_VERSION));
}

#[test]
fn invalid_config_is_refused() {
    let bad = Config { ack_batch: 0, ..config() };
    assert_eq!(Session::new(bad, Instant::now()).unwrap_err(), ConfigError::ZeroAckBatch);
}

// ----- heartbeats --------------------------------------------------------------------------

#[test]
fn ping_due_after_heartbeat_of_silence_and_not_before() {
    let mut h = Harness::established();
    h.tick(9_999);
    assert!(h.sent().is_empty(), "not before");
    assert_eq!(h.s.poll_timeout(), Some(h.at(10_000)));
    h.tick(10_000);
    let ping = match h.sent().as_slice() {
        [Frame::Ping(p)] => *p,
        other => panic!("{other:?}"),
    };
    assert_eq!(ping.id, 1);
    assert_eq!(ping.timestamp, Some(10_000), "8-byte timestamp, ms since creation");
    assert_eq!(h.s.poll_timeout(), Some(h.at(20_000)), "next one an interval later");

    // The PONG gives the round-trip time on the client's clock.
    h.feed(&[Frame::Pong(ping)], 10_040);
    assert_eq!(h.events(), vec![Event::Pong { id: 1, rtt: Some(Duration::from_millis(40)) }]);
    assert_eq!(h.s.rtt(), Some(Duration::from_millis(40)));
    // An unsolicited or stale PONG has no rtt.
    h.feed(&[Frame::Pong(Ping { id: 99, timestamp: None })], 10_050);
    assert_eq!(h.events(), vec![Event::Pong { id: 99, rtt: None }]);
}

#[test]
fn any_send_resets_the_ping_timer() {
    let mut h = Harness::established();
    // A PONG sent at 4 s.
    h.feed(&[Frame::Ping(Ping { id: 5, timestamp: None })], 4_000);
    assert_eq!(h.sent().len(), 1);
    assert_eq!(h.s.poll_timeout(), Some(h.at(14_000)));
    // An UPSTREAM sent after an input at 7 s.
    h.tick(7_000);
    h.s.send_upstream(3, "chat.send", Bytes::from_static(b"x")).unwrap();
    assert_eq!(h.s.poll_timeout(), Some(h.at(17_000)));
    // An ACK sent at 8 s (batch of 1).
    let mut h2 = Harness::established_with(Config { ack_batch: 1, ..config() }, auth_ok());
    h2.feed(&[push(1, true)], 8_000);
    assert!(matches!(h2.sent().as_slice(), [Frame::Ack(_)]));
    assert_eq!(h2.s.poll_timeout(), Some(h2.at(18_000)));
    // Receiving does not count as sending.
    h.feed(&[push(1, false)], 16_000);
    h.tick(17_000);
    assert!(matches!(h.sent().as_slice(), [Frame::Upstream(_), Frame::Ping(_)]));
}

#[test]
fn idle_timeout_closes_after_silence_from_the_server() {
    let mut h = Harness::established();
    h.feed(&[push(1, false)], 20_000);
    h.tick(10_000); // a PING, no reply
    h.tick(30_000);
    h.tick(49_999);
    assert_eq!(h.s.state(), State::Established);
    assert_eq!(h.s.poll_timeout(), Some(h.at(50_000)), "idle deadline comes first");
    h.tick(50_000);
    let (reason, reconnect) = h.closed_reason();
    assert_eq!(reason, CloseReason::IdleTimeout);
    assert!(matches!(reconnect, Reconnect::After { .. }));
    // Bytes after the close are ignored.
    h.feed(&[push(2, false)], 50_001);
    assert!(h.events().is_empty());
}

#[test]
fn server_ping_is_answered_with_an_echo() {
    let mut h = Harness::established();
    let with = Ping { id: 0xDEAD_BEEF, timestamp: Some(0x0102_0304_0506_0708) };
    let without = Ping { id: 3, timestamp: None };
    h.feed(&[Frame::Ping(with), Frame::Ping(without)], 1_000);
    assert_eq!(h.sent(), vec![Frame::Pong(with), Frame::Pong(without)]);
    assert!(h.events().is_empty(), "answered by the session, not the application");
}

// ----- acknowledgement ---------------------------------------------------------------------

#[test]
fn acks_flush_on_batch_size() {
    let mut h = Harness::established_with(Config { ack_batch: 3, ..config() }, auth_ok());
    h.feed(&[push(1, true), push(2, true)], 100);
    assert!(h.sent().is_empty());
    assert_eq!(h.events().len(), 2);
    h.feed(&[push(3, true)], 110);
    assert_eq!(h.sent(), vec![Frame::Ack(Ack { cumulative: 3, message_ids: vec![] })]);
}

#[test]
fn acks_flush_on_delay() {
    let mut h = Harness::established();
    h.feed(&[push(1, true)], 100);
    h.feed(&[push(2, true)], 250);
    assert_eq!(h.s.poll_timeout(), Some(h.at(300)), "200 ms after the first");
    h.tick(299);
    assert!(h.sent().is_empty());
    h.tick(300);
    assert_eq!(h.sent(), vec![Frame::Ack(Ack { cumulative: 2, message_ids: vec![] })]);
    assert_eq!(h.s.poll_timeout(), Some(h.at(10_300)), "only the heartbeat left");
    // Pushes without ACK_REQUIRED never make an ACK due.
    h.feed(&[push(3, false)], 400);
    assert_eq!(h.s.poll_timeout(), Some(h.at(10_300)));
}

#[test]
fn manual_processing_acks_cumulatively_and_selectively() {
    let cfg = Config { auto_ack: false, ..config() };
    let mut h = Harness::established_with(cfg, auth_ok());
    h.feed(&[push(1, true), push(2, true), push(3, true), push(4, true)], 100);
    assert_eq!(h.s.poll_timeout(), Some(h.at(10_000)), "nothing processed, nothing due");
    h.s.processed(3, h.at(150));
    h.s.processed(4, h.at(160));
    h.s.processed(4, h.at(160)); // twice is harmless
    h.s.processed(99, h.at(160)); // never received
    h.tick(350);
    assert_eq!(h.sent(), vec![Frame::Ack(Ack { cumulative: 0, message_ids: vec![1003, 1004] })]);
    h.s.processed(1, h.at(400));
    h.s.processed(2, h.at(410));
    h.tick(600);
    assert_eq!(h.sent(), vec![Frame::Ack(Ack { cumulative: 4, message_ids: vec![] })]);
}

#[test]
fn pending_ack_is_flushed_before_ping() {
    let cfg = Config { ack_delay: Duration::from_secs(60), ..config() };
    let mut h = Harness::established_with(cfg, auth_ok());
    h.feed(&[push(1, true), push(2, true)], 1_000);
    assert_eq!(h.s.poll_timeout(), Some(h.at(10_000)));
    h.tick(10_000);
    match h.sent().as_slice() {
        [Frame::Ack(ack), Frame::Ping(_)] => assert_eq!(ack.cumulative, 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn push_out_of_sequence_is_a_violation() {
    let mut h = Harness::established();
    h.feed(&[push(1, true), push(3, true)], 100);
    let sent = h.sent();
    let Some(Frame::Error(e)) = sent.last() else { panic!("{sent:?}") };
    assert_eq!((e.code, e.fatal, e.request_id), (Code::UNEXPECTED_FRAME, true, 0));
    let events = h.events();
    assert!(matches!(events[0], Event::Push(_)));
    assert!(matches!(
        events[1],
        Event::ProtocolViolation {
            error: SessionError::PushSequence { got: 3, expected: Some(2) }
        }
    ));
    assert!(matches!(
        events[2],
        Event::Closed { reason: CloseReason::ProtocolViolation(Code::UNEXPECTED_FRAME), .. }
    ));
}

// ----- kick, redirect, errors --------------------------------------------------------------

#[test]
fn kick_codes_decide_the_reconnect_policy() {
    for (code, new_token) in [
        (Code::LOGGED_IN_ELSEWHERE, false),
        (Code::BANNED, false),
        (Code::TOKEN_EXPIRED_KICK, true),
        (Code::KICKED_BY_ADMIN, false),
        (Code(399), false),
    ] {
        let mut h = Harness::established();
        h.feed(&[Frame::Kick(Kick { code, reason: "bye".into() }), push(1, true)], 500);
        let events = h.events();
        let [Event::Kicked { code: c, reconnect, .. }, Event::Closed { reason, reconnect: r2 }] =
            events.as_slice()
        else {
            panic!("{code}: {events:?}");
        };
        assert_eq!((*c, *reason), (code, CloseReason::Kicked(code)));
        assert_eq!(reconnect, r2);
        if new_token {
            assert!(matches!(reconnect, Reconnect::NewToken { .. }), "{code}");
        } else {
            assert_eq!(*reconnect, Reconnect::Never, "{code}");
        }
        assert!(h.sent().is_empty(), "frames after KICK are discarded, nothing is answered");
    }
}

#[test]
fn redirect_waits_delay_plus_bounded_jitter_and_resets_backoff() {
    let mut delays = Vec::new();
    for seed in 0..200 {
        let mut h = Harness::established_with(Config { seed, ..config() }, auth_ok());
        // Earlier failures grew the backoff; a redirect resets it.
        for _ in 0..5 {
            h.s.backoff.next_delay();
        }
        let redirect = Redirect {
            code: Code::SERVER_DRAINING,
            delay_ms: 1_000,
            jitter_ms: 500,
            addresses: vec!["10.0.0.2:7100".into(), "[::1]:7100".into()],
            overlap: false,
        };
        h.feed(&[Frame::Redirect(redirect.clone())], 100);
        let events = h.events();
        let [
            Event::Redirected { code, reconnect, overlap: false },
            Event::Closed { reason, reconnect: r2 },
        ] = events.as_slice()
        else {
            panic!("{events:?}");
        };
        assert_eq!((*code, *reason), (Code::SERVER_DRAINING, CloseReason::Redirected(*code)));
        assert_eq!(reconnect, r2);
        let Reconnect::After { delay, addresses } = reconnect else { panic!("{reconnect:?}") };
        assert!((Duration::from_millis(1_000)..=Duration::from_millis(1_500)).contains(delay));
        assert_eq!(addresses, &redirect.addresses);
        assert_eq!(h.s.backoff.attempt(), 0, "reset, not increased");
        delays.push(*delay);
        // The next failure starts from the base window again.
        h.s.connect(h.at(2_000));
        h.s.transport_closed(h.at(2_100));
        assert!(h.s.reconnect().delay().unwrap() <= Duration::from_millis(500));
    }
    delays.sort();
    delays.dedup();
    assert!(delays.len() > 100, "jitter actually spreads clients");
    // Zero jitter is exactly the delay.
    let mut h = Harness::established();
    let redirect = Redirect {
        code: Code::REBALANCE,
        delay_ms: 0,
        jitter_ms: 0,
        addresses: vec![],
        overlap: false,
    };
    h.feed(&[Frame::Redirect(redirect)], 100);
    assert_eq!(h.s.reconnect(), Reconnect::After { delay: Duration::ZERO, addresses: vec![] });
}

// ----- make-before-break ------------------------------------------------------------------

fn overlap_redirect() -> Frame {
    Frame::Redirect(Redirect {
        code: Code::SERVER_DRAINING,
        delay_ms: 0,
        jitter_ms: 0,
        addresses: vec!["10.0.0.2:7100".into()],
        overlap: true,
    })
}

fn push_id(seq: u32, message_id: u64) -> Frame {
    Frame::Push(Push {
        seq,
        ack_required: true,
        message_id,
        topic: "t".into(),
        payload: Bytes::from_static(b"x"),
    })
}

impl Harness {
    /// Every frame queued for the retiring connection, decoded.
    fn sent_retiring(&mut self) -> Vec<Frame> {
        let mut buf = BytesMut::new();
        while let Some(b) = self.s.poll_transmit_retiring() {
            buf.extend_from_slice(&b);
        }
        std::iter::from_fn(|| decode(&mut buf, DEFAULT_MAX_FRAME).unwrap()).collect()
    }

    fn feed_retiring(&mut self, frames: &[Frame], ms: u64) {
        let now = self.at(ms);
        self.s.receive_retiring(&bytes_of(frames), now);
    }

    fn pushed_ids(events: &[Event]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Push(p) => Some(p.message_id),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn an_overlap_redirect_keeps_the_connection_until_the_next_one_is_established() {
    let mut h = Harness::established();
    h.feed(&[push_id(1, 500)], 50);
    h.feed(&[overlap_redirect()], 100);
    let events = h.events();
    let [Event::Push(_), Event::Redirected { code, reconnect, overlap: true }] = events.as_slice()
    else {
        panic!("{events:?}")
    };
    assert_eq!(*code, Code::SERVER_DRAINING);
    assert_eq!(h.s.reconnect(), *reconnect);
    assert_eq!(h.s.state(), State::Established, "no Closed: the connection stays up");
    assert!(h.s.is_moving());
    // Pushes keep coming on it before the client moves.
    h.feed(&[push_id(2, 501)], 150);
    assert_eq!(Harness::pushed_ids(&h.events()), vec![501]);

    // The new transport: the old connection becomes the retiring one.
    h.s.connect(h.at(200));
    assert!(h.s.has_retiring() && !h.s.is_moving());
    assert_eq!(h.s.state(), State::AwaitAuth);
    assert!(matches!(h.sent().as_slice(), [Frame::Hello(_)]), "HELLO on the new transport");
    let acked: Vec<Frame> = h.sent_retiring();
    assert!(
        acked.iter().any(|f| matches!(f, Frame::Ack(a) if a.cumulative == 2)),
        "what was processed is acknowledged on the old connection: {acked:?}"
    );
    assert!(h.events().is_empty(), "no Closed for the old connection");

    // While the new one authenticates, the old one still delivers, acknowledged at once by id.
    h.feed_retiring(&[push_id(3, 502), Frame::Ping(Ping { id: 4, timestamp: None })], 250);
    assert_eq!(Harness::pushed_ids(&h.events()), vec![502]);
    let out = h.sent_retiring();
    assert!(out.contains(&Frame::Ack(Ack { cumulative: 0, message_ids: vec![502] })), "{out:?}");
    assert!(out.iter().any(|f| matches!(f, Frame::Pong(p) if p.id == 4)), "{out:?}");

    // Established on the new gateway: the same push on both connections is handed out once.
    h.feed(&[Frame::AuthOk(auth_ok())], 300);
    assert!(matches!(h.events().as_slice(), [Event::Authenticated(_)]));
    h.feed(&[push_id(1, 503)], 310);
    h.feed_retiring(&[push_id(4, 503), push_id(5, 504)], 320);
    h.feed(&[push_id(2, 504), push_id(3, 502)], 330);
    assert_eq!(Harness::pushed_ids(&h.events()), vec![503, 504], "duplicates dropped");
    // ... and every copy is acknowledged on its own connection.
    let old = h.sent_retiring();
    assert_eq!(old.len(), 2, "{old:?}");
    h.tick(330 + 200);
    let new = h.sent();
    assert!(new.iter().any(|f| matches!(f, Frame::Ack(a) if a.cumulative == 3)), "{new:?}");

    // The linger (1 s by default) after AUTH_OK retires the old connection.
    let at = h.s.poll_timeout().unwrap();
    assert!(at <= h.at(300 + 1_000));
    h.tick(300 + 999);
    assert!(!h.events().contains(&Event::Retired));
    h.tick(300 + 1_000);
    assert!(h.events().contains(&Event::Retired));
    h.sent_retiring();
    // Retired: the write side is shut, but the old connection is read to its end. A push
    // the old gateway wrote before it saw the end of stream is still handed out, once, and
    // nothing is answered on it any more.
    h.feed_retiring(
        &[push_id(6, 505), push_id(7, 504), Frame::Ping(Ping { id: 9, timestamp: None })],
        1_400,
    );
    assert_eq!(Harness::pushed_ids(&h.events()), vec![505]);
    assert!(h.sent_retiring().is_empty(), "no ACK, no PONG after Retired");
    assert!(h.s.has_retiring(), "read until the server ends it");
    h.s.retiring_closed();
    assert!(!h.s.has_retiring());
    assert_eq!(h.s.state(), State::Established);
}

#[test]
fn a_push_of_the_retiring_connection_never_acknowledges_one_of_the_new_connection() {
    // Manual acknowledgement: the application reports each push it has processed.
    let cfg = Config { auto_ack: false, ..config() };
    let mut h = Harness::established_with(cfg, auth_ok());
    h.feed(&[overlap_redirect()], 100);
    h.events();
    h.s.connect(h.at(200));
    h.sent();
    h.feed(&[Frame::AuthOk(auth_ok())], 300);
    h.events();
    // Push 1 of the new connection awaits processing; push 1 of the old one arrives too.
    h.feed(&[push_id(1, 700)], 310);
    h.feed_retiring(&[push_id(1, 701)], 320);
    let events = h.events();
    let seqs: Vec<(u64, u32)> = events
        .iter()
        .filter_map(|e| if let Event::Push(p) = e { Some((p.message_id, p.seq)) } else { None })
        .collect();
    assert_eq!(seqs, vec![(700, 1), (701, 0)], "the old connection's push carries seq 0");
    assert!(
        h.sent_retiring().contains(&Frame::Ack(Ack { cumulative: 0, message_ids: vec![701] })),
        "acknowledged on its own connection by the session"
    );
    // The application reports what it was given for 701: nothing is acknowledged for 700.
    h.s.processed(seqs[1].1, h.at(330));
    h.tick(330 + 10_000);
    assert!(
        !h.sent().iter().any(|f| matches!(f, Frame::Ack(_))),
        "700 is not acknowledged before it is processed"
    );
}

#[test]
fn a_retired_connection_is_forgotten_when_the_server_does_not_end_it() {
    let retired = || {
        let mut h = Harness::established();
        h.feed(&[overlap_redirect()], 100);
        h.events();
        h.s.connect(h.at(200));
        h.feed(&[Frame::AuthOk(auth_ok())], 300);
        h.tick(1_300);
        assert!(h.events().contains(&Event::Retired));
        h
    };
    // A server that never ends it: forgotten after RETIRED_DRAIN, and the driver closes it.
    let mut h = retired();
    let drain = RETIRED_DRAIN.as_millis() as u64;
    assert!(h.s.poll_timeout().unwrap() <= h.at(1_300 + drain), "the driver is woken for it");
    h.tick(1_300 + drain - 1);
    assert!(h.s.has_retiring());
    h.tick(1_300 + drain);
    assert!(!h.s.has_retiring());
    assert!(h.events().is_empty(), "no second Retired");
    // Bytes that are not a frame end the drain at once.
    let mut h = retired();
    h.s.receive_retiring(&[0xFF; 12], h.at(1_400));
    assert!(!h.s.has_retiring());
    assert_eq!(h.s.state(), State::Established, "the new connection is untouched");
}

#[test]
fn a_second_move_waits_for_the_first_one_to_finish_lingering() {
    let mut h = Harness::established();
    h.feed(&[overlap_redirect()], 100);
    h.events();
    h.s.connect(h.at(200));
    h.sent();
    h.feed(&[Frame::AuthOk(auth_ok())], 300); // linger until 1,300
    h.events();
    // Redirected again at once (say, the new gateway sheds this client too): the next
    // connection may not start before the first connection has retired.
    h.feed(&[overlap_redirect()], 400);
    let events = h.events();
    let [Event::Redirected { reconnect, overlap: true, .. }] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert!(reconnect.delay().unwrap() >= Duration::from_millis(900), "{reconnect:?}");
    h.tick(1_300);
    assert_eq!(h.events(), vec![Event::Retired], "the first connection retires first");
}

#[test]
fn the_server_ending_the_retiring_connection_retires_it() {
    for end in [
        Frame::Redirect(Redirect {
            code: Code::SERVER_DRAINING,
            delay_ms: 0,
            jitter_ms: 0,
            addresses: vec![],
            overlap: false,
        }),
        Frame::Kick(Kick { code: Code::KICKED_BY_ADMIN, reason: "x".into() }),
        Frame::Error(ErrorFrame {
            request_id: 0,
            fatal: true,
            code: Code::MALFORMED_FRAME,
            message: String::new(),
        }),
    ] {
        let mut h = Harness::established();
        h.feed(&[overlap_redirect()], 100);
        h.events();
        h.s.connect(h.at(200));
        h.feed_retiring(std::slice::from_ref(&end), 300);
        assert_eq!(h.events(), vec![Event::Retired], "{end:?}");
        assert_eq!(h.s.state(), State::AwaitAuth, "the new connection is untouched");
    }
    // Garbage on the old connection ends it too, quietly.
    let mut h = Harness::established();
    h.feed(&[overlap_redirect()], 100);
    h.events();
    h.s.connect(h.at(200));
    h.s.receive_retiring(&[0xFF; 12], h.at(300));
    assert_eq!(h.events(), vec![Event::Retired]);
    // A silent old connection is given up after its idle timeout.
    let mut h = Harness::established();
    h.feed(&[overlap_redirect()], 100);
    h.events();
    h.s.connect(h.at(200));
    h.tick(200 + 29_999);
    assert!(!h.events().contains(&Event::Retired));
    h.tick(200 + 30_000);
    assert!(h.events().contains(&Event::Retired));
}

#[test]
fn a_plain_client_without_a_new_transport_keeps_the_moving_connection() {
    // The application never calls connect: the old connection keeps working until the
    // server ends it (with a plain REDIRECT at its hold deadline).
    let mut h = Harness::established();
    h.feed(&[overlap_redirect()], 100);
    h.events();
    h.tick(10_100);
    assert!(h.sent().iter().any(|f| matches!(f, Frame::Ping(_))), "heartbeats continue");
    h.feed(&[push_id(1, 900)], 10_200);
    assert_eq!(Harness::pushed_ids(&h.events()), vec![900]);
    h.feed(
        &[Frame::Redirect(Redirect {
            code: Code::SERVER_DRAINING,
            delay_ms: 0,
            jitter_ms: 0,
            addresses: vec![],
            overlap: false,
        })],
        10_300,
    );
    let events = h.events();
    assert!(matches!(events.last(), Some(Event::Closed { .. })), "{events:?}");
}

#[test]
fn without_make_before_break_an_overlap_redirect_closes_at_once() {
    let mut h =
        Harness::established_with(Config { make_before_break: false, ..config() }, auth_ok());
    h.feed(&[overlap_redirect()], 100);
    let events = h.events();
    assert!(
        matches!(
            events.as_slice(),
            [
                Event::Redirected { overlap: false, .. },
                Event::Closed { reason: CloseReason::Redirected(_), .. }
            ]
        ),
        "{events:?}"
    );
}

#[test]
fn a_redirect_answering_hello_ends_the_attempt_with_its_addresses() {
    let mut h = Harness::new(config());
    h.s.connect(h.at(0));
    h.sent();
    let full = Redirect {
        code: Code::SERVER_FULL,
        delay_ms: 0,
        jitter_ms: 0,
        addresses: vec!["10.0.0.9:7100".into()],
        overlap: true, // meaningless before AUTH_OK: ignored
    };
    h.feed(&[Frame::Redirect(full)], 10);
    let events = h.events();
    let [
        Event::Redirected { code: Code::SERVER_FULL, overlap: false, .. },
        Event::Closed { reason: CloseReason::Redirected(Code::SERVER_FULL), reconnect },
    ] = events.as_slice()
    else {
        panic!("{events:?}")
    };
    assert_eq!(
        *reconnect,
        Reconnect::After { delay: Duration::ZERO, addresses: vec!["10.0.0.9:7100".into()] }
    );
}

#[test]
fn a_throttled_client_waits_at_least_a_minute() {
    let mut h = Harness::new(config());
    h.s.connect(h.at(0));
    h.sent();
    h.feed(&[Frame::AuthFail(AuthFail { code: Code::THROTTLED, reason: "flapping".into() })], 10);
    let (reason, reconnect) = h.closed_reason();
    assert_eq!(reason, CloseReason::AuthFailed(Code::THROTTLED));
    assert!(reconnect.delay().unwrap() >= THROTTLED_MIN_DELAY, "{reconnect:?}");
}

#[test]
fn a_redelivered_push_reaches_the_application_once_across_reconnects() {
    let mut h = Harness::established();
    h.feed(&[push_id(1, 77)], 10);
    h.s.transport_closed(h.at(20));
    h.events();
    h.s.connect(h.at(30));
    h.sent();
    h.feed(&[Frame::AuthOk(auth_ok()), push_id(1, 77), push_id(2, 78)], 40);
    assert_eq!(Harness::pushed_ids(&h.events()), vec![78]);
    h.tick(40 + 200);
    assert!(
        h.sent().iter().any(|f| matches!(f, Frame::Ack(a) if a.cumulative == 2)),
        "the duplicate is acknowledged too"
    );
    // With de-duplication off, both copies are handed out.
    let mut h = Harness::established_with(Config { dedup_window: 0, ..config() }, auth_ok());
    h.feed(&[push_id(1, 77), push_id(2, 77)], 10);
    assert_eq!(Harness::pushed_ids(&h.events()), vec![77, 77]);
}

#[test]
fn errors_about_requests_and_the_connection() {
    let mut h = Harness::established();
    h.s.send_upstream(9, "chat.send", Bytes::from_static(b"hello")).unwrap();
    assert_eq!(
        h.sent(),
        vec![Frame::Upstream(Upstream {
            request_id: 9,
            route: "chat.send".into(),
            payload: Bytes::from_static(b"hello")
        })]
    );
    let reply = UpstreamReply { request_id: 9, status: 0, payload: Bytes::from_static(b"ok") };
    let failed = ErrorFrame {
        request_id: 10,
        fatal: false,
        code: Code::UPSTREAM_TIMEOUT,
        message: "slow".into(),
    };
    let notice =
        ErrorFrame { request_id: 0, fatal: false, code: Code::OVERLOADED, message: "busy".into() };
    let fatal = ErrorFrame {
        request_id: 0,
        fatal: true,
        code: Code::SLOW_CONSUMER,
        message: "behind".into(),
    };
    let frames = [
        Frame::UpstreamReply(reply.clone()),
        Frame::Error(failed),
        Frame::Error(notice),
        Frame::Error(fatal),
    ];
    h.feed(&frames, 1_000);
    let events = h.events();
    assert_eq!(events[0], Event::UpstreamReply(reply));
    assert_eq!(
        events[1],
        Event::UpstreamError {
            request_id: 10,
            code: Code::UPSTREAM_TIMEOUT,
            message: "slow".into()
        }
    );
    assert_eq!(
        events[2],
        Event::ServerError { code: Code::OVERLOADED, message: "busy".into(), fatal: false }
    );
    assert_eq!(
        events[3],
        Event::ServerError { code: Code::SLOW_CONSUMER, message: "behind".into(), fatal: true }
    );
    assert!(matches!(
        &events[4],
        Event::Closed {
            reason: CloseReason::ServerError(Code::SLOW_CONSUMER),
            reconnect: Reconnect::After { .. }
        }
    ));
    assert_eq!(events.len(), 5);
}

#[test]
fn new_codes_are_handled_by_their_class() {
    let mut h = Harness::established();
    let too_large = ErrorFrame {
        request_id: 9,
        fatal: false,
        code: Code::REPLY_TOO_LARGE,
        message: "reply of 70000 bytes".into(),
    };
    let rate_limited = ErrorFrame {
        request_id: 0,
        fatal: true,
        code: Code::RATE_LIMITED,
        message: "too fast".into(),
    };
    h.feed(&[Frame::Error(too_large), Frame::Error(rate_limited)], 100);
    let events = h.events();
    assert_eq!(
        events[0],
        Event::UpstreamError {
            request_id: 9,
            code: Code::REPLY_TOO_LARGE,
            message: "reply of 70000 bytes".into()
        }
    );
    assert_eq!(
        events[1],
        Event::ServerError { code: Code::RATE_LIMITED, message: "too fast".into(), fatal: true }
    );
    assert!(matches!(
        &events[2],
        Event::Closed {
            reason: CloseReason::ServerError(Code::RATE_LIMITED),
            reconnect: Reconnect::After { .. }
        }
    ));
}

#[test]
fn send_upstream_refusals_queue_nothing() {
    let mut h = Harness::new(config());
    let payload = Bytes::from_static(b"x");
    assert_eq!(
        h.s.send_upstream(1, "r", payload.clone()),
        Err(SendError::NotEstablished(State::Idle))
    );
    h.s.connect(h.at(0));
    h.sent();
    assert_eq!(
        h.s.send_upstream(1, "r", payload.clone()),
        Err(SendError::NotEstablished(State::AwaitAuth))
    );
    let small = AuthOk { max_frame: 64, ..auth_ok() };
    let mut h = Harness::established_with(config(), small);
    assert_eq!(
        h.s.send_upstream(1, &"r".repeat(256), payload.clone()),
        Err(SendError::RouteTooLong(256))
    );
    let big = Bytes::from(vec![0u8; 53]);
    assert_eq!(h.s.send_upstream(1, "r", big), Err(SendError::FrameTooLarge { size: 65, max: 64 }));
    assert!(h.sent().is_empty());
    let fits = Bytes::from(vec![0u8; 52]);
    assert_eq!(h.s.send_upstream(1, "r", fits), Ok(()));
    assert_eq!(h.sent().len(), 1);
}

// ----- backoff -----------------------------------------------------------------------------

#[test]
fn backoff_is_full_jitter_capped_and_grows_per_failure() {
    let mut h = Harness::new(config());
    let base = Duration::from_millis(500);
    let cap = Duration::from_secs(30);
    let mut seen_above_half = false;
    for n in 0..12u32 {
        h.s.connect_failed(h.at(u64::from(n)));
        let (reason, reconnect) = h.closed_reason();
        assert_eq!(reason, CloseReason::ConnectFailed);
        let delay = reconnect.delay().unwrap();
        let window = base.saturating_mul(2u32.pow(n)).min(cap);
        assert!(delay <= window, "attempt {n}: {delay:?} > {window:?}");
        assert!(delay <= cap);
        seen_above_half |= delay > window / 2;
    }
    assert!(seen_above_half, "draws cover the whole window");
    assert_eq!(h.s.backoff.attempt(), 12);
}

#[test]
fn backoff_draws_cover_zero_to_window_uniformly() {
    let mut b = Backoff::new(BackoffConfig::default(), 3);
    let mut lo = 0;
    let mut hi = 0;
    for _ in 0..2_000 {
        b.reset();
        let d = b.next_delay();
        assert!(d <= Duration::from_millis(500));
        if d < Duration::from_millis(100) {
            lo += 1;
        } else if d > Duration::from_millis(400) {
            hi += 1;
        }
    }
    // Each fifth of the window gets roughly 400 of 2,000 draws.
    assert!((300..500).contains(&lo) && (300..500).contains(&hi), "{lo} {hi}");
}

#[test]
fn backoff_resets_after_established_for_one_heartbeat() {
    // Grow the backoff with failures, then establish and close.
    let run = |close_after_ms: u64| {
        let mut h = Harness::new(config());
        for _ in 0..8 {
            h.s.connect_failed(h.at(0));
        }
        assert_eq!(h.s.backoff.attempt(), 8);
        h.s.connect(h.at(1_000));
        h.feed(&[Frame::AuthOk(auth_ok())], 1_000);
        h.s.transport_closed(h.at(1_000 + close_after_ms));
        h.s.backoff.attempt()
    };
    assert_eq!(run(10_000), 1, "stayed up one interval: reset, then one draw");
    assert_eq!(run(9_999), 9, "closed too early: keeps growing");
    // Established but never stable, repeatedly: still backs off.
    let mut h = Harness::new(config());
    for n in 0..5u64 {
        h.s.connect(h.at(n * 100));
        h.feed(&[Frame::AuthOk(auth_ok())], n * 100);
        h.s.transport_closed(h.at(n * 100 + 50));
    }
    assert_eq!(h.s.backoff.attempt(), 5);
}

#[test]
fn transport_closed_is_idempotent_and_close_is_local() {
    let mut h = Harness::established();
    h.s.transport_closed(h.at(100));
    assert_eq!(h.closed_reason().0, CloseReason::TransportClosed);
    h.s.transport_closed(h.at(101));
    assert!(h.events().is_empty());
    assert_eq!(h.s.backoff.attempt(), 1);

    let mut h = Harness::established();
    h.s.close();
    assert_eq!(h.closed_reason(), (CloseReason::Local, Reconnect::Never));
    h.s.close();
    assert!(h.events().is_empty());
}

#[test]
fn connect_while_open_closes_the_old_connection_first() {
    let mut h = Harness::established();
    h.feed(&[push(1, true)], 10);
    h.s.connect(h.at(20));
    let events = h.events();
    assert!(matches!(events[0], Event::Push(_)));
    assert!(matches!(events[1], Event::Closed { reason: CloseReason::TransportClosed, .. }));
    assert_eq!(h.s.state(), State::AwaitAuth);
    assert!(matches!(h.sent().as_slice(), [Frame::Hello(_)]), "no stale ACK for the new stream");
}

// ----- input robustness --------------------------------------------------------------------

/// A whole conversation, as the server writes it.
fn script() -> Vec<u8> {
    bytes_of(&[
        Frame::AuthOk(auth_ok()),
        push(1, true),
        Frame::Extension(Extension { kind: 0x90, flags: 1, id: 2, body: Bytes::from_static(b"x") }),
        Frame::Ping(Ping { id: 4, timestamp: Some(9) }),
        push(2, false),
        Frame::UpstreamReply(UpstreamReply {
            request_id: 1,
            status: 3,
            payload: Bytes::from_static(b"r"),
        }),
        Frame::Error(ErrorFrame {
            request_id: 2,
            fatal: false,
            code: Code::TOO_MANY_REQUESTS,
            message: "slow down".into(),
        }),
        push(3, true),
        Frame::Kick(Kick { code: Code::TOKEN_EXPIRED_KICK, reason: "exp".into() }),
    ])
}

fn run_script(chunk: usize) -> (Vec<Event>, Vec<u8>) {
    let cfg = Config { ack_batch: 2, ..config() };
    let mut h = Harness::new(cfg);
    h.s.connect(h.at(0));
    h.sent();
    let mut out = Vec::new();
    for part in script().chunks(chunk) {
        h.s.receive(part, h.at(5));
        while let Some(b) = h.s.poll_transmit() {
            out.extend_from_slice(&b);
        }
    }
    (h.events(), out)
}

#[test]
fn bytes_one_at_a_time_give_the_same_events_and_replies() {
    let (whole, whole_out) = run_script(usize::MAX);
    assert_eq!(whole.len(), 8, "{whole:?}");
    assert!(matches!(whole[0], Event::Authenticated(_)));
    assert!(matches!(whole.last(), Some(Event::Closed { reason: CloseReason::Kicked(_), .. })));
    let replies = decode_all(&whole_out);
    assert!(matches!(
        replies.as_slice(),
        [Frame::Pong(Ping { id: 4, timestamp: Some(9) }), Frame::Ack(Ack { cumulative: 3, .. })]
    ));
    for chunk in [1, 2, 3, 7, 11] {
        let (events, out) = run_script(chunk);
        assert_eq!(events, whole, "chunk {chunk}");
        assert_eq!(out, whole_out, "chunk {chunk}");
    }
}

fn decode_all(bytes: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    std::iter::from_fn(|| decode(&mut buf, DEFAULT_MAX_FRAME).unwrap()).collect()
}

#[test]
fn garbage_input_queues_a_fatal_error_and_closes() {
    let hello = bytes_of(&[Frame::Hello(Hello { versions: vec![1], ..Hello::default() })]);
    #[rustfmt::skip]
    let cases: [(Vec<u8>, Code, bool); 6] = [
        // Unknown critical type 0x7F.
        (vec![0, 0, 0, 0, 0x7F, 0, 0, 0, 0, 0], Code::UNKNOWN_FRAME_TYPE, true),
        // Announces a 4 GiB frame: refused from the first four bytes.
        (vec![0xFF, 0xFF, 0xFF, 0xFF], Code::FRAME_TOO_LARGE, true),
        // PING with a 3-byte body.
        (vec![0, 0, 0, 3, 0x04, 0, 0, 0, 0, 1, 1, 2, 3], Code::MALFORMED_FRAME, true),
        // PUSH before AUTH_OK.
        (vec![0, 0, 0, 9, 0x06, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0], Code::UNEXPECTED_FRAME, true),
        // HELLO from the server, established.
        (hello, Code::UNEXPECTED_FRAME, false),
        // AUTH_OK twice.
        (vec![], Code::UNEXPECTED_FRAME, false),
    ];
    for (i, (bytes, code, pre_auth)) in cases.into_iter().enumerate() {
        let mut h = if pre_auth {
            let mut h = Harness::new(config());
            h.s.connect(h.at(0));
            h.sent();
            h
        } else {
            Harness::established()
        };
        if bytes.is_empty() {
            h.feed(&[Frame::AuthOk(auth_ok())], 1);
        } else {
            h.s.receive(&bytes, h.at(1));
        }
        match h.sent().as_slice() {
            [Frame::Error(e)] => {
                assert_eq!((e.code, e.fatal, e.request_id), (code, true, 0), "case {i}");
                assert!(!e.message.is_empty());
            }
            other => panic!("case {i}: {other:?}"),
        }
        let events = h.events();
        let [Event::ProtocolViolation { error }, Event::Closed { reason, reconnect }] =
            events.as_slice()
        else {
            panic!("case {i}: {events:?}");
        };
        assert_eq!(error.code(), code, "case {i}");
        assert_eq!(*reason, CloseReason::ProtocolViolation(code), "case {i}");
        assert!(matches!(reconnect, Reconnect::After { .. }), "case {i}");
        // Everything after is discarded.
        h.s.receive(&[0xFF; 64], h.at(2));
        assert!(h.sent().is_empty() && h.events().is_empty(), "case {i}");
    }
}

#[test]
fn random_input_never_panics_and_always_ends_in_one_close() {
    let mut rng = SplitMix64::new(99);
    let valid = script();
    for round in 0..500u64 {
        let mut h = Harness::new(Config { seed: round, ..config() });
        h.s.connect(h.at(0));
        // Half the rounds corrupt a valid conversation, half are pure noise.
        let mut input = if round % 2 == 0 {
            valid.clone()
        } else {
            (0..rng.below_inclusive(300)).map(|_| rng.next_u64() as u8).collect()
        };
        if round % 2 == 0 && !input.is_empty() {
            for _ in 0..=rng.below_inclusive(3) {
                let at = rng.below_inclusive(input.len() as u64 - 1) as usize;
                input[at] = rng.next_u64() as u8;
            }
        }
        let mut ms = 0;
        for part in input.chunks(1 + rng.below_inclusive(16) as usize) {
            ms += rng.below_inclusive(2_000);
            h.s.receive(part, h.at(ms));
            h.tick(ms);
            h.s.processed(rng.below_inclusive(5) as u32, h.at(ms));
            let _ = h.s.send_upstream(1, "r", Bytes::new());
            let _ = h.s.refresh("t");
            let _ = h.s.join("r");
            let _ = h.s.leave("r");
            h.s.poll_transmit();
        }
        h.s.transport_closed(h.at(ms + 1));
        let closes = h.events().iter().filter(|e| matches!(e, Event::Closed { .. })).count();
        assert_eq!(closes, 1, "round {round}");
    }
}

#[test]
fn extreme_durations_do_not_overflow() {
    let cfg = Config {
        handshake_timeout: Duration::MAX,
        ack_delay: Duration::MAX,
        backoff: BackoffConfig { base: Duration::MAX, cap: Duration::MAX },
        ..config()
    };
    let mut h = Harness::new(cfg);
    h.s.connect(h.at(0));
    assert_eq!(h.s.poll_timeout(), None);
    h.tick(u64::from(u32::MAX));
    let auth = AuthOk { heartbeat_ms: u32::MAX, idle_timeout_ms: u32::MAX, ..auth_ok() };
    h.feed(&[Frame::AuthOk(auth), push(1, true)], 1);
    h.tick(1);
    h.s.transport_closed(h.at(2));
    assert!(h.s.reconnect().delay().is_some());
}

#[test]
fn close_acknowledges_processed_pushes_first() {
    let mut h = Harness::established();
    h.feed(&[push(1, true)], 100);
    assert_eq!(h.events().len(), 1);
    assert!(h.sent().is_empty(), "ack batched, not sent yet");
    h.s.close();
    assert_eq!(h.sent(), vec![Frame::Ack(Ack { cumulative: 1, message_ids: vec![] })]);
    assert_eq!(h.closed_reason().1, Reconnect::Never);
}

// ----- the server's unacknowledged limit ---------------------------------------------------

/// The server's side of the ack window: pushes written minus pushes an `ACK` covered.
#[derive(Default)]
struct ServerWindow {
    sent: u32,
    acked: u32,
    most_unacked: u32,
}

impl ServerWindow {
    fn push(&mut self, h: &mut Harness, ms: u64, max_unacked: u32) {
        // The gateway's check: an ACK_REQUIRED push beyond the limit is SLOW_CONSUMER.
        assert!(self.sent - self.acked < max_unacked, "SLOW_CONSUMER at {ms} ms");
        self.sent += 1;
        self.most_unacked = self.most_unacked.max(self.sent - self.acked);
        h.feed(&[push(self.sent, true)], ms);
        self.read_acks(h);
    }

    fn read_acks(&mut self, h: &mut Harness) {
        for frame in h.sent() {
            if let Frame::Ack(ack) = frame {
                assert!(ack.message_ids.is_empty(), "processed in order");
                self.acked = self.acked.max(ack.cumulative);
            }
        }
    }
}

#[test]
fn acks_come_by_half_the_servers_max_unacked_on_a_virtual_clock() {
    // The documented batching alone ("after at most 32 pushes or 200 ms") let 8 pushes in
    // 80 ms go unacknowledged at max_unacked = 8, and the 9th was SLOW_CONSUMER.
    for max_unacked in [1u32, 2, 3, 8, 9, 64, 1_024] {
        let auth = AuthOk { max_unacked, ..auth_ok() };
        let mut h = Harness::established_with(config(), auth);
        let mut server = ServerWindow::default();
        // 500 pushes, one a millisecond: 32 of them well inside the 200 ms delay, so only
        // the batch and the limit make ACKs due.
        for n in 0..500u64 {
            let ms = 100 + n;
            h.tick(ms);
            server.read_acks(&mut h);
            server.push(&mut h, ms, max_unacked);
        }
        let due = (max_unacked / 2).clamp(1, 32);
        assert_eq!(server.most_unacked, due, "max_unacked {max_unacked}");
        h.events();
    }
}

#[test]
fn the_limit_applies_per_connection() {
    let mut h = Harness::established_with(config(), AuthOk { max_unacked: 4, ..auth_ok() });
    h.feed(&[push(1, true)], 10);
    assert!(h.sent().is_empty());
    h.feed(&[push(2, true)], 20);
    assert_eq!(h.sent(), vec![Frame::Ack(Ack { cumulative: 2, message_ids: vec![] })]);
    // A new connection to a server with the default limit batches by the config again.
    h.s.connect(h.at(1_000));
    h.sent();
    h.feed(&[Frame::AuthOk(auth_ok())], 1_000);
    h.feed(&[push(1, true), push(2, true), push(3, true)], 1_010);
    assert!(h.sent().is_empty(), "32 or 200 ms, as configured");
}

#[test]
fn manual_processing_respects_the_limit_too() {
    let cfg = Config { auto_ack: false, ..config() };
    let mut h = Harness::established_with(cfg, AuthOk { max_unacked: 6, ..auth_ok() });
    h.feed(&[push(1, true), push(2, true), push(3, true)], 10);
    h.s.processed(2, h.at(11));
    h.s.processed(3, h.at(12));
    assert!(h.sent().is_empty());
    h.s.processed(1, h.at(13));
    assert_eq!(h.sent(), vec![Frame::Ack(Ack { cumulative: 3, message_ids: vec![] })]);
}

// ----- token refresh -----------------------------------------------------------------------

#[test]
fn refresh_is_answered_with_the_new_expiry() {
    let mut h = Harness::established();
    assert_eq!(h.s.token_expires_ms(), Some(1_700_003_600_000));
    h.tick(1_000);
    let id = h.s.refresh("tok-2").unwrap();
    assert_ne!(id, 0, "a REFRESH never carries request id 0");
    assert_eq!(h.sent(), vec![Frame::Refresh(Refresh { request_id: id, token: "tok-2".into() })]);
    assert_eq!(h.s.config().token, "tok-2", "kept for the next HELLO");
    assert_eq!(h.s.poll_timeout(), Some(h.at(11_000)), "a send restarts the heartbeat timer");

    let later = 1_700_007_200_000;
    h.feed(&[Frame::RefreshOk(RefreshOk { request_id: id, token_expires_ms: later })], 1_050);
    assert_eq!(h.events(), vec![Event::TokenRefreshed { request_id: id, token_expires_ms: later }]);
    assert_eq!(h.s.state(), State::Established);
    assert_eq!(h.s.token_expires_ms(), Some(later));
    // AUTH_OK arrived at 0 ms with server_time_ms 1,700,000,000,000.
    assert_eq!(h.s.token_expires_at(), Some(h.at(7_200_000)));

    // The second refresh gets another id; "never expires" is None.
    let id2 = h.s.refresh("tok-3").unwrap();
    assert_ne!(id2, id);
    h.feed(&[Frame::RefreshOk(RefreshOk { request_id: id2, token_expires_ms: 0 })], 1_100);
    assert_eq!(h.events(), vec![Event::TokenRefreshed { request_id: id2, token_expires_ms: 0 }]);
    assert_eq!((h.s.token_expires_ms(), h.s.token_expires_at()), (None, None));

    // The next connection authenticates with the refreshed token.
    h.s.transport_closed(h.at(2_000));
    h.s.connect(h.at(3_000));
    match h.sent().as_slice() {
        [Frame::Hello(hello)] => assert_eq!(hello.token, "tok-3"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_refused_refresh_is_reported_and_the_connection_stays() {
    for code in [
        Code::INVALID_TOKEN,
        Code::TOKEN_EXPIRED,
        Code::TOKEN_NOT_YET_VALID,
        Code::TOKEN_MISSING,
        Code::CLAIM_MISMATCH,
        Code(299),
    ] {
        let mut h = Harness::established();
        let id = h.s.refresh("other-user").unwrap();
        h.sent();
        let refused = ErrorFrame { request_id: id, fatal: false, code, message: "no".into() };
        h.feed(&[Frame::Error(refused)], 100);
        assert_eq!(
            h.events(),
            vec![Event::RefreshFailed { request_id: id, code, message: "no".into() }],
            "{code}"
        );
        assert_eq!(h.s.state(), State::Established, "{code}");
        assert!(h.sent().is_empty(), "{code}");
        assert_eq!(h.s.token_expires_ms(), Some(1_700_003_600_000), "the old expiry holds");
        // Answered: a late REFRESH_OK for it is not expected any more.
        h.feed(&[Frame::RefreshOk(RefreshOk { request_id: id, token_expires_ms: 1 })], 200);
        assert_eq!(h.closed_reason().0, CloseReason::ProtocolViolation(Code::UNEXPECTED_FRAME));
    }
}

#[test]
fn errors_are_routed_by_request_kind_and_code_class() {
    let mut h = Harness::established();
    // The application's upstream request 1 and the session's refresh 1 share the id.
    h.s.send_upstream(1, "chat.send", Bytes::from_static(b"x")).unwrap();
    let refresh = h.s.refresh("tok-2").unwrap();
    assert_eq!(refresh, 1);
    h.sent();
    let error = |request_id, code| {
        Frame::Error(ErrorFrame { request_id, fatal: false, code, message: "m".into() })
    };
    h.feed(
        &[
            error(1, Code::UPSTREAM_UNAVAILABLE),
            error(9, Code::REPLY_TOO_LARGE),
            error(1, Code::CLAIM_MISMATCH),
            // No refresh awaits an answer: a 2xx for request 1 goes to the upstream side.
            error(1, Code::TOKEN_EXPIRED),
            error(0, Code::OVERLOADED),
        ],
        100,
    );
    let upstream =
        |request_id, code| Event::UpstreamError { request_id, code, message: "m".into() };
    assert_eq!(
        h.events(),
        vec![
            upstream(1, Code::UPSTREAM_UNAVAILABLE),
            upstream(9, Code::REPLY_TOO_LARGE),
            Event::RefreshFailed { request_id: 1, code: Code::CLAIM_MISMATCH, message: "m".into() },
            upstream(1, Code::TOKEN_EXPIRED),
            Event::ServerError { code: Code::OVERLOADED, message: "m".into(), fatal: false },
        ]
    );
    assert_eq!(Code::REPLY_TOO_LARGE.name(), Some("REPLY_TOO_LARGE"));
    assert_eq!(h.s.state(), State::Established);
}

#[test]
fn refresh_refusals_change_nothing() {
    let mut h = Harness::new(config());
    assert_eq!(h.s.refresh("t"), Err(SendError::NotEstablished(State::Idle)));
    h.s.connect(h.at(0));
    h.sent();
    assert_eq!(h.s.refresh("t"), Err(SendError::NotEstablished(State::AwaitAuth)));

    let mut h = Harness::established();
    assert_eq!(h.s.refresh("t".repeat(8_193)), Err(SendError::TokenTooLong(8_193)));
    for n in 0..MAX_REFRESHES_IN_FLIGHT {
        h.s.refresh(format!("t{n}")).unwrap();
    }
    h.sent();
    assert_eq!(h.s.refresh("one-more"), Err(SendError::TooManyRefreshes));
    assert_eq!(h.s.config().token, format!("t{}", MAX_REFRESHES_IN_FLIGHT - 1));

    // Header 10 + str16 2 + token: a 53-byte token is one byte over a 64-byte limit.
    let mut h = Harness::established_with(config(), AuthOk { max_frame: 64, ..auth_ok() });
    assert_eq!(h.s.refresh("t".repeat(53)), Err(SendError::FrameTooLarge { size: 65, max: 64 }));
    assert!(h.sent().is_empty());
    assert_eq!(h.s.config().token, "tok");
    assert!(h.s.refresh("t".repeat(52)).is_ok());
}

#[test]
fn refresh_ids_skip_zero_when_they_wrap() {
    let mut h = Harness::established();
    h.s.next_refresh_id = u32::MAX;
    assert_eq!(h.s.refresh("a"), Ok(u32::MAX));
    assert_eq!(h.s.refresh("b"), Ok(1));
}

#[test]
fn unsolicited_refresh_ok_is_a_violation() {
    let mut h = Harness::established();
    h.feed(&[Frame::RefreshOk(RefreshOk { request_id: 5, token_expires_ms: 1 })], 100);
    match h.sent().as_slice() {
        [Frame::Error(e)] => assert_eq!((e.code, e.fatal), (Code::UNEXPECTED_FRAME, true)),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.closed_reason().0, CloseReason::ProtocolViolation(Code::UNEXPECTED_FRAME));
    // Nor before AUTH_OK, nor a REFRESH from the server.
    let mut h = Harness::new(config());
    h.s.connect(h.at(0));
    h.sent();
    h.feed(&[Frame::RefreshOk(RefreshOk { request_id: 1, token_expires_ms: 1 })], 1);
    assert_eq!(h.closed_reason().0, CloseReason::ProtocolViolation(Code::UNEXPECTED_FRAME));
    let mut h = Harness::established();
    h.feed(&[Frame::Refresh(Refresh { request_id: 1, token: "x".into() })], 1);
    assert_eq!(h.closed_reason().0, CloseReason::ProtocolViolation(Code::UNEXPECTED_FRAME));
}

#[test]
fn kick_303_after_expiry_still_asks_for_a_new_token() {
    let mut h = Harness::established();
    let id = h.s.refresh("stale").unwrap();
    let refused = ErrorFrame {
        request_id: id,
        fatal: false,
        code: Code::TOKEN_EXPIRED,
        message: "exp".into(),
    };
    let kick = Kick { code: Code::TOKEN_EXPIRED_KICK, reason: "token expired".into() };
    h.feed(&[Frame::Error(refused), Frame::Kick(kick)], 100);
    assert!(matches!(h.closed_reason().1, Reconnect::NewToken { .. }));
}

// ----- rooms -------------------------------------------------------------------------------

fn join_frame(request_id: u32, room: &str) -> Frame {
    Frame::Join(RoomRequest { request_id, room: room.into() })
}

fn room_ok(request_id: u32, rooms: u16) -> Frame {
    Frame::RoomOk(RoomOk { request_id, rooms })
}

fn room_error(request_id: u32, code: Code) -> Frame {
    Frame::Error(ErrorFrame { request_id, fatal: false, code, message: "m".into() })
}

impl Harness {
    fn rooms(&self) -> Vec<&str> {
        self.s.rooms().collect()
    }

    /// Joined to `rooms` on the current connection: each `JOIN` sent and confirmed.
    fn joined(&mut self, rooms: &[&str], ms: u64) {
        for (n, room) in rooms.iter().enumerate() {
            let id = self.s.join(room).unwrap();
            assert_eq!(self.sent(), vec![join_frame(id, room)]);
            self.feed(&[room_ok(id, n as u16 + 1)], ms);
        }
        self.events();
    }
}

#[test]
fn join_is_answered_with_room_ok_and_remembered() {
    let mut h = Harness::established();
    assert!(h.rooms().is_empty());
    h.tick(1_000);
    let id = h.s.join("live/42").unwrap();
    assert_ne!(id, 0, "a JOIN never carries request id 0");
    assert_eq!(h.sent(), vec![join_frame(id, "live/42")]);
    assert_eq!(h.s.poll_timeout(), Some(h.at(11_000)), "a send restarts the heartbeat timer");
    assert!(h.rooms().is_empty(), "not a member before ROOM_OK");

    h.feed(&[room_ok(id, 1)], 1_050);
    assert_eq!(
        h.events(),
        vec![Event::RoomJoined { request_id: id, room: "live/42".into(), rooms: 1 }]
    );
    assert_eq!(h.rooms(), ["live/42"]);
    assert_eq!(h.s.state(), State::Established);

    // Joining again still sends JOIN (the server answers idempotently); ids differ.
    let again = h.s.join("live/42").unwrap();
    assert_ne!(again, id);
    assert_eq!(h.sent(), vec![join_frame(again, "live/42")]);
    h.feed(&[room_ok(again, 1)], 1_100);
    assert_eq!(
        h.events(),
        vec![Event::RoomJoined { request_id: again, room: "live/42".into(), rooms: 1 }]
    );
    assert_eq!(h.rooms(), ["live/42"]);
    // Answered: a second ROOM_OK for it is not expected any more.
    h.feed(&[room_ok(again, 1)], 1_200);
    assert_eq!(h.closed_reason().0, CloseReason::ProtocolViolation(Code::UNEXPECTED_FRAME));
}

#[test]
fn leave_is_answered_with_room_ok_and_forgotten() {
    let mut h = Harness::established();
    h.joined(&["a", "b"], 10);
    assert_eq!(h.rooms(), ["a", "b"]);
    let id = h.s.leave("a").unwrap();
    assert_eq!(h.sent(), vec![Frame::Leave(RoomRequest { request_id: id, room: "a".into() })]);
    assert_eq!(h.rooms(), ["a", "b"], "still a member until ROOM_OK");
    h.feed(&[room_ok(id, 1)], 100);
    assert_eq!(h.events(), vec![Event::RoomLeft { request_id: id, room: "a".into(), rooms: 1 }]);
    assert_eq!(h.rooms(), ["b"]);
    // Leaving a room not joined is answered ROOM_OK too.
    let id = h.s.leave("never").unwrap();
    h.feed(&[room_ok(id, 1)], 200);
    assert_eq!(
        h.events(),
        vec![Event::RoomLeft { request_id: id, room: "never".into(), rooms: 1 }]
    );
    assert_eq!(h.rooms(), ["b"]);
}

#[test]
fn a_refused_join_is_reported_and_the_connection_stays() {
    for code in [
        Code::ROOM_FORBIDDEN,
        Code::TOO_MANY_ROOMS,
        Code::INVALID_ROOM,
        Code::ROOMS_FULL,
        Code::ROOM_CHECK_FAILED,
        Code(799),
        Code::OVERLOADED,
    ] {
        let mut h = Harness::established();
        let id = h.s.join("vip").unwrap();
        h.sent();
        let refused = ErrorFrame { request_id: id, fatal: false, code, message: "no".into() };
        h.feed(&[Frame::Error(refused)], 100);
        assert_eq!(
            h.events(),
            vec![Event::RoomRefused {
                request_id: id,
                room: "vip".into(),
                code,
                message: "no".into()
            }],
            "{code}"
        );
        assert_eq!(h.s.state(), State::Established, "{code}");
        assert!(h.rooms().is_empty(), "{code}");
        assert!(h.sent().is_empty(), "{code}");
        // Answered: a late ROOM_OK for it is not expected any more.
        h.feed(&[room_ok(id, 1)], 200);
        assert_eq!(h.closed_reason().0, CloseReason::ProtocolViolation(Code::UNEXPECTED_FRAME));
    }
    // A refused JOIN of a room joined before forgets it; a refused LEAVE changes nothing.
    let mut h = Harness::established();
    h.joined(&["a", "b"], 10);
    let join = h.s.join("a").unwrap();
    let leave = h.s.leave("b").unwrap();
    h.feed(&[room_error(join, Code::ROOMS_FULL), room_error(leave, Code::INTERNAL_ERROR)], 100);
    let events = h.events();
    assert!(
        matches!(
            events.as_slice(),
            [Event::RoomRefused { room: a, .. }, Event::RoomRefused { room: b, .. }]
                if a == "a" && b == "b"
        ),
        "{events:?}"
    );
    assert_eq!(h.rooms(), ["b"]);
}

#[test]
fn errors_naming_room_requests_are_routed_by_code_class() {
    let mut h = Harness::established();
    // The application's upstream request 1, the session's refresh 1 and room request 1.
    h.s.send_upstream(1, "chat.send", Bytes::from_static(b"x")).unwrap();
    assert_eq!(h.s.refresh("tok-2"), Ok(1));
    assert_eq!(h.s.join("r"), Ok(1));
    assert_eq!(h.s.join("s"), Ok(2));
    h.sent();
    h.feed(
        &[
            // A 5xx always answers an UPSTREAM, even when a room request has its id.
            room_error(1, Code::UPSTREAM_TIMEOUT),
            // A 2xx refuses the refresh first.
            room_error(1, Code::TOKEN_EXPIRED),
            room_error(1, Code::ROOM_FORBIDDEN),
            // A 7xx naming no room request awaiting an answer: about an upstream request.
            room_error(9, Code::ROOM_FORBIDDEN),
            // Another class naming a room request refuses it.
            room_error(2, Code::CLAIM_MISMATCH),
        ],
        100,
    );
    let m = || "m".to_owned();
    assert_eq!(
        h.events(),
        vec![
            Event::UpstreamError { request_id: 1, code: Code::UPSTREAM_TIMEOUT, message: m() },
            Event::RefreshFailed { request_id: 1, code: Code::TOKEN_EXPIRED, message: m() },
            Event::RoomRefused {
                request_id: 1,
                room: "r".into(),
                code: Code::ROOM_FORBIDDEN,
                message: m()
            },
            Event::UpstreamError { request_id: 9, code: Code::ROOM_FORBIDDEN, message: m() },
            Event::RoomRefused {
                request_id: 2,
                room: "s".into(),
                code: Code::CLAIM_MISMATCH,
                message: m()
            },
        ]
    );
    assert_eq!(h.s.state(), State::Established);
}

#[test]
fn unsolicited_room_ok_is_a_violation() {
    let mut h = Harness::established();
    h.feed(&[room_ok(5, 1)], 100);
    match h.sent().as_slice() {
        [Frame::Error(e)] => assert_eq!((e.code, e.fatal), (Code::UNEXPECTED_FRAME, true)),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.closed_reason().0, CloseReason::ProtocolViolation(Code::UNEXPECTED_FRAME));
    // Nor before AUTH_OK, nor a JOIN or LEAVE from the server.
    let mut h = Harness::new(config());
    h.s.connect(h.at(0));
    h.sent();
    h.feed(&[room_ok(1, 1)], 1);
    assert_eq!(h.closed_reason().0, CloseReason::ProtocolViolation(Code::UNEXPECTED_FRAME));
    for frame in [join_frame(1, "x"), Frame::Leave(RoomRequest { request_id: 1, room: "x".into() })]
    {
        let mut h = Harness::established();
        h.feed(&[frame], 1);
        assert_eq!(h.closed_reason().0, CloseReason::ProtocolViolation(Code::UNEXPECTED_FRAME));
    }
}

#[test]
fn room_request_refusals_queue_nothing() {
    let mut h = Harness::new(config());
    assert_eq!(h.s.join("a"), Err(SendError::NotEstablished(State::Idle)));
    h.s.connect(h.at(0));
    h.sent();
    assert_eq!(h.s.join("a"), Err(SendError::NotEstablished(State::AwaitAuth)));
    assert_eq!(h.s.leave("a"), Err(SendError::NotEstablished(State::AwaitAuth)));

    let mut h = Harness::established();
    assert_eq!(h.s.join(""), Err(SendError::RoomName(0)));
    assert_eq!(h.s.leave(&"r".repeat(256)), Err(SendError::RoomName(256)));
    assert_eq!(h.s.join(&"é".repeat(128)), Err(SendError::RoomName(256)), "bytes, not chars");
    assert!(h.sent().is_empty());
    let longest = "r".repeat(255);
    let id = h.s.join(&longest).unwrap();
    assert_eq!(h.sent(), vec![join_frame(id, &longest)]);

    // At most MAX_ROOM_REQUESTS_IN_FLIGHT await their answer, joins and leaves together.
    let mut h = Harness::established();
    for n in 0..MAX_ROOM_REQUESTS_IN_FLIGHT {
        let room = format!("r{n}");
        if n % 2 == 0 { h.s.join(&room) } else { h.s.leave(&room) }.unwrap();
    }
    assert_eq!(h.sent().len(), MAX_ROOM_REQUESTS_IN_FLIGHT);
    assert_eq!(h.s.join("one-more"), Err(SendError::TooManyRoomRequests));
    assert_eq!(h.s.leave("one-more"), Err(SendError::TooManyRoomRequests));
    assert!(h.sent().is_empty());
    // An answer makes room for one more.
    h.feed(&[room_ok(1, 1)], 10);
    assert!(h.s.join("one-more").is_ok());

    // Header 10 + str8 1 + room: a 54-byte name is one byte over a 64-byte limit.
    let mut h = Harness::established_with(config(), AuthOk { max_frame: 64, ..auth_ok() });
    assert_eq!(h.s.join(&"r".repeat(54)), Err(SendError::FrameTooLarge { size: 65, max: 64 }));
    assert!(h.sent().is_empty());
    assert!(h.s.join(&"r".repeat(53)).is_ok());
}

#[test]
fn room_ids_skip_zero_and_ids_awaiting_an_answer_when_they_wrap() {
    let mut h = Harness::established();
    assert_eq!(h.s.join("a"), Ok(1));
    h.s.rooms.next_id = u32::MAX;
    assert_eq!(h.s.join("b"), Ok(u32::MAX));
    assert_eq!(h.s.join("c"), Ok(2), "0 is skipped, 1 still awaits its answer");
}

#[test]
fn rooms_are_rejoined_after_a_reconnect() {
    let mut h = Harness::established();
    h.joined(&["a", "b"], 10);
    // A join and a leave still awaiting their answer when the connection dies: answered by
    // nothing. "c" was never joined; "b" was, and stays remembered.
    let pending_join = h.s.join("c").unwrap();
    h.s.leave("b").unwrap();
    h.sent();
    h.s.transport_closed(h.at(100));
    h.events();
    assert_eq!(h.rooms(), ["a", "b"]);

    h.s.connect(h.at(1_000));
    assert!(matches!(h.sent().as_slice(), [Frame::Hello(_)]), "nothing before AUTH_OK");
    h.feed(&[Frame::AuthOk(auth_ok())], 1_050);
    let sent = h.sent();
    let ids: Vec<u32> = sent
        .iter()
        .map(|f| match f {
            Frame::Join(r) => r.request_id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sent, vec![join_frame(ids[0], "a"), join_frame(ids[1], "b")]);
    assert!(ids.iter().all(|id| *id > pending_join), "ids go on, never reused: {ids:?}");
    assert!(matches!(h.events().as_slice(), [Event::Authenticated(_)]));

    // Rejoins are answered like joins; a refused rejoin forgets its room.
    h.feed(&[room_ok(ids[0], 1), room_error(ids[1], Code::ROOM_FORBIDDEN)], 1_100);
    assert_eq!(
        h.events(),
        vec![
            Event::RoomJoined { request_id: ids[0], room: "a".into(), rooms: 1 },
            Event::RoomRefused {
                request_id: ids[1],
                room: "b".into(),
                code: Code::ROOM_FORBIDDEN,
                message: "m".into()
            },
        ]
    );
    assert_eq!(h.rooms(), ["a"]);
    // A ROOM_OK for a request of the previous connection is not expected here.
    h.feed(&[room_ok(pending_join, 2)], 1_200);
    assert_eq!(h.closed_reason().0, CloseReason::ProtocolViolation(Code::UNEXPECTED_FRAME));
}

#[test]
fn without_rejoin_rooms_the_application_rejoins() {
    let config = Config { rejoin_rooms: false, ..config() };
    assert!(Config::default().rejoin_rooms, "rejoining is the default");
    let mut h = Harness::established_with(config, auth_ok());
    h.joined(&["a"], 10);
    h.s.transport_closed(h.at(100));
    h.s.connect(h.at(1_000));
    h.sent();
    h.feed(&[Frame::AuthOk(auth_ok())], 1_050);
    assert!(h.sent().is_empty(), "no JOIN");
    assert_eq!(h.rooms(), ["a"], "still remembered for the application");
}

#[test]
fn rooms_are_rejoined_on_the_new_connection_of_a_move_before_the_old_one_retires() {
    let mut h = Harness::established();
    h.joined(&["a", "b"], 10);
    h.feed(&[overlap_redirect()], 100);
    // A join awaiting its answer when the move starts is answered on the old connection,
    // and ignored there.
    let on_old = h.s.join("c").unwrap();
    h.sent();
    h.events();
    h.s.connect(h.at(200));
    assert!(matches!(h.sent().as_slice(), [Frame::Hello(_)]));
    h.feed_retiring(&[room_ok(on_old, 3), room_error(on_old, Code::INTERNAL_ERROR)], 210);
    h.feed_retiring(&[room_error(77, Code::ROOMS_FULL)], 220);
    assert!(h.events().is_empty(), "room answers on the old connection are ignored");
    assert!(h.s.has_retiring());

    h.feed(&[Frame::AuthOk(auth_ok())], 300);
    let sent = h.sent();
    let [Frame::Join(a), Frame::Join(b)] = sent.as_slice() else { panic!("{sent:?}") };
    assert_eq!((a.room.as_str(), b.room.as_str()), ("a", "b"));
    assert!(matches!(h.events().as_slice(), [Event::Authenticated(_)]));
    // The linger has passed, but a rejoin still awaits its answer: the old connection stays.
    h.feed(&[room_ok(a.request_id, 1)], 400);
    h.tick(300 + 1_000);
    let events = h.events();
    assert_eq!(
        events,
        vec![Event::RoomJoined { request_id: a.request_id, room: "a".into(), rooms: 1 }]
    );
    assert!(h.s.poll_timeout().is_some_and(|t| t > h.at(1_300)), "no busy loop while held");
    // The last answer retires it at once.
    h.feed(&[room_error(b.request_id, Code::ROOM_CHECK_FAILED)], 1_500);
    let events = h.events();
    assert!(matches!(events.as_slice(), [Event::RoomRefused { .. }, Event::Retired]), "{events:?}");
    assert_eq!(h.rooms(), ["a"]);
    h.s.retiring_closed();
    assert_eq!(h.s.state(), State::Established);
}

#[test]
fn answered_rejoins_before_the_linger_leave_the_linger_in_charge() {
    let mut h = Harness::established();
    h.joined(&["a"], 10);
    h.feed(&[overlap_redirect()], 100);
    h.events();
    h.s.connect(h.at(200));
    h.sent();
    h.feed(&[Frame::AuthOk(auth_ok())], 300);
    let sent = h.sent();
    let [Frame::Join(a)] = sent.as_slice() else { panic!("{sent:?}") };
    h.feed(&[room_ok(a.request_id, 1)], 350);
    assert_eq!(h.events().len(), 2, "Authenticated, RoomJoined");
    h.tick(300 + 999);
    assert!(h.events().is_empty());
    h.tick(300 + 1_000);
    assert_eq!(h.events(), vec![Event::Retired]);

    // The new connection dying with rejoins unanswered lets the old one go at the linger.
    let mut h = Harness::established();
    h.joined(&["a"], 10);
    h.feed(&[overlap_redirect()], 100);
    h.s.connect(h.at(200));
    h.feed(&[Frame::AuthOk(auth_ok())], 300);
    h.events();
    h.s.transport_closed(h.at(400));
    h.events();
    h.tick(300 + 1_000);
    assert_eq!(h.events(), vec![Event::Retired]);
    assert_eq!(h.rooms(), ["a"], "remembered for the next connection");
}
