//! Rebalancing with real processes: a `holdfast-scheduler`, a one-node `holdfast-status`
//! ring and three `holdfast-gateway`s that register with the scheduler. Two gateways hold
//! 30 clients each; a third is added; the scheduler orders the loaded ones to shed, they
//! send `REDIRECT` `REBALANCE` at a bounded rate, and the clients reconnect where dispatch
//! sends them. The test checks that the spread converges within a configured time, that the
//! reconnect (dispatch) rate stays bounded, and that every push sent through gateway 1's API
//! during the move is accounted for: delivered and received, delivered and reported
//! unacknowledged in a disconnect event, offline, or failed — adding up to what was sent.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use holdfast_codec::Platform;
use holdfast_codec::client::{Event, Reconnect};
use holdfast_tests::{
    Client, GatewayProcess, SCHEDULER_SECRET, STATUS_SECRET, SchedulerProcess, Webhook,
    client_config, eventually, free_port, status_cluster, token,
};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_holdfast-gateway");
const CLUSTER_SECRET: &str = "test-gateway-cluster-secret";
/// Clients per loaded gateway, and every gateway's capacity.
const PER_GATEWAY: usize = 30;
const CAPACITY: usize = 60;
/// The scheduler's pool budget (connections per second) and the bound the test allows on
/// reconnects in any one-second window (the budget plus one window's spill-over).
const SHED_PER_SEC: usize = 10;
const MAX_RECONNECTS_PER_SEC: usize = 2 * SHED_PER_SEC;
/// The configured time the spread must converge within after the third gateway starts.
const CONVERGE_WITHIN: Duration = Duration::from_secs(30);

struct Shared {
    stop: AtomicBool,
    /// (user, message id) of every push a client received.
    received: Mutex<HashSet<(String, u64)>>,
    /// When each reconnect asked dispatch.
    dispatches: Mutex<Vec<Instant>>,
    dispatch: std::net::SocketAddr,
}

/// Ask dispatch where `user` should go.
fn dispatch(shared: &Shared, user: &str) -> Option<std::net::SocketAddr> {
    shared.dispatches.lock().expect("lock").push(Instant::now());
    let url = format!("http://{}/v1/dispatch?uid={user}&platform=linux", shared.dispatch);
    let answer: serde_json::Value = reqwest::blocking::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5))
        .send()
        .ok()?
        .json()
        .ok()?;
    answer["endpoints"][0]["addr"].as_str()?.parse().ok()
}

/// Log in, or `None` if the gateway refused or did not answer within 5 s.
fn login(addr: std::net::SocketAddr, user: &str) -> Option<Client> {
    let stream_ok = std::net::TcpStream::connect(addr).is_ok();
    if !stream_ok {
        return None;
    }
    let mut c = Client::connect(addr, client_config(token(user), Platform::Linux, "dev"));
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        match c.next_event(until - Instant::now())? {
            Event::Authenticated(_) => return Some(c),
            Event::AuthFailed { .. } | Event::Closed { .. } => return None,
            _ => {}
        }
    }
    None
}

/// One simulated phone: stays connected, records pushes, follows redirects through dispatch.
fn phone(shared: Arc<Shared>, user: String, first: std::net::SocketAddr) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut client = login(first, &user);
        let mut wait = Duration::ZERO;
        while !shared.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let Some(c) = client.as_mut() else {
                std::thread::sleep(wait.max(Duration::from_millis(50)));
                wait = Duration::ZERO;
                client = dispatch(&shared, &user).and_then(|addr| login(addr, &user));
                continue;
            };
            match c.next_event(Duration::from_millis(50)) {
                Some(Event::Push(p)) => {
                    shared.received.lock().expect("lock").insert((user.clone(), p.message_id));
                }
                Some(Event::Redirected { reconnect, .. }) => {
                    if let Reconnect::After { delay, .. } = reconnect {
                        wait = delay;
                    }
                    client = None;
                }
                Some(Event::Closed { .. }) => client = None,
                _ => {}
            }
        }
    })
}

fn established(gw: &GatewayProcess) -> usize {
    gw.metric("holdfast_gateway_connections_established") as usize
}

#[test]
fn adding_a_gateway_rebalances_real_clients_at_a_bounded_rate_without_losing_a_push() {
    let dir = std::env::temp_dir().join(format!("holdfast-rebalance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let scheduler = SchedulerProcess::rebalancing(&dir, SHED_PER_SEC, SHED_PER_SEC / 2, 300);
    let status = status_cluster(1, &[]);
    let events = Webhook::start(|_| (200, json!({})));
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let spawn = |id: usize| {
        let peers: Vec<String> = (1..=3)
            .filter(|p| *p != id)
            .map(|p| format!("{{id={p}, addr=\"127.0.0.1:{}\"}}", ports[p - 1]))
            .collect();
        let sets = [
            format!("node.id={id}"),
            "presence.backend=status".to_owned(),
            format!("presence.seeds=[\"{}\"]", status[0].data),
            format!("presence.secret={STATUS_SECRET}"),
            format!("cluster.addr=127.0.0.1:{}", ports[id - 1]),
            format!("cluster.peers=[{}]", peers.join(", ")),
            format!("cluster.secret={CLUSTER_SECRET}"),
            format!("scheduler.addrs=[\"{}\"]", scheduler.control),
            format!("scheduler.secret={SCHEDULER_SECRET}"),
            format!("scheduler.capacity_connections={CAPACITY}"),
            "scheduler.report_interval_ms=100".to_owned(),
            format!("events.webhook_url={}", events.url()),
            "events.flush_interval_ms=50".to_owned(),
        ];
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        GatewayProcess::spawn(BIN, &sets)
    };
    let g1 = spawn(1);
    let g2 = spawn(2);
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        received: Mutex::new(HashSet::new()),
        dispatches: Mutex::new(Vec::new()),
        dispatch: scheduler.dispatch,
    });
    let users: Vec<String> = (0..2 * PER_GATEWAY).map(|i| format!("p{i}")).collect();
    let phones: Vec<JoinHandle<()>> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let first = if i < PER_GATEWAY { g1.tcp } else { g2.tcp };
            phone(Arc::clone(&shared), u.clone(), first)
        })
        .collect();
    let loaded = eventually(Duration::from_secs(20), || {
        (established(&g1) == PER_GATEWAY && established(&g2) == PER_GATEWAY).then_some(())
    });
    assert!(loaded.is_some(), "clients never all logged in");

    // Pushes through gateway 1's API, to users wherever they are, during the whole move.
    let pushing = Arc::new(AtomicBool::new(true));
    let next_id = Arc::new(AtomicU64::new(1));
    let api = g1.http;
    let pusher = {
        let (pushing, next_id, users) = (Arc::clone(&pushing), Arc::clone(&next_id), users.clone());
        std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            let mut answers = Vec::new();
            let until = Instant::now() + Duration::from_secs(90);
            while pushing.load(Ordering::Relaxed) && Instant::now() < until {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let user = &users[(id as usize * 7) % users.len()];
                let answer: serde_json::Value = http
                    .post(format!("http://{api}/v1/push/user"))
                    .json(&json!({"user": user, "message_id": id, "payload": "m"}))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .and_then(|r| r.json())
                    .expect("the push API answers");
                answers.push((id, user.clone(), answer));
                std::thread::sleep(Duration::from_millis(20));
            }
            answers
        })
    };

    let g3 = spawn(3);
    let added = Instant::now();
    let gateways = [&g1, &g2, &g3];
    let band = |n: usize| (17..=23).contains(&n);
    let converged = eventually(CONVERGE_WITHIN, || {
        let pending: f64 = gateways.iter().map(|g| g.metric("holdfast_gateway_shed_pending")).sum();
        let counts: Vec<usize> = gateways.iter().map(|g| established(g)).collect();
        (pending == 0.0 && counts.iter().all(|&n| band(n))).then_some(counts)
    });
    let counts: Vec<usize> = gateways.iter().map(|g| established(g)).collect();
    assert!(converged.is_some(), "not converged within {CONVERGE_WITHIN:?}: {counts:?}");
    let took = added.elapsed();
    pushing.store(false, Ordering::Relaxed);
    let answers = pusher.join().expect("pusher");

    // Every push is accounted for.
    let unacked = |events: &Webhook| -> HashSet<(String, u64)> {
        let mut set = HashSet::new();
        for batch in events.received() {
            for e in batch["events"].as_array().into_iter().flatten() {
                for u in e["unacked"].as_array().into_iter().flatten() {
                    let conn = e["conn_id"].as_str().unwrap_or_default().to_owned();
                    let id = u["message_id"].as_str().and_then(|m| m.parse().ok()).unwrap_or(0);
                    set.insert((conn, id));
                }
            }
        }
        set
    };
    let tally = || {
        let received = shared.received.lock().expect("lock").clone();
        let reported = unacked(&events);
        let (mut got, mut unacked_n, mut offline, mut failed, mut lost) = (0, 0, 0, 0, Vec::new());
        for (id, user, a) in &answers {
            let delivered = a["delivered"].as_array().cloned().unwrap_or_default();
            if let Some(d) = delivered.first() {
                let conn = d["conn_id"].as_str().unwrap_or_default().to_owned();
                if received.contains(&(user.clone(), *id)) {
                    got += 1;
                } else if reported.contains(&(conn, *id)) {
                    unacked_n += 1;
                } else {
                    lost.push((*id, a.clone()));
                }
            } else if a["offline_users"].as_array().is_some_and(|o| !o.is_empty()) {
                offline += 1;
            } else if a["failed"].as_array().is_some_and(|f| !f.is_empty()) {
                failed += 1;
            } else {
                lost.push((*id, a.clone()));
            }
        }
        (got, unacked_n, offline, failed, lost)
    };
    let settled = eventually(Duration::from_secs(10), || {
        let t = tally();
        t.4.is_empty().then_some(t)
    });
    let (got, unacked_n, offline, failed, lost) = settled.unwrap_or_else(tally);
    shared.stop.store(true, Ordering::Relaxed);
    for p in phones {
        p.join().expect("phone thread");
    }
    let sent = answers.len();
    assert!(sent > 50, "too few pushes during the move: {sent}");
    assert!(
        lost.is_empty(),
        "{} pushes neither received nor reported: {:?}",
        lost.len(),
        &lost[..lost.len().min(3)]
    );
    assert_eq!(got + unacked_n + offline + failed, sent);

    // The reconnects came at a bounded rate: no storm.
    let times = shared.dispatches.lock().expect("lock").clone();
    let worst = times
        .iter()
        .map(|t| times.iter().filter(|u| **u >= *t && **u < *t + Duration::from_secs(1)).count())
        .max()
        .unwrap_or(0);
    assert!(worst <= MAX_RECONNECTS_PER_SEC, "{worst} reconnects in one second");
    assert!(
        times.len() <= 2 * PER_GATEWAY,
        "{} reconnects for {} clients",
        times.len(),
        2 * PER_GATEWAY
    );
    assert!(g1.metric("holdfast_gateway_redirects_total{reason=\"rebalance\"}") >= 1.0);
    eprintln!(
        "rebalanced to {counts:?} in {took:?}: {} reconnects (worst second {worst}); \
         {sent} pushes: {got} received, {unacked_n} reported unacked, {offline} offline, {failed} failed",
        times.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
