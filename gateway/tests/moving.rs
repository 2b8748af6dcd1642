//! Make-before-break with real processes: 5,000 clients on gateway A, A drains (or a
//! scheduler rebalances 2,000 of them between A and B), and every moved
//! client ends on gateway B while pushes go through the API the whole time — each push
//! reaches each of its users exactly once (none lost, none duplicated after the client
//! session's de-duplication). `docs/PROTOCOL.md` § Moving without a gap.
//!
//! The clients are `codec::client::Session`s on tokio, each holding two transports during
//! its move, as a production client would. A and B share presence through a one-node
//! `holdfast-status` ring, so B's API routes to whichever gateway holds a user.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use holdfast_codec::Platform;
use holdfast_codec::client::{Event, Reconnect, Session};
use holdfast_tests::{
    GatewayProcess, SCHEDULER_SECRET, SchedulerProcess, client_config, eventually, gateway_cluster,
    status_cluster, status_sets, token,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_holdfast-gateway");
/// Users named in each push request.
const PER_PUSH: usize = 250;

/// What one client saw.
struct Outcome {
    user: String,
    /// Message ids handed to the application, in order of arrival.
    pushes: Vec<u64>,
    /// The address of the gateway the client ended on.
    ended_on: SocketAddr,
    /// Connections that ended other than by the planned move.
    unplanned_closes: usize,
}

/// Write everything the session queued for either transport.
async fn flush(s: &mut Session, cur: &mut TcpStream, old: &mut Option<TcpStream>) {
    while let Some(b) = s.poll_transmit() {
        let _ = cur.write_all(&b).await;
    }
    if let Some(o) = old.as_mut() {
        while let Some(b) = s.poll_transmit_retiring() {
            let _ = o.write_all(&b).await;
        }
    }
}

/// One client: logs in on `a`, follows a `REDIRECT` make-before-break to `b` (standing in
/// for the scheduler's answer), until `stop`.
async fn client(
    user: String,
    a: SocketAddr,
    b: SocketAddr,
    up: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Outcome {
    let seed = user.bytes().fold(7u64, |h, c| h.wrapping_mul(31).wrapping_add(u64::from(c)));
    let config = holdfast_codec::client::Config {
        seed,
        ..client_config(token(&user), Platform::Linux, "phone")
    };
    let mut s = Session::new(config, Instant::now()).expect("valid config");
    let mut out = Outcome { user, pushes: Vec::new(), ended_on: a, unplanned_closes: 0 };
    let mut cur = TcpStream::connect(a).await.expect("A accepts");
    let _ = cur.set_nodelay(true);
    s.connect(Instant::now());
    let mut old: Option<TcpStream> = None;
    let mut move_at: Option<Instant> = None;
    // Where the next connection goes: the redirect's first address, as a client follows
    // it, or B (standing in for the scheduler's answer) when it names none.
    let mut target = b;
    let mut reconnect_at: Option<Instant> = None;
    let mut counted = false;
    let (mut buf, mut obuf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let hard_stop = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
        flush(&mut s, &mut cur, &mut old).await;
        while let Some(e) = s.poll_event() {
            match e {
                Event::Authenticated(_) if !counted => {
                    counted = true;
                    up.fetch_add(1, Ordering::Relaxed);
                }
                Event::Push(p) => {
                    out.pushes.push(p.message_id);
                    received.fetch_add(1, Ordering::Relaxed);
                }
                Event::Redirected { overlap: true, reconnect, .. } => {
                    move_at = Some(Instant::now() + reconnect.delay().unwrap_or_default());
                    target = match &reconnect {
                        Reconnect::After { addresses, .. } => {
                            addresses.first().and_then(|a| a.parse().ok()).unwrap_or(b)
                        }
                        _ => b,
                    };
                }
                Event::Retired => {
                    // The last ACKs, then half-close: the old connection is read to its end
                    // (a push the old gateway wrote before it saw the close still counts).
                    flush(&mut s, &mut cur, &mut old).await;
                    if let Some(o) = old.as_mut() {
                        let _ = o.shutdown().await;
                    }
                }
                Event::Closed { reconnect, .. } => {
                    out.unplanned_closes += 1;
                    let delay = match reconnect {
                        Reconnect::After { delay, .. } | Reconnect::NewToken { delay } => delay,
                        Reconnect::Never => Duration::from_secs(1),
                    };
                    reconnect_at = Some(Instant::now() + delay);
                }
                _ => {}
            }
        }
        flush(&mut s, &mut cur, &mut old).await;
        if old.is_some() && !s.has_retiring() {
            old = None; // the session gave up on it (not ended in time, or garbage)
        }
        let now = Instant::now();
        // Time to move (make-before-break) or to reconnect after an unplanned close: B.
        if move_at.is_some_and(|t| t <= now) || reconnect_at.is_some_and(|t| t <= now) {
            move_at = None;
            reconnect_at = None;
            let Ok(next) = TcpStream::connect(target).await else {
                reconnect_at = Some(now + Duration::from_millis(200));
                continue;
            };
            let _ = next.set_nodelay(true);
            let previous = std::mem::replace(&mut cur, next);
            if s.is_moving() {
                old = Some(previous);
            }
            out.ended_on = target;
            s.connect(Instant::now());
            continue;
        }
        let wake = [s.poll_timeout(), move_at, reconnect_at]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + Duration::from_millis(100))
            .min(now + Duration::from_millis(100));
        let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(wake));
        tokio::select! {
            r = cur.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    s.transport_closed(Instant::now());
                    if !matches!(s.state(), holdfast_codec::client::State::Closed) {
                        reconnect_at = Some(Instant::now());
                    }
                }
                Ok(n) => s.receive(&buf[..n], Instant::now()),
            },
            r = async { old.as_mut().expect("guarded").read(&mut obuf).await }, if old.is_some() => {
                match r {
                    Ok(0) | Err(_) => {
                        old = None;
                        s.retiring_closed();
                    }
                    Ok(n) => s.receive_retiring(&obuf[..n], Instant::now()),
                }
            }
            () = sleep => s.handle_timeout(Instant::now()),
        }
    }
    out
}

/// What moves the clients from A to B.
enum Trigger {
    /// `POST /v1/admin/drain` on A: every client moves.
    Drain,
    /// A `holdfast-scheduler` both gateways report to: A holds every client, B none, so the
    /// scheduler orders A to shed (`REDIRECT` `REBALANCE`) until the two are balanced.
    Rebalance,
}

#[test]
fn a_drain_moves_5000_clients_make_before_break_and_every_push_arrives_exactly_once() {
    let sets = ["drain.window_ms=4000", "drain.jitter_ms=1000", "drain.grace_ms=20000"];
    move_clients(Trigger::Drain, 5_000, &sets);
}

/// The scheduler's rebalancing uses the same make-before-break redirect: the clients it
/// moves lose nothing and see nothing twice.
#[test]
fn a_rebalance_moves_clients_make_before_break_and_every_push_arrives_exactly_once() {
    let dir = std::env::temp_dir().join(format!("holdfast-moving-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let scheduler = SchedulerProcess::rebalancing(&dir, 400, 400, 500);
    let addrs = format!("scheduler.addrs=[\"{}\"]", scheduler.control);
    let secret = format!("scheduler.secret={SCHEDULER_SECRET}");
    let sets = [
        addrs.as_str(),
        secret.as_str(),
        "scheduler.report_interval_ms=100",
        "scheduler.capacity_connections=4000",
    ];
    move_clients(Trigger::Rebalance, 2_000, &sets);
    drop(scheduler);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `clients` clients log in on A; pushes go through B's API before, during and after the
/// move `trigger` starts; every client checks each push it was addressed to.
fn move_clients(trigger: Trigger, clients: usize, sets: &[&str]) {
    let status = status_cluster(1, &[]);
    let mut extra: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    extra.push("admission.max_handshakes=20000".to_owned());
    let mut gws =
        gateway_cluster(BIN, "moving-test-cluster-secret", &status_sets(&status), 2, &extra);
    let (a_tcp, b_tcp) = (gws[0].tcp, gws[1].tcp);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let up = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let users: Vec<String> = (0..clients).map(|i| format!("mover-{i}")).collect();
    let tasks: Vec<_> = users
        .iter()
        .map(|u| {
            rt.spawn(client(u.clone(), a_tcp, b_tcp, up.clone(), received.clone(), stop.clone()))
        })
        .collect();
    let all_up = eventually(Duration::from_secs(60), || {
        (up.load(Ordering::Relaxed) == clients).then_some(())
    });
    assert!(all_up.is_some(), "{} of {clients} clients logged in", up.load(Ordering::Relaxed));
    let established = "holdfast_gateway_connections_established";
    if matches!(trigger, Trigger::Drain) {
        let on_a = gws[0].wait_metric(established, clients as f64, Duration::from_secs(30));
        assert_eq!(on_a, clients as f64);
    }

    // Pushes through B's API, before, during and after the move; each names PER_PUSH users.
    let mut sent: Vec<(u64, Vec<usize>)> = Vec::new();
    let mut next_id = 1_000_000u64;
    let mut push_round = |gw: &GatewayProcess, sent: &mut Vec<(u64, Vec<usize>)>| {
        let first = (next_id as usize * PER_PUSH) % clients;
        let idx: Vec<usize> = (0..PER_PUSH).map(|k| (first + k) % clients).collect();
        let names: Vec<&str> = idx.iter().map(|i| users[*i].as_str()).collect();
        let (status, body) = gw.post(
            "/v1/push/users",
            json!({"users": names, "message_id": next_id.to_string(), "payload": "m"}),
        );
        assert_eq!(status, 200, "{body}");
        let offline: Vec<&serde_json::Value> =
            body["offline_users"].as_array().map(|o| o.iter().collect()).unwrap_or_default();
        assert!(offline.is_empty(), "users counted offline mid-move: {offline:?}");
        sent.push((next_id, idx));
        next_id += 1;
    };
    for _ in 0..5 {
        push_round(&gws[1], &mut sent);
    }
    let began = Instant::now();
    if matches!(trigger, Trigger::Drain) {
        let (status, body) = gws[0].post("/v1/admin/drain", json!({}));
        assert_eq!(status, 202, "{body}");
    }
    // Keep pushing until the move is over, and a little after.
    let mut over = None;
    while began.elapsed() < Duration::from_secs(40) {
        push_round(&gws[1], &mut sent);
        std::thread::sleep(Duration::from_millis(20));
        if over.is_none() {
            let done = match &trigger {
                Trigger::Drain => gws[0].wait_exit(Duration::ZERO).is_some(),
                Trigger::Rebalance => {
                    // Staying connections: the moving ones are leaving.
                    let staying = |g: &GatewayProcess| {
                        g.metric(established) - g.metric("holdfast_gateway_connections_moving")
                    };
                    let (a, b) = (staying(&gws[0]), staying(&gws[1]));
                    let pending = gws[0].metric("holdfast_gateway_shed_pending")
                        + gws[1].metric("holdfast_gateway_shed_pending");
                    let band = |n: f64| (n - clients as f64 / 2.0).abs() <= clients as f64 * 0.1;
                    // Settled: balanced, nothing left to shed, (almost) nobody in flight.
                    pending == 0.0 && band(a) && band(b) && a + b >= clients as f64 * 0.98
                }
            };
            if done {
                over = Some(began.elapsed());
            }
        }
        // A second past the end of the move, and enough pushes to say they kept flowing
        // (a quiet machine can finish the move in under 3 s).
        if over.is_some_and(|t| began.elapsed() > t + Duration::from_secs(1)) && sent.len() > 60 {
            break;
        }
    }
    let counts = match trigger {
        Trigger::Drain => (0.0, gws[1].metric(established)),
        Trigger::Rebalance => (gws[0].metric(established), gws[1].metric(established)),
    };
    let over = over.unwrap_or_else(|| {
        let state = |g: &GatewayProcess| {
            let m = |name: &str| g.metric(&format!("holdfast_gateway_{name}"));
            (m("connections_established"), m("connections_moving"), m("shed_pending"))
        };
        let (a, b) = (state(&gws[0]), state(&gws[1]));
        panic!("the move did not end within 40 s: (established, moving, shed pending) {a:?} {b:?}")
    });
    if matches!(trigger, Trigger::Drain) {
        let status_a = gws[0].wait_exit(Duration::from_secs(5)).expect("A exited");
        assert!(status_a.success(), "A exits cleanly after the drain: {status_a:?}");
        let on_b = gws[1].wait_metric(established, clients as f64, Duration::from_secs(10));
        assert_eq!(on_b, clients as f64, "every client ends on B");
    }
    // The last pushes arrive (all of them, or 10 s pass); then stop the clients.
    let deliveries: usize = sent.iter().map(|(_, idx)| idx.len()).sum();
    eventually(Duration::from_secs(10), || {
        (received.load(Ordering::Relaxed) >= deliveries).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let outcomes: Vec<Outcome> = rt.block_on(async {
        let mut v = Vec::new();
        for t in tasks {
            v.push(t.await.expect("client task"));
        }
        v
    });

    let index: HashMap<&str, usize> =
        users.iter().enumerate().map(|(i, u)| (u.as_str(), i)).collect();
    let mut want: Vec<HashMap<u64, usize>> = vec![HashMap::new(); clients];
    for (id, idx) in &sent {
        for i in idx {
            *want[*i].entry(*id).or_default() += 1;
        }
    }
    let (mut lost, mut duplicated, mut extra_pushes, mut unplanned, mut on_b) =
        (0usize, 0usize, 0usize, 0usize, 0usize);
    for o in &outcomes {
        if matches!(trigger, Trigger::Drain) {
            assert_eq!(o.ended_on, b_tcp, "{} ended on B", o.user);
        }
        on_b += usize::from(o.ended_on == b_tcp);
        unplanned += o.unplanned_closes;
        let i = index[o.user.as_str()];
        let mut got: HashMap<u64, usize> = HashMap::new();
        for id in &o.pushes {
            *got.entry(*id).or_default() += 1;
        }
        for (id, n) in &want[i] {
            match got.get(id).copied().unwrap_or(0) {
                0 => {
                    if lost < 10 {
                        eprintln!("lost: push {id} to {} (ended on {})", o.user, o.ended_on);
                    }
                    lost += n;
                }
                k if k > *n => duplicated += k - n,
                _ => {}
            }
        }
        extra_pushes += got.keys().filter(|id| !want[i].contains_key(id)).count();
    }
    eprintln!(
        "{on_b} of {clients} clients ended on B, gateways at {counts:?}, after {over:?}; {} \
         pushes, {deliveries} deliveries: {lost} lost, {duplicated} duplicated, \
         {extra_pushes} unexpected, {unplanned} unplanned closes",
        sent.len()
    );
    assert!(on_b >= clients / 3, "a real share of the clients moved: {on_b}");
    assert!(sent.len() > 50, "pushes kept flowing during the move: {}", sent.len());
    assert_eq!((lost, duplicated, extra_pushes), (0, 0, 0));
    assert_eq!(unplanned, 0, "no connection ended other than by the planned move");
    drop(gws);
}
