//! Test support: real `holdfast-status` nodes, `redis-server` and a 3-master Redis Cluster
//! on free loopback ports, each waited for (ready line or PING), killed and reaped on Drop.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const SECRET: &str = "test-cluster-secret";
pub const BIN: &str = env!("CARGO_BIN_EXE_holdfast-status");

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A running `holdfast-status`; killed (SIGKILL) and reaped on Drop.
pub struct StatusNode {
    child: Option<Child>,
    pub id: u16,
    pub data: SocketAddr,
    pub admin: SocketAddr,
    sets: Vec<String>,
}

impl StatusNode {
    /// Start the binary with `--set` overrides and wait (at most 30 s) for its ready line.
    pub fn spawn(id: u16, sets: Vec<String>) -> StatusNode {
        let mut cmd = Command::new(BIN);
        cmd.arg("--set").arg(format!("node.id={id}"));
        for s in &sets {
            cmd.arg("--set").arg(s);
        }
        cmd.env("HOLDFAST_STATUS_SECRET", SECRET)
            .env("RUST_LOG", std::env::var("STATUS_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("holdfast-status starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("holdfast-status ready: ") {
                    let _ = tx.send(rest.to_owned());
                }
            }
        });
        let ready = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(r) => r,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("holdfast-status did not print its ready line within 30 s");
            }
        };
        let field = |k: &str| -> SocketAddr {
            ready
                .split_whitespace()
                .find_map(|p| p.strip_prefix(k))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("ready line {ready:?} lacks {k}"))
        };
        StatusNode { id, data: field("data="), admin: field("admin="), child: Some(child), sets }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again with the same configuration (and the same data port).
    pub fn restart(&mut self) {
        self.kill9();
        let mut sets = self.sets.clone();
        sets.retain(|s| !s.starts_with("node.data_addr="));
        sets.push(format!("node.data_addr={}", self.data));
        // The data port was just freed by the kill: retry a few times if it is still busy.
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpListener::bind(self.data).is_ok() || Instant::now() > until {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let again = StatusNode::spawn(self.id, sets);
        *self = again;
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
}

impl Drop for StatusNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The members TOML for `ids` at `ports`.
pub fn members_toml(members: &[(u16, u16)]) -> String {
    let items: Vec<String> = members
        .iter()
        .map(|(id, port)| format!("{{id={id}, addr=\"127.0.0.1:{port}\"}}"))
        .collect();
    format!("cluster.members=[{}]", items.join(", "))
}

/// A static `n`-node cluster (ids 1..=n) with the given extra settings.
pub fn status_cluster(n: u16, extra: &[&str]) -> Vec<StatusNode> {
    let members: Vec<(u16, u16)> = (1..=n).map(|id| (id, free_port())).collect();
    let toml = members_toml(&members);
    members
        .iter()
        .map(|(id, port)| {
            let mut sets = vec![
                toml.clone(),
                format!("node.data_addr=127.0.0.1:{port}"),
                "node.admin_addr=127.0.0.1:0".to_owned(),
            ];
            sets.extend(extra.iter().map(|s| s.to_string()));
            StatusNode::spawn(*id, sets)
        })
        .collect()
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .arg("-h")
        .arg("127.0.0.1")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A scratch directory removed on Drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "holdfast-status-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `redis-server` processes (one, or a cluster's masters); killed and reaped on Drop.
pub struct Redis {
    children: Vec<Child>,
    pub ports: Vec<u16>,
    _dir: Scratch,
}

impl Redis {
    fn start(port: u16, dir: &Scratch, cluster: bool) -> Child {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"])
                .arg("--cluster-config-file")
                .arg(dir.0.join(format!("nodes-{port}.conf")));
        }
        cmd.spawn().expect("redis-server starts (scripts/test installs it)")
    }

    fn wait_ping(&mut self) {
        let until = Instant::now() + Duration::from_secs(20);
        for &p in &self.ports {
            while !ping(p) {
                assert!(
                    Instant::now() < until,
                    "redis-server on {p} did not answer PING within 20 s"
                );
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }

    /// One `redis-server`.
    pub fn single() -> Redis {
        let dir = Scratch::new("redis");
        let port = free_port();
        let child = Redis::start(port, &dir, false);
        let mut r = Redis { children: vec![child], ports: vec![port], _dir: dir };
        r.wait_ping();
        r
    }

    /// A Redis Cluster of 3 masters, no replicas, created with `redis-cli --cluster create`.
    pub fn cluster() -> Redis {
        let dir = Scratch::new("redis-cluster");
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let p = free_port();
            // the cluster bus listens on port + 10000
            if p < 55_000
                && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok()
                && !ports.contains(&p)
            {
                ports.push(p);
            }
        }
        let children = ports.iter().map(|&p| Redis::start(p, &dir, true)).collect();
        let mut r = Redis { children, ports: ports.clone(), _dir: dir };
        r.wait_ping();
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create runs");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let until = Instant::now() + Duration::from_secs(30);
        for &p in &ports {
            while !redis_cli(p, &["cluster", "info"]).contains("cluster_state:ok") {
                assert!(Instant::now() < until, "Redis Cluster not ok within 30 s");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        r
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}/")).collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Poll `f` every 25 ms until it returns `Some`, at most `timeout`.
pub async fn eventually<T>(timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + timeout;
    loop {
        if let Some(t) = f().await {
            return Some(t);
        }
        if Instant::now() > until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
