//! QUIC end to end: a real `holdfast-gateway` with `[quic]` enabled, real quinn clients
//! (certificate pinned by the fingerprint the gateway prints) driving `codec::client`, the
//! HTTP API, and hostile datagrams. TCP clients share the gateway and must not notice.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use holdfast_codec::client::Event;
use holdfast_codec::{Code, Platform};
use holdfast_tests::quic::{self, QuicWire};
use holdfast_tests::{Client, GatewayProcess};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_holdfast-gateway");
const SECS: Duration = Duration::from_secs(10);
/// `GatewayProcess` runs two TCP loops: the QUIC loop is worker 2.
const QUIC_WORKER: u64 = 2;

/// A scratch directory for one gateway's development certificate, removed on drop.
struct CertDir(PathBuf);

impl CertDir {
    fn new(name: &str) -> CertDir {
        let dir = std::env::temp_dir().join(format!("holdfast-quic-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        CertDir(dir)
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One-second heartbeats with an idle timeout of `idle_factor` of them, on a fine wheel.
fn heartbeats(idle_factor: u32) -> Vec<String> {
    let mut sets: Vec<String> =
        ["heartbeat.min_ms=1000", "heartbeat.default_ms=1000", "heartbeat.wheel_tick_ms=20"]
            .map(str::to_owned)
            .to_vec();
    sets.push(format!("heartbeat.idle_factor={idle_factor}"));
    sets
}

/// A gateway with QUIC on a free loopback port, and its certificate fingerprint.
fn gateway<S: AsRef<str>>(dir: &CertDir, sets: &[S]) -> (GatewayProcess, SocketAddr, String) {
    let cert = format!("quic.dev_cert_dir={}", dir.0.display());
    let mut all = vec!["quic.enabled=true", "quic.addr=127.0.0.1:0", cert.as_str()];
    all.extend(sets.iter().map(AsRef::as_ref));
    let gw = GatewayProcess::spawn(BIN, &all);
    let addr = gw.quic.expect("ready line has quic=");
    let sha = gw.quic_sha256.clone().expect("the certificate line has sha256=");
    assert!(dir.0.join("cert.pem").exists(), "the development certificate was written");
    (gw, addr, sha)
}

fn worker_of(conn_id: u64) -> u64 {
    (conn_id >> 40) & 0xff
}

#[test]
fn a_quic_client_gets_pushes_acks_heartbeats_and_is_kicked() {
    let dir = CertDir::new("basic");
    // Idle factor 10: the TCP client, not driven while the QUIC one is, stays.
    let (gw, addr, sha) = gateway(&dir, &heartbeats(10));
    let mut q = quic::login(addr, &sha, "quinn");
    let ok = q.session().auth().cloned().expect("authenticated");
    assert_eq!(worker_of(ok.conn_id), QUIC_WORKER, "the QUIC loop's connection id");
    let mut tcp = Client::login(gw.tcp, "tess");

    let (status, answer) = gw.post("/v1/push/user", json!({"user": "quinn", "payload": "one"}));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["delivered"][0]["conn_id"], ok.conn_id.to_string());
    assert_eq!(&q.expect_push().payload[..], b"one");

    let (_, answer) = gw.post("/v1/push/all", json!({"payload": "everyone"}));
    assert_eq!(answer["delivered_count"], 2, "{answer}");
    assert_eq!(&q.expect_push().payload[..], b"everyone");
    assert_eq!(&tcp.expect_push().payload[..], b"everyone");

    // Heartbeats every second, answered over QUIC; the acks went out meanwhile.
    let events = q.run_for(Duration::from_millis(2500));
    assert!(events.iter().filter(|e| matches!(e, Event::Pong { .. })).count() >= 2, "{events:?}");
    assert!(gw.wait_metric("holdfast_gateway_pushes_acked_total", 2.0, SECS) >= 2.0);
    assert_eq!(gw.metric("holdfast_gateway_quic_connections"), 1.0);
    assert_eq!(gw.metric("holdfast_gateway_connections_established"), 2.0);

    let (status, answer) = gw.post("/v1/kick", json!({"user": "quinn", "code": 302}));
    assert_eq!(status, 200, "{answer}");
    let code = q.expect(SECS, "KICK", |e| match e {
        Event::Kicked { code, .. } => Some(code),
        _ => None,
    });
    assert_eq!(code, Code(302));
    assert!(q.closed_within(SECS), "the kicked connection ends");
    assert_eq!(gw.wait_metric_below("holdfast_gateway_quic_connections", 0.0, SECS), 0.0);
    assert_eq!(gw.metric("holdfast_gateway_quic_accepted_total"), 1.0);

    // TCP did not notice.
    let (_, answer) = gw.post("/v1/push/user", json!({"user": "tess", "payload": "still"}));
    assert_eq!(answer["delivered"].as_array().map(Vec::len), Some(1), "{answer}");
    assert_eq!(&tcp.expect_push().payload[..], b"still");
}

#[test]
fn a_drain_redirects_quic_clients_make_before_break() {
    let dir = CertDir::new("drain");
    let (mut gw, addr, sha) =
        gateway(&dir, &["drain.window_ms=200", "drain.grace_ms=5000", "drain.jitter_ms=0"]);
    let mut q = quic::login(addr, &sha, "dora");
    let (status, answer) = gw.post("/v1/admin/drain", json!({}));
    assert_eq!(status, 202, "{answer}");
    let (code, overlap) = q.expect(SECS, "REDIRECT", |e| match e {
        Event::Redirected { code, overlap, .. } => Some((code, overlap)),
        _ => None,
    });
    assert_eq!((code, overlap), (Code::SERVER_DRAINING, true));
    // Moving: still delivering until the client leaves.
    let (_, answer) = gw.post("/v1/push/user", json!({"user": "dora", "payload": "in flight"}));
    assert_eq!(answer["delivered"].as_array().map(Vec::len), Some(1), "{answer}");
    assert_eq!(&q.expect_push().payload[..], b"in flight");
    // A new QUIC client is refused while draining.
    let refused = std::panic::catch_unwind(|| QuicWire::connect(addr, &sha));
    assert!(refused.is_err(), "a draining gateway takes no new QUIC connection");
    // The client moved: it closes, and the drain ends with nobody left.
    drop(q);
    let exit = gw.wait_exit(SECS).expect("the drained gateway exits");
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn a_client_that_rebinds_its_udp_socket_keeps_its_session() {
    let dir = CertDir::new("migrate");
    let (gw, addr, sha) = gateway(&dir, &heartbeats(3));
    let mut q = quic::login(addr, &sha, "mia");
    let conn_id = q.session().auth().map(|ok| ok.conn_id).expect("authenticated");
    let (_, answer) = gw.post("/v1/push/user", json!({"user": "mia", "payload": "before"}));
    assert_eq!(answer["delivered"][0]["conn_id"], conn_id.to_string());
    assert_eq!(&q.expect_push().payload[..], b"before");

    for round in 0..2 {
        let (old, new) = q.quic().expect("a QUIC client").rebind();
        assert_ne!(old.port(), new.port());
        // The next heartbeat leaves from the new port; the gateway follows the client there.
        let events = q.run_for(Duration::from_millis(2500));
        assert!(events.iter().any(|e| matches!(e, Event::Pong { .. })), "{round}: {events:?}");
        let payload = format!("after move {round}");
        let (_, answer) = gw.post("/v1/push/user", json!({"user": "mia", "payload": payload}));
        assert_eq!(answer["delivered"][0]["conn_id"], conn_id.to_string(), "same session");
        assert_eq!(q.expect_push().payload, payload.as_bytes());
        assert_eq!(q.session().auth().map(|ok| ok.conn_id), Some(conn_id));
    }
    assert_eq!(gw.metric("holdfast_gateway_quic_accepted_total"), 1.0, "no reconnect");
    assert_eq!(gw.metric("holdfast_gateway_quic_migrations_total"), 2.0);
    assert_eq!(gw.metric("holdfast_gateway_connections_established"), 1.0);
}

/// A datagram shaped like a QUIC v1 Initial (long header, fixed bit, 8-byte connection
/// ids, no token) whose protected payload is random: it fails decryption.
fn fake_initial(rng: &mut u64, len: usize) -> Vec<u8> {
    let mut d = vec![0xc3, 0, 0, 0, 1, 8];
    d.extend(random_bytes(rng, 8));
    d.push(8);
    d.extend(random_bytes(rng, 8));
    d.push(0); // token length
    let rest = len.saturating_sub(d.len() + 2);
    d.extend_from_slice(&[0x40 | ((rest >> 8) as u8 & 0x3f), rest as u8]);
    d.extend(random_bytes(rng, rest));
    d
}

fn random_bytes(rng: &mut u64, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            // xorshift64: deterministic, good enough for noise.
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            *rng as u8
        })
        .collect()
}

#[test]
fn garbage_datagrams_leave_the_gateway_up_and_clients_served() {
    let dir = CertDir::new("garbage");
    let (mut gw, addr, sha) = gateway::<&str>(&dir, &[]);
    let mut before = quic::login(addr, &sha, "early");
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut sent = 0;
    for i in 0..2_000usize {
        let datagram = match i % 5 {
            // Random bytes of every size.
            0 => random_bytes(&mut rng, 1 + i % 1500),
            // Initials that fail decryption.
            1 => fake_initial(&mut rng, 1200),
            // Truncated Initials: a header cut short, or a length past the datagram.
            2 => fake_initial(&mut rng, 1200)[..1 + i % 40].to_vec(),
            3 => {
                let mut d = fake_initial(&mut rng, 1200);
                d.truncate(600);
                d
            }
            // Short-header packets for connections that do not exist.
            _ => {
                let mut d = random_bytes(&mut rng, 60);
                d[0] = 0x40 | (d[0] & 0x3f);
                d
            }
        };
        if socket.send_to(&datagram, addr).is_ok() {
            sent += 1;
        }
    }
    assert!(sent > 1_000, "sent {sent} datagrams");
    assert!(gw.is_running(), "the gateway survives the garbage");
    // The client from before and a new one are both served.
    let mut after = quic::login(addr, &sha, "late");
    let (_, answer) = gw.post("/v1/push/all", json!({"payload": "still up"}));
    assert_eq!(answer["delivered_count"], 2, "{answer}");
    assert_eq!(&before.expect_push().payload[..], b"still up");
    assert_eq!(&after.expect_push().payload[..], b"still up");
    let tcp = Client::login_on(gw.tcp, "tcp", Platform::Linux);
    drop(tcp);
    assert_eq!(gw.metric("holdfast_gateway_quic_connections"), 2.0);
}

#[test]
fn a_silent_quic_client_is_closed_at_its_granted_idle_timeout() {
    let dir = CertDir::new("idle");
    let (gw, addr, sha) = gateway(&dir, &heartbeats(2));
    let mut q = quic::login(addr, &sha, "sam");
    let idle = q.session().auth().map(|ok| ok.idle_timeout_ms).expect("authenticated");
    assert_eq!(idle, 2000);
    // The client stops sending (no PING); nothing else keeps the session alive.
    let started = Instant::now();
    let took = q.quic().expect("a QUIC client").closed_within(SECS).expect("closed by the gateway");
    let since_login = started.elapsed();
    assert!(took >= Duration::from_millis(1800), "not before the idle timeout: {took:?}");
    assert!(since_login < Duration::from_millis(4000), "around the idle timeout: {took:?}");
    assert_eq!(
        gw.wait_metric(r#"holdfast_gateway_closes_total{reason="idle_timeout"}"#, 1.0, SECS),
        1.0
    );
    assert_eq!(gw.wait_metric_below("holdfast_gateway_quic_connections", 0.0, SECS), 0.0);
}

#[test]
fn a_client_pinning_another_certificate_fails_its_handshake_and_is_counted() {
    let dir = CertDir::new("pin");
    let (gw, addr, sha) = gateway::<&str>(&dir, &[]);
    let wrong = "00".repeat(32);
    let refused = std::panic::catch_unwind(|| QuicWire::connect(addr, &wrong));
    assert!(refused.is_err(), "a client that does not trust the certificate cannot connect");
    let failures = r#"holdfast_gateway_quic_handshake_failures_total{reason="handshake"}"#;
    assert!(gw.wait_metric(failures, 1.0, SECS) >= 1.0);
    assert_eq!(gw.metric("holdfast_gateway_quic_connections"), 0.0);
    // The right pin works on the same gateway.
    let mut q = quic::login(addr, &sha, "pat");
    let (_, answer) = gw.post("/v1/push/user", json!({"user": "pat", "payload": "ok"}));
    assert_eq!(answer["delivered"].as_array().map(Vec::len), Some(1), "{answer}");
    assert_eq!(&q.expect_push().payload[..], b"ok");
}

#[test]
fn shutdown_redirects_quic_clients_and_exits() {
    let dir = CertDir::new("shutdown");
    // SIGTERM as a fast stop (by default it drains: `a_drain_redirects_quic_clients_...`).
    let (mut gw, addr, sha) = gateway(&dir, &["drain.on_sigterm=false"]);
    let mut q = quic::login(addr, &sha, "stu");
    gw.signal(libc::SIGTERM);
    let code = q.expect(SECS, "REDIRECT", |e| match e {
        Event::Redirected { code, .. } => Some(code),
        _ => None,
    });
    assert_eq!(code, Code::SERVER_SHUTDOWN);
    drop(q);
    let exit = gw.wait_exit(SECS).expect("the gateway exits");
    assert!(exit.success(), "{exit:?}");
}
