//! Gateways sharing presence, with real processes: a 3-node `holdfast-status` ring (or a
//! `redis-server`) and two `holdfast-gateway`s that know each other through `cluster.peers`.
//! Pushes and kicks through one gateway's API reach users on the other; a crashed gateway's
//! users go offline everywhere within the lease TTL + 2 s; a paused gateway fences itself
//! and never brings back a session; the internal channel refuses a peer without the secret.
//!
//! Timing bounds are behaviour, not speed: the lease TTL is 1.5 s here, and every wait is
//! bounded by the bound under test (TTL + 2 s) or by 10 s for plain progress.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use holdfast_codec::client::Event;
use holdfast_codec::{Code, Platform};
use holdfast_tests::{
    Client, GatewayProcess, RedisProcess, STATUS_SECRET, StatusProcess, eventually, free_port,
    gateway_cluster, promtool_accepts, status_cluster, status_sets,
};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_holdfast-gateway");
const CLUSTER_SECRET: &str = "test-gateway-cluster-secret";
/// The lease TTL these tests run with, and the margin the bound allows on top of it.
const TTL: Duration = Duration::from_millis(1500);
const MARGIN: Duration = Duration::from_secs(2);

fn short_lease() -> Vec<String> {
    vec![format!("presence.lease_ttl_ms={}", TTL.as_millis()), "presence.renew_ms=500".to_owned()]
}

/// `n` gateways (node ids 1..=n) on `backend`, each listing the others as peers.
fn gateways(backend: &[String], n: u16, extra: &[String]) -> Vec<GatewayProcess> {
    gateway_cluster(BIN, CLUSTER_SECRET, backend, n, extra)
}

/// `user`'s sessions as `gw`'s `GET /v1/presence` answers them.
fn sessions(gw: &GatewayProcess, user: &str) -> Vec<Value> {
    let (status, body) = gw.get_json(&format!("/v1/presence?users={user}"));
    assert_eq!(status, 200, "{body}");
    body["users"][0]["sessions"].as_array().cloned().unwrap_or_default()
}

/// Wait (at most 10 s) until `gw` sees exactly `want` (gateway ids) for `user`.
fn wait_sessions(gw: &GatewayProcess, user: &str, want: &[u64]) {
    let got = eventually(Duration::from_secs(10), || {
        let mut on: Vec<u64> =
            sessions(gw, user).iter().filter_map(|s| s["gateway"].as_u64()).collect();
        on.sort_unstable();
        (on == want).then_some(())
    });
    assert!(got.is_some(), "{user} never on {want:?}: {:?}", sessions(gw, user));
}

fn expect_kick(c: &mut Client) -> Code {
    c.expect(Duration::from_secs(10), "KICK", |e| match e {
        Event::Kicked { code, .. } => Some(code),
        _ => None,
    })
}

fn expect_redirect(c: &mut Client, within: Duration) -> Code {
    c.expect(within, "REDIRECT", |e| match e {
        Event::Redirected { code, .. } => Some(code),
        _ => None,
    })
}

#[test]
fn pushes_and_kicks_through_one_gateway_reach_users_on_the_other() {
    let nodes = status_cluster(3, &[]);
    let gws = gateways(&status_sets(&nodes), 2, &[]);
    let (a, b) = (&gws[0], &gws[1]);
    let mut alice_b = Client::login_on(b.tcp, "alice", Platform::Ios);
    let mut bob_a = Client::login_on(a.tcp, "bob", Platform::Ios);
    wait_sessions(a, "alice", &[2]);

    // Who is online, from any gateway.
    let (status, p) = a.get_json("/v1/presence?users=alice,nobody");
    assert_eq!(status, 200);
    let s = &p["users"][0]["sessions"][0];
    assert_eq!(
        (&s["gateway"], &s["platform"], &s["device"]),
        (&json!(2), &json!("ios"), &json!("dev"))
    );
    assert!(s["login_ms"].as_u64().is_some_and(|t| t > 1_600_000_000_000), "{p}");
    assert_eq!(p["users"][1], json!({"user": "nobody", "sessions": []}));

    // A push through A to a user on B: delivered there, and said so.
    let (status, ans) = a.post(
        "/v1/push/users",
        json!({"users": ["alice", "nobody"], "payload": "hi", "message_id": 7}),
    );
    assert_eq!(status, 200, "{ans}");
    assert_eq!(ans["delivered"].as_array().map(Vec::len), Some(1), "{ans}");
    assert_eq!(ans["delivered"][0]["gateway"], 2);
    assert_eq!(ans["delivered"][0]["user"], "alice");
    assert_eq!(ans["offline_users"], json!(["nobody"]));
    assert_eq!(ans["failed"], json!([]));
    let push = alice_b.expect_push();
    assert_eq!((push.message_id, &push.payload[..]), (7, &b"hi"[..]));

    // To one connection of B, through A.
    let conn = ans["delivered"][0]["conn_id"].clone();
    let (_, ans) = a.post("/v1/push/conn", json!({"conn_id": conn, "payload": "c"}));
    assert_eq!(ans["delivered"][0]["gateway"], 2, "{ans}");
    assert_eq!(&alice_b.expect_push().payload[..], b"c");

    // To everyone, through A: both gateways' connections.
    let (_, ans) = a.post("/v1/push/all", json!({"payload": "all"}));
    assert_eq!(ans["delivered_count"], 2, "{ans}");
    assert_eq!(ans["gateways"].as_array().map(Vec::len), Some(2), "{ans}");
    assert_eq!(&alice_b.expect_push().payload[..], b"all");
    assert_eq!(&bob_a.expect_push().payload[..], b"all");

    // A second iOS login on A kicks the first, on B (kick policy per_platform).
    let mut alice_a = Client::login_on(a.tcp, "alice", Platform::Ios);
    assert_eq!(expect_kick(&mut alice_b), Code::LOGGED_IN_ELSEWHERE);
    wait_sessions(b, "alice", &[1]);
    assert!(b.metric("holdfast_gateway_kicks_total{reason=\"logged_in_elsewhere\"}") >= 1.0);
    assert!(a.metric("holdfast_gateway_remote_displaced_total") >= 1.0);

    // An operator's kick through B reaches her on A.
    let (status, ans) = b.post("/v1/kick", json!({"user": "alice"}));
    assert_eq!(status, 200, "{ans}");
    assert_eq!(ans["kicked"].as_array().map(Vec::len), Some(1), "{ans}");
    assert_eq!(expect_kick(&mut alice_a), Code::KICKED_BY_ADMIN);
    assert!(a.metric("holdfast_gateway_forwards_served_total") >= 1.0);
    assert!(
        a.metric(
            "holdfast_status_client_ops_total{backend=\"status\",op=\"lookup\",outcome=\"ok\"}"
        ) >= 1.0
    );
    promtool_accepts(&a.metrics());
}

#[test]
fn a_peer_without_the_cluster_secret_is_refused() {
    let nodes = status_cluster(1, &[]);
    let gws = gateways(&status_sets(&nodes), 1, &[]);
    let gw = &gws[0];
    let mut carol = Client::login(gw.tcp, "carol");
    let addr = gw.cluster.expect("cluster= in the ready line");
    let closed_after = |send: &[u8]| {
        let mut s = TcpStream::connect(addr).expect("connects");
        s.set_read_timeout(Some(Duration::from_secs(8))).expect("timeout");
        let mut greeting = [0u8; 39];
        s.read_exact(&mut greeting).expect("greeting");
        assert_eq!(&greeting[..4], b"HFGP");
        s.write_all(send).expect("write");
        let mut rest = [0u8; 64];
        // Closed: an end of stream, or a reset when the server left our bytes unread.
        match s.read(&mut rest) {
            Ok(n) => n == 0,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    };
    // Wrong credentials.
    assert!(closed_after(&[7u8; 66]), "bad credentials were not refused");
    // A push request with no handshake at all.
    let body = json!({"op": "push", "users": ["carol"],
        "msg": {"message_id": 1, "topic": "", "payload": "aGk=", "ack": false}});
    let body = serde_json::to_vec(&body).expect("json");
    let mut frame = ((5 + body.len()) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&1u32.to_be_bytes());
    frame.push(1);
    frame.extend_from_slice(&body);
    assert!(closed_after(&frame), "a frame without a handshake was not refused");
    let pushed = carol.run_for(Duration::from_millis(300));
    assert!(!pushed.iter().any(|e| matches!(e, Event::Push(_))), "{pushed:?}");
    assert!(gw.metric("holdfast_gateway_peer_handshakes_total{outcome=\"refused\"}") >= 2.0);
    assert_eq!(gw.metric("holdfast_gateway_forwards_served_total"), 0.0);
}

#[test]
fn kill_9_of_a_gateway_takes_its_users_offline_on_every_status_node_within_ttl_plus_2s() {
    let nodes = status_cluster(3, &["node.sweep_ms=100"]);
    let mut gws = gateways(&status_sets(&nodes), 2, &short_lease());
    let users: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    let _clients: Vec<Client> = users.iter().map(|u| Client::login(gws[1].tcp, u)).collect();
    let stored = || nodes.iter().map(|n| n.counts()["stored"].as_u64().unwrap_or(0)).sum::<u64>();
    let all_in = eventually(Duration::from_secs(10), || (stored() == 40).then_some(()));
    assert!(all_in.is_some(), "20 sessions × R = 2 never stored: {}", stored());
    wait_sessions(&gws[0], "k0", &[2]);

    gws[1].kill9();
    let killed = Instant::now();
    for n in &nodes {
        loop {
            let c = n.counts();
            if c["sessions"] == 0 && c["stored"] == 0 {
                break;
            }
            assert!(killed.elapsed() < TTL + MARGIN, "node {} still holds {c} at TTL + 2 s", n.id);
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    // And for the push API of the survivor, they are offline (not failed).
    let (_, ans) = gws[0].post("/v1/push/users", json!({"users": ["k0", "k1"], "payload": "x"}));
    assert_eq!(ans["offline_users"], json!(["k0", "k1"]), "{ans}");
    assert_eq!(ans["failed"], json!([]), "{ans}");
}

#[test]
fn a_gateway_paused_past_its_lease_fences_itself_and_never_resurrects_a_session() {
    let nodes = status_cluster(3, &["node.sweep_ms=100"]);
    let gws = gateways(&status_sets(&nodes), 2, &short_lease());
    let (a, b) = (&gws[0], &gws[1]);
    let mut old = Client::login_on(b.tcp, "dave", Platform::Ios);
    wait_sessions(a, "dave", &[2]);

    b.signal(libc::SIGSTOP);
    let paused = Instant::now();
    // The lease lapses: dave is offline for the cluster within TTL + 2 s.
    let gone = eventually(TTL + MARGIN, || sessions(a, "dave").is_empty().then_some(()));
    assert!(
        gone.is_some(),
        "dave still online {:?} after {:?}",
        sessions(a, "dave"),
        paused.elapsed()
    );
    // His phone gives up on the silent gateway and logs in on A.
    let mut new = Client::login_on(a.tcp, "dave", Platform::Ios);
    wait_sessions(a, "dave", &[1]);

    b.signal(libc::SIGCONT);
    // B fences itself: the old connection is redirected, not kept.
    assert_eq!(expect_redirect(&mut old, Duration::from_secs(10)), Code::SERVER_DRAINING);
    // Its lease was refused under the old generation, and the session never comes back,
    // through several renewals (500 ms each) and B's new lease.
    let resumed = Instant::now();
    while resumed.elapsed() < Duration::from_secs(2) {
        let on = sessions(a, "dave");
        assert!(on.iter().all(|s| s["gateway"] == 1) && on.len() == 1, "dave: {on:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let events = new.run_for(Duration::from_millis(100));
    assert!(!events.iter().any(|e| matches!(e, Event::Kicked { .. })), "{events:?}");
    assert!(b.metric("holdfast_gateway_fences_total") >= 1.0);
    assert!(b.metric("holdfast_gateway_presence_lease_losses_total") >= 1.0);
    assert!(
        b.metric(
            "holdfast_status_client_ops_total{backend=\"status\",op=\"renew\",outcome=\"fenced\"}"
        ) >= 1.0
    );
    // Once it holds a new lease, B takes clients again.
    let healthy =
        eventually(Duration::from_secs(10), || (b.get("/healthz").0 == 200).then_some(()));
    assert!(healthy.is_some(), "B never lowered its fence");
    let _erin = Client::login(b.tcp, "erin");
    wait_sessions(a, "erin", &[2]);
}

/// Pushes and kicks across two gateways on a Redis presence `backend`; a killed gateway's
/// user goes offline within the lease TTL + 2 s.
fn redis_backend_routes_pushes_and_kicks(backend: &str, urls: &[String], label: &str) {
    let urls: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    let mut backend = vec![
        format!("presence.backend={backend}"),
        format!("presence.redis_urls=[{}]", urls.join(", ")),
    ];
    backend.extend(short_lease());
    let mut gws = gateways(&backend, 2, &[]);
    let mut frank_b = Client::login_on(gws[1].tcp, "frank", Platform::Android);
    wait_sessions(&gws[0], "frank", &[2]);
    let (_, ans) = gws[0].post("/v1/push/user", json!({"user": "frank", "payload": "r"}));
    assert_eq!(ans["delivered"][0]["gateway"], 2, "{ans}");
    assert_eq!(&frank_b.expect_push().payload[..], b"r");
    let _frank_a = Client::login_on(gws[0].tcp, "frank", Platform::Android);
    assert_eq!(expect_kick(&mut frank_b), Code::LOGGED_IN_ELSEWHERE);
    wait_sessions(&gws[1], "frank", &[1]);
    let ops = format!(
        "holdfast_status_client_ops_total{{backend=\"{label}\",op=\"apply\",outcome=\"ok\"}}"
    );
    assert!(gws[0].metric(&ops) >= 1.0, "{ops}");
    gws[0].kill9();
    let killed = Instant::now();
    let gone = eventually(TTL + MARGIN, || sessions(&gws[1], "frank").is_empty().then_some(()));
    assert!(gone.is_some(), "frank still online after {:?}", killed.elapsed());
}

#[test]
fn the_redis_backend_routes_pushes_and_kicks_and_expires_a_killed_gateway() {
    let redis = RedisProcess::start();
    redis_backend_routes_pushes_and_kicks("redis", &[redis.url()], "redis");
}

#[test]
fn the_redis_cluster_backend_routes_pushes_and_kicks_and_expires_a_killed_gateway() {
    let nodes = RedisProcess::cluster();
    let urls: Vec<String> = nodes.iter().map(RedisProcess::url).collect();
    redis_backend_routes_pushes_and_kicks("redis_cluster", &urls, "redis-cluster");
}

#[test]
fn a_gateway_started_before_its_status_node_waits_for_it_then_serves() {
    let port = free_port();
    let backend = vec![
        "presence.backend=status".to_owned(),
        format!("presence.seeds=[\"127.0.0.1:{port}\"]"),
        format!("presence.secret={STATUS_SECRET}"),
    ];
    let starting = std::thread::spawn(move || gateways(&backend, 1, &[]).pop().expect("one"));
    // The gateway retries (presence.start_timeout_ms, 10 s) while the node is not up yet.
    std::thread::sleep(Duration::from_millis(500));
    let _node = StatusProcess::spawn(
        1,
        &[format!("node.data_addr=127.0.0.1:{port}"), "node.admin_addr=127.0.0.1:0".to_owned()],
    );
    let gw = starting.join().expect("the gateway started once the node was up");
    let _gina = Client::login(gw.tcp, "gina");
    wait_sessions(&gw, "gina", &[1]);
}
