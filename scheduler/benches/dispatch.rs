//! Dispatch benchmark, in one run (see `docs/BENCHMARKS.md` § Scheduler):
//!
//! 1. **Decision time** of [`decide`] on views of 10, 100 and 1,000 gateways (the pure
//!    function, no HTTP): p50, p99, p99.9 over many users.
//! 2. **HTTP throughput**, side by side with the same load tool: a bare axum handler that
//!    returns a fixed JSON body, and a real `holdfast-scheduler` process answering
//!    `GET /v1/dispatch` with 100 (then 1,000) registered gateways. Each server gets one
//!    runtime thread; the load tool (keep-alive HTTP/1.1 connections on one thread, written
//!    against the socket so that it costs as little as possible) runs in this process. Runs
//!    are interleaved (bare, scheduler, bare, scheduler, ...) and the median is reported.
//!
//! Run with `scheduler/scripts/bench.sh` or
//! `cargo bench -p holdfast-scheduler --bench dispatch -- [SECONDS] [CONNECTIONS] [ROUNDS]`.

#![allow(missing_docs)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use holdfast_scheduler::decide::{Request, decide};
use holdfast_scheduler::fleet::Fleet;
use holdfast_scheduler::model::{Dims, Endpoint, Transport};
use holdfast_scheduler::protocol::{
    REPORT_PATH, Registration, Report, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign_report,
};
use holdfast_scheduler::rules::Rules;
use holdfast_scheduler::view::View;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "bench-secret-of-enough-length";
const REGIONS: [&str; 4] = ["r1", "r2", "r3", "r4"];

fn report(i: usize) -> Report {
    let region = REGIONS[i % REGIONS.len()];
    Report {
        gateway: Registration {
            id: format!("gw-{i}"),
            generation: 1,
            region: region.into(),
            zone: format!("{region}-z{}", (i / REGIONS.len()) % 3),
            group: "default".into(),
            tags: vec![],
            endpoints: vec![Endpoint {
                transport: Transport::Tcp,
                addr: format!("10.0.{}.{}:7100", i / 250, i % 250),
            }],
            capacity: Dims { connections: 100_000.0, cpu: 2.0, ..Dims::default() },
        },
        seq: 1,
        // Spread loads so that every zone (cold, balanced, hot) is present.
        load: Dims {
            connections: 20_000.0 + ((i * 7919) % 60_000) as f64,
            cpu: 0.2 + (i % 10) as f64 * 0.1,
            ..Dims::default()
        },
        draining: false,
        pending_shed: 0,
        coordinator: None,
    }
}

fn decision_times() {
    println!("## decision time (pure decide, one thread)");
    println!("| gateways | ring points | p50 | p99 | p99.9 | max |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let users: Vec<String> = (0..200_000).map(|i| format!("user-{i}")).collect();
    for n in [10, 100, 1_000] {
        let mut fleet = Fleet::new();
        for i in 0..n {
            fleet.apply(report(i), 0).expect("valid report");
        }
        let view = View::build(Arc::new(Rules::default()), &fleet, 0, u64::MAX / 2);
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        // Warm up, then time each decision; regions rotate so every tier is exercised.
        for u in users.iter().take(20_000) {
            std::hint::black_box(decide(
                &view,
                &Request { uid: u, region: Some("r1"), ..Request::default() },
                1,
            ));
        }
        for (k, u) in users.iter().enumerate() {
            let req = Request {
                uid: u,
                region: Some(REGIONS[k % 4]),
                zone: Some("r1-z1"),
                ..Request::default()
            };
            let t = Instant::now();
            let d = decide(&view, &req, 1);
            let ns = t.elapsed().as_nanos() as u64;
            std::hint::black_box(d);
            h.record(ns.max(1)).expect("in range");
        }
        let points = n * 32;
        println!(
            "| {n} | {points} | {:.2} µs | {:.2} µs | {:.2} µs | {:.1} µs |",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.value_at_quantile(0.999) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        );
    }
}

/// A server process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_scheduler() -> (Proc, SocketAddr, SocketAddr) {
    let bin = env!("CARGO_BIN_EXE_holdfast-scheduler");
    let mut child = Command::new(bin)
        .args(["--set", "dispatch.addr=127.0.0.1:0", "--set", "control.addr=127.0.0.1:0"])
        .args(["--set", "instance.workers=1", "--set", "dispatch.per_source_rate=100000000"])
        .args([
            "--set",
            "dispatch.per_source_burst=100000000",
            "--set",
            "dispatch.global_rate=100000000",
        ])
        .args(["--set", "fleet.ttl_ms=3600000", "--set", "fleet.forget_ms=3600000"])
        .env("HOLDFAST_SCHEDULER_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("scheduler starts");
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("ready line");
    let field = |name: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|p| p.strip_prefix(name))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    let (d, c) = (field("dispatch="), field("control="));
    (Proc(child), d, c)
}

fn start_bare() -> (Proc, SocketAddr) {
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .arg("--bare-server")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("bare server starts");
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("ready line");
    let addr =
        line.trim().strip_prefix("bare ready: ").and_then(|a| a.parse().ok()).expect("address");
    (Proc(child), addr)
}

/// The baseline: a bare axum handler returning a fixed JSON body about the size of a
/// dispatch answer, on one runtime thread.
fn bare_server() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        const BODY: &str = r#"{"endpoints":[{"gateway":"gw-1","transport":"tcp","addr":"10.0.0.1:7100","region":"r1","zone":"r1-z1"},{"gateway":"gw-2","transport":"tcp","addr":"10.0.0.2:7100","region":"r1","zone":"r1-z1"},{"gateway":"gw-3","transport":"tcp","addr":"10.0.0.3:7100","region":"r1","zone":"r1-z2"}],"ttl_secs":300,"heartbeat_ms":30000,"backoff":{"initial_ms":500,"max_ms":20000},"group":"default","region":"r1","zone":"r1-z1","instance":"127.0.0.1:7380"}"#;
        let app = axum::Router::new().route(
            "/v1/dispatch",
            axum::routing::get(|| async { ([(axum::http::header::CONTENT_TYPE, "application/json")], BODY) }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("bare ready: {}", listener.local_addr().expect("addr"));
        axum::serve(listener, app).await.expect("serve");
    });
}

async fn register(control: SocketAddr, n: usize) {
    let client = reqwest::Client::new();
    for i in 0..n {
        let body = serde_json::to_vec(&report(i)).expect("json");
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        let r = client
            .post(format!("http://{control}{REPORT_PATH}"))
            .header(TIMESTAMP_HEADER, ts.to_string())
            .header(SIGNATURE_HEADER, sign_report(SECRET.as_bytes(), ts, &body))
            .body(body)
            .send()
            .await
            .expect("report answered");
        assert!(r.status().is_success(), "report refused: {}", r.status());
    }
}

/// One keep-alive HTTP/1.1 connection sending GETs back to back until `stop`.
async fn conn_loop(
    addr: SocketAddr,
    paths: Arc<Vec<String>>,
    offset: usize,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    lat: Arc<std::sync::Mutex<Histogram<u64>>>,
) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut buf = vec![0u8; 16 * 1024];
    let mut local = Histogram::<u64>::new(3).expect("histogram");
    let mut i = offset;
    while !stop.load(Ordering::Relaxed) {
        let req = format!("GET {} HTTP/1.1\r\nHost: bench\r\n\r\n", paths[i % paths.len()]);
        i += 1;
        let t = Instant::now();
        s.write_all(req.as_bytes()).await.expect("write");
        // Read the head, then Content-Length bytes of body.
        let mut have = 0;
        let (head_end, len) = loop {
            let n = s.read(&mut buf[have..]).await.expect("read");
            assert!(n > 0, "server closed");
            have += n;
            if let Some(p) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&buf[..p]).expect("ascii head");
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().expect("length"))
                    })
                    .expect("content-length");
                break (p + 4, len);
            }
        };
        while have < head_end + len {
            let n = s.read(&mut buf[have..]).await.expect("read");
            assert!(n > 0, "server closed");
            have += n;
        }
        local.record(t.elapsed().as_micros() as u64 + 1).expect("in range");
        ok.fetch_add(1, Ordering::Relaxed);
    }
    lat.lock().expect("lat").add(&local).expect("merge");
}

/// CPU time a process has used (user + system), in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) start after ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12) // utime and stime, fields 14 and 15 of stat
}

/// Load `addr` (served by process `pid`) with `conns` connections for `secs`: requests per
/// second, the server's CPU µs per request, and latency.
fn load(
    addr: SocketAddr,
    pid: u32,
    paths: Arc<Vec<String>>,
    conns: usize,
    secs: f64,
) -> (f64, f64, Histogram<u64>) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let lat = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3).expect("histogram")));
        let tasks: Vec<_> = (0..conns)
            .map(|k| {
                tokio::spawn(conn_loop(
                    addr,
                    paths.clone(),
                    k * 7919,
                    stop.clone(),
                    ok.clone(),
                    lat.clone(),
                ))
            })
            .collect();
        // One second of warm-up, then the measured window.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let start_count = ok.load(Ordering::Relaxed);
        let cpu0 = cpu_ticks(pid);
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let done = ok.load(Ordering::Relaxed) - start_count;
        let cpu_us = (cpu_ticks(pid) - cpu0) as f64 * 10_000.0 / done.max(1) as f64;
        let rate = done as f64 / t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        let h = lat.lock().expect("lat").clone();
        (rate, cpu_us, h)
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn throughput(secs: f64, conns: usize, rounds: usize) {
    println!();
    println!(
        "## HTTP throughput ({conns} keep-alive connections, {secs} s per run, {rounds} interleaved runs each)"
    );
    println!(
        "| server | gateways | runs (req/s) | median req/s | ratio to bare | server CPU per request (median) | CPU ratio | p50 | p99 |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|");
    let (bare_proc, bare) = start_bare();
    let bare_pid = bare_proc.0.id();
    let bare_paths = Arc::new(vec!["/v1/dispatch?uid=x".to_owned()]);
    let user_paths: Arc<Vec<String>> = Arc::new(
        (0..10_000)
            .map(|i| format!("/v1/dispatch?uid=user-{i}&region={}&zone=r1-z1", REGIONS[i % 4]))
            .collect(),
    );
    for gateways in [100, 1_000] {
        let (sched_proc, dispatch, control) = start_scheduler();
        let sched_pid = sched_proc.0.id();
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(register(control, gateways));
        std::thread::sleep(Duration::from_millis(300)); // one view refresh
        let (mut b, mut s, mut bc, mut sc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut bh = Histogram::<u64>::new(3).expect("histogram");
        let mut sh = Histogram::<u64>::new(3).expect("histogram");
        for _ in 0..rounds {
            let (r, c, h) = load(bare, bare_pid, bare_paths.clone(), conns, secs);
            b.push(r);
            bc.push(c);
            bh.add(&h).expect("merge");
            let (r, c, h) = load(dispatch, sched_pid, user_paths.clone(), conns, secs);
            s.push(r);
            sc.push(c);
            sh.add(&h).expect("merge");
        }
        let (mb, ms) = (median(b.clone()), median(s.clone()));
        let (mbc, msc) = (median(bc), median(sc));
        let fmt = |v: &[f64]| v.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
        println!(
            "| bare axum, fixed JSON | - | {} | {mb:.0} | 1.00 | {mbc:.1} µs | 1.00 | {} µs | {} µs |",
            fmt(&b),
            bh.value_at_quantile(0.5),
            bh.value_at_quantile(0.99)
        );
        println!(
            "| holdfast-scheduler /v1/dispatch | {gateways} | {} | {ms:.0} | {:.2} | {msc:.1} µs | {:.2} | {} µs | {} µs |",
            fmt(&s),
            ms / mb,
            msc / mbc,
            sh.value_at_quantile(0.5),
            sh.value_at_quantile(0.99)
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.first().map(String::as_str) == Some("--bare-server") {
        bare_server();
        return;
    }
    let secs: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(5.0);
    let conns: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(32);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    decision_times();
    throughput(secs, conns, rounds);
}
