//! The gateway end to end: a real `holdfast-gateway` process, real sockets, real clients
//! driving `codec::client`, a real webhook server, and `promtool` on `/metrics`.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use holdfast_codec::client::Event;
use holdfast_codec::{Code, Frame, Hello, Platform};
use holdfast_tests::{
    Client, GatewayProcess, Webhook, client_config, eventually, read_frames, token, token_with,
};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_holdfast-gateway");
const SECS: Duration = Duration::from_secs(10);

fn gateway(sets: &[&str]) -> GatewayProcess {
    GatewayProcess::spawn(BIN, sets)
}

fn auth_fail(gw: &GatewayProcess, config: holdfast_codec::client::Config) -> Code {
    let mut c = Client::connect(gw.tcp, config);
    let code = c.expect(SECS, "AUTH_FAIL", |e| match e {
        Event::AuthFailed { code, .. } => Some(code),
        Event::Authenticated(_) => panic!("authenticated with a bad token"),
        _ => None,
    });
    assert!(c.closed_within(SECS), "gateway closes after AUTH_FAIL");
    code
}

#[test]
fn handshake_grants_clamped_heartbeat_and_a_node_scoped_conn_id() {
    let gw = gateway(&["node.id=7", "heartbeat.min_ms=20000", "heartbeat.max_ms=300000"]);
    let mut cfg = client_config(token("alice"), Platform::Ios, "phone-1");
    cfg.heartbeat_wish = Duration::from_secs(3600);
    let mut c = Client::connect(gw.tcp, cfg);
    let ok = c.expect_auth();
    assert_eq!(ok.version, 1);
    assert_eq!(ok.heartbeat_ms, 300_000, "wish clamped to heartbeat.max_ms");
    assert_eq!(ok.idle_timeout_ms, 900_000);
    assert_eq!(ok.conn_id >> 48, 7, "node id in the top 16 bits");
    assert_eq!(ok.max_frame, 65_536);
    assert_eq!(ok.max_unacked, 1_024, "push.max_unacked");
    assert!(ok.token_expires_ms > ok.server_time_ms, "the token's exp, in ms");
    let mut wish_low = client_config(token("bob"), Platform::Ios, "phone-2");
    wish_low.heartbeat_wish = Duration::from_secs(1);
    let mut low = Client::connect(gw.tcp, wish_low);
    assert_eq!(low.expect_auth().heartbeat_ms, 20_000);
    assert_eq!(gw.metric("holdfast_gateway_handshakes_total"), 2.0);
    assert_eq!(gw.metric("holdfast_gateway_connections_established"), 2.0);
}

#[test]
fn each_auth_failure_gets_its_code_and_a_close() {
    let gw = gateway(&[]);
    let cfg = |t: String| client_config(t, Platform::Android, "dev-1");
    assert_eq!(auth_fail(&gw, cfg(String::new())), Code::TOKEN_MISSING);
    assert_eq!(auth_fail(&gw, cfg("not.a.jwt".into())), Code::INVALID_TOKEN);
    assert_eq!(auth_fail(&gw, cfg(token_with("u", -3600, None, None))), Code::TOKEN_EXPIRED);
    let wrong_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "u", "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(b"some other secret"),
    )
    .unwrap();
    assert_eq!(auth_fail(&gw, cfg(wrong_key)), Code::INVALID_TOKEN);
    // alg "none": header {"alg":"none","typ":"JWT"}, no signature.
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1IiwiZXhwIjo0MDAwMDAwMDAwfQ.";
    assert_eq!(auth_fail(&gw, cfg(none.into())), Code::INVALID_TOKEN);
    let bound = token_with("u", 3600, Some("another-device"), None);
    assert_eq!(auth_fail(&gw, cfg(bound)), Code::CLAIM_MISMATCH);
    let mut v2 = cfg(token("u"));
    v2.versions = vec![2, 3];
    assert_eq!(auth_fail(&gw, v2), Code::UNSUPPORTED_VERSION);
    assert_eq!(gw.metric(r#"holdfast_gateway_auth_failures_total{reason="missing"}"#), 1.0);
    assert_eq!(gw.metric(r#"holdfast_gateway_auth_failures_total{reason="invalid"}"#), 3.0);
    assert_eq!(gw.metric(r#"holdfast_gateway_auth_failures_total{reason="expired"}"#), 1.0);
    assert_eq!(gw.metric(r#"holdfast_gateway_auth_failures_total{reason="claim_mismatch"}"#), 1.0);
    // Counted by the event loop and added to the metrics within 100 ms.
    assert_eq!(
        gw.wait_metric(
            r#"holdfast_gateway_auth_failures_total{reason="unsupported_version"}"#,
            1.0,
            SECS
        ),
        1.0
    );
    assert_eq!(gw.metric("holdfast_gateway_connections_established"), 0.0);
}

#[test]
fn silent_socket_is_closed_at_the_handshake_deadline() {
    let gw = gateway(&["listen.handshake_timeout_ms=300", "heartbeat.wheel_tick_ms=10"]);
    let mut s = TcpStream::connect(gw.tcp).unwrap();
    let (frames, closed) = read_frames(&mut s, SECS);
    assert!(closed, "closed without HELLO");
    assert!(frames.is_empty(), "nothing is sent on a handshake timeout");
    assert_eq!(gw.metric(r#"holdfast_gateway_closes_total{reason="handshake_timeout"}"#), 1.0);
}

#[test]
fn garbage_and_oversized_frames_get_an_error_and_a_close_and_the_gateway_lives_on() {
    let mut gw = gateway(&[]);
    // An unknown critical type before HELLO.
    let mut s = TcpStream::connect(gw.tcp).unwrap();
    s.write_all(&[0, 0, 0, 0, 0x42, 0, 0, 0, 0, 0]).unwrap();
    let (frames, closed) = read_frames(&mut s, SECS);
    assert!(closed);
    match frames.as_slice() {
        [Frame::Error(e)] => assert!(e.fatal && e.code == Code::UNKNOWN_FRAME_TYPE, "{e:?}"),
        other => panic!("expected one fatal ERROR, got {other:?}"),
    }
    // A header announcing a 1 MiB body: refused from the header alone.
    let mut s = TcpStream::connect(gw.tcp).unwrap();
    s.write_all(&[0, 0x10, 0, 0, 0x01, 0, 0, 0, 0, 0]).unwrap();
    let (frames, closed) = read_frames(&mut s, SECS);
    assert!(closed);
    assert!(matches!(frames.as_slice(), [Frame::Error(e)] if e.code == Code::FRAME_TOO_LARGE));
    // A HELLO whose body is truncated garbage.
    let mut s = TcpStream::connect(gw.tcp).unwrap();
    s.write_all(&[0, 0, 0, 3, 0x01, 0, 0, 0, 0, 0, 1, 0xFF, 0xFF]).unwrap();
    let (frames, closed) = read_frames(&mut s, SECS);
    assert!(closed);
    assert!(matches!(frames.as_slice(), [Frame::Error(e)] if e.code == Code::MALFORMED_FRAME));
    // A PUSH from a client after authentication is in the wrong direction.
    let mut c = Client::login(gw.tcp, "carol");
    let mut raw = TcpStream::connect(gw.tcp).unwrap();
    let mut hello = Vec::new();
    Frame::Hello(Hello { versions: vec![1], token: token("dave"), ..Default::default() })
        .encode(&mut hello)
        .unwrap();
    raw.write_all(&hello).unwrap();
    let (frames, _) = read_frames(&mut raw, Duration::from_millis(500));
    assert!(matches!(frames.as_slice(), [Frame::AuthOk(_)]));
    raw.write_all(&[0, 0, 0, 9, 0x06, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap();
    let (frames, closed) = read_frames(&mut raw, SECS);
    assert!(closed);
    assert!(matches!(frames.as_slice(), [Frame::Error(e)] if e.code == Code::UNEXPECTED_FRAME));
    // Everyone else is unharmed.
    assert!(gw.is_running());
    let (status, _) = gw.post("/v1/push/user", json!({"user": "carol", "payload": "still here"}));
    assert_eq!(status, 200);
    assert_eq!(&c.expect_push().payload[..], b"still here");
    assert_eq!(gw.wait_metric("holdfast_gateway_protocol_errors_total", 4.0, SECS), 4.0);
}

#[test]
fn heartbeats_keep_a_connection_and_silence_evicts_it() {
    let gw = gateway(&[
        "heartbeat.min_ms=1000",
        "heartbeat.default_ms=1000",
        "heartbeat.idle_factor=2",
        "heartbeat.wheel_tick_ms=20",
    ]);
    let mut live = Client::login(gw.tcp, "live");
    let mut silent = TcpStream::connect(gw.tcp).unwrap();
    let mut hello = Vec::new();
    Frame::Hello(Hello { versions: vec![1], token: token("silent"), ..Default::default() })
        .encode(&mut hello)
        .unwrap();
    silent.write_all(&hello).unwrap();
    let started = Instant::now();
    // The live client pings every second (its session's schedule) for 3.5 s.
    let events = live.run_for(Duration::from_millis(3500));
    assert!(events.iter().filter(|e| matches!(e, Event::Pong { .. })).count() >= 2);
    assert!(!events.iter().any(|e| matches!(e, Event::Closed { .. })), "live client kept");
    // The silent one was closed after its 2 s idle timeout, without a word.
    let (frames, closed) = read_frames(&mut silent, SECS);
    assert!(closed, "silent connection evicted");
    assert!(matches!(frames.as_slice(), [Frame::AuthOk(_)]));
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(gw.metric(r#"holdfast_gateway_closes_total{reason="idle_timeout"}"#), 1.0);
    assert!(gw.wait_metric("holdfast_gateway_heartbeats_total", 2.0, SECS) >= 2.0);
}

#[test]
fn second_login_on_the_same_platform_kicks_the_first() {
    let gw = gateway(&[]);
    let mut first = Client::login_on(gw.tcp, "erin", Platform::Ios);
    let mut desktop = Client::login_on(gw.tcp, "erin", Platform::Windows);
    let _second = Client::login_on(gw.tcp, "erin", Platform::Ios);
    let code = first.expect(SECS, "KICK", |e| match e {
        Event::Kicked { code, .. } => Some(code),
        _ => None,
    });
    assert_eq!(code, Code::LOGGED_IN_ELSEWHERE);
    assert!(first.closed_within(SECS));
    let (_, answer) = gw.post("/v1/push/user", json!({"user": "erin", "payload": "hi"}));
    assert_eq!(answer["delivered"].as_array().unwrap().len(), 2, "{answer}");
    assert_eq!(&desktop.expect_push().payload[..], b"hi");
    assert_eq!(gw.metric(r#"holdfast_gateway_kicks_total{reason="logged_in_elsewhere"}"#), 1.0);
}

#[test]
fn push_to_user_connection_and_all_with_acks() {
    let gw = gateway(&[]);
    let mut a1 = Client::login_on(gw.tcp, "frank", Platform::Ios);
    let mut a2 = Client::login_on(gw.tcp, "frank", Platform::Android);
    let mut b = Client::login(gw.tcp, "gina");
    let conn_b = b.session().auth().unwrap().conn_id;

    let (status, answer) = gw.post(
        "/v1/push/user",
        json!({"user": "frank", "message_id": "42", "topic": "chat", "payload": "to frank"}),
    );
    assert_eq!(status, 200);
    assert_eq!(answer["message_id"], "42");
    assert_eq!(answer["delivered"].as_array().unwrap().len(), 2);
    assert_eq!(answer["delivered"][0]["seq"], 1);
    for c in [&mut a1, &mut a2] {
        let p = c.expect_push();
        assert_eq!(
            (p.message_id, p.topic.as_str(), &p.payload[..]),
            (42, "chat", &b"to frank"[..])
        );
        assert!(p.ack_required);
    }

    let (_, answer) = gw.post(
        "/v1/push/users",
        json!({"users": ["gina", "nobody"], "payload_base64": "AAEC", "ack": false}),
    );
    assert_eq!(answer["offline_users"], json!(["nobody"]));
    let p = b.expect_push();
    assert_eq!(&p.payload[..], &[0, 1, 2]);
    assert!(!p.ack_required);

    let (_, answer) =
        gw.post("/v1/push/conn", json!({"conn_id": conn_b.to_string(), "payload": "direct"}));
    assert_eq!(answer["delivered"][0]["conn_id"], conn_b.to_string());
    assert_eq!(&b.expect_push().payload[..], b"direct");

    let (_, answer) = gw.post("/v1/push/all", json!({"payload": "everyone"}));
    assert_eq!(answer["delivered_count"], 3);
    for c in [&mut a1, &mut a2, &mut b] {
        assert_eq!(&c.expect_push().payload[..], b"everyone");
    }
    let (_, answer) = gw.post(
        "/v1/push/batch",
        json!({"pushes": [{"user": "gina", "payload": "b1"}, {"conn_id": conn_b, "payload": "b2"}]}),
    );
    assert_eq!(answer["results"].as_array().unwrap().len(), 2);
    assert_eq!(&b.expect_push().payload[..], b"b1");
    assert_eq!(&b.expect_push().payload[..], b"b2");

    // Clients acknowledge (their sessions batch acks within 200 ms): every ack-required
    // push is acknowledged: 2 + 1 + 3 + 2 = 8.
    for c in [&mut a1, &mut a2, &mut b] {
        c.run_for(Duration::from_millis(400));
    }
    assert_eq!(gw.wait_metric("holdfast_gateway_pushes_acked_total", 8.0, SECS), 8.0);
    let (status, _) =
        gw.post("/v1/push/user", json!({"user": "x", "payload": "a", "payload_base64": "AA=="}));
    assert_eq!(status, 400);
}

#[test]
fn unacked_pushes_are_reported_on_close() {
    let hook = Webhook::start(|_| (200, json!({})));
    let url = format!("events.webhook_url={}", hook.url());
    let gw = gateway(&[&url, "events.flush_interval_ms=50"]);
    let mut cfg = client_config(token("hank"), Platform::Ios, "ph");
    cfg.auto_ack = false;
    let mut c = Client::connect(gw.tcp, cfg);
    c.expect_auth();
    for i in 1..=3 {
        gw.post("/v1/push/user", json!({"user": "hank", "message_id": i, "payload": "m"}));
        c.expect_push();
    }
    drop(c);
    let got = hook.wait_for(SECS, |bodies| {
        bodies
            .iter()
            .flat_map(|b| b["events"].as_array().cloned().unwrap_or_default())
            .any(|e| e["type"] == "disconnected")
    });
    let events: Vec<serde_json::Value> =
        got.iter().flat_map(|b| b["events"].as_array().cloned().unwrap_or_default()).collect();
    assert!(events.iter().any(|e| e["type"] == "connected" && e["user"] == "hank"));
    let gone = events.iter().find(|e| e["type"] == "disconnected").expect("disconnect event");
    let ids: Vec<&str> = gone["unacked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["1", "2", "3"]);
    assert_eq!(gone["reason"], "peer_closed");
    assert_eq!(gw.metric("holdfast_gateway_pushes_unacked_on_close_total"), 3.0);
}

#[test]
fn slow_consumer_is_closed_while_a_fast_client_keeps_receiving() {
    let gw = gateway(&[
        "backpressure.queue_bytes_high=65536",
        "backpressure.queue_bytes_low=16384",
        "backpressure.slow_consumer_ms=500",
        "backpressure.queue_bytes_max=4194304",
        "heartbeat.wheel_tick_ms=20",
        "push.max_unacked=100000",
    ]);
    // The slow client authenticates and then never reads again.
    let mut slow = TcpStream::connect(gw.tcp).unwrap();
    slow.set_nodelay(true).unwrap();
    let mut hello = Vec::new();
    Frame::Hello(Hello { versions: vec![1], token: token("slow"), ..Default::default() })
        .encode(&mut hello)
        .unwrap();
    slow.write_all(&hello).unwrap();
    let (frames, _) = read_frames(&mut slow, Duration::from_millis(500));
    assert!(matches!(frames.as_slice(), [Frame::AuthOk(_)]));
    let mut fast = Client::login(gw.tcp, "fast");
    let payload = "x".repeat(60_000);
    let mut fast_got = 0;
    for i in 0..200 {
        gw.post("/v1/push/user", json!({"user": "slow", "payload": payload, "ack": false}));
        gw.post(
            "/v1/push/user",
            json!({"user": "fast", "payload": format!("tick {i}"), "ack": false}),
        );
        assert_eq!(fast.expect_push().payload, format!("tick {i}").into_bytes());
        fast_got += 1;
        if gw.metric(r#"holdfast_gateway_closes_total{reason="slow_consumer"}"#) >= 1.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        gw.wait_metric(r#"holdfast_gateway_closes_total{reason="slow_consumer"}"#, 1.0, SECS),
        1.0
    );
    assert!(fast_got > 0);
    // The fast client is unaffected, and the gateway holds no queued bytes for the gone one.
    gw.post("/v1/push/user", json!({"user": "fast", "payload": "after"}));
    assert_eq!(&fast.expect_push().payload[..], b"after");
    assert_eq!(gw.wait_metric_below("holdfast_gateway_outbound_queue_bytes", 0.0, SECS), 0.0);
    let (_, answer) = gw.post("/v1/push/user", json!({"user": "slow", "payload": "gone?"}));
    assert_eq!(answer["offline_users"], json!(["slow"]));
}

#[test]
fn upstream_round_trip_through_the_business_webhook() {
    let hook = Webhook::start(|body| {
        if body["route"] == "fail" {
            return (500, json!({}));
        }
        (
            200,
            json!({"status": 7, "payload": format!("echo:{}", body["route"].as_str().unwrap_or(""))}),
        )
    });
    let url = format!("upstream.webhook_url={}", hook.url());
    let gw = gateway(&[&url]);
    let mut c = Client::login_on(gw.tcp, "ivy", Platform::Web);
    c.session().send_upstream(5, "chat.send", bytes::Bytes::from_static(b"hello")).unwrap();
    let reply = c.expect(SECS, "UPSTREAM_REPLY", |e| match e {
        Event::UpstreamReply(r) => Some(r),
        _ => None,
    });
    assert_eq!(
        (reply.request_id, reply.status, &reply.payload[..]),
        (5, 7, &b"echo:chat.send"[..])
    );
    let req = &hook.received()[0];
    assert_eq!(req["user"], "ivy");
    assert_eq!(req["platform"], "web");
    assert_eq!(req["device"], "dev");
    assert_eq!(req["payload_base64"], "aGVsbG8=");
    c.session().send_upstream(6, "fail", bytes::Bytes::new()).unwrap();
    let code = c.expect(SECS, "upstream ERROR", |e| match e {
        Event::UpstreamError { request_id: 6, code, .. } => Some(code),
        _ => None,
    });
    assert_eq!(code, Code::UPSTREAM_UNAVAILABLE);
    // Without a webhook the request is refused at once, and the connection stays up.
    let gw2 = gateway(&[]);
    let mut d = Client::login(gw2.tcp, "jack");
    d.session().send_upstream(1, "x", bytes::Bytes::new()).unwrap();
    let code = d.expect(SECS, "upstream ERROR", |e| match e {
        Event::UpstreamError { code, .. } => Some(code),
        _ => None,
    });
    assert_eq!(code, Code::UPSTREAM_UNAVAILABLE);
}

#[test]
fn admin_kick_and_stats() {
    let gw = gateway(&[]);
    let mut c = Client::login(gw.tcp, "kate");
    let (_, stats) = gw.get("/v1/stats");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["established"], 1);
    let (status, answer) = gw.post("/v1/kick", json!({"user": "kate", "code": 302}));
    assert_eq!(status, 200);
    assert_eq!(answer["kicked"].as_array().unwrap().len(), 1);
    let code = c.expect(SECS, "KICK", |e| match e {
        Event::Kicked { code, .. } => Some(code),
        _ => None,
    });
    assert_eq!(code, Code::BANNED);
    assert_eq!(gw.get("/healthz"), (200, "ok\n".to_owned()));
}

#[test]
fn metrics_pass_promtool() {
    let gw = gateway(&[]);
    let _c = Client::login(gw.tcp, "lena");
    let text = gw.metrics();
    for name in [
        "holdfast_gateway_connections",
        "holdfast_gateway_handshakes_total",
        "holdfast_gateway_push_api_duration_seconds_bucket",
        "holdfast_gateway_process_resident_memory_bytes",
        "holdfast_gateway_process_open_fds",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut child = match std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!("promtool is required (apt-get install prometheus): {e}"),
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rs256_tokens_are_verified_with_the_configured_public_key() {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
    let key = format!("auth.public_key_file={keys}/rsa_public.pem");
    let gw = gateway(&["auth.algorithm=RS256", &key]);
    let sign = |pem: &str| {
        let pem = std::fs::read(format!("{keys}/{pem}")).unwrap();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &json!({"sub": "mia", "exp": 4_000_000_000u64}),
            &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
        )
        .unwrap()
    };
    let mut ok =
        Client::connect(gw.tcp, client_config(sign("rsa_private.pem"), Platform::Ios, "p"));
    ok.expect_auth();
    let wrong = client_config(sign("rsa_wrong_private.pem"), Platform::Ios, "p");
    assert_eq!(auth_fail(&gw, wrong), Code::INVALID_TOKEN);
    // An HS256 token signed with the development secret is refused under RS256.
    assert_eq!(
        auth_fail(&gw, client_config(token("mia"), Platform::Ios, "p")),
        Code::INVALID_TOKEN
    );
}

/// `node.lend_idle_loops` (on by default): an idle loop is served by loop 0's thread, its
/// clients still get their pushes, logins, heartbeats and closes; pipelined frames hand it
/// back to its own thread, and it is lent again once idle; `SIGTERM` ends both threads
/// cleanly.
#[test]
fn an_idle_loop_is_served_by_loop_zero_and_handed_back_for_work() {
    let gw = gateway(&["drain.on_sigterm=false"]);
    // Six clients: three on each loop (new sockets go to the loops in turn).
    let mut clients: Vec<Client> =
        (0..6).map(|i| Client::login(gw.tcp, &format!("lend{i}"))).collect();
    assert_eq!(gw.wait_metric("holdfast_gateway_loops_lent", 1.0, SECS), 1.0, "lent when idle");
    let lends = gw.metric("holdfast_gateway_loop_lends_total");
    assert!(lends >= 1.0);

    // Served while lent: a push to each user, on whichever loop holds it.
    for (i, c) in clients.iter_mut().enumerate() {
        let (status, answer) =
            gw.post("/v1/push/user", json!({"user": format!("lend{i}"), "payload": "one"}));
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["delivered"].as_array().map(Vec::len), Some(1), "{answer}");
        assert_eq!(&c.expect_push().payload[..], b"one");
    }
    // A new login, and a close, on each loop.
    for i in 6..8 {
        clients.push(Client::login(gw.tcp, &format!("lend{i}")));
    }
    drop(clients.remove(0));
    drop(clients.remove(0));
    let closed = eventually(SECS, || {
        (gw.metric("holdfast_gateway_connections_established") == 6.0).then_some(())
    });
    assert!(closed.is_some(), "closes seen on both loops");
    // Heartbeats answered (the sessions ping on their own) and nobody evicted meanwhile.
    for c in &mut clients {
        c.run_for(Duration::from_millis(100));
    }

    // Pipelined frames are work for two: a burst of 200 `PING`s on each loop (more than
    // one turn's frames) hands the lent loop back to its own thread; once idle again it is
    // lent again (a lend needs it back first).
    let bursts: Vec<TcpStream> = (0..2)
        .map(|i| {
            let mut s = TcpStream::connect(gw.tcp).expect("connects");
            let mut bytes = holdfast_tests::hello_bytes(&format!("burst{i}"));
            let pings: Vec<Frame> = (0..200)
                .map(|id| Frame::Ping(holdfast_codec::Ping { id, timestamp: None }))
                .collect();
            bytes.extend(holdfast_tests::encode_frames(&pings));
            s.write_all(&bytes).expect("HELLO and PINGs");
            s
        })
        .collect();
    let relent = gw.wait_metric("holdfast_gateway_loop_lends_total", lends + 1.0, SECS);
    assert!(relent > lends, "lent again after the burst: {relent}");
    drop(bursts);
    // Still served: a push to all, after the hand-back and the new lend.
    let quiet = eventually(SECS, || {
        (gw.metric("holdfast_gateway_connections_established") == 6.0).then_some(())
    });
    assert!(quiet.is_some(), "the burst connections closed");
    let (status, answer) = gw.post("/v1/push/all", json!({"payload": "all", "ack": false}));
    assert_eq!((status, answer["delivered_count"].as_u64()), (200, Some(6)), "{answer}");
    for c in &mut clients {
        assert_eq!(&c.expect_push().payload[..], b"all");
    }

    // Shutdown with a loop lent: both loops close their clients and the process exits 0.
    let mut gw = gw;
    gw.signal(libc::SIGTERM);
    let status = gw.wait_exit(Duration::from_secs(15)).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    for c in &mut clients {
        assert!(c.closed_within(SECS), "client closed at shutdown");
    }
}

/// Heartbeat answers deferred to the end of the turn and sent with `io_uring` in the call
/// that sleeps (`node.io_uring`, the default), and written at once (`false`): either way
/// every `PING` gets its `PONG`, in order, and pushes to the same connection in between
/// (whose writes flush a deferred answer first) arrive whole and in order.
#[test]
fn heartbeat_answers_keep_the_stream_in_order_with_and_without_io_uring() {
    for setting in ["node.io_uring=true", "node.io_uring=false"] {
        let gw = gateway(&[setting]);
        let uring = gw.metric("holdfast_gateway_io_uring_loops");
        if setting.ends_with("false") {
            assert_eq!(uring, 0.0, "no loop uses io_uring when it is off");
        } else {
            // Every TCP loop, where the kernel allows io_uring (it does on our machines).
            assert!(uring >= 1.0, "loops using io_uring: {uring}");
        }
        let user = format!("hb-{}", setting.len());
        let mut s = TcpStream::connect(gw.tcp).expect("connects");
        s.write_all(&holdfast_tests::hello_bytes(&user)).expect("HELLO");
        let (frames, closed) = read_frames(&mut s, Duration::from_millis(500));
        assert!(matches!(frames.first(), Some(Frame::AuthOk(_))) && !closed, "{frames:?}");
        let mut id = 0;
        let mut got = Vec::new();
        for round in 0..40u32 {
            // One PING alone (a lone answer: deferred), or two in one write (written at once).
            let pings: Vec<Frame> = (0..1 + round % 2)
                .map(|_| {
                    id += 1;
                    Frame::Ping(holdfast_codec::Ping { id, timestamp: None })
                })
                .collect();
            s.write_all(&holdfast_tests::encode_frames(&pings)).expect("PING");
            let body = json!({"user": user, "payload": format!("p{round}"), "ack": false});
            let (status, answer) = gw.post("/v1/push/user", body);
            assert_eq!(status, 200, "{answer}");
            let (frames, closed) = read_frames(&mut s, Duration::from_millis(50));
            assert!(!closed, "{setting}: closed after {got:?} {frames:?}");
            got.extend(frames);
        }
        let expected = id as usize + 40;
        let more = eventually(SECS, || {
            let (frames, closed) = read_frames(&mut s, Duration::from_millis(100));
            assert!(!closed, "{setting}: closed");
            got.extend(frames);
            (got.len() >= expected).then_some(())
        });
        assert!(more.is_some(), "{setting}: {} of {expected} frames", got.len());
        let pongs: Vec<u32> = got
            .iter()
            .filter_map(|f| if let Frame::Pong(p) = f { Some(p.id) } else { None })
            .collect();
        assert_eq!(pongs, (1..=id).collect::<Vec<_>>(), "{setting}: answers in order");
        let pushes: Vec<String> = got
            .iter()
            .filter_map(|f| match f {
                Frame::Push(p) => Some(String::from_utf8_lossy(&p.payload).into_owned()),
                _ => None,
            })
            .collect();
        let want: Vec<String> = (0..40).map(|r| format!("p{r}")).collect();
        assert_eq!(pushes, want, "{setting}: pushes whole and in order");
        assert_eq!(got.len(), expected, "{setting}: nothing else: {got:?}");
    }
}
