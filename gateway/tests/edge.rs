//! The gateway's edge with real processes: health as L4 balancers see it (`/healthz`, the
//! TCP check port), readiness behind scheduler registration, graceful drain, admission
//! limits.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use holdfast_codec::client::Event;
use holdfast_codec::{Code, Frame, Platform};
use holdfast_tests::{
    Client, GatewayProcess, SCHEDULER_SECRET, SchedulerProcess, client_config, eventually,
    free_port, hello_bytes, read_frames, token,
};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_holdfast-gateway");
const SECS: Duration = Duration::from_secs(10);

/// Whether a TCP connection to `addr` is accepted now.
fn connects(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// A gateway configured with a scheduler is not healthy until a scheduler accepted its
/// report; `/livez` is fine all along; the TCP check port listens only while healthy.
#[test]
fn health_waits_for_scheduler_registration() {
    let control = free_port();
    let gw = GatewayProcess::spawn(
        BIN,
        &[
            &format!("scheduler.addrs=[\"127.0.0.1:{control}\"]"),
            &format!("scheduler.secret={SCHEDULER_SECRET}"),
            "scheduler.report_interval_ms=100",
            "health.tcp_addr=127.0.0.1:0",
        ],
    );
    let check = gw.health.expect("ready line names the health port");
    let (status, body) = gw.get("/healthz");
    assert_eq!((status, body.as_str()), (503, "starting: not registered with a scheduler yet\n"));
    assert_eq!(gw.get("/livez"), (200, "alive\n".to_owned()));
    assert!(!connects(check), "the check port does not listen before the gateway is ready");
    let _scheduler = SchedulerProcess::spawn(&[&format!("control.addr=127.0.0.1:{control}")]);
    let ready = eventually(SECS, || (gw.get("/healthz") == (200, "ok\n".to_owned())).then_some(()));
    assert!(ready.is_some(), "healthy once registered: {:?}", gw.get("/healthz"));
    let listening = eventually(SECS, || connects(check).then_some(()));
    assert!(listening.is_some(), "the check port listens once healthy");
}

/// `SIGUSR1` drains: unhealthy at once (HTTP and TCP check), new connections refused by
/// the kernel, a `HELLO` already on its way answered `AUTH_FAIL` 602, every client
/// redirected with `SERVER_DRAINING` spread over the window (not all at once), and the
/// process exits as soon as the last one left, well before the deadline.
#[test]
fn drain_redirects_every_client_over_the_window_then_exits() {
    const CLIENTS: usize = 20;
    let mut gw = GatewayProcess::spawn(
        BIN,
        &[
            "drain.window_ms=2000",
            "drain.jitter_ms=0",
            "drain.grace_ms=8000",
            "health.tcp_addr=127.0.0.1:0",
        ],
    );
    let check = gw.health.expect("health port");
    let mut clients: Vec<Client> =
        (0..CLIENTS).map(|i| Client::login(gw.tcp, &format!("drain-{i}"))).collect();
    let mut late = TcpStream::connect(gw.tcp).expect("connects before the drain");
    assert!(connects(check));
    assert_eq!(gw.metric("holdfast_gateway_draining"), 0.0);

    let began = Instant::now();
    gw.signal(libc::SIGTERM); // drains by default (`drain.on_sigterm`)
    let unhealthy =
        eventually(SECS, || (gw.get("/healthz") == (503, "draining\n".to_owned())).then_some(()));
    assert!(unhealthy.is_some(), "{:?}", gw.get("/healthz"));
    assert!(eventually(SECS, || (!connects(check)).then_some(())).is_some(), "check port closed");
    assert!(eventually(SECS, || (!connects(gw.tcp)).then_some(())).is_some(), "listener closed");
    assert_eq!(gw.get("/livez").0, 200, "a draining gateway is alive");
    assert_eq!(gw.metric("holdfast_gateway_draining"), 1.0);

    // A HELLO from a connection accepted before the drain: told to go elsewhere.
    late.write_all(&hello_bytes("late")).expect("write HELLO");
    let (frames, _) = read_frames(&mut late, SECS);
    assert!(
        matches!(frames.first(), Some(Frame::AuthFail(f)) if f.code == Code::OVERLOADED),
        "{frames:?}"
    );
    drop(late);

    // Clients are redirected in slot order, about the order they connected: reading them in
    // that order sees each redirect about when it arrives.
    let mut at = Vec::new();
    for c in &mut clients {
        let code = c.expect(SECS, "REDIRECT", |e| match e {
            Event::Redirected { code, .. } => Some(code),
            _ => None,
        });
        assert_eq!(code, Code::SERVER_DRAINING);
        at.push(began.elapsed());
    }
    let first = at.iter().min().copied().unwrap_or_default();
    let last = at.iter().max().copied().unwrap_or_default();
    assert!(first < Duration::from_millis(1500), "the first redirect comes early: {at:?}");
    assert!(last >= Duration::from_millis(1500), "redirects are spread over the window: {at:?}");
    assert_eq!(gw.metric("holdfast_gateway_redirects_total{reason=\"drain\"}"), CLIENTS as f64);
    assert_eq!(gw.metric("holdfast_gateway_admission_refused_total{reason=\"draining\"}"), 1.0);

    drop(clients);
    let status = gw.wait_exit(SECS).expect("exits once empty");
    assert!(status.success(), "{status:?}");
    assert!(began.elapsed() < Duration::from_secs(8), "exited before the deadline");
}

/// `POST /v1/admin/drain` drains too, and a connection that never leaves (no `HELLO`, so no
/// redirect) does not hold the process past `window_ms + grace_ms`.
/// `SIGUSR1` drains too (whatever `drain.on_sigterm` says).
#[test]
fn sigusr1_drains() {
    let gw = GatewayProcess::spawn(BIN, &["drain.on_sigterm=false", "drain.overlap_ms=30000"]);
    // A client held (moving) keeps the drained process up while the test looks.
    let _held = Client::login(gw.tcp, "held");
    gw.signal(libc::SIGUSR1);
    let draining =
        eventually(SECS, || (gw.get("/healthz") == (503, "draining\n".to_owned())).then_some(()));
    assert!(draining.is_some(), "SIGUSR1 began a drain");
}

#[test]
fn admin_drain_ends_at_the_deadline() {
    let mut gw = GatewayProcess::spawn(
        BIN,
        &["drain.window_ms=300", "drain.grace_ms=700", "drain.jitter_ms=0"],
    );
    let mut silent = TcpStream::connect(gw.tcp).expect("connects");
    let began = Instant::now();
    let (status, answer) = gw.post("/v1/admin/drain", json!({}));
    assert_eq!(status, 202, "{answer}");
    assert_eq!((answer["began"].as_bool(), answer["connections"].as_u64()), (Some(true), Some(1)));
    let (status, again) = gw.post("/v1/admin/drain", json!({}));
    assert_eq!((status, again["began"].as_bool()), (202, Some(false)), "{again}");
    let exit = gw.wait_exit(SECS).expect("exits at the deadline");
    assert!(exit.success(), "{exit:?}");
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(900), "waited for the deadline: {took:?}");
    assert!(took < Duration::from_secs(5), "not for the handshake timeout: {took:?}");
    let (_, closed) = read_frames(&mut silent, SECS);
    assert!(closed, "the silent connection was closed");
}

/// Wait for `AUTH_FAIL` on `c`; its code and reason.
fn expect_auth_fail(c: &mut Client) -> (Code, String) {
    c.expect(SECS, "AUTH_FAIL", |e| match e {
        Event::AuthFailed { code, reason, .. } => Some((code, reason)),
        Event::Authenticated(_) => panic!("authenticated; expected a refusal"),
        _ => None,
    })
}

/// Over the node's accept rate a client is told `AUTH_FAIL` `OVERLOADED` (602), which its
/// session retries with backoff; so is a client over its address's handshake rate. Both are
/// counted by reason.
#[test]
fn admission_rates_refuse_with_overloaded() {
    // A burst of 2 above a rate of 1/s: three at once pass, the fourth is refused.
    let gw =
        GatewayProcess::spawn(BIN, &["admission.accepts_per_sec=1", "admission.accept_burst=2"]);
    let _kept: Vec<Client> = (0..3).map(|i| Client::login(gw.tcp, &format!("rate-{i}"))).collect();
    let mut over = Client::connect(gw.tcp, client_config(token("rate-x"), Platform::Linux, "d"));
    let (code, reason) = expect_auth_fail(&mut over);
    assert_eq!(code, Code::OVERLOADED, "{reason}");
    assert!(over.session().reconnect().delay().is_some(), "602 is retried with backoff");
    assert_eq!(gw.metric("holdfast_gateway_admission_refused_total{reason=\"accept_rate\"}"), 1.0);
    assert_eq!(gw.metric("holdfast_gateway_auth_failures_total{reason=\"invalid\"}"), 0.0);
    drop(gw);

    let gw = GatewayProcess::spawn(
        BIN,
        &["admission.per_source_per_sec=1", "admission.per_source_burst=1"],
    );
    let _kept: Vec<Client> = (0..2).map(|i| Client::login(gw.tcp, &format!("src-{i}"))).collect();
    let mut over = Client::connect(gw.tcp, client_config(token("src-x"), Platform::Linux, "d"));
    let (code, reason) = expect_auth_fail(&mut over);
    assert_eq!(code, Code::OVERLOADED);
    assert!(reason.contains("your address"), "{reason}");
    assert_eq!(gw.metric("holdfast_gateway_admission_refused_total{reason=\"source_rate\"}"), 1.0);
}

/// At `admission.max_handshakes` pending connections a new socket is closed at accept;
/// once a pending one authenticates, there is room again.
#[test]
fn handshakes_in_flight_are_bounded() {
    let gw = GatewayProcess::spawn(BIN, &["admission.max_handshakes=2"]);
    let pending: Vec<TcpStream> =
        (0..2).map(|_| TcpStream::connect(gw.tcp).expect("connects")).collect();
    let gauge = "holdfast_gateway_handshakes_in_flight";
    assert_eq!(gw.wait_metric(gauge, 2.0, SECS), 2.0);
    let mut third = TcpStream::connect(gw.tcp).expect("the kernel completes the handshake");
    let (frames, closed) = read_frames(&mut third, SECS);
    assert!(frames.is_empty() && closed, "closed at accept: {frames:?}");
    let refused = "holdfast_gateway_admission_refused_total{reason=\"handshakes_in_flight\"}";
    assert_eq!(gw.metric(refused), 1.0);

    let mut pending = pending.into_iter();
    let (mut first, _second) = (pending.next().expect("two"), pending.next().expect("two"));
    first.write_all(&hello_bytes("pending")).expect("HELLO");
    let (frames, _) = read_frames(&mut first, Duration::from_millis(500));
    assert!(matches!(frames.first(), Some(Frame::AuthOk(_))), "{frames:?}");
    assert_eq!(gw.wait_metric_below(gauge, 1.0, SECS), 1.0);
    let _fourth = Client::login(gw.tcp, "room-again");
}

/// At `listen.max_connections` a new client is answered `REDIRECT` `SERVER_FULL` (404) at
/// once, naming a less loaded gateway of its group that the scheduler's latest answer
/// named; the client follows it and authenticates there.
#[test]
fn a_full_gateway_redirects_new_clients_to_a_less_loaded_one() {
    let scheduler = SchedulerProcess::spawn(&["fleet.report_interval_ms=100", "fleet.ttl_ms=600"]);
    let spawn = |extra: &[&str]| {
        let addrs = format!("scheduler.addrs=[\"{}\"]", scheduler.control);
        let secret = format!("scheduler.secret={SCHEDULER_SECRET}");
        let mut sets = vec![addrs.as_str(), secret.as_str(), "scheduler.report_interval_ms=100"];
        sets.extend_from_slice(extra);
        GatewayProcess::spawn(BIN, &sets)
    };
    let full = spawn(&["node.id=1", "listen.max_connections=2"]);
    let roomy = spawn(&["node.id=2"]);
    let _kept: Vec<Client> =
        (0..2).map(|i| Client::login(full.tcp, &format!("full-{i}"))).collect();
    // Until the scheduler has seen both, the redirect may name nobody ("ask the
    // scheduler"); within a few report intervals it names the other gateway.
    let named = eventually(SECS, || {
        let mut c = Client::connect(full.tcp, client_config(token("late"), Platform::Linux, "d"));
        let (code, reconnect) = c.expect(SECS, "REDIRECT", |e| match e {
            Event::Redirected { code, reconnect, .. } => Some((code, reconnect)),
            Event::Authenticated(_) => panic!("a full gateway authenticated a client"),
            _ => None,
        });
        assert_eq!(code, Code::SERVER_FULL);
        match reconnect {
            holdfast_codec::client::Reconnect::After { addresses, .. } if !addresses.is_empty() => {
                Some(addresses)
            }
            _ => None,
        }
    })
    .unwrap_or_else(|| {
        panic!("the full gateway names no other gateway: {}", scheduler.control_get("/v1/gateways"))
    });
    assert_eq!(named, vec![roomy.tcp.to_string()]);
    assert!(full.metric("holdfast_gateway_rejected_max_connections_total") >= 1.0);
    let target: SocketAddr = named[0].parse().expect("host:port");
    let _moved = Client::login(target, "late");
    assert_eq!(full.metric("holdfast_gateway_connections_established"), 2.0);
}

/// A user and device that logs in more than `admission.flap_max_logins` times within the
/// window is refused `AUTH_FAIL` `THROTTLED` (603) for `flap_ban_secs`; another device of
/// the same user is not; after the ban (2 s here, checked with a 2 s margin) it is let in.
#[test]
fn a_flapping_client_is_refused_for_the_ban_time() {
    let gw = GatewayProcess::spawn(
        BIN,
        &[
            "admission.flap_max_logins=3",
            "admission.flap_window_secs=60",
            "admission.flap_ban_secs=2",
        ],
    );
    let login = |device: &str| {
        let mut c =
            Client::connect(gw.tcp, client_config(token("flappy"), Platform::Linux, device));
        c.expect(SECS, "an answer to HELLO", |e| match e {
            Event::Authenticated(_) => Some(Ok(())),
            Event::AuthFailed { code, reconnect, .. } => Some(Err((code, reconnect))),
            _ => None,
        })
    };
    for i in 0..3 {
        assert_eq!(login("phone"), Ok(()), "login {i} within the limit");
    }
    let Err((code, reconnect)) = login("phone") else { panic!("the 4th login in a minute passed") };
    assert_eq!(code, Code::THROTTLED);
    assert!(reconnect.delay().is_some_and(|d| d >= holdfast_codec::client::THROTTLED_MIN_DELAY));
    assert_eq!(login("tablet"), Ok(()), "another device of the same user is not flapping");
    assert_eq!(gw.metric("holdfast_gateway_admission_refused_total{reason=\"flapping\"}"), 1.0);
    let banned_at = Instant::now();
    let back = eventually(Duration::from_secs(4), || login("phone").ok());
    assert!(back.is_some(), "still refused {:?} after a 2 s ban", banned_at.elapsed());
}
