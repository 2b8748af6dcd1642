//! End-to-end test support: starts the real Holdfast binaries and third-party parts and
//! drives them over real sockets, as users do.
//!
//! - [`GatewayProcess`] runs a `holdfast-gateway` process on loopback ports chosen by the
//!   kernel, waits for its ready line, and kills it when dropped.
//! - [`Client`] is a blocking test client: a real `TcpStream` (or TLS over one, trusting a
//!   [`TestCa`]; or a QUIC stream: [`quic`]) driven by `holdfast_codec::client::Session`,
//!   with every wait bounded by a timeout.
//! - [`TestCa`] makes a certificate authority and server certificates for `127.0.0.1` and
//!   `localhost` (rcgen), as PEM files in a temporary directory.
//! - [`Webhook`] is a local HTTP server standing in for the business backend; it records
//!   what it receives and answers with a function the test gives.
//! - [`token`] and [`token_with`] mint tokens with the gateway's development secret.
//! - [`StatusProcess`] (a `holdfast-status` node; [`status_cluster`] starts a static ring),
//!   [`SchedulerProcess`] (a `holdfast-scheduler` instance) and [`RedisProcess`] (a
//!   `redis-server`): real processes on free loopback ports, waited for (ready line or
//!   `PING`), killed and reaped on drop.
//!
//! Each test crate that uses this passes the path of the binary under test (for example
//! `env!("CARGO_BIN_EXE_holdfast-gateway")`), so Cargo builds it before the tests run.
//! Binaries of *other* packages (a gateway test needs `holdfast-status`) are found next to
//! the test executable with [`sibling_bin`]: `cargo test --workspace` (what CI runs) builds
//! every package's binaries before any test runs; when testing one package alone, name
//! the others too (`-p holdfast-gateway -p holdfast-status -p holdfast-scheduler`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use holdfast_codec::Platform;
use holdfast_codec::client::{Config, Event, Session};

pub use holdfast_loadtest::DEV_SECRET;

pub mod quic;

/// Mint a development token for `user`, valid for an hour.
pub fn token(user: &str) -> String {
    token_with(user, 3600, None, None)
}

/// Mint a development token with a validity (negative = already expired) and bindings.
pub fn token_with(
    user: &str,
    ttl_secs: i64,
    device: Option<&str>,
    platform: Option<&str>,
) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    let mut claims = serde_json::json!({ "sub": user, "exp": now + ttl_secs });
    if let Some(d) = device {
        claims["device"] = d.into();
    }
    if let Some(p) = platform {
        claims["platform"] = p.into();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(DEV_SECRET.as_bytes()),
    )
    .expect("token encodes")
}

/// Mint a development token for `user`, valid for an hour, whose `rooms` claim lists
/// `rooms` (names or `prefix*` patterns the client may `JOIN`).
pub fn token_rooms(user: &str, rooms: &[&str]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let claims = serde_json::json!({ "sub": user, "exp": now + 3600, "rooms": rooms });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(DEV_SECRET.as_bytes()),
    )
    .expect("token encodes")
}

/// Mint an HS256 token for `user` valid for an hour, signed with `secret` and naming key
/// `kid` in its header.
pub fn token_kid(user: &str, kid: &str, secret: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid.to_owned());
    let claims = serde_json::json!({ "sub": user, "exp": now + 3600 });
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token encodes")
}

/// A running `holdfast-gateway` process; killed when dropped.
pub struct GatewayProcess {
    child: Child,
    /// The client listener.
    pub tcp: SocketAddr,
    /// The TLS client listener (with `tls.addr` set).
    pub tls: Option<SocketAddr>,
    /// The HTTP API.
    pub http: SocketAddr,
    /// The internal gateway listener (with a shared presence backend).
    pub cluster: Option<SocketAddr>,
    /// The TCP health check port (with `health.tcp_addr` set).
    pub health: Option<SocketAddr>,
    /// The QUIC listener (with `quic.enabled`).
    pub quic: Option<SocketAddr>,
    /// The SHA-256 of the QUIC listener's certificate, as printed at start-up.
    pub quic_sha256: Option<String>,
    http_client: reqwest::blocking::Client,
}

impl GatewayProcess {
    /// Start `bin` on loopback with two workers and the given `--set` overrides, and wait
    /// (at most 30 s) for its ready line.
    pub fn spawn(bin: &str, sets: &[&str]) -> GatewayProcess {
        GatewayProcess::spawn_with(bin, None, sets)
    }

    /// [`GatewayProcess::spawn`] with a configuration file (`--config FILE`) as well.
    pub fn spawn_with(
        bin: &str,
        config: Option<&std::path::Path>,
        sets: &[&str],
    ) -> GatewayProcess {
        let mut cmd = Command::new(bin);
        if let Some(path) = config {
            cmd.arg("--config").arg(path);
        }
        for s in ["listen.addr=127.0.0.1:0", "http.addr=127.0.0.1:0", "node.workers=2"] {
            cmd.arg("--set").arg(s);
        }
        for s in sets {
            cmd.arg("--set").arg(s);
        }
        cmd.env_remove("HOLDFAST_JWT_SECRET")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("gateway binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("holdfast-gateway ready: ") {
                    let _ = tx.send(rest.to_owned());
                } else if line.starts_with("holdfast-gateway quic: ") {
                    // Printed before the ready line: it joins it.
                    let _ = tx.send(line);
                }
            }
        });
        let mut quic_sha256 = None;
        let ready = loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.starts_with("holdfast-gateway quic: ") => {
                    quic_sha256 = line.split("sha256=").nth(1).map(str::to_owned);
                }
                Ok(r) => break r,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("gateway did not print its ready line within 30 s");
                }
            }
        };
        let mut tcp = None;
        let mut http = None;
        let mut cluster = None;
        let mut health = None;
        let mut quic = None;
        let mut tls = None;
        for part in ready.split_whitespace() {
            if let Some(a) = part.strip_prefix("tcp=") {
                tcp = a.parse().ok();
            } else if let Some(a) = part.strip_prefix("http=") {
                http = a.parse().ok();
            } else if let Some(a) = part.strip_prefix("cluster=") {
                cluster = a.parse().ok();
            } else if let Some(a) = part.strip_prefix("health=") {
                health = a.parse().ok();
            } else if let Some(a) = part.strip_prefix("quic=") {
                quic = a.parse().ok();
            } else if let Some(a) = part.strip_prefix("tls=") {
                tls = a.parse().ok();
            }
        }
        GatewayProcess {
            child,
            cluster,
            health,
            quic,
            quic_sha256,
            tls,
            tcp: tcp.expect("ready line has tcp="),
            http: http.expect("ready line has http="),
            http_client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client builds"),
        }
    }

    /// POST JSON to the API: status and parsed body.
    pub fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let resp = self
            .http_client
            .post(format!("http://{}{path}", self.http))
            .json(&body)
            .send()
            .expect("API answers");
        let status = resp.status().as_u16();
        (status, resp.json().unwrap_or(serde_json::Value::Null))
    }

    /// GET a path: status and parsed JSON body.
    pub fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = self.get(path);
        (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
    }

    /// `kill -9` the process and reap it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// GET a path: status and body text.
    pub fn get(&self, path: &str) -> (u16, String) {
        let resp = self
            .http_client
            .get(format!("http://{}{path}", self.http))
            .send()
            .expect("API answers");
        let status = resp.status().as_u16();
        (status, resp.text().unwrap_or_default())
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        self.get("/metrics").1
    }

    /// The value of one sample, named with its labels exactly as exposed (for example
    /// `holdfast_gateway_closes_total{reason="idle_timeout"}`); 0 if absent.
    pub fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Wait (at most `timeout`) until a sample reaches `at_least`; its last value.
    pub fn wait_metric(&self, sample: &str, at_least: f64, timeout: Duration) -> f64 {
        let until = Instant::now() + timeout;
        loop {
            let v = self.metric(sample);
            if v >= at_least || Instant::now() > until {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait (at most `timeout`) until a sample drops to `at_most`; its last value.
    pub fn wait_metric_below(&self, sample: &str, at_most: f64, timeout: Duration) -> f64 {
        let until = Instant::now() + timeout;
        loop {
            let v = self.metric(sample);
            if v <= at_most || Instant::now() > until {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait (at most `timeout`) for the process to exit; its status, or `None` if it did not.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send the process a signal (for example `libc::SIGHUP`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill({signal}) failed");
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on right now (for processes that must know each other's
/// addresses before they start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The path of binary `name` of another workspace package, next to the running test
/// executable (`target/<profile>/<name>`).
pub fn sibling_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo test --workspace` (or add `-p` for its package)",
        path.display()
    );
    path
}

/// Spawn `cmd` with piped stdout and wait (at most 30 s) for the line starting with
/// `prefix`; the child and the rest of that line.
fn spawn_ready(mut cmd: Command, prefix: &'static str) -> (Child, String) {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("binary starts");
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix(prefix) {
                let _ = tx.send(rest.to_owned());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(r) => (child, r),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no {prefix:?} line within 30 s");
        }
    }
}

fn ready_field(ready: &str, key: &str) -> SocketAddr {
    ready
        .split_whitespace()
        .find_map(|p| p.strip_prefix(key))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("ready line {ready:?} lacks {key}"))
}

/// A running `holdfast-status` node; killed (SIGKILL) and reaped on drop.
pub struct StatusProcess {
    child: Child,
    /// Its node id.
    pub id: u16,
    /// The binary protocol address (what gateways use as a seed).
    pub data: SocketAddr,
    /// The admin API.
    pub admin: SocketAddr,
}

/// The status cluster's secret in tests.
pub const STATUS_SECRET: &str = "test-status-cluster-secret";

impl StatusProcess {
    /// Start node `id` with `--set` overrides (the secret is [`STATUS_SECRET`]).
    pub fn spawn(id: u16, sets: &[String]) -> StatusProcess {
        let mut cmd = Command::new(sibling_bin("holdfast-status"));
        cmd.arg("--set").arg(format!("node.id={id}"));
        for s in sets {
            cmd.arg("--set").arg(s);
        }
        cmd.env("HOLDFAST_STATUS_SECRET", STATUS_SECRET).env("RUST_LOG", "warn");
        let (child, ready) = spawn_ready(cmd, "holdfast-status ready: ");
        StatusProcess {
            child,
            id,
            data: ready_field(&ready, "data="),
            admin: ready_field(&ready, "admin="),
        }
    }

    /// `GET /v1/counts` of this node: `{sessions, users, gateways, stored}`.
    pub fn counts(&self) -> serde_json::Value {
        reqwest::blocking::Client::new()
            .get(format!("http://{}/v1/counts", self.admin))
            .timeout(Duration::from_secs(5))
            .send()
            .and_then(|r| r.json())
            .unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for StatusProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A static ring of `n` status nodes (ids 1..=n) with extra `--set`s.
pub fn status_cluster(n: u16, extra: &[&str]) -> Vec<StatusProcess> {
    let members: Vec<(u16, u16)> = (1..=n).map(|id| (id, free_port())).collect();
    let list: Vec<String> = members
        .iter()
        .map(|(id, port)| format!("{{id={id}, addr=\"127.0.0.1:{port}\"}}"))
        .collect();
    let toml = format!("cluster.members=[{}]", list.join(", "));
    members
        .iter()
        .map(|(id, port)| {
            let mut sets = vec![
                toml.clone(),
                format!("node.data_addr=127.0.0.1:{port}"),
                "node.admin_addr=127.0.0.1:0".to_owned(),
            ];
            sets.extend(extra.iter().map(|s| s.to_string()));
            StatusProcess::spawn(*id, &sets)
        })
        .collect()
}

/// The `presence.*` settings that put a gateway on the status ring `nodes`.
pub fn status_sets(nodes: &[StatusProcess]) -> Vec<String> {
    let seeds: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.data)).collect();
    vec![
        "presence.backend=status".to_owned(),
        format!("presence.seeds=[{}]", seeds.join(", ")),
        format!("presence.secret={STATUS_SECRET}"),
    ]
}

/// `n` gateways of binary `bin` (node ids 1..=n) on presence `backend`, each listing the
/// others as `cluster.peers` with the internal channel's `secret`.
pub fn gateway_cluster(
    bin: &str,
    secret: &str,
    backend: &[String],
    n: u16,
    extra: &[String],
) -> Vec<GatewayProcess> {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    (1..=n)
        .map(|id| {
            let peers: Vec<String> = (1..=n)
                .filter(|p| *p != id)
                .map(|p| format!("{{id={p}, addr=\"127.0.0.1:{}\"}}", ports[usize::from(p - 1)]))
                .collect();
            let mut sets = vec![
                format!("node.id={id}"),
                format!("cluster.addr=127.0.0.1:{}", ports[usize::from(id - 1)]),
                format!("cluster.peers=[{}]", peers.join(", ")),
                format!("cluster.secret={secret}"),
            ];
            sets.extend(backend.iter().cloned());
            sets.extend(extra.iter().cloned());
            let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
            GatewayProcess::spawn(bin, &sets)
        })
        .collect()
}

/// The schedulers' shared secret in tests.
pub const SCHEDULER_SECRET: &str = "test-scheduler-secret-long-enough";

/// A running `holdfast-scheduler` instance; killed and reaped on drop.
pub struct SchedulerProcess {
    child: Child,
    /// The public dispatch API.
    pub dispatch: SocketAddr,
    /// The control address gateways report to.
    pub control: SocketAddr,
}

impl SchedulerProcess {
    /// Start an instance on free ports with `--set` overrides (secret [`SCHEDULER_SECRET`]).
    pub fn spawn(sets: &[&str]) -> SchedulerProcess {
        let mut cmd = Command::new(sibling_bin("holdfast-scheduler"));
        for s in ["dispatch.addr=127.0.0.1:0", "control.addr=127.0.0.1:0", "instance.workers=1"] {
            cmd.arg("--set").arg(s);
        }
        for s in sets {
            cmd.arg("--set").arg(s);
        }
        cmd.env("HOLDFAST_SCHEDULER_SECRET", SCHEDULER_SECRET).env("RUST_LOG", "warn");
        let (child, ready) = spawn_ready(cmd, "holdfast-scheduler ready: ");
        SchedulerProcess {
            child,
            dispatch: ready_field(&ready, "dispatch="),
            control: ready_field(&ready, "control="),
        }
    }

    /// An instance that rebalances fast, for tests: reports every 100 ms (TTL 600 ms), a
    /// rebalance pass every 100 ms, rules in `dir/rules.toml` with `alpha = 0.15`, a pool
    /// budget of `shed_per_sec` (`per_gateway_per_sec` for one gateway) over 1 s windows,
    /// redirects with `jitter_ms`, and dispatch rate limits out of the way.
    pub fn rebalancing(
        dir: &std::path::Path,
        shed_per_sec: usize,
        per_gateway_per_sec: usize,
        jitter_ms: u32,
    ) -> SchedulerProcess {
        let rules = dir.join("rules.toml");
        std::fs::write(
            &rules,
            format!(
                "[load]\nalpha = 0.15\n[rebalance]\nmax_shed_per_sec = {shed_per_sec}\n\
                 max_shed_per_gateway_per_sec = {per_gateway_per_sec}\nwindow_ms = 1000\n\
                 redirect_jitter_ms = {jitter_ms}\n"
            ),
        )
        .expect("rules file");
        let rules_set = format!("rules.file={}", rules.display());
        SchedulerProcess::spawn(&[
            rules_set.as_str(),
            "fleet.report_interval_ms=100",
            "fleet.ttl_ms=600",
            "fleet.refresh_ms=20",
            "rebalance.interval_ms=100",
            "dispatch.per_source_rate=100000",
            "dispatch.per_source_burst=100000",
        ])
    }

    /// GET a path of the control address (admin API, `/metrics`) as JSON or text.
    pub fn control_get(&self, path: &str) -> String {
        reqwest::blocking::Client::new()
            .get(format!("http://{}{path}", self.control))
            .timeout(Duration::from_secs(5))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default()
    }
}

impl Drop for SchedulerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `redis-server` on a free loopback port, without persistence; killed on drop.
pub struct RedisProcess {
    child: Child,
    /// Its port.
    pub port: u16,
    dir: std::path::PathBuf,
}

impl RedisProcess {
    /// Start one and wait (at most 20 s) until it answers `PING`.
    pub fn start() -> RedisProcess {
        RedisProcess::start_on(free_port(), false)
    }

    /// Start one on `port`, as a Redis Cluster node when `cluster`, and wait (at most 20 s)
    /// until it answers `PING`.
    fn start_on(port: u16, cluster: bool) -> RedisProcess {
        let dir =
            std::env::temp_dir().join(format!("holdfast-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir);
        if cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (scripts/test installs it)");
        let r = RedisProcess { child, port, dir };
        let until = Instant::now() + Duration::from_secs(20);
        while redis_cli(port, &["PING"]).trim() != "PONG" {
            assert!(Instant::now() < until, "redis-server did not answer PING within 20 s");
            std::thread::sleep(Duration::from_millis(25));
        }
        r
    }

    /// A Redis Cluster of 3 masters and no replicas (`redis-cli --cluster create`), once
    /// every node says `cluster_state:ok` (at most 30 s).
    pub fn cluster() -> Vec<RedisProcess> {
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let p = free_port();
            // The cluster bus listens on port + 10,000.
            let bus_free =
                p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok();
            if bus_free && !ports.contains(&p) {
                ports.push(p);
            }
        }
        let nodes: Vec<RedisProcess> =
            ports.iter().map(|&p| RedisProcess::start_on(p, true)).collect();
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        let until = Instant::now() + Duration::from_secs(30);
        for &p in &ports {
            while !redis_cli(p, &["cluster", "info"]).contains("cluster_state:ok") {
                assert!(Instant::now() < until, "Redis Cluster not ok within 30 s");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        nodes
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

/// `redis-cli -p port args...`'s output ("" if it cannot run).
fn redis_cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An `haproxy` in `mode tcp` in front of one backend, sending it the PROXY protocol; killed
/// and reaped on drop.
pub struct HaproxyProcess {
    child: Child,
    /// Where clients connect.
    pub front: SocketAddr,
    dir: std::path::PathBuf,
}

impl HaproxyProcess {
    /// Start one that forwards a free loopback port to `backend`, connecting from
    /// `source` and sending `send_proxy` (`send-proxy` for v1, `send-proxy-v2`); wait (at
    /// most 20 s) until it accepts connections.
    pub fn start(backend: SocketAddr, source: std::net::IpAddr, send_proxy: &str) -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("holdfast-haproxy-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let config = format!(
            "global\n  maxconn 256\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
             timeout client 60s\n  timeout server 60s\n\nfrontend fe\n  bind 127.0.0.1:{port}\n  \
             default_backend be\n\nbackend be\n  server gw {backend} {send_proxy} source {source}\n"
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("haproxy starts (scripts/test installs it)");
        let front = SocketAddr::from(([127, 0, 0, 1], port));
        let h = HaproxyProcess { child, front, dir };
        let ready = eventually(Duration::from_secs(20), || {
            // A bare connect, closed at once: the backend sees a header and an end.
            TcpStream::connect_timeout(&front, Duration::from_millis(200)).ok().map(|_| ())
        });
        assert!(ready.is_some(), "haproxy did not listen within 20 s");
        h
    }
}

impl Drop for HaproxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP connection to `addr` from the local address `from` (any loopback address works on
/// Linux: `127.0.0.3`), so a test can tell clients apart by address.
pub fn connect_from(addr: SocketAddr, from: std::net::IpAddr) -> TcpStream {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).expect("socket");
    socket.bind(&SockAddr::from(SocketAddr::new(from, 0))).expect("bind the source address");
    socket.connect(&SockAddr::from(addr)).expect("connect");
    socket.into()
}

/// Poll `f` every 25 ms until it returns `Some`, at most `timeout`.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + timeout;
    loop {
        if let Some(t) = f() {
            return Some(t);
        }
        if Instant::now() > until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A client configuration for `token` on `platform` with device `device`.
pub fn client_config(token: String, platform: Platform, device: &str) -> Config {
    Config { token, platform, device_id: device.to_owned(), ..Config::default() }
}

/// The byte stream under a [`Client`]: a socket, TLS over one, or a QUIC stream
/// ([`quic::QuicWire`]).
enum Wire {
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    Quic(Box<quic::QuicWire>),
}

impl Wire {
    /// Make the next read give up after `wait` (`WouldBlock` or `TimedOut`).
    fn set_read_timeout(&mut self, wait: Duration) -> std::io::Result<()> {
        match self {
            Wire::Tcp(s) => s.set_read_timeout(Some(wait)),
            Wire::Tls(s) => s.sock.set_read_timeout(Some(wait)),
            Wire::Quic(q) => {
                q.set_read_timeout(wait);
                Ok(())
            }
        }
    }
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Wire::Tcp(s) => s.read(buf),
            Wire::Quic(q) => q.read(buf),
            Wire::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Wire::Tcp(s) => s.write(buf),
            Wire::Quic(q) => q.write(buf),
            Wire::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Wire::Tcp(s) => s.flush(),
            Wire::Quic(q) => q.flush(),
            Wire::Tls(s) => s.flush(),
        }
    }
}

/// A TLS client configuration trusting the CA certificates in `ca` (PEM), offering the
/// gateway's ALPN protocol, TLS 1.3 only, as the gateway's own clients do.
pub fn tls_client_config(ca: &std::path::Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file reads") {
        roots.add(cert.expect("CA certificate parses")).expect("CA certificate is usable");
    }
    #[allow(deprecated)] // ring: see holdfast_gateway::tls::provider
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"holdfast/1".to_vec()];
    Arc::new(config)
}

/// A test certificate authority: its certificate and the server certificates it issues,
/// as PEM files in a temporary directory removed on drop.
pub struct TestCa {
    dir: std::path::PathBuf,
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    /// The CA certificate (what clients trust).
    pub ca_pem: std::path::PathBuf,
}

impl TestCa {
    /// A new CA whose files live in a fresh temporary directory named after `name`.
    pub fn new(name: &str) -> TestCa {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("holdfast-ca-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("Holdfast test CA {name}"));
        params.key_usages =
            vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, cert.pem()).expect("write CA");
        TestCa { dir, params, key, ca_pem }
    }

    /// Issue a server certificate for `127.0.0.1` and `localhost` with common name `name`,
    /// written to `<name>.pem` (chain) and `<name>.key`; their paths and the certificate's
    /// DER (to tell which one a client was shown).
    pub fn issue(&self, name: &str) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("leaf params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("leaf certificate");
        let (chain, key_path) =
            (self.dir.join(format!("{name}.pem")), self.dir.join(format!("{name}.key")));
        std::fs::write(&chain, cert.pem()).expect("write chain");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (chain, key_path, cert.der().to_vec())
    }

    /// The temporary directory the files are in.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A blocking test client over a real socket (plain or TLS), driven by the protocol's
/// client session.
/// A blocking test client over a real socket, driven by the protocol's client session.
pub struct Client {
    stream: Wire,
    session: Session,
    buf: Vec<u8>,
    eof: bool,
}

impl Client {
    /// Connect to `addr` and send `HELLO`.
    pub fn connect(addr: SocketAddr, config: Config) -> Client {
        Client::over(TcpStream::connect(addr).expect("gateway accepts"), config)
    }

    /// Send `HELLO` over an already connected `stream` (see [`connect_from`]).
    pub fn over(stream: TcpStream, config: Config) -> Client {
        stream.set_nodelay(true).expect("nodelay");
        Client::start(Wire::Tcp(stream), config)
    }

    /// Send `HELLO` over a QUIC stream (see [`quic::login`]).
    pub fn over_quic(wire: quic::QuicWire, config: Config) -> Client {
        Client::start(Wire::Quic(Box::new(wire)), config)
    }

    /// Connect to the TLS listener `addr` trusting the CA certificates in `ca`, as server
    /// `127.0.0.1`, and send `HELLO` inside TLS.
    pub fn connect_tls(addr: SocketAddr, ca: &std::path::Path, config: Config) -> Client {
        Client::over_tls(TcpStream::connect(addr).expect("gateway accepts"), ca, config)
    }

    /// [`Client::connect_tls`] over an already connected `stream` (see [`connect_from`]).
    pub fn over_tls(stream: TcpStream, ca: &std::path::Path, config: Config) -> Client {
        stream.set_nodelay(true).expect("nodelay");
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let conn = rustls::ClientConnection::new(tls_client_config(ca), name).expect("client");
        Client::start(Wire::Tls(Box::new(rustls::StreamOwned::new(conn, stream))), config)
    }

    /// [`Client::connect_tls`] as `user` (platform Linux, device "dev"), expecting `AUTH_OK`.
    pub fn login_tls(addr: SocketAddr, ca: &std::path::Path, user: &str) -> Client {
        let mut c =
            Client::connect_tls(addr, ca, client_config(token(user), Platform::Linux, "dev"));
        c.expect_auth();
        c
    }

    /// Over TLS, the certificate the server presented (DER), once the handshake is done.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        match &self.stream {
            Wire::Tcp(_) | Wire::Quic(_) => None,
            Wire::Tls(s) => s.conn.peer_certificates()?.first().map(|c| c.to_vec()),
        }
    }

    /// Connect as `user` (platform Linux, device "dev") and expect `AUTH_OK`.
    pub fn login(addr: SocketAddr, user: &str) -> Client {
        Client::login_on(addr, user, Platform::Linux)
    }

    /// Connect as `user` on `platform` and expect `AUTH_OK`.
    pub fn login_on(addr: SocketAddr, user: &str, platform: Platform) -> Client {
        let mut c = Client::connect(addr, client_config(token(user), platform, "dev"));
        c.expect_auth();
        c
    }

    fn start(stream: Wire, config: Config) -> Client {
        let mut session = Session::new(config, Instant::now()).expect("valid client config");
        session.connect(Instant::now());
        let mut c = Client { stream, session, buf: vec![0; 64 * 1024], eof: false };
        c.flush();
        c
    }

    /// The QUIC connection under a QUIC client (to migrate it, or watch it close).
    pub fn quic(&mut self) -> Option<&mut quic::QuicWire> {
        match &mut self.stream {
            Wire::Quic(q) => Some(q),
            Wire::Tcp(_) | Wire::Tls(_) => None,
        }
    }

    /// The session (for its state, `AUTH_OK`, reconnect advice).
    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }

    fn flush(&mut self) {
        while let Some(bytes) = self.session.poll_transmit() {
            if self.stream.write_all(&bytes).and_then(|()| self.stream.flush()).is_err() {
                self.session.transport_closed(Instant::now());
            }
        }
    }

    /// The next event, driving heartbeats and acks while waiting; `None` after `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Option<Event> {
        let until = Instant::now() + timeout;
        loop {
            self.flush();
            if let Some(e) = self.session.poll_event() {
                self.flush();
                return Some(e);
            }
            let now = Instant::now();
            if now >= until || self.eof {
                return None;
            }
            let wake = self.session.poll_timeout().map_or(until, |t| t.min(until));
            if wake <= now {
                self.session.handle_timeout(now);
                continue;
            }
            let wait = (wake - now).max(Duration::from_millis(1));
            self.stream.set_read_timeout(wait).expect("read timeout");
            match self.stream.read(&mut self.buf) {
                Ok(0) => {
                    self.eof = true;
                    self.session.transport_closed(Instant::now());
                }
                Ok(n) => {
                    let n = n.min(self.buf.len());
                    let bytes = self.buf[..n].to_vec();
                    self.session.receive(&bytes, Instant::now());
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    self.session.handle_timeout(Instant::now());
                }
                Err(_) => {
                    self.eof = true;
                    self.session.transport_closed(Instant::now());
                }
            }
        }
    }

    /// Wait for an event matching `pred`, skipping others; panics after `timeout`.
    pub fn expect<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(Event) -> Option<T>,
    ) -> T {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if let Some(e) = self.next_event(until - Instant::now())
                && let Some(t) = pred(e)
            {
                return t;
            }
        }
        panic!("expected {what} within {timeout:?}");
    }

    /// Expect `AUTH_OK`.
    pub fn expect_auth(&mut self) -> holdfast_codec::AuthOk {
        self.expect(Duration::from_secs(10), "AUTH_OK", |e| match e {
            Event::Authenticated(ok) => Some(ok),
            Event::AuthFailed { code, reason, .. } => panic!("AUTH_FAIL {code}: {reason}"),
            _ => None,
        })
    }

    /// Expect a push.
    pub fn expect_push(&mut self) -> holdfast_codec::Push {
        self.expect(Duration::from_secs(10), "PUSH", |e| match e {
            Event::Push(p) => Some(p),
            _ => None,
        })
    }

    /// `JOIN` `room` and wait (at most 10 s) for the answer: the number of rooms the
    /// connection is in, or the refusal's code and message. Other events are skipped.
    pub fn join(&mut self, room: &str) -> Result<u16, (holdfast_codec::Code, String)> {
        let id = self.session.join(room).expect("JOIN queued");
        self.expect(Duration::from_secs(10), "ROOM_OK or a room refusal", |e| match e {
            Event::RoomJoined { request_id, rooms, .. } if request_id == id => Some(Ok(rooms)),
            Event::RoomRefused { request_id, code, message, .. } if request_id == id => {
                Some(Err((code, message)))
            }
            _ => None,
        })
    }

    /// `LEAVE` `room` and wait (at most 10 s) for `ROOM_OK`: the number of rooms the
    /// connection is in now. Other events are skipped.
    pub fn leave(&mut self, room: &str) -> u16 {
        let id = self.session.leave(room).expect("LEAVE queued");
        self.expect(Duration::from_secs(10), "ROOM_OK", |e| match e {
            Event::RoomLeft { request_id, rooms, .. } if request_id == id => Some(rooms),
            Event::RoomRefused { request_id, code, .. } if request_id == id => {
                panic!("LEAVE refused: {code}")
            }
            _ => None,
        })
    }

    /// Whether the server closed the connection within `timeout` (events are drained).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while Instant::now() < until && !self.eof {
            self.next_event(until - Instant::now());
        }
        self.eof
    }

    /// Send `PING`s as the session's heartbeat schedule says, for `duration`.
    pub fn run_for(&mut self, duration: Duration) -> Vec<Event> {
        let until = Instant::now() + duration;
        let mut events = Vec::new();
        while Instant::now() < until {
            if let Some(e) = self.next_event(until - Instant::now()) {
                events.push(e);
            }
        }
        events
    }
}

/// The bytes of a `HELLO` for `user` (platform Linux, device "dev"), as the client session
/// sends it.
pub fn hello_bytes(user: &str) -> Vec<u8> {
    let config = client_config(token(user), Platform::Linux, "dev");
    let mut session = Session::new(config, Instant::now()).expect("valid config");
    session.connect(Instant::now());
    let mut bytes = Vec::new();
    while let Some(b) = session.poll_transmit() {
        bytes.extend_from_slice(&b);
    }
    bytes
}

/// Assert that `promtool check metrics` accepts `text` (`PROMTOOL` names the binary;
/// `scripts/test` installs it).
pub fn promtool_accepts(text: &str) {
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is required (scripts/test installs it)");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The wire bytes of `frames`, in order (for tests that speak the protocol by hand).
pub fn encode_frames(frames: &[holdfast_codec::Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        f.encode(&mut out).expect("a frame within the limits");
    }
    out
}

/// Read raw frames from a socket (for tests that speak the protocol by hand).
pub fn read_frames(
    stream: &mut TcpStream,
    timeout: Duration,
) -> (Vec<holdfast_codec::Frame>, bool) {
    let until = Instant::now() + timeout;
    let mut buf = bytes::BytesMut::new();
    let mut frames = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Ok(Some(f)) = holdfast_codec::decode(&mut buf, 1 << 20) {
            frames.push(f);
        }
        let now = Instant::now();
        if now >= until {
            return (frames, false);
        }
        stream.set_read_timeout(Some(until - now)).expect("read timeout");
        match stream.read(&mut chunk) {
            Ok(0) => return (frames, true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (frames, false);
            }
            Err(_) => return (frames, true),
        }
    }
}

type Handler = Arc<dyn Fn(&serde_json::Value) -> (u16, serde_json::Value) + Send + Sync>;

/// A local webhook server: records every JSON body POSTed to it, answers with `handler`.
pub struct Webhook {
    /// Its address; the URL is `http://{addr}/`.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<serde_json::Value>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Webhook {
    /// Start a webhook answering every POST with `handler(body)`.
    pub fn start(
        handler: impl Fn(&serde_json::Value) -> (u16, serde_json::Value) + Send + Sync + 'static,
    ) -> Webhook {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let received = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let listener =
            runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("webhook binds");
        let addr = listener.local_addr().expect("address");
        let rec = Arc::clone(&received);
        let app =
            Router::new().fallback(post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                let rec = Arc::clone(&rec);
                let handler = Arc::clone(&handler);
                async move {
                    let (status, answer) = handler(&body);
                    rec.lock().expect("lock").push(body);
                    (
                        axum::http::StatusCode::from_u16(status).expect("valid status"),
                        axum::Json(answer),
                    )
                }
            }));
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Webhook { addr, received, runtime: Some(runtime) }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Every body received so far.
    pub fn received(&self) -> Vec<serde_json::Value> {
        self.received.lock().expect("lock").clone()
    }

    /// Wait (at most `timeout`) until `pred` holds for the bodies received.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let until = Instant::now() + timeout;
        loop {
            let got = self.received();
            if pred(&got) || Instant::now() > until {
                return got;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}
