//! The tool against real processes: a local cluster of real gateway and scheduler
//! binaries, launched by the tool itself, driven through the scenarios; the result file
//! is checked for exact counts, the merged histograms against the workers', the report in
//! headless Chromium, and the cluster launcher for leftover processes.
//!
//! The gateway, scheduler and status binaries are taken from the target directory next to
//! this test (`cargo test --workspace` builds them; alone, run
//! `cargo build -p holdfast-gateway -p holdfast-scheduler -p holdfast-status` first).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn bin_dir() -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    for bin in ["holdfast-gateway", "holdfast-scheduler", "holdfast-status"] {
        assert!(
            dir.join(bin).exists(),
            "{} is missing: run `cargo build -p holdfast-gateway -p holdfast-scheduler -p holdfast-status` first",
            dir.join(bin).display()
        );
    }
    dir
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hf-lt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn loadtest() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_holdfast-loadtest"));
    c.env_remove("HOLDFAST_JWT_SECRET");
    c
}

/// Run `holdfast-loadtest run ARGS --out DIR` (ARGS split at whitespace); the parsed
/// `result.json`.
fn run(dir: &Path, args: &str) -> Value {
    let out = loadtest()
        .arg("run")
        .args(args.split_whitespace())
        .args(["--no-sysctl", "--quiet", "--out", dir.to_str().unwrap()])
        .args(["--bin-dir", bin_dir().to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Summary"), "{stdout}");
    serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap()
}

fn phase<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no phase {name}: {r}"))
}

/// Whether `pid` is gone (no such process, or a zombie nobody reaped yet).
fn gone(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

fn wait_gone(pids: &[u64], within: Duration) -> Vec<u64> {
    let deadline = Instant::now() + within;
    loop {
        let left: Vec<u64> = pids.iter().copied().filter(|p| !gone(*p)).collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Dump the DOM of `html` with headless Chromium.
fn chromium_dom(html: &Path) -> String {
    let profile = temp_dir("chromium-profile");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=2000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", html.display()))
        .stdin(Stdio::null())
        .output()
        .expect(
            "chromium is needed for this test: apt-get install chromium (scripts/test installs it)",
        );
    let _ = std::fs::remove_dir_all(profile);
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn cluster_run_counts_every_push_merges_histograms_exactly_and_renders_its_report() {
    let dir = temp_dir("cluster-run");
    let r = run(
        &dir,
        "--cluster 3 --with-scheduler --status-nodes 2 --clients 300 --per-worker 150 --rate 1000 \
         --heartbeat-ms 1000 --scenarios hold,push,broadcast,refresh,kick,drain,storm --hold-secs 2 \
         --push-rate 200 --push-secs 2 --broadcasts 2 --refresh-secs 2 \
         --storm-timeout-secs 30 --backoff-cap-ms 2000 --kick-users 5 --kick-code 302 \
         --gateway-set presence.lease_ttl_ms=1500 --gateway-set presence.renew_ms=500",
    );
    // Two workers, every client connected through the scheduler (3 gateways, which keep
    // presence in a 2-node status ring and route pushes and kicks to each other).
    assert_eq!(r["workers"].as_array().unwrap().len(), 2);
    assert_eq!(phase(&r, "ramp")["figures"]["established"], 300, "{r}");
    assert!(r["totals"]["dispatch_requests"].as_u64().unwrap() >= 300);
    // Heartbeats at the granted 1 s interval.
    let hold = phase(&r, "hold");
    let pongs = hold["figures"]["pongs"].as_u64().unwrap();
    assert!((300..=1200).contains(&pongs), "{hold}");
    assert!(hold["figures"]["gateway_cpu_us_per_heartbeat"].as_f64().unwrap() > 0.0);
    assert!(hold["figures"]["tool_bytes_per_conn"].as_f64().is_some());
    // Every unicast push the API delivered was received, and timed; each went through a
    // random gateway, so most were routed to another one.
    let push = phase(&r, "push");
    let f = &push["figures"];
    assert_eq!(f["api_calls"], 400, "{push}");
    assert_eq!(f["delivered"], 400, "{push}");
    assert_eq!(f["received"], 400, "{push}");
    assert_eq!(push["latency"]["push"]["count"], 400, "{push}");
    // Each broadcast, one API call, reached all 300 on every gateway, but for clients the
    // scheduler was moving just then (a rebalance's REDIRECT, followed break-before-make:
    // not connected when the push was taken): every client the gateways wrote to got it.
    let b = phase(&r, "broadcast");
    let expected = b["figures"]["expected"].as_u64().unwrap();
    let moved = b["counters"]["redirected"].as_u64().unwrap();
    assert!(expected <= 600 && expected + moved >= 600, "{b}");
    assert_eq!(b["figures"]["received"], expected, "{b}");
    assert_eq!(b["figures"]["complete"], 2, "{b}");
    // Every client refreshed its token once.
    let rf = phase(&r, "refresh");
    assert_eq!(rf["figures"]["sent"], 300, "{rf}");
    assert_eq!(rf["figures"]["ok"], 300, "{rf}");
    // Kick 302 (banned): the 5 kicked clients stay away, as the session advises.
    let k = phase(&r, "kick");
    assert_eq!(k["figures"]["kicked_by_api"], 5, "{k}");
    assert_eq!(k["figures"]["kicks_received"], 5, "{k}");
    assert_eq!(k["figures"]["stayed_away"], 5, "{k}");
    assert_eq!(k["figures"]["established_after"], 295, "{k}");
    // Drain: one gateway stopped with SIGTERM redirects its clients, all back elsewhere.
    let d = phase(&r, "drain");
    let stopped = d["figures"]["stopped_gateway_clients"].as_u64().unwrap();
    assert!(stopped > 0, "{d}");
    assert!(d["figures"]["redirected"].as_u64().unwrap() >= stopped, "{d}");
    assert_eq!(d["figures"]["all_back"], true, "{d}");
    assert_eq!(d["figures"]["established_after"], 295, "{d}");
    assert_eq!(d["figures"]["lost"], 0, "{d}");
    // Storm: another gateway killed, its clients all back on the last one.
    let s = phase(&r, "storm");
    let killed = s["figures"]["stopped_gateway_clients"].as_u64().unwrap();
    assert!(killed > 0, "{s}");
    assert_eq!(s["figures"]["all_back"], true, "{s}");
    assert!(s["figures"]["reconnects"].as_u64().unwrap() >= killed, "{s}");
    assert_eq!(s["figures"]["established_after"], 295, "{s}");
    assert!(s["figures"]["peak_dispatch_per_sec"].as_f64().unwrap() > 0.0, "{s}");
    assert_eq!(s["figures"]["lost"], 0, "{s}");
    // Merged histogram counts equal the sum of the workers'.
    for (name, merged) in r["merged_histogram_counts"].as_object().unwrap() {
        let sum: u64 = r["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["histogram_counts"][name].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(merged.as_u64().unwrap(), sum, "{name}");
    }
    assert!(r["merged_histogram_counts"]["push"].as_u64().unwrap() >= 400);
    // Every process the run started is gone.
    let mut pids: Vec<u64> =
        r["workers"].as_array().unwrap().iter().map(|w| w["pid"].as_u64().unwrap()).collect();
    pids.extend(r["gateways"].as_array().unwrap().iter().map(|g| g["pid"].as_u64().unwrap()));
    assert_eq!(wait_gone(&pids, Duration::from_secs(5)), Vec::<u64>::new());
    // The report renders in a browser: every chart is an SVG with drawn shapes.
    let dom = chromium_dom(&dir.join("report.html"));
    for id in ["chart-connections", "chart-latency", "chart-memory", "chart-cpu", "chart-errors"] {
        let at = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("{id} missing"));
        let fig = &dom[at..at + dom[at..].find("</figure>").unwrap()];
        assert!(fig.contains("<svg"), "{id}");
        let shapes = fig.matches("<polyline").count()
            + fig.matches("<path").count()
            + fig.matches("<rect").count();
        assert!(shapes >= 3, "{id}: {shapes} shapes");
    }
    // Lines of data, not just axes: the connection chart has one polyline per series.
    let at = dom.find("id=\"chart-connections\"").unwrap();
    assert!(dom[at..].matches("<polyline").count() >= 3);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn flood_heartbeat_cpu_and_kick_scenarios_report_their_figures() {
    let dir = temp_dir("flood");
    let r = run(
        &dir,
        "--cluster 1 --clients 220 --per-worker 110 --heartbeat-ms 1000 \
         --scenarios heartbeat-cpu,flood,kick --hold-secs 2 --settle-secs 1 --push-rate 100 \
         --push-secs 2 --flood-workers 1 --flood-every 11 --flood-rate 2000 --kick-users 10 \
         --kick-code 303",
    );
    let hb = phase(&r, "heartbeat-cpu");
    assert!(hb["figures"]["pongs"].as_u64().unwrap() >= 220, "{hb}");
    assert!(hb["figures"]["gateway_cpu_us_per_heartbeat"].as_f64().unwrap() > 0.0, "{hb}");
    assert!(hb["figures"]["tool_cpu_us_per_heartbeat"].as_f64().unwrap() > 0.0, "{hb}");
    let off = phase(&r, "flood-off");
    assert_eq!(off["figures"]["lost"], 0, "{off}");
    let on = phase(&r, "flood-on");
    let f = &on["figures"];
    // Flooders only in the second worker (110 / 11); the pushes came from the first.
    assert_eq!(f["flooding_clients"], 10, "{on}");
    // 10 flooders at 2,000 PINGs/s for 2 s, answered (the gateway's limit was raised).
    assert!(f["flood_pongs"].as_u64().unwrap() > 10_000, "{on}");
    assert_eq!(f["closed_by_gateway"], 0, "{on}");
    assert_eq!(f["lost"], 0, "{on}");
    assert!(f["p99_ratio"].as_f64().unwrap() > 0.0, "{on}");
    assert!(r["figures"]["flood_p99_ratio"].as_f64().is_some());
    // Kick 303 (token expired): the 10 kicked clients come back with a new token.
    let k = phase(&r, "kick");
    assert_eq!(k["figures"]["kicks_received"], 10, "{k}");
    assert_eq!(k["figures"]["reconnected_with_new_token"], 10, "{k}");
    assert_eq!(k["figures"]["complete"], true, "{k}");
    assert_eq!(k["figures"]["established_after"], 220, "{k}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn room_scenarios_reach_every_member_across_gateways_on_a_status_ring() {
    let dir = temp_dir("rooms");
    // 300 clients over 2 gateways sharing presence on a 3-node ring, in 10 rooms of 30.
    let r = run(
        &dir,
        "--cluster 2 --status-nodes 3 --clients 300 --per-worker 150 --rooms 10 \
         --scenarios room-push,room-broadcast --push-rate 50 --push-secs 2 --broadcasts 2",
    );
    let p = phase(&r, "room-push");
    let f = &p["figures"];
    assert_eq!(f["rooms"], 10, "{p}");
    let calls = f["api_calls"].as_u64().unwrap();
    assert!(calls >= 50, "{p}");
    // Each push reaches its room's 30 members, on both gateways, and every one arrives.
    assert_eq!(f["delivered"].as_u64().unwrap(), 30 * calls, "{p}");
    assert_eq!(f["received"], f["delivered"], "{p}");
    assert_eq!(f["lost"], 0, "{p}");
    let b = phase(&r, "room-broadcast");
    // Two pushes to lt/0 (30 members) through one gateway: forwarded to the other.
    assert_eq!(b["figures"]["expected"], 60, "{b}");
    assert_eq!(b["figures"]["received"], 60, "{b}");
    assert_eq!(b["figures"]["complete"], 2, "{b}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_fleet_restart_brings_every_client_back_through_the_scheduler() {
    let dir = temp_dir("restart");
    let r = run(
        &dir,
        "--cluster 2 --with-scheduler --clients 300 --per-worker 150 --scenarios fleet-restart \
         --backoff-base-ms 200 --backoff-cap-ms 2000 --storm-timeout-secs 60",
    );
    let p = phase(&r, "fleet-restart");
    let f = &p["figures"];
    assert_eq!(f["gateways"], 2, "{p}");
    assert_eq!(f["clients_before"], 300, "{p}");
    assert_eq!(f["all_back"], true, "{p}");
    assert_eq!(f["established_after"], 300, "{p}");
    assert!(f["reconnects"].as_u64().unwrap() >= 300, "every client reconnected: {p}");
    assert!(f["seconds_until_all_back"].as_f64().unwrap() > 0.0, "{p}");
    // Restarted on the same addresses: a second log per gateway.
    assert!(dir.join("logs").join("gw-1.2.log").exists(), "no log of the second start");
    let _ = std::fs::remove_dir_all(dir);
}

/// Start `holdfast-loadtest cluster`, wait for its ready line; its child pids.
fn start_cluster(dir: &Path) -> (std::process::Child, Vec<u64>) {
    let mut child = loadtest()
        .args(["cluster", "--gateways", "2", "--scheduler", "--no-sysctl"])
        .args(["--log-dir", dir.to_str().unwrap(), "--bin-dir", bin_dir().to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut pids = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "cluster not ready in time");
        let line = lines.next().expect("cluster exited before it was ready").unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(i) = words.iter().position(|w| *w == "pid") {
            pids.push(words[i + 1].parse().unwrap());
        }
        if line.starts_with("cluster ready") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    (child, pids)
}

#[test]
fn cluster_launcher_leaves_no_process_behind_on_ctrl_c_or_kill_9() {
    let dir = temp_dir("cluster");
    // Ctrl-C: an orderly stop of everything.
    let (mut child, pids) = start_cluster(&dir);
    assert_eq!(pids.len(), 3, "two gateways and a scheduler");
    assert!(pids.iter().all(|p| !gone(*p)));
    // SAFETY: signalling a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "launcher did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    assert_eq!(wait_gone(&pids, Duration::from_secs(5)), Vec::<u64>::new());
    // kill -9 of the launcher: the kernel takes its children down with it.
    let (mut child, pids) = start_cluster(&dir);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(wait_gone(&pids, Duration::from_secs(5)), Vec::<u64>::new());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn ctrl_c_during_a_run_stops_everything_and_keeps_what_was_measured() {
    let dir = temp_dir("interrupt");
    let mut child = loadtest()
        .args(
            "run --cluster 2 --clients 200 --scenarios hold --hold-secs 600 --no-sysctl".split(' '),
        )
        .args(["--out", dir.to_str().unwrap(), "--bin-dir", bin_dir().to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut gateway_pids: Vec<u64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the hold did not start");
        let line = lines.next().expect("run ended early").unwrap();
        if line.starts_with("cluster: gw-") {
            let words: Vec<&str> = line.split_whitespace().collect();
            gateway_pids.push(words[3].parse().unwrap());
        }
        if line.contains("hold: holding") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    // SAFETY: signalling a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "run did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    }
    let r: Value =
        serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
    assert_eq!(r["figures"]["interrupted"], true);
    assert_eq!(phase(&r, "ramp")["figures"]["established"], 200);
    let mut pids: Vec<u64> =
        r["workers"].as_array().unwrap().iter().map(|w| w["pid"].as_u64().unwrap()).collect();
    assert_eq!(gateway_pids.len(), 2);
    pids.extend(gateway_pids);
    assert_eq!(wait_gone(&pids, Duration::from_secs(5)), Vec::<u64>::new());
    let _ = std::fs::remove_dir_all(dir);
}

/// The figures every transport run must show: all `clients` connected, heartbeating, every
/// push of the push phase received, every client of the killed gateway back, and at most
/// `storm_loss` pushes the killed gateway had accepted but not sent.
fn assert_transport_run(r: &Value, transport: &str, clients: u64, pushes: u64, storm_loss: u64) {
    assert_eq!(r["figures"]["transport"], transport, "{r}");
    assert_eq!(phase(r, "ramp")["figures"]["established"], clients, "{r}");
    let hold = phase(r, "hold");
    assert!(hold["figures"]["pongs"].as_u64().unwrap() >= clients, "{hold}");
    assert!(hold["figures"]["tool_bytes_per_conn"].as_f64().is_some(), "{hold}");
    let push = phase(r, "push");
    let f = &push["figures"];
    assert_eq!(f["api_calls"], pushes, "{push}");
    assert_eq!(f["delivered"], pushes, "{push}");
    assert_eq!(f["received"], pushes, "{push}");
    assert_eq!(push["latency"]["push"]["count"], pushes, "{push}");
    let s = phase(r, "storm");
    let killed = s["figures"]["stopped_gateway_clients"].as_u64().unwrap();
    assert!(killed > 0, "{s}");
    assert_eq!(s["figures"]["all_back"], true, "{s}");
    assert!(s["figures"]["reconnects"].as_u64().unwrap() >= killed, "{s}");
    assert_eq!(s["figures"]["established_after"], clients, "{s}");
    assert!(s["figures"]["lost"].as_u64().unwrap() <= storm_loss, "{s}");
    assert_eq!(r["totals"]["tls_failed"], 0, "{r}");
    let mut pids: Vec<u64> =
        r["workers"].as_array().unwrap().iter().map(|w| w["pid"].as_u64().unwrap()).collect();
    pids.extend(r["gateways"].as_array().unwrap().iter().map(|g| g["pid"].as_u64().unwrap()));
    assert_eq!(wait_gone(&pids, Duration::from_secs(5)), Vec::<u64>::new());
}

#[test]
fn a_tls_run_ramps_holds_pushes_and_reconnects_over_tls_to_fixed_gateways() {
    let dir = temp_dir("tls");
    // Two gateways with a TLS listener and a certificate the launcher generated; clients
    // trust its CA and connect to the TLS listeners by fixed address (no scheduler).
    let r = run(
        &dir,
        "--cluster 2 --transport tls --clients 300 --per-worker 150 --rate 300 \
         --max-pending 64 --heartbeat-ms 1000 --scenarios hold,push,storm --hold-secs 2 \
         --push-rate 100 --push-secs 2 --backoff-cap-ms 2000 --storm-timeout-secs 60",
    );
    // Over TLS as over TCP, what the gateway wrote before its kill is in the kernel, which
    // sends it after the process is gone: nothing is lost.
    assert_transport_run(&r, "tls", 300, 200, 0);
    assert!(dir.join("certs").join("ca.pem").exists());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_quic_run_ramps_holds_pushes_and_reconnects_over_quic_through_the_scheduler() {
    let dir = temp_dir("quic");
    // Two gateways with QUIC on, advertising `quic://` endpoints to the scheduler; clients
    // ask it for `transports=quic`. A killed gateway's QUIC clients notice by the session's
    // idle timeout (no FIN over UDP), then come back through the scheduler. Gentler than
    // the TLS run (2 s heartbeats, 200 clients): the gateway's UDP socket keeps the kernel's
    // default receive buffer, and a debug-built gateway starved of CPU drops packets there.
    let r = run(
        &dir,
        "--cluster 2 --with-scheduler --transport quic --clients 200 --per-worker 100 \
         --rate 200 --max-pending 32 --heartbeat-ms 2000 --scenarios hold,push,storm \
         --hold-secs 4 --push-rate 50 --push-secs 2 --backoff-cap-ms 2000 \
         --storm-timeout-secs 60",
    );
    // A push the killed gateway had handed to quinn but quinn had not sent yet dies with
    // the process (QUIC's buffers are in user space): a few may be lost at the kill.
    assert_transport_run(&r, "quic", 200, 100, 3);
    assert!(r["totals"]["dispatch_requests"].as_u64().unwrap() >= 200, "{r}");
    let _ = std::fs::remove_dir_all(dir);
}
