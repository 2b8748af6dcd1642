//! Test support: real `holdfast-scheduler` processes on loopback ports chosen by the kernel,
//! simulated gateways that report through the real agent, and HTTP helpers. Every process is
//! killed and reaped on drop; every wait is bounded.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use holdfast_scheduler::agent::{Agent, AgentConfig, GatewayHooks, LoadSample};
use holdfast_scheduler::hash::hash_parts;
use holdfast_scheduler::model::{Dims, Endpoint, Transport};
use holdfast_scheduler::protocol::{Registration, ShedOrder};

pub const BIN: &str = env!("CARGO_BIN_EXE_holdfast-scheduler");
pub const SECRET: &str = "test-secret-of-enough-length";

/// A running scheduler process.
pub struct Scheduler {
    child: Child,
    pub dispatch: SocketAddr,
    pub control: SocketAddr,
    pub instance: String,
}

impl Scheduler {
    /// Start with fast test timings, the test secret and the given overrides.
    pub fn spawn(sets: &[&str]) -> Scheduler {
        let mut all = vec![
            "dispatch.addr=127.0.0.1:0",
            "control.addr=127.0.0.1:0",
            "instance.workers=2",
            "fleet.report_interval_ms=100",
            "fleet.ttl_ms=600",
            "fleet.refresh_ms=20",
            "rebalance.interval_ms=100",
            "rules.reload_ms=50",
        ];
        all.extend_from_slice(sets);
        Scheduler::spawn_raw(&all, &[("HOLDFAST_SCHEDULER_SECRET", SECRET)])
            .expect("scheduler starts")
    }

    /// Start with exactly these overrides and environment; the ready line or the exit text.
    pub fn spawn_raw(sets: &[&str], env: &[(&str, &str)]) -> Result<Scheduler, String> {
        let mut cmd = Command::new(BIN);
        for s in sets {
            cmd.arg("--set").arg(s);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env("RUST_LOG", std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().map_err(|e| format!("spawn {BIN}: {e}"))?;
        let stdout = child.stdout.take().ok_or("stdout is piped")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("holdfast-scheduler ready: ") {
                    let _ = tx.send(rest.to_owned());
                }
            }
        });
        let Ok(ready) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            let status = child.wait().map_err(|e| e.to_string())?;
            return Err(format!("no ready line within 30 s ({status})"));
        };
        let field = |name: &str| {
            ready.split_whitespace().find_map(|p| p.strip_prefix(name)).map(str::to_owned)
        };
        let (Some(d), Some(c), Some(i)) =
            (field("dispatch="), field("control="), field("instance="))
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("bad ready line: {ready}"));
        };
        Ok(Scheduler {
            child,
            dispatch: d.parse().map_err(|e| format!("{e}"))?,
            control: c.parse().map_err(|e| format!("{e}"))?,
            instance: i,
        })
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("holdfast-sched-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    pub fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.0.join(file);
        // Write then rename, so a reader never sees half a file.
        let tmp = self.0.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client")
}

/// GET a URL: status, headers, JSON body (Null if none).
pub async fn get_json(
    c: &reqwest::Client,
    url: &str,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let resp = c.get(url).send().await.expect("answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, headers, body)
}

/// Ask `s` to dispatch `query`: status and body.
pub async fn dispatch(c: &reqwest::Client, s: &Scheduler, query: &str) -> (u16, serde_json::Value) {
    let (status, _, body) =
        get_json(c, &format!("http://{}/v1/dispatch?{query}", s.dispatch)).await;
    (status, body)
}

/// The gateway ids of a dispatch answer, primary first.
pub fn gateways_of(body: &serde_json::Value) -> Vec<String> {
    body["endpoints"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["gateway"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// The value of one metric sample on `s` (0 if absent).
pub async fn metric(c: &reqwest::Client, s: &Scheduler, sample: &str) -> f64 {
    let text = c
        .get(format!("http://{}/metrics", s.control))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Poll `check` every 20 ms until it holds or `timeout` passes; whether it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A registration for a simulated gateway.
pub fn registration(id: &str, group: &str, region: &str, zone: &str, cap: f64) -> Registration {
    Registration {
        id: id.into(),
        generation: 1,
        region: region.into(),
        zone: zone.into(),
        group: group.into(),
        tags: vec!["sim".into()],
        endpoints: vec![Endpoint {
            transport: Transport::Tcp,
            addr: format!("127.0.0.1:{}", 7100 + id.len()),
        }],
        capacity: Dims { connections: cap, ..Dims::default() },
    }
}

/// A simulated gateway: a connection count that follows dispatch answers and shed orders.
pub struct SimGateway {
    pub id: String,
    pub conns: AtomicU64,
    pub pending: AtomicU64,
    pub draining: AtomicBool,
    pub orders: Mutex<Vec<ShedOrder>>,
    /// Where shed clients go: (order, count) handed to the simulation's redirect queue.
    redirects: Mutex<Option<tokio::sync::mpsc::UnboundedSender<(String, ShedOrder)>>>,
}

impl SimGateway {
    pub fn new(id: &str, conns: u64) -> Arc<SimGateway> {
        Arc::new(SimGateway {
            id: id.into(),
            conns: AtomicU64::new(conns),
            pending: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            orders: Mutex::new(Vec::new()),
            redirects: Mutex::new(None),
        })
    }
}

impl GatewayHooks for SimGateway {
    fn sample(&self) -> LoadSample {
        LoadSample {
            load: Dims {
                connections: self.conns.load(Ordering::Relaxed) as f64,
                ..Dims::default()
            },
            draining: self.draining.load(Ordering::Relaxed),
            pending_shed: self.pending.load(Ordering::Relaxed),
        }
    }

    fn shed(&self, order: ShedOrder) {
        self.pending.fetch_add(order.connections, Ordering::Relaxed);
        self.orders.lock().expect("orders").push(order.clone());
        if let Some(tx) = self.redirects.lock().expect("redirects").as_ref() {
            let _ = tx.send((self.id.clone(), order));
        }
    }
}

/// Start an agent for `gw` reporting to `schedulers` every 100 ms.
pub fn agent_for(
    gw: &Arc<SimGateway>,
    reg: Registration,
    schedulers: &[&Scheduler],
    secret: &str,
) -> Agent {
    let mut cfg = AgentConfig::new(
        reg,
        schedulers.iter().map(|s| s.control.to_string()).collect(),
        secret.into(),
    );
    cfg.report_interval = Duration::from_millis(100);
    cfg.request_timeout = Duration::from_millis(500);
    Agent::spawn(cfg, gw.clone()).expect("agent starts")
}

/// A simulated fleet whose shed clients reconnect through the dispatch API.
pub struct SimFleet {
    pub gateways: BTreeMap<String, Arc<SimGateway>>,
    /// Dispatch requests made by redirected clients, by second since the start.
    pub dispatches: Arc<Mutex<BTreeMap<u64, u64>>>,
    pub lost: Arc<AtomicU64>,
    /// Clients that left their gateway and have not joined another yet.
    pub in_transit: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SimFleet {
    /// Wire `gateways` so that shed clients ask `dispatch_to` (round robin) and join the
    /// primary gateway they are given.
    pub fn start(gateways: Vec<Arc<SimGateway>>, dispatch_to: Vec<SocketAddr>) -> SimFleet {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, ShedOrder)>();
        for g in &gateways {
            *g.redirects.lock().expect("redirects") = Some(tx.clone());
        }
        let map: BTreeMap<String, Arc<SimGateway>> =
            gateways.into_iter().map(|g| (g.id.clone(), g)).collect();
        let dispatches = Arc::new(Mutex::new(BTreeMap::new()));
        let lost = Arc::new(AtomicU64::new(0));
        let in_transit = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let (m, d, l, t) = (map.clone(), dispatches.clone(), lost.clone(), in_transit.clone());
        let task = tokio::spawn(async move {
            let client = http();
            let mut n = 0u64;
            while let Some((from, order)) = rx.recv().await {
                let Some(src) = m.get(&from).cloned() else { continue };
                let count = order.connections.max(1);
                let step = Duration::from_millis(order.over_ms / count);
                for k in 0..order.connections {
                    let (m, d, l, t, client, src) =
                        (m.clone(), d.clone(), l.clone(), t.clone(), client.clone(), src.clone());
                    let target = dispatch_to[(n as usize) % dispatch_to.len()];
                    n += 1;
                    let uid = format!("{from}-{}-{k}", order.id);
                    let jitter = hash_parts(&[uid.as_bytes()]) % order.jitter_ms.max(1);
                    let redirect_at = step * k as u32;
                    tokio::spawn(async move {
                        tokio::time::sleep(redirect_at).await;
                        // REDIRECT: the client leaves its gateway...
                        t.fetch_add(1, Ordering::Relaxed);
                        src.conns.fetch_sub(1, Ordering::Relaxed);
                        src.pending.fetch_sub(1, Ordering::Relaxed);
                        // ...waits its jitter, asks dispatch and joins the primary.
                        tokio::time::sleep(Duration::from_millis(jitter)).await;
                        *d.lock()
                            .expect("dispatches")
                            .entry(started.elapsed().as_secs())
                            .or_insert(0) += 1;
                        let url = format!("http://{target}/v1/dispatch?uid={uid}");
                        let joined = match client.get(url).send().await {
                            Ok(r) => r.json::<serde_json::Value>().await.ok().and_then(|b| {
                                b["endpoints"][0]["gateway"].as_str().map(str::to_owned)
                            }),
                            Err(_) => None,
                        };
                        match joined.and_then(|g| m.get(&g).cloned()) {
                            Some(g) => {
                                g.conns.fetch_add(1, Ordering::Relaxed);
                            }
                            None => {
                                l.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        t.fetch_sub(1, Ordering::Relaxed);
                    });
                }
            }
        });
        SimFleet { gateways: map, dispatches, lost, in_transit, tasks: vec![task] }
    }

    pub fn conns(&self) -> BTreeMap<String, u64> {
        self.gateways.iter().map(|(id, g)| (id.clone(), g.conns.load(Ordering::Relaxed))).collect()
    }
}

impl Drop for SimFleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Run `bin --check-config` with these overrides: exit success and combined output.
pub fn check_config(sets: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    for s in sets {
        cmd.arg("--set").arg(s);
    }
    let out = cmd.arg("--check-config").output().expect("runs");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
