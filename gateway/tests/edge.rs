//! The gateway's edge with real processes: health as L4 balancers see it (`/healthz`, the
//! TCP check port), readiness behind scheduler registration, graceful drain, admission
//! limits.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use holdfast_tests::{GatewayProcess, SCHEDULER_SECRET, SchedulerProcess, eventually, free_port};

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
