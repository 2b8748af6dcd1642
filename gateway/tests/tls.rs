//! The TLS listener with real processes: the same session over TLS as over TCP (login,
//! push, ack, heartbeats) beside plain clients; certificates reloaded on `SIGHUP` without
//! dropping anyone (and a bad pair refused); stalled, partial and garbage handshakes closed
//! by the handshake deadline and counted, the gateway unharmed.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use holdfast_codec::Platform;
use holdfast_codec::client::Event;
use holdfast_tests::{
    Client, GatewayProcess, HaproxyProcess, SCHEDULER_SECRET, SchedulerProcess, TestCa, Webhook,
    client_config, connect_from, eventually, free_port, read_frames, tls_client_config, token,
};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_holdfast-gateway");
const SECS: Duration = Duration::from_secs(10);

/// A gateway with a TLS listener on a free port serving `cert`/`key`, plus `extra` settings.
fn gateway(cert: &std::path::Path, key: &std::path::Path, extra: &[&str]) -> GatewayProcess {
    let cert = format!("tls.cert={}", cert.display());
    let key = format!("tls.key={}", key.display());
    let mut sets = vec!["tls.addr=127.0.0.1:0", cert.as_str(), key.as_str()];
    sets.extend_from_slice(extra);
    let gw = GatewayProcess::spawn(BIN, &sets);
    assert!(gw.tls.is_some(), "ready line names the TLS listener");
    gw
}

fn tls_addr(gw: &GatewayProcess) -> SocketAddr {
    gw.tls.expect("TLS listener")
}

#[test]
fn a_tls_client_logs_in_gets_pushes_acks_and_heartbeats_beside_a_plain_one() {
    let ca = TestCa::new("session");
    let (cert, key, _) = ca.issue("gw");
    let gw = gateway(
        &cert,
        &key,
        &[
            "heartbeat.min_ms=1000",
            "heartbeat.default_ms=1000",
            "heartbeat.idle_factor=2",
            "heartbeat.wheel_tick_ms=20",
        ],
    );
    let mut alice = Client::login_tls(tls_addr(&gw), &ca.ca_pem, "alice");
    let mut bob = Client::login(gw.tcp, "bob");
    assert_eq!(gw.metric("holdfast_gateway_tls_handshakes_total"), 1.0);
    assert_eq!(gw.metric("holdfast_gateway_connections_established"), 2.0);
    gw.post("/v1/push/user", json!({"user": "bob", "payload": "plain"}));
    assert_eq!(&bob.expect_push().payload[..], b"plain");
    drop(bob);

    let (status, body) = gw.post(
        "/v1/push/user",
        json!({"user": "alice", "payload": "over tls", "ack_required": true}),
    );
    assert_eq!(status, 200, "{body}");
    let push = alice.expect_push();
    assert_eq!(&push.payload[..], b"over tls");

    // Heartbeats every second keep the connection past its 2 s idle timeout; the client
    // session acknowledges the push within 200 ms meanwhile.
    let events = alice.run_for(Duration::from_millis(3500));
    assert!(events.iter().filter(|e| matches!(e, Event::Pong { .. })).count() >= 2, "{events:?}");
    assert!(!events.iter().any(|e| matches!(e, Event::Closed { .. })), "{events:?}");
    assert_eq!(gw.wait_metric("holdfast_gateway_pushes_acked_total", 1.0, SECS), 1.0);
    assert!(gw.wait_metric("holdfast_gateway_heartbeats_total", 2.0, SECS) >= 2.0);

    // A large push crosses several TLS records.
    let big = "x".repeat(60_000);
    gw.post("/v1/push/user", json!({"user": "alice", "payload": big}));
    assert_eq!(alice.expect_push().payload.len(), 60_000);
}

#[test]
fn sighup_serves_a_new_certificate_to_new_handshakes_and_keeps_old_connections() {
    let ca = TestCa::new("reload");
    let (cert, key, first_der) = ca.issue("gw");
    let gw = gateway(&cert, &key, &[]);
    let mut old = Client::login_tls(tls_addr(&gw), &ca.ca_pem, "old");
    assert_eq!(old.peer_certificate(), Some(first_der.clone()));

    // A new pair at the same paths, then SIGHUP.
    let (new_cert, new_key, second_der) = ca.issue("gw2");
    std::fs::copy(&new_key, &key).expect("replace key");
    std::fs::copy(&new_cert, &cert).expect("replace cert");
    gw.signal(libc::SIGHUP);
    let ok = "holdfast_gateway_tls_reloads_total{outcome=\"ok\"}";
    assert_eq!(gw.wait_metric(ok, 1.0, SECS), 1.0);
    let mut fresh = Client::login_tls(tls_addr(&gw), &ca.ca_pem, "fresh");
    assert_eq!(fresh.peer_certificate(), Some(second_der.clone()), "new handshakes: new cert");
    assert_ne!(first_der, second_der);
    gw.post("/v1/push/user", json!({"user": "old", "payload": "still here"}));
    assert_eq!(&old.expect_push().payload[..], b"still here", "old connection untouched");

    // A broken certificate file: refused, counted, the second certificate stays.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").expect("break cert");
    gw.signal(libc::SIGHUP);
    let failed = "holdfast_gateway_tls_reloads_total{outcome=\"failed\"}";
    assert_eq!(gw.wait_metric(failed, 1.0, SECS), 1.0);
    let mut after = Client::login_tls(tls_addr(&gw), &ca.ca_pem, "after");
    assert_eq!(after.peer_certificate(), Some(second_der));
    for (c, user) in [(&mut old, "old"), (&mut fresh, "fresh"), (&mut after, "after")] {
        gw.post("/v1/push/user", json!({"user": user, "payload": "ok"}));
        assert_eq!(&c.expect_push().payload[..], b"ok", "{user}");
    }
    assert_eq!(gw.metric(ok), 1.0);
}

/// The first bytes of a real `ClientHello` (its record header and a little more).
fn partial_client_hello(ca: &std::path::Path) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut conn = rustls::ClientConnection::new(tls_client_config(ca), name).expect("client");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("ClientHello");
    assert!(hello.len() > 40 && hello[0] == 22);
    hello.truncate(40);
    hello
}

/// Whether `stream` is closed by the gateway (no frame) within `within`, and how long it took.
fn closed_within(stream: &mut TcpStream, within: Duration) -> (bool, Duration) {
    let start = Instant::now();
    let (frames, closed) = read_frames(stream, within);
    (frames.is_empty() && closed, start.elapsed())
}

#[test]
fn stalled_partial_and_garbage_handshakes_are_closed_by_the_deadline_and_counted() {
    let ca = TestCa::new("hostile");
    let (cert, key, _) = ca.issue("gw");
    let deadline = Duration::from_millis(500);
    let mut gw =
        gateway(&cert, &key, &["listen.handshake_timeout_ms=500", "heartbeat.wheel_tick_ms=20"]);
    let addr = tls_addr(&gw);
    // Connect and say nothing; send part of a ClientHello and stop.
    let mut silent: Vec<TcpStream> =
        (0..20).map(|_| TcpStream::connect(addr).expect("connect")).collect();
    let mut partial = TcpStream::connect(addr).expect("connect");
    partial.write_all(&partial_client_hello(&ca.ca_pem)).expect("write");
    assert_eq!(gw.wait_metric("holdfast_gateway_handshakes_in_flight", 21.0, SECS), 21.0);
    for s in silent.iter_mut().chain(std::iter::once(&mut partial)) {
        let (closed, took) = closed_within(s, deadline + Duration::from_secs(2));
        assert!(closed, "stalled handshake closed");
        assert!(took <= deadline + Duration::from_secs(2), "{took:?}");
    }
    // Bytes that are no ClientHello: closed at once.
    let mut garbage = TcpStream::connect(addr).expect("connect");
    garbage.write_all(b"\x01\x02random bytes, not TLS at all").expect("write");
    let (closed, took) = closed_within(&mut garbage, SECS);
    assert!(closed && took < deadline, "garbage closed before the deadline ({took:?})");
    // A plain client on the TLS port is garbage too.
    let mut plain_on_tls = TcpStream::connect(addr).expect("connect");
    let _ = plain_on_tls.write_all(&[0, 0, 0, 10, 1, 0, 0, 0, 0, 0]);
    assert!(closed_within(&mut plain_on_tls, SECS).0);

    let failure =
        |r: &str| format!("holdfast_gateway_tls_handshake_failures_total{{reason=\"{r}\"}}");
    assert_eq!(gw.wait_metric(&failure("timeout"), 21.0, SECS), 21.0);
    assert_eq!(gw.wait_metric(&failure("not_tls"), 2.0, SECS), 2.0);
    assert_eq!(gw.metric("holdfast_gateway_tls_handshakes_total"), 0.0);
    // Nothing is left holding memory, and everyone else is served.
    assert_eq!(gw.wait_metric_below("holdfast_gateway_handshakes_in_flight", 0.0, SECS), 0.0);
    assert_eq!(gw.wait_metric_below("holdfast_gateway_connections", 0.0, SECS), 0.0);
    assert!(gw.is_running());
    let mut ok = Client::login_tls(addr, &ca.ca_pem, "after");
    let mut plain = Client::login(gw.tcp, "plain");
    gw.post("/v1/push/user", json!({"user": "after", "payload": "fine"}));
    assert_eq!(&ok.expect_push().payload[..], b"fine");
    gw.post("/v1/push/user", json!({"user": "plain", "payload": "fine"}));
    assert_eq!(&plain.expect_push().payload[..], b"fine");
}

#[test]
fn a_client_that_does_not_trust_the_certificate_is_counted_and_a_bad_pair_does_not_start() {
    let ca = TestCa::new("untrusted");
    let other = TestCa::new("other");
    let (cert, key, _) = ca.issue("gw");
    let gw = gateway(&cert, &key, &[]);
    // Trusting another CA: the client aborts the handshake with an alert.
    let config: Arc<rustls::ClientConfig> = tls_client_config(&other.ca_pem);
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let conn = rustls::ClientConnection::new(config, name).expect("client");
    let sock = TcpStream::connect(tls_addr(&gw)).expect("connect");
    let mut s = rustls::StreamOwned::new(conn, sock);
    assert!(s.write_all(b"x").and_then(|()| s.flush()).is_err(), "untrusted");
    drop(s);
    let alert = "holdfast_gateway_tls_handshake_failures_total{reason=\"peer_alert\"}";
    assert_eq!(gw.wait_metric(alert, 1.0, SECS), 1.0);

    // A key that is not the certificate's: the gateway refuses to start, naming the field.
    let (_, other_key, _) = other.issue("mismatch");
    let out = std::process::Command::new(BIN)
        .args(["--check-config", "--set", "tls.addr=127.0.0.1:0"])
        .arg("--set")
        .arg(format!("tls.cert={}", cert.display()))
        .arg("--set")
        .arg(format!("tls.key={}", other_key.display()))
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("tls.key:") && err.contains("is not the private key"), "{err}");
}

#[test]
fn behind_haproxy_the_proxy_header_comes_before_the_client_hello() {
    let ca = TestCa::new("proxied");
    let (cert, key, _) = ca.issue("gw");
    let hook = Webhook::start(|_| (200, json!({})));
    let url = format!("events.webhook_url={}", hook.url());
    let gw = gateway(
        &cert,
        &key,
        &[
            "tls.proxy_protocol=true",
            "tls.proxy_trusted=[\"127.0.0.2/32\"]",
            &url,
            "events.flush_interval_ms=20",
        ],
    );
    // HAProxy passes TLS through (mode tcp) from 127.0.0.2, with a v2 header in front.
    let front =
        HaproxyProcess::start(tls_addr(&gw), "127.0.0.2".parse().expect("ip"), "send-proxy-v2");
    let stream = connect_from(front.front, "127.0.0.3".parse().expect("ip"));
    let local = stream.local_addr().expect("local");
    let mut carol =
        Client::over_tls(stream, &ca.ca_pem, client_config(token("carol"), Platform::Linux, "p"));
    carol.expect_auth();
    let remote = hook
        .wait_for(SECS, |bodies| bodies.iter().any(|b| b.to_string().contains(&local.to_string())));
    assert!(
        remote.iter().any(|b| b.to_string().contains(&local.to_string())),
        "the connect event names the client behind the balancer: {remote:?}"
    );
    gw.post("/v1/push/user", json!({"user": "carol", "payload": "through haproxy"}));
    assert_eq!(&carol.expect_push().payload[..], b"through haproxy");
    // Straight to the TLS port from elsewhere: refused at accept; the plain port is not
    // a PROXY listener and serves as before.
    let direct = TcpStream::connect(tls_addr(&gw)).expect("connect");
    let mut direct = direct;
    assert!(closed_within(&mut direct, SECS).0);
    let untrusted = "holdfast_gateway_proxy_refused_total{reason=\"untrusted\"}";
    assert_eq!(gw.wait_metric(untrusted, 1.0, SECS), 1.0);
    let mut plain = Client::login(gw.tcp, "plain");
    gw.post("/v1/push/user", json!({"user": "plain", "payload": "plain"}));
    assert_eq!(&plain.expect_push().payload[..], b"plain");
}

/// A full gateway answers a TLS client `REDIRECT` `SERVER_FULL` naming the other gateway's
/// `tls://` address (the TLS listener shares the TCP loops, but its clients can only use
/// TLS targets), and a plain client the `tcp://` one.
#[test]
fn a_full_gateway_redirects_tls_clients_to_tls_addresses() {
    let ca = TestCa::new("full");
    let (cert, key, _) = ca.issue("gateway");
    let scheduler = SchedulerProcess::spawn(&["fleet.report_interval_ms=100", "fleet.ttl_ms=600"]);
    let spawn = |id: u16, max: u32| {
        let (tcp, tls) = (free_port(), free_port());
        let sets = [
            format!("node.id={id}"),
            format!("listen.max_connections={max}"),
            format!("listen.addr=127.0.0.1:{tcp}"),
            format!("tls.addr=127.0.0.1:{tls}"),
            format!("scheduler.addrs=[\"{}\"]", scheduler.control),
            format!("scheduler.secret={SCHEDULER_SECRET}"),
            "scheduler.report_interval_ms=100".to_owned(),
            format!("scheduler.endpoints=[\"tcp://127.0.0.1:{tcp}\", \"tls://127.0.0.1:{tls}\"]"),
        ];
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        gateway(&cert, &key, &sets)
    };
    let full = spawn(1, 2);
    let roomy = spawn(2, 1000);
    let _kept: Vec<Client> =
        (0..2).map(|i| Client::login_tls(tls_addr(&full), &ca.ca_pem, &format!("k-{i}"))).collect();
    // Within a few report intervals the scheduler's answer names the other gateway.
    let redirected_to = |tls: bool| {
        eventually(SECS, || {
            let config = client_config(token("late"), Platform::Linux, "d");
            let mut c = if tls {
                Client::connect_tls(tls_addr(&full), &ca.ca_pem, config)
            } else {
                Client::connect(full.tcp, config)
            };
            let reconnect = c.expect(SECS, "REDIRECT", |e| match e {
                Event::Redirected { reconnect, .. } => Some(reconnect),
                Event::Authenticated(_) => panic!("a full gateway authenticated a client"),
                _ => None,
            });
            match reconnect {
                holdfast_codec::client::Reconnect::After { addresses, .. }
                    if !addresses.is_empty() =>
                {
                    Some(addresses)
                }
                _ => None,
            }
        })
        .unwrap_or_else(|| panic!("no gateway named: {}", scheduler.control_get("/v1/gateways")))
    };
    assert_eq!(redirected_to(true), vec![tls_addr(&roomy).to_string()], "TLS: tls:// targets");
    assert_eq!(redirected_to(false), vec![roomy.tcp.to_string()], "plain: tcp:// targets");
}
