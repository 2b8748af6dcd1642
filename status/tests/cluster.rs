//! The status cluster with real node processes: authentication, hostile bytes, metrics,
//! `kill -9` of a node, lease expiry on every node, and online resharding under traffic
//! checked against a model.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use holdfast_codec::{HEADER_LEN, Head};
use holdfast_status::cluster::{ClusterConfig, ClusterStore};
use holdfast_status::wire::{Code, Kind, Request, Response, hello_mac};
use holdfast_status::{Lease, LeaseId, PresenceStore, Session, UserId, Write};
use support::{SECRET, StatusNode};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Read one frame (blocking, at most 5 s); `None` on EOF.
fn read_frame(s: &mut TcpStream, buf: &mut BytesMut, asked: Option<Kind>) -> Option<Response> {
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    loop {
        if let Some(head) = Head::peek(buf)
            && buf.len() as u64 >= head.frame_len()
        {
            let frame = buf.split_to(head.frame_len() as usize);
            return Some(
                Response::decode(&head, &frame[HEADER_LEN..], asked)
                    .expect("node sends valid frames"),
            );
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn send(s: &mut TcpStream, req: &Request) {
    let mut out = BytesMut::new();
    req.encode(1, &mut out);
    s.write_all(&out).expect("write");
}

/// Connect raw and read the challenge nonce.
fn raw(node: &StatusNode) -> (TcpStream, BytesMut, [u8; 32]) {
    let mut s = TcpStream::connect(node.data).expect("connect");
    let mut buf = BytesMut::new();
    match read_frame(&mut s, &mut buf, None) {
        Some(Response::Challenge { nonce, .. }) => (s, buf, nonce),
        other => panic!("expected CHALLENGE, got {other:?}"),
    }
}

fn expect_fatal(s: &mut TcpStream, buf: &mut BytesMut, asked: Kind, code: Code) {
    match read_frame(s, buf, Some(asked)) {
        Some(Response::Error { code: c, fatal: true, .. }) => assert_eq!(c, code),
        other => panic!("expected a fatal {code:?}, got {other:?}"),
    }
    assert!(read_frame(s, buf, Some(asked)).is_none(), "the node closes after a fatal error");
}

fn get(url: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    rt.block_on(async {
        reqwest::get(url).await.expect("admin answers").text().await.expect("body")
    })
}

fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn unauthenticated_peer_is_refused() {
    let nodes = support::status_cluster(1, &[]);
    let node = &nodes[0];
    // wrong secret
    let (mut s, mut buf, nonce) = raw(node);
    send(&mut s, &Request::Hello { mac: hello_mac(b"not-the-secret", &nonce) });
    expect_fatal(&mut s, &mut buf, Kind::Hello, Code::Unauthenticated);
    // a data request before HELLO
    let (mut s, mut buf, _) = raw(node);
    send(&mut s, &Request::Lookup { epoch: 1, users: vec!["u".into()] });
    expect_fatal(&mut s, &mut buf, Kind::Lookup, Code::Unauthenticated);
    // a MAC for another nonce (replay)
    let (mut s, mut buf, _) = raw(node);
    send(&mut s, &Request::Hello { mac: hello_mac(SECRET.as_bytes(), &nonce) });
    expect_fatal(&mut s, &mut buf, Kind::Hello, Code::Unauthenticated);
    // the right secret works
    let (mut s, mut buf, nonce) = raw(node);
    send(&mut s, &Request::Hello { mac: hello_mac(SECRET.as_bytes(), &nonce) });
    assert!(matches!(
        read_frame(&mut s, &mut buf, Some(Kind::Hello)),
        Some(Response::HelloOk { .. })
    ));
    let m = get(&node.admin_url("/metrics"));
    assert_eq!(metric(&m, "holdfast_status_auth_failures_total"), 3.0);
    // the admin API refuses a ring change without the secret
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let status = rt.block_on(async {
        reqwest::Client::new()
            .post(node.admin_url("/v1/ring"))
            .body(r#"{"members": []}"#)
            .send()
            .await
            .expect("admin answers")
            .status()
    });
    assert_eq!(status.as_u16(), 401);
}

#[test]
fn hostile_frames_get_an_error_and_a_clean_close() {
    let nodes = support::status_cluster(1, &["limits.max_frame=65536"]);
    let node = &nodes[0];
    let authed = || {
        let (mut s, mut buf, nonce) = raw(node);
        send(&mut s, &Request::Hello { mac: hello_mac(SECRET.as_bytes(), &nonce) });
        assert!(matches!(
            read_frame(&mut s, &mut buf, Some(Kind::Hello)),
            Some(Response::HelloOk { .. })
        ));
        (s, buf)
    };
    // oversized length prefix: refused from the 4 length bytes, before any body arrives
    let (mut s, mut buf) = authed();
    s.write_all(&[0xFF, 0xFF, 0xFF, 0xFF]).expect("write");
    expect_fatal(&mut s, &mut buf, Kind::Lookup, Code::TooLarge);
    // truncated body: a LOOKUP claiming 1000 users with 3 bytes of them
    let (mut s, mut buf) = authed();
    let mut frame = Vec::new();
    Head { length: 8 + 2 + 3, kind: Kind::Lookup as u8, flags: 0, id: 9 }.encode(&mut frame);
    frame.extend_from_slice(&1u64.to_be_bytes());
    frame.extend_from_slice(&1000u16.to_be_bytes());
    frame.extend_from_slice(&[0, 1, b'x']);
    s.write_all(&frame).expect("write");
    expect_fatal(&mut s, &mut buf, Kind::Lookup, Code::BadRequest);
    // unknown kind
    let (mut s, mut buf) = authed();
    let mut frame = Vec::new();
    Head { length: 0, kind: 0x77, flags: 0, id: 3 }.encode(&mut frame);
    s.write_all(&frame).expect("write");
    expect_fatal(&mut s, &mut buf, Kind::Lookup, Code::BadRequest);
    // invalid UTF-8 user id
    let (mut s, mut buf) = authed();
    let mut frame = Vec::new();
    Head { length: 8 + 2 + 2 + 2, kind: Kind::Lookup as u8, flags: 0, id: 4 }.encode(&mut frame);
    frame.extend_from_slice(&1u64.to_be_bytes());
    frame.extend_from_slice(&1u16.to_be_bytes());
    frame.extend_from_slice(&[0, 2, 0xC3, 0x28]);
    s.write_all(&frame).expect("write");
    expect_fatal(&mut s, &mut buf, Kind::Lookup, Code::BadRequest);
    // the node still serves
    let (mut s, mut buf) = authed();
    send(&mut s, &Request::Lookup { epoch: 1, users: vec!["u".into()] });
    assert_eq!(
        read_frame(&mut s, &mut buf, Some(Kind::Lookup)),
        Some(Response::Found(vec![vec![]]))
    );
    // and a stale epoch is MOVED, not an error that closes
    send(&mut s, &Request::Lookup { epoch: 0, users: vec!["u".into()] });
    match read_frame(&mut s, &mut buf, Some(Kind::Lookup)) {
        Some(Response::Error { code: Code::Moved, epoch: 1, fatal: false, .. }) => {}
        other => panic!("expected MOVED, got {other:?}"),
    }
}

#[test]
fn no_config_node_is_a_one_node_ring_with_an_admin_api() {
    // Only the ports differ from a no-config start (the defaults may be taken here).
    let node = StatusNode::spawn(
        1,
        vec!["node.data_addr=127.0.0.1:0".into(), "node.admin_addr=127.0.0.1:0".into()],
    );
    let ring: serde_json::Value =
        serde_json::from_str(&get(&node.admin_url("/v1/ring"))).expect("json");
    assert_eq!(ring["epoch"], 1);
    assert_eq!(ring["phase"], "stable");
    assert_eq!(ring["vnodes"], 160);
    assert_eq!(ring["replicas"], 2);
    assert_eq!(ring["current"][0]["addr"], node.data.to_string());
    let members: serde_json::Value =
        serde_json::from_str(&get(&node.admin_url("/v1/members"))).expect("json");
    assert_eq!(members["members"].as_array().map(Vec::len), Some(1));
    let migration: serde_json::Value =
        serde_json::from_str(&get(&node.admin_url("/v1/migration"))).expect("json");
    assert_eq!(migration["state"], "idle");
    runtime().block_on(async {
        let store =
            ClusterStore::connect(ClusterConfig::new(vec![node.data.to_string()], SECRET), None)
                .await
                .expect("connect");
        store
            .renew(Lease {
                id: LeaseId { gateway: 1, generation: 1 },
                ttl: Duration::from_secs(30),
            })
            .await
            .expect("renew");
        let writes = (0..10).map(|i| online(&format!("u{i}"), i)).collect();
        store.apply(LeaseId { gateway: 1, generation: 1 }, writes).await.expect("apply");
    });
    let counts: serde_json::Value =
        serde_json::from_str(&get(&node.admin_url("/v1/counts"))).expect("json");
    assert_eq!(counts["sessions"], 10);
    assert_eq!(counts["gateways"], 1);
}

fn online(user: &str, conn: u64) -> Write {
    Write::Online { user: user.into(), conn, device: "d".into(), platform: 1, login_ms: conn }
}

fn promtool_check(text: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (scripts/test installs it)");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("feed promtool");
    let out = child.wait_with_output().expect("promtool exits");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn node_and_client_metrics_pass_promtool() {
    let nodes = support::status_cluster(2, &[]);
    let registry = prometheus::Registry::new();
    runtime().block_on(async {
        let cfg = ClusterConfig::new(vec![nodes[0].data.to_string()], SECRET);
        let store = ClusterStore::connect(cfg, Some(&registry)).await.expect("connect");
        let lease = LeaseId { gateway: 3, generation: 1 };
        store.renew(Lease { id: lease, ttl: Duration::from_secs(30) }).await.expect("renew");
        store
            .apply(lease, (0..50).map(|i| online(&format!("m{i}"), i)).collect())
            .await
            .expect("apply");
        store
            .lookup((0..50).map(|i| UserId::from(format!("m{i}"))).collect())
            .await
            .expect("lookup");
        let stale = store.apply(LeaseId { gateway: 3, generation: 0 }, vec![online("m1", 1)]).await;
        assert!(stale.is_err());
    });
    let text = get(&nodes[0].admin_url("/metrics"));
    promtool_check(&text);
    for name in [
        "holdfast_status_requests_total{op=\"apply\",outcome=\"ok\"}",
        "holdfast_status_ring_epoch",
        "holdfast_status_sessions",
        "holdfast_status_leases",
    ] {
        assert!(metric(&text, name) >= 1.0, "{name} in\n{text}");
    }
    assert!(text.contains("holdfast_status_request_duration_seconds_bucket"));
    assert!(text.contains("holdfast_status_migration_progress_ratio 1"));
    assert!(text.contains("holdfast_status_lease_expiries_total 0"));
    assert!(text.contains("holdfast_status_moved_total 0"));
    let client =
        prometheus::TextEncoder::new().encode_to_string(&registry.gather()).expect("encode");
    promtool_check(&client);
    assert_eq!(
        metric(
            &client,
            "holdfast_status_client_ops_total{backend=\"status\",op=\"apply\",outcome=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &client,
            "holdfast_status_client_ops_total{backend=\"status\",op=\"apply\",outcome=\"fenced\"}"
        ),
        1.0
    );
    assert_eq!(metric(&client, "holdfast_status_client_writes_total{backend=\"status\"}"), 50.0);
}

/// A stand-in for a gateway: its sessions, a lease renewed every `ttl / 4`, and a resync
/// whenever a renewal says so.
struct FakeGateway {
    store: ClusterStore,
    lease: LeaseId,
    sessions: Arc<Mutex<Vec<(UserId, Session)>>>,
    resyncs: Arc<AtomicU64>,
    renewing: Arc<AtomicBool>,
    last_renewal: Arc<Mutex<Instant>>,
}

impl FakeGateway {
    async fn start(store: ClusterStore, lease: LeaseId, ttl: Duration) -> FakeGateway {
        store.renew(Lease { id: lease, ttl }).await.expect("first renewal");
        let g = FakeGateway {
            store,
            lease,
            sessions: Arc::default(),
            resyncs: Arc::default(),
            renewing: Arc::new(AtomicBool::new(true)),
            last_renewal: Arc::new(Mutex::new(Instant::now())),
        };
        let (store, sessions, resyncs, renewing, last) = (
            g.store.clone(),
            Arc::clone(&g.sessions),
            Arc::clone(&g.resyncs),
            Arc::clone(&g.renewing),
            Arc::clone(&g.last_renewal),
        );
        tokio::spawn(async move {
            while renewing.load(Ordering::Acquire) {
                tokio::time::sleep(ttl / 4).await;
                if !renewing.load(Ordering::Acquire) {
                    break;
                }
                match store.renew(Lease { id: lease, ttl }).await {
                    Ok(r) => {
                        *last.lock().expect("lock") = Instant::now();
                        if r.resync {
                            let all = sessions.lock().expect("lock").clone();
                            if store.resync(lease, all).await.is_ok() {
                                resyncs.fetch_add(1, Ordering::AcqRel);
                            }
                        }
                    }
                    Err(e) => eprintln!("renewal failed: {e}"),
                }
            }
        });
        g
    }

    async fn login(&self, users: &[String]) {
        let writes: Vec<Write> =
            users.iter().enumerate().map(|(i, u)| online(u, 1000 + i as u64)).collect();
        self.store.apply(self.lease, writes.clone()).await.expect("apply");
        let mut s = self.sessions.lock().expect("lock");
        for w in writes {
            if let Write::Online { user, conn, device, platform, login_ms } = w {
                s.push((
                    user,
                    Session {
                        conn,
                        gateway: self.lease.gateway,
                        device,
                        platform,
                        login_ms,
                        generation: self.lease.generation,
                    },
                ));
            }
        }
    }
}

fn counts(node: &StatusNode) -> serde_json::Value {
    serde_json::from_str(&get(&node.admin_url("/v1/counts"))).expect("counts json")
}

#[test]
fn kill_9_of_a_status_node_keeps_answers_and_resync_refills_it() {
    let mut nodes = support::status_cluster(3, &["node.warmup_ms=3000"]);
    let seeds: Vec<String> = nodes.iter().map(|n| n.data.to_string()).collect();
    let users: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
    let rt = runtime();
    let gw = rt.block_on(async {
        let mut cfg = ClusterConfig::new(seeds, SECRET);
        cfg.node_timeout = Duration::from_millis(300);
        let store = ClusterStore::connect(cfg, None).await.expect("connect");
        let gw = FakeGateway::start(
            store,
            LeaseId { gateway: 7, generation: 1 },
            Duration::from_secs(3),
        )
        .await;
        gw.login(&users).await;
        gw
    });
    let ids: Vec<UserId> = users.iter().map(|u| UserId::from(u.as_str())).collect();
    let all_online = |gw: &FakeGateway| {
        rt.block_on(async {
            match gw.store.lookup(ids.clone()).await {
                Ok(found) => found.iter().filter(|l| l.len() == 1).count(),
                Err(e) => panic!("lookup failed: {e}"),
            }
        })
    };
    assert_eq!(all_online(&gw), 200);
    nodes[1].kill9();
    // Every lookup still answers online: the replica serves the dead node's keys.
    for _ in 0..10 {
        assert_eq!(all_online(&gw), 200, "a lookup answered offline for an online user");
    }
    let restarted_at = Instant::now();
    nodes[1].restart();
    // While it warms up, lookups keep reading replicas; the gateway sees the new incarnation
    // at its next renewal and resyncs.
    let until = Instant::now() + Duration::from_secs(15);
    while gw.resyncs.load(Ordering::Acquire) == 0 {
        assert_eq!(all_online(&gw), 200, "a lookup answered offline during the warm-up");
        assert!(Instant::now() < until, "the gateway did not resync within 15 s of the restart");
        std::thread::sleep(Duration::from_millis(100));
    }
    let refilled = restarted_at.elapsed();
    // The restarted node holds exactly what it owns again.
    let ring = gw.store.ring();
    let placement =
        holdfast_status::placement::Placement::new(&ring.current, ring.vnodes, ring.replicas);
    let owned = users
        .iter()
        .filter(|u| placement.owners(u).contains(&holdfast_status::placement::NodeId(2)))
        .count();
    assert!(owned > 0);
    let until = Instant::now() + Duration::from_secs(10);
    while counts(&nodes[1])["sessions"] != owned as u64 {
        assert!(
            Instant::now() < until,
            "node 2 not refilled with the {owned} sessions it owns: {}",
            counts(&nodes[1])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(3000)); // past the warm-up: node 2 answers reads itself
    assert_eq!(all_online(&gw), 200);
    eprintln!("node 2 refilled {refilled:?} after its restart ({owned} sessions)");
    gw.renewing.store(false, Ordering::Release);
}

#[test]
fn lease_expiry_takes_sessions_offline_on_every_node_within_ttl_plus_2s() {
    let nodes = support::status_cluster(3, &["node.sweep_ms=100"]);
    let seeds: Vec<String> = nodes.iter().map(|n| n.data.to_string()).collect();
    let users: Vec<String> = (0..100).map(|i| format!("e{i}")).collect();
    let ttl = Duration::from_millis(1500);
    let rt = runtime();
    let gw = rt.block_on(async {
        let store =
            ClusterStore::connect(ClusterConfig::new(seeds, SECRET), None).await.expect("connect");
        let gw = FakeGateway::start(store, LeaseId { gateway: 9, generation: 1 }, ttl).await;
        gw.login(&users).await;
        gw
    });
    let held: u64 = nodes.iter().map(|n| counts(n)["stored"].as_u64().unwrap_or(0)).sum();
    assert_eq!(held, 200, "100 sessions × R = 2");
    // The gateway stops renewing (crash, partition, SIGSTOP).
    gw.renewing.store(false, Ordering::Release);
    std::thread::sleep(ttl / 2);
    let last = *gw.last_renewal.lock().expect("lock");
    let until = last + ttl + Duration::from_secs(2);
    for n in &nodes {
        loop {
            let c = counts(n);
            if c["sessions"] == 0 && c["stored"] == 0 {
                break;
            }
            assert!(Instant::now() < until, "node {} still holds sessions {c} at TTL + 2 s", n.id);
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            metric(&get(&n.admin_url("/metrics")), "holdfast_status_lease_expiries_total"),
            1.0
        );
    }
    let late = rt.block_on(gw.store.apply(gw.lease, vec![online("e1", 5)]));
    assert!(
        matches!(
            late,
            Err(holdfast_status::StoreError::Fenced {
                reason: holdfast_status::FenceReason::Expired,
                ..
            })
        ),
        "{late:?}"
    );
}

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

async fn post_ring(
    admin: std::net::SocketAddr,
    members: &[(u16, std::net::SocketAddr)],
) -> serde_json::Value {
    let body = serde_json::json!({
        "members": members.iter().map(|(id, a)| serde_json::json!({"id": id, "addr": a.to_string()})).collect::<Vec<_>>()
    });
    let resp = reqwest::Client::new()
        .post(format!("http://{admin}/v1/ring"))
        .bearer_auth(SECRET)
        .json(&body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("admin answers");
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.expect("json");
    assert!(status.is_success(), "ring change failed: {v}");
    v
}

#[test]
fn resharding_under_traffic_matches_the_model() {
    let nodes = support::status_cluster(3, &[]);
    let joiner = StatusNode::spawn(
        4,
        vec![
            "cluster.join=true".into(),
            "node.data_addr=127.0.0.1:0".into(),
            "node.admin_addr=127.0.0.1:0".into(),
        ],
    );
    let seeds: Vec<String> = nodes.iter().chain([&joiner]).map(|n| n.data.to_string()).collect();
    const USERS: usize = 200;
    let rt = runtime();
    rt.block_on(async {
        let store =
            ClusterStore::connect(ClusterConfig::new(seeds, SECRET), None).await.expect("connect");
        let lease = LeaseId { gateway: 1, generation: 1 };
        let gw = FakeGateway::start(store.clone(), lease, Duration::from_secs(20)).await;
        let model: Arc<Vec<tokio::sync::Mutex<BTreeSet<u64>>>> =
            Arc::new((0..USERS).map(|_| tokio::sync::Mutex::new(BTreeSet::new())).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let mismatches = Arc::new(Mutex::new(Vec::<String>::new()));
        let ops = Arc::new(AtomicU64::new(0));
        let retries = Arc::new(AtomicU64::new(0));
        let next_conn = Arc::new(AtomicU64::new(1));
        let mut workers = Vec::new();
        for w in 0..4u64 {
            let (store, model, stop, mismatches, ops, retries, next_conn) = (
                store.clone(),
                Arc::clone(&model),
                Arc::clone(&stop),
                Arc::clone(&mismatches),
                Arc::clone(&ops),
                Arc::clone(&retries),
                Arc::clone(&next_conn),
            );
            workers.push(tokio::spawn(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w + 1));
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
                    let i = (rng.next() % USERS as u64) as usize;
                    let user = UserId::from(format!("r{i}"));
                    let mut truth = model[i].lock().await;
                    let roll = rng.next() % 100;
                    if roll < 40 {
                        let mut tries = 0;
                        let got = loop {
                            match store.lookup(vec![user.clone()]).await {
                                Ok(f) => break f,
                                Err(e) => {
                                    tries += 1;
                                    retries.fetch_add(1, Ordering::Relaxed);
                                    assert!(tries < 100, "lookup keeps failing: {e}");
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                            }
                        };
                        let seen: BTreeSet<u64> = got[0].iter().map(|s| s.conn).collect();
                        if seen != *truth {
                            mismatches
                                .lock()
                                .expect("lock")
                                .push(format!("{user}: saw {seen:?}, truth {truth:?}"));
                        }
                    } else {
                        let write = if roll < 75 || truth.is_empty() {
                            let conn = next_conn.fetch_add(1, Ordering::Relaxed);
                            online(&user, conn)
                        } else {
                            let conn = *truth
                                .iter()
                                .nth((rng.next() % truth.len() as u64) as usize)
                                .expect("non-empty");
                            Write::Offline { user: user.clone(), conn }
                        };
                        let mut tries = 0;
                        while let Err(e) = store.apply(lease, vec![write.clone()]).await {
                            tries += 1;
                            retries.fetch_add(1, Ordering::Relaxed);
                            assert!(tries < 100, "write keeps failing: {e}");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        match write {
                            Write::Online { conn, .. } => truth.insert(conn),
                            Write::Offline { conn, .. } => truth.remove(&conn),
                        };
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let coordinator = nodes[1].admin;
        let m = |n: &StatusNode| (n.id, n.data);
        let added =
            post_ring(coordinator, &[m(&nodes[0]), m(&nodes[1]), m(&nodes[2]), m(&joiner)]).await;
        assert_eq!(added["epoch"], 4);
        let ops_after_add = ops.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let removed = post_ring(coordinator, &[m(&nodes[1]), m(&nodes[2]), m(&joiner)]).await;
        assert_eq!(removed["epoch"], 7);
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Release);
        for w in workers {
            w.await.expect("worker");
        }
        // Final check of every user against the model.
        let all: Vec<UserId> = (0..USERS).map(|i| UserId::from(format!("r{i}"))).collect();
        let got = store.lookup(all).await.expect("final lookup");
        for (i, list) in got.iter().enumerate() {
            let seen: BTreeSet<u64> = list.iter().map(|s| s.conn).collect();
            let truth = model[i].lock().await;
            if seen != *truth {
                mismatches
                    .lock()
                    .expect("lock")
                    .push(format!("final r{i}: saw {seen:?}, truth {truth:?}"));
            }
        }
        let mismatches = mismatches.lock().expect("lock").clone();
        let ops = ops.load(Ordering::Relaxed);
        eprintln!(
            "{ops} operations ({ops_after_add} before the add finished), {} retries",
            retries.load(Ordering::Relaxed)
        );
        assert!(
            mismatches.is_empty(),
            "{} wrong answers, first: {:?}",
            mismatches.len(),
            &mismatches[..mismatches.len().min(5)]
        );
        assert!(ops > 200, "too little traffic during the changes: {ops}");
        assert_eq!(store.ring().epoch, 7);
        assert!(store.ring().current.iter().all(|m| m.id.0 != 1), "node 1 left the ring");
        // The node that left holds nothing; the others hold exactly what they own.
        let mut held: HashMap<u16, u64> = HashMap::new();
        for n in nodes.iter().chain([&joiner]) {
            let text = reqwest::get(n.admin_url("/v1/counts"))
                .await
                .expect("admin")
                .text()
                .await
                .expect("body");
            let c: serde_json::Value = serde_json::from_str(&text).expect("json");
            held.insert(n.id, c["stored"].as_u64().unwrap_or(0));
        }
        assert_eq!(held[&1], 0, "{held:?}");
        let live: usize = model.iter().map(|m| m.try_lock().map(|t| t.len()).unwrap_or(0)).sum();
        assert_eq!(
            held.values().sum::<u64>(),
            2 * live as u64,
            "R = 2 copies of every live session: {held:?}"
        );
        gw.renewing.store(false, Ordering::Release);
    });
}
