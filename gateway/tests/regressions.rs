//! Defects found when the gateway was tried from outside, each driven the way it was found:
//! a real gateway process, real sockets. (Defects that need a virtual clock or a slot
//! churned 65,536 times are unit tests: `session::tests`, `driver::slots`,
//! `driver::supervise`.)

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use holdfast_codec::client::Event;
use holdfast_codec::{Ack, Code, Frame, Head, Hello, Ping, Platform};
use holdfast_tests::{
    Client, GatewayProcess, Webhook, client_config, read_frames, token, token_with,
};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_holdfast-gateway");
const SECS: Duration = Duration::from_secs(10);

fn encode(frames: &[Frame]) -> Vec<u8> {
    holdfast_tests::encode_frames(frames)
}

fn hello(user: &str) -> Frame {
    Frame::Hello(Hello { versions: vec![1], token: token(user), ..Default::default() })
}

/// A raw authenticated connection.
fn raw_login(gw: &GatewayProcess, user: &str) -> TcpStream {
    let mut s = TcpStream::connect(gw.tcp).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(&encode(&[hello(user)])).unwrap();
    let (frames, _) = read_until(&mut s, 1);
    assert!(matches!(frames.as_slice(), [Frame::AuthOk(_)]), "{frames:?}");
    s
}

/// The client's logout (an ACK, then the end of the stream) arrives with the FIN in one
/// readiness event. Before the fix the close was missed until the idle timeout (90 s here),
/// pushes were reported delivered into the dead socket, and the close was counted as
/// `idle_timeout`.
#[test]
fn a_close_that_arrives_with_the_last_data_is_seen_at_once() {
    let gw = GatewayProcess::spawn(BIN, &[]);
    let n = 20;
    let mut conns: Vec<TcpStream> = (0..n).map(|i| raw_login(&gw, &format!("u{i}"))).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        let (status, _) =
            gw.post("/v1/push/user", json!({"user": format!("u{i}"), "payload": "p"}));
        assert_eq!(status, 200);
        let (frames, _) = read_until(s, 1);
        assert!(matches!(frames.as_slice(), [Frame::Push(_)]), "{frames:?}");
        // Acknowledge and close at once, as codec::client does on logout.
        s.write_all(&encode(&[Frame::Ack(Ack { cumulative: 1, message_ids: vec![] })])).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
    }
    let closed = gw.wait_metric(
        r#"holdfast_gateway_closes_total{reason="peer_closed"}"#,
        n as f64,
        Duration::from_secs(3),
    );
    assert_eq!(closed, n as f64, "every logout seen within 3 s (idle timeout is 90 s)");
    assert_eq!(gw.wait_metric_below("holdfast_gateway_connections_established", 0.0, SECS), 0.0);
    assert_eq!(gw.metric("holdfast_gateway_pushes_unacked_on_close_total"), 0.0, "the ACK counted");
    let (_, answer) = gw.post("/v1/push/user", json!({"user": "u0", "payload": "gone"}));
    assert_eq!(answer["offline_users"], json!(["u0"]));
}

/// Before authentication a peer may make the gateway buffer no more than the largest legal
/// HELLO, whatever `listen.max_frame` allows afterwards.
#[test]
fn pre_auth_buffering_is_limited_to_the_largest_hello() {
    let gw = GatewayProcess::spawn(BIN, &["listen.max_frame=1048576"]);
    let mut s = TcpStream::connect(gw.tcp).unwrap();
    let mut header = Vec::new();
    Head { length: 9_000, kind: 0x01, flags: 0, id: 0 }.encode(&mut header);
    s.write_all(&header).unwrap();
    let (frames, closed) = read_frames(&mut s, SECS);
    assert!(closed);
    assert!(
        matches!(frames.as_slice(), [Frame::Error(e)] if e.code == Code::FRAME_TOO_LARGE && e.fatal),
        "{frames:?}"
    );
}

/// A token that expires mid-session ends it with KICK 303 (within the wheel tick), unless
/// the client refreshes it first; a refresh for another user is refused and changes nothing.
#[test]
fn expiring_tokens_are_kicked_unless_refreshed() {
    let gw = GatewayProcess::spawn(BIN, &["auth.leeway_secs=0", "heartbeat.wheel_tick_ms=50"]);
    let short = |user: &str| client_config(token_with(user, 2, None, None), Platform::Ios, "dev");
    let mut expiring = Client::connect(gw.tcp, short("exp"));
    let ok = expiring.expect_auth();
    assert!(ok.token_expires_ms > 0);
    let mut refreshed = Client::connect(gw.tcp, short("ref"));
    refreshed.expect_auth();
    let mut refused = Client::connect(gw.tcp, short("bad"));
    refused.expect_auth();
    let started = Instant::now();

    let id = refreshed.session().refresh(token_with("ref", 60, None, None)).unwrap();
    let new_exp = refreshed.expect(SECS, "REFRESH_OK", |e| match e {
        Event::TokenRefreshed { request_id, token_expires_ms } if request_id == id => {
            Some(token_expires_ms)
        }
        _ => None,
    });
    assert!(new_exp >= ok.token_expires_ms + 50_000);
    let id = refused.session().refresh(token_with("somebody-else", 60, None, None)).unwrap();
    let code = refused.expect(SECS, "a refused refresh", |e| match e {
        Event::RefreshFailed { request_id, code, .. } if request_id == id => Some(code),
        _ => None,
    });
    assert_eq!(code, Code::CLAIM_MISMATCH);

    for (name, c) in [("expiring", &mut expiring), ("refused", &mut refused)] {
        let code = c.expect(SECS, "KICK 303", |e| match e {
            Event::Kicked { code, .. } => Some(code),
            _ => None,
        });
        assert_eq!(code, Code::TOKEN_EXPIRED_KICK, "{name}");
        // exp is whole seconds: at most 2 s after the token was minted, plus a tick.
        assert!(
            started.elapsed() < Duration::from_millis(3_500),
            "{name}: {:?}",
            started.elapsed()
        );
    }
    // The refreshed session outlives its first token and still gets pushes.
    std::thread::sleep(Duration::from_millis(500));
    gw.post("/v1/push/user", json!({"user": "ref", "payload": "still here"}));
    assert_eq!(&refreshed.expect_push().payload[..], b"still here");
    assert_eq!(
        gw.wait_metric(r#"holdfast_gateway_closes_total{reason="token_expired"}"#, 2.0, SECS),
        2.0
    );
    assert_eq!(gw.metric(r#"holdfast_gateway_token_refreshes_total{outcome="ok"}"#), 1.0);
    assert_eq!(gw.metric(r#"holdfast_gateway_token_refreshes_total{outcome="refused"}"#), 1.0);
}

/// The gateway never sends a frame larger than the client announced in HELLO.max_frame: an
/// oversized push is a clear failure in the API answer, an oversized upstream reply a
/// non-fatal ERROR 504, and the connection stays.
#[test]
fn frames_larger_than_the_client_accepts_are_never_sent() {
    let hook = Webhook::start(|body| {
        // The request payload is the reply size in decimal, sent base64-encoded.
        use base64::Engine;
        let size: usize = body["payload_base64"]
            .as_str()
            .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
            .and_then(|p| String::from_utf8(p).ok())
            .and_then(|p| p.parse().ok())
            .expect("a size");
        (200, json!({"status": 0, "payload": "r".repeat(size)}))
    });
    let set = format!("upstream.webhook_url={}", hook.url());
    let gw = GatewayProcess::spawn(BIN, &[&set]);
    let mut cfg = client_config(token("small"), Platform::Android, "dev");
    cfg.max_frame = 4_096;
    let mut c = Client::connect(gw.tcp, cfg);
    c.expect_auth();
    let (status, answer) =
        gw.post("/v1/push/user", json!({"user": "small", "payload": "x".repeat(5_000)}));
    assert_eq!(status, 200);
    assert_eq!(answer["failed"][0]["reason"], "too_large", "{answer}");
    assert_eq!(answer["delivered"], json!([]));
    gw.post("/v1/push/user", json!({"user": "small", "payload": "fits"}));
    assert_eq!(&c.expect_push().payload[..], b"fits");
    c.session().send_upstream(7, "echo", Bytes::from("5000")).unwrap();
    let code = c.expect(SECS, "the upstream answer", |e| match e {
        Event::UpstreamError { request_id: 7, code, .. } => Some(code),
        Event::UpstreamReply(r) => {
            panic!("a {} byte reply reached a 4 KiB client", r.payload.len())
        }
        _ => None,
    });
    assert_eq!(code, Code::REPLY_TOO_LARGE);
    c.session().send_upstream(8, "echo", Bytes::from("100")).unwrap();
    let reply = c.expect(SECS, "a small reply", |e| match e {
        Event::UpstreamReply(r) => Some(r),
        _ => None,
    });
    assert_eq!(reply.payload.len(), 100);
}

/// A flooding client is closed with ERROR 111 once its burst is spent; a well-behaved
/// client on the same node does not notice.
#[test]
fn a_flooding_client_is_rate_limited_and_others_are_unaffected() {
    let gw = GatewayProcess::spawn(
        BIN,
        &["limits.inbound_frames_per_sec=50", "limits.inbound_burst=20", "node.workers=1"],
    );
    let mut calm = Client::login(gw.tcp, "calm");
    let mut flood = raw_login(&gw, "flood");
    let pings: Vec<Frame> = (0..200).map(|id| Frame::Ping(Ping { id, timestamp: None })).collect();
    let _ = flood.write_all(&encode(&pings));
    let (frames, closed) = read_frames(&mut flood, SECS);
    assert!(closed);
    assert!(
        matches!(frames.last(), Some(Frame::Error(e)) if e.code == Code::RATE_LIMITED && e.fatal),
        "{:?}",
        frames.last()
    );
    let pongs = frames.iter().filter(|f| matches!(f, Frame::Pong(_))).count();
    assert!((20..=25).contains(&pongs), "the burst is answered, then the close: {pongs}");
    assert_eq!(
        gw.wait_metric(r#"holdfast_gateway_closes_total{reason="rate_limited"}"#, 1.0, SECS),
        1.0
    );
    gw.post("/v1/push/user", json!({"user": "calm", "payload": "fine"}));
    assert_eq!(&calm.expect_push().payload[..], b"fine");
}

/// A push to all reaches every connection exactly once, across the chunks a loop delivers
/// it in (1,024 connections per turn).
#[test]
fn a_push_to_all_reaches_every_connection_across_chunks() {
    let gw = GatewayProcess::spawn(BIN, &["node.workers=1"]);
    let n = 2_100;
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(gw.tcp).unwrap();
        s.write_all(&encode(&[hello(&format!("bulk{i}"))])).unwrap();
        conns.push(s);
    }
    for s in &mut conns {
        let (frames, _) = read_until(s, 1);
        assert!(matches!(frames.as_slice(), [Frame::AuthOk(_)]), "{frames:?}");
    }
    let (status, answer) = gw.post("/v1/push/all", json!({"payload": "all", "ack": false}));
    assert_eq!(status, 200);
    assert_eq!(answer["delivered_count"], n, "{answer}");
    for s in &mut conns {
        let (frames, _) = read_until(s, 1);
        assert!(matches!(frames.as_slice(), [Frame::Push(p)] if p.seq == 1), "{frames:?}");
    }
    // Nothing more arrives: each got it once.
    for s in conns.iter_mut().take(50) {
        s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
        let mut b = [0u8; 1];
        assert!(s.read(&mut b).is_err(), "a second frame arrived");
    }
}

/// Read until `count` whole frames arrived (at most 10 s); whether the peer closed.
fn read_until(s: &mut TcpStream, count: usize) -> (Vec<Frame>, bool) {
    let until = Instant::now() + SECS;
    let mut buf = bytes::BytesMut::new();
    let mut frames = Vec::new();
    let mut chunk = [0u8; 4096];
    while frames.len() < count {
        while let Ok(Some(f)) = holdfast_codec::decode(&mut buf, 1 << 20) {
            frames.push(f);
        }
        let now = Instant::now();
        if frames.len() >= count || now >= until {
            break;
        }
        s.set_read_timeout(Some(until - now)).unwrap();
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return (frames, true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    (frames, false)
}

/// Keys chosen by the token's `kid`, rotated by editing `[auth]` and sending SIGHUP: no
/// restart, and connections authenticated with the old key stay up.
#[test]
fn verification_keys_rotate_by_kid_on_sighup() {
    use holdfast_tests::token_kid;
    let dir = std::env::temp_dir().join(format!("holdfast-kid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    let keys = |entries: &[(&str, &str)]| {
        let mut text = String::from("[auth]\nalgorithm = \"HS256\"\n");
        for (kid, secret) in entries {
            text.push_str(&format!("[[auth.keys]]\nkid = \"{kid}\"\nsecret = \"{secret}\"\n"));
        }
        std::fs::write(&path, text).unwrap();
    };
    keys(&[("2026-11", "old-secret-0123456789")]);
    let gw = GatewayProcess::spawn_with(BIN, Some(&path), &[]);
    let login = |token: String| {
        let mut c = Client::connect(gw.tcp, client_config(token, Platform::Web, "dev"));
        let outcome = c.expect(SECS, "the handshake's answer", |e| match e {
            Event::Authenticated(_) => Some(Ok(())),
            Event::AuthFailed { code, reason, .. } => Some(Err((code, reason))),
            _ => None,
        });
        (c, outcome)
    };
    let (mut old_conn, ok) = login(token_kid("alice", "2026-11", "old-secret-0123456789"));
    assert_eq!(ok, Ok(()));
    let (_, refused) = login(token_kid("bob", "2026-12", "new-secret-0123456789"));
    let (code, reason) = refused.unwrap_err();
    assert_eq!(code, Code::INVALID_TOKEN);
    assert!(reason.contains("unknown key id `2026-12`"), "{reason}");

    keys(&[("2026-12", "new-secret-0123456789")]);
    gw.signal(libc::SIGHUP);
    let until = Instant::now() + SECS;
    loop {
        let (_, outcome) = login(token_kid("bob", "2026-12", "new-secret-0123456789"));
        if outcome.is_ok() {
            break;
        }
        assert!(Instant::now() < until, "the new key was not loaded: {outcome:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, refused) = login(token_kid("carol", "2026-11", "old-secret-0123456789"));
    assert_eq!(refused.unwrap_err().0, Code::INVALID_TOKEN);
    // A bad file is refused and the keys in force stay.
    std::fs::write(&path, "[auth]\nkeys = 5\n").unwrap();
    gw.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(200));
    let (_, outcome) = login(token_kid("dave", "2026-12", "new-secret-0123456789"));
    assert_eq!(outcome, Ok(()));
    // The connection made with the old key was never dropped.
    gw.post("/v1/push/user", json!({"user": "alice", "payload": "still here"}));
    assert_eq!(&old_conn.expect_push().payload[..], b"still here");
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM as a fast stop (`drain.on_sigterm = false`; by default it drains, `edge.rs`):
/// every authenticated client gets `REDIRECT` `SERVER_SHUTDOWN` behind whatever was
/// still queued for it (before the fix queued bytes were dropped right after the redirect),
/// and the process exits cleanly.
#[test]
fn sigterm_redirects_every_client_after_what_was_queued() {
    let mut gw = GatewayProcess::spawn(
        BIN,
        &["listen.send_buffer_bytes=4096", "push.max_unacked=100000", "drain.on_sigterm=false"],
    );
    let mut idle = Client::login(gw.tcp, "idle");
    let mut behind = raw_login(&gw, "behind");
    let payload = "z".repeat(10_000);
    for _ in 0..40 {
        let (status, answer) =
            gw.post("/v1/push/user", json!({"user": "behind", "payload": payload, "ack": false}));
        assert_eq!(status, 200);
        assert_eq!(answer["delivered"].as_array().map(Vec::len), Some(1), "{answer}");
    }
    let queued = gw.wait_metric("holdfast_gateway_outbound_queue_bytes", 1.0, SECS);
    assert!(queued > 0.0, "bytes wait in the gateway's own queue");
    gw.signal(libc::SIGTERM);
    let (frames, closed) = read_until(&mut behind, 41);
    let pushes = frames.iter().filter(|f| matches!(f, Frame::Push(_))).count();
    assert_eq!(pushes, 40, "every queued push arrives before the redirect");
    assert!(
        matches!(frames.last(), Some(Frame::Redirect(r)) if r.code == Code::SERVER_SHUTDOWN),
        "{:?}",
        frames.last().map(|f| f.kind())
    );
    let code = idle.expect(SECS, "REDIRECT", |e| match e {
        Event::Redirected { code, .. } => Some(code),
        _ => None,
    });
    assert_eq!(code, Code::SERVER_SHUTDOWN);
    let (_, closed_after) = read_until(&mut behind, 1);
    assert!(closed || closed_after, "the gateway closes after the redirect");
    let status = gw.wait_exit(SECS).expect("the gateway exits");
    assert!(status.success(), "{status:?}");
}
