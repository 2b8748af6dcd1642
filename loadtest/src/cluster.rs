//! The local cluster launcher: gateway processes (each below the open-file limit), an
//! optional scheduler, and a registration agent per gateway, all on 127.0.0.1.
//!
//! Every process is started on port 0 and waited for on its ready line (never a sleep);
//! its output goes to a log file. Every process dies with the launcher: [`Cluster::shutdown`]
//! stops them (SIGTERM, then SIGKILL after a grace period), dropping a [`Cluster`] kills
//! them, and each asks the kernel to kill it if the launcher dies.
//!
//! **Scheduler registration.** With a scheduler, each gateway registers itself
//! (`scheduler.addrs`, its own agent: load from its counters, shed orders turned into
//! `REDIRECT` `REBALANCE`), reporting every 500 ms; the scheduler forgets a silent gateway
//! after 1.5 s.
//!
//! **Status cluster.** With `status_nodes` K > 0, the launcher starts a static ring of K
//! `holdfast-status` nodes and runs the gateways with `presence.backend = status` and a
//! `[cluster]` channel between them (`cluster.peers`: every other gateway), so a push to any
//! user or to everyone can go through any gateway's API. The internal and status ports are
//! picked free just before the processes start.
//!
//! **TLS and QUIC.** With `tls` or `quic`, the launcher generates a CA and a certificate
//! for `127.0.0.1`/`localhost` ([`crate::certs`]) into `cert_dir`, and every gateway serves
//! it on a TLS listener (`tls.addr`, `tls.cert`, `tls.key`) or on `[quic]` (`quic.cert_file`,
//! `quic.key_file`) beside its plain listener; [`Cluster::ca`] is what clients trust. With a
//! scheduler as well, each gateway's client ports are picked free before it starts so it
//! can advertise them (`scheduler.endpoints`: `tcp://`, `tls://`, `quic://`), and clients
//! dispatch by transport.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Child;

use crate::coordinator::die_with_parent;
use crate::plan::GatewayAddr;

/// Why a cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A binary is missing.
    #[error(
        "{0} not found; build it first: cargo build --release -p holdfast-gateway -p holdfast-scheduler -p holdfast-status"
    )]
    Missing(PathBuf),
    /// A process could not be started.
    #[error("{0}: {1}")]
    Spawn(String, String),
    /// A process did not print its ready line in time.
    #[error("{0} did not get ready within {1:?} (log: {2})")]
    NotReady(String, Duration, PathBuf),
}

/// How to size and configure the cluster.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Gateway processes.
    pub gateways: u32,
    /// `listen.max_connections` of each (keep it below the open-file limit).
    pub max_connections: u32,
    /// `node.workers` of each (0 = one per CPU).
    pub gateway_workers: u32,
    /// Start a scheduler and register the gateways with it.
    pub scheduler: bool,
    /// Status nodes to start (0: every gateway keeps presence in-process, no cross-gateway
    /// delivery).
    pub status_nodes: u32,
    /// Extra `--set` overrides for every gateway (applied last).
    pub gateway_sets: Vec<String>,
    /// Where `holdfast-gateway`, `holdfast-scheduler` and `holdfast-status` are.
    pub bin_dir: PathBuf,
    /// Where the processes' logs go.
    pub log_dir: PathBuf,
    /// `HOLDFAST_JWT_SECRET` for the gateways (`None`: their development secret).
    pub jwt_secret: Option<String>,
    /// Give every gateway a TLS listener (`[tls]`) with a generated certificate.
    pub tls: bool,
    /// Enable every gateway's `[quic]` listener with a generated certificate.
    pub quic: bool,
    /// Where the generated CA and certificate go (with `tls` or `quic`).
    pub cert_dir: PathBuf,
}

/// One gateway process.
#[derive(Debug)]
pub struct GatewayProc {
    /// `gw-<n>`.
    pub name: String,
    /// Its addresses.
    pub addr: GatewayAddr,
    /// Its process id.
    pub pid: u32,
    /// Its log file.
    pub log: PathBuf,
    child: Option<Child>,
    established: Arc<AtomicU64>,
    /// How it was started (to start it again on the same addresses).
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Times started.
    starts: u32,
}

/// A status node process.
#[derive(Debug)]
pub struct StatusProc {
    /// Its binary protocol address (a seed for the gateways).
    pub data: std::net::SocketAddr,
    /// Its admin API.
    pub admin: std::net::SocketAddr,
    /// Its process id.
    pub pid: u32,
    /// Its log file.
    pub log: PathBuf,
    child: Option<Child>,
}

/// The scheduler process.
#[derive(Debug)]
pub struct SchedulerProc {
    /// `GET /v1/dispatch` address.
    pub dispatch: std::net::SocketAddr,
    /// Reports, admin, `/metrics`.
    pub control: std::net::SocketAddr,
    /// Its process id.
    pub pid: u32,
    /// Its log file.
    pub log: PathBuf,
    child: Option<Child>,
}

/// A running local cluster.
pub struct Cluster {
    /// The gateways, in start order (killed ones have `pid` of a dead process).
    pub gateways: Vec<GatewayProc>,
    /// The scheduler, if one was asked for.
    pub scheduler: Option<SchedulerProc>,
    /// The status nodes, if any.
    pub status: Vec<StatusProc>,
    /// The CA the gateways' TLS and QUIC certificate is signed by (with `tls` or `quic`).
    pub ca: Option<PathBuf>,
    pollers: Vec<tokio::task::JoinHandle<()>>,
}

/// The secret the launcher gives the status ring and the gateways' `[cluster]` channel
/// (a local test cluster only).
const LOCAL_SECRET: &str = "holdfast-loadtest-local-cluster-secret";

/// A port that was free a moment ago on 127.0.0.1 (for addresses other processes must know
/// before the owner starts).
fn free_port() -> Result<u16, ClusterError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| ClusterError::Spawn("free port".into(), e.to_string()))
}

/// A UDP port that was free a moment ago on 127.0.0.1.
fn free_udp_port() -> Result<u16, ClusterError> {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .map_err(|e| ClusterError::Spawn("free UDP port".into(), e.to_string()))
}

const READY_TIMEOUT: Duration = Duration::from_secs(60);

impl Cluster {
    /// Start the scheduler (if asked), then every gateway, each waited for on its ready line.
    pub async fn start(spec: &ClusterSpec) -> Result<Cluster, ClusterError> {
        std::fs::create_dir_all(&spec.log_dir)
            .map_err(|e| ClusterError::Spawn(spec.log_dir.display().to_string(), e.to_string()))?;
        let gw_bin = spec.bin_dir.join("holdfast-gateway");
        if !gw_bin.exists() {
            return Err(ClusterError::Missing(gw_bin));
        }
        let certs = if spec.tls || spec.quic {
            Some(
                crate::certs::generate(&spec.cert_dir)
                    .map_err(|e| ClusterError::Spawn("certificates".into(), e.to_string()))?,
            )
        } else {
            None
        };
        let mut cluster = Cluster {
            gateways: Vec::new(),
            scheduler: None,
            status: Vec::new(),
            ca: certs.as_ref().map(|c| c.ca.clone()),
            pollers: Vec::new(),
        };
        cluster.start_status(spec).await?;
        if spec.scheduler {
            let bin = spec.bin_dir.join("holdfast-scheduler");
            if !bin.exists() {
                return Err(ClusterError::Missing(bin));
            }
            let log = spec.log_dir.join("scheduler.log");
            let args: Vec<String> = [
                "dispatch.addr=127.0.0.1:0",
                "control.addr=127.0.0.1:0",
                "instance.workers=1",
                "fleet.report_interval_ms=500",
                "fleet.ttl_ms=1500",
                "dispatch.per_source_rate=10000000",
                "dispatch.per_source_burst=1000000",
                "dispatch.global_rate=10000000",
                "dispatch.global_burst=1000000",
                "log.filter=warn",
            ]
            .iter()
            .flat_map(|s| ["--set".to_owned(), (*s).to_owned()])
            .collect();
            let (child, line) = start_process(&bin, &args, &[], &log).await?;
            let field = |k: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| {
                        ClusterError::Spawn(
                            "holdfast-scheduler".into(),
                            format!("ready line {line:?}"),
                        )
                    })
            };
            let pid = child.id().unwrap_or(0);
            cluster.scheduler = Some(SchedulerProc {
                dispatch: field("dispatch=")?,
                control: field("control=")?,
                pid,
                log,
                child: Some(child),
            });
        }
        // With a status ring: presence there, and a [cluster] channel to every other gateway.
        let ports: Vec<u16> = if spec.status_nodes > 0 {
            (0..spec.gateways).map(|_| free_port()).collect::<Result<_, _>>()?
        } else {
            Vec::new()
        };
        for i in 0..spec.gateways {
            let mut peer_sets = Vec::new();
            if spec.status_nodes > 0 {
                let seeds: Vec<String> =
                    cluster.status.iter().map(|n| format!("\"{}\"", n.data)).collect();
                let peers: Vec<String> = (0..spec.gateways)
                    .filter(|p| *p != i)
                    .map(|p| format!("{{id={}, addr=\"127.0.0.1:{}\"}}", p + 1, ports[p as usize]))
                    .collect();
                peer_sets = vec![
                    "presence.backend=status".to_owned(),
                    format!("presence.seeds=[{}]", seeds.join(", ")),
                    format!("presence.secret={LOCAL_SECRET}"),
                    format!("cluster.addr=127.0.0.1:{}", ports[i as usize]),
                    format!("cluster.peers=[{}]", peers.join(", ")),
                    format!("cluster.secret={LOCAL_SECRET}"),
                ];
            }
            if let Some(c) = &certs {
                peer_sets.extend(secure_sets(spec, c, cluster.scheduler.is_some())?);
            }
            cluster.start_gateway(spec, &gw_bin, i, &peer_sets).await?;
        }
        Ok(cluster)
    }

    async fn start_gateway(
        &mut self,
        spec: &ClusterSpec,
        bin: &Path,
        i: u32,
        peer_sets: &[String],
    ) -> Result<(), ClusterError> {
        let name = format!("gw-{}", i + 1);
        let log = spec.log_dir.join(format!("{name}.log"));
        let mut sets = vec![
            "listen.addr=127.0.0.1:0".to_owned(),
            "http.addr=127.0.0.1:0".to_owned(),
            format!("node.id={}", i + 1),
            format!("node.workers={}", spec.gateway_workers),
            format!("listen.max_connections={}", spec.max_connections),
            "log.filter=warn".to_owned(),
            // A graceful stop (`SIGTERM`) drains over 5 s rather than the default minute,
            // so a scenario sees every client back within its wait.
            "drain.window_ms=5000".to_owned(),
            "drain.jitter_ms=1000".to_owned(),
        ];
        if let Some(s) = &self.scheduler {
            let secret = std::env::var("HOLDFAST_SCHEDULER_SECRET")
                .unwrap_or_else(|_| holdfast_scheduler::config::DEV_SECRET.to_owned());
            sets.push(format!("scheduler.addrs=[\"{}\"]", s.control));
            sets.push(format!("scheduler.secret={secret}"));
            sets.push("scheduler.report_interval_ms=500".to_owned());
        }
        sets.extend(peer_sets.iter().cloned());
        sets.extend(spec.gateway_sets.iter().cloned());
        let args: Vec<String> = sets.into_iter().flat_map(|s| ["--set".to_owned(), s]).collect();
        let mut env = vec![("NO_COLOR".to_owned(), "1".to_owned())];
        if let Some(secret) = &spec.jwt_secret {
            env.push(("HOLDFAST_JWT_SECRET".to_owned(), secret.clone()));
        }
        let (child, line) = start_process(bin, &args, &env, &log).await?;
        let ready = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| ClusterError::Spawn(name.clone(), format!("ready line {line:?}")))
        };
        let addr = GatewayAddr {
            tcp: ready("tcp=")?,
            http: ready("http=")?,
            tls: ready("tls=").ok(),
            quic: ready("quic=").ok(),
        };
        let established = Arc::new(AtomicU64::new(0));
        let pid = child.id().unwrap_or(0);
        self.pollers.push(tokio::spawn(poll_stats(addr.http, Arc::clone(&established))));
        self.gateways.push(GatewayProc {
            name,
            addr,
            pid,
            log,
            child: Some(child),
            established,
            bin: bin.to_owned(),
            args,
            env,
            starts: 1,
        });
        Ok(())
    }

    /// Start stopped gateway `i` again, with the same settings on the same addresses (its
    /// clients and the push API find it where it was); its log goes to `gw-<n>.<k>.log`.
    /// Returns its new pid.
    pub async fn restart_gateway(&mut self, i: usize) -> Result<u32, ClusterError> {
        let Some(g) = self.gateways.get_mut(i) else {
            return Err(ClusterError::Spawn(
                format!("gateway {}", i + 1),
                "no such gateway".into(),
            ));
        };
        if g.child.is_some() {
            return Ok(g.pid);
        }
        let addr = g.addr;
        let args: Vec<String> = g
            .args
            .iter()
            .map(|a| match a.as_str() {
                "listen.addr=127.0.0.1:0" => format!("listen.addr={}", addr.tcp),
                "http.addr=127.0.0.1:0" => format!("http.addr={}", addr.http),
                "tls.addr=127.0.0.1:0" if addr.tls.is_some() => {
                    format!("tls.addr={}", addr.tls.map_or_else(String::new, |a| a.to_string()))
                }
                "quic.addr=127.0.0.1:0" if addr.quic.is_some() => {
                    format!("quic.addr={}", addr.quic.map_or_else(String::new, |a| a.to_string()))
                }
                _ => a.clone(),
            })
            .collect();
        g.starts += 1;
        let log = g.log.with_extension(format!("{}.log", g.starts));
        let (child, _) = start_process(&g.bin, &args, &g.env, &log).await?;
        g.pid = child.id().unwrap_or(0);
        g.child = Some(child);
        Ok(g.pid)
    }

    /// Start a static ring of `spec.status_nodes` status nodes (ids 1..=K).
    async fn start_status(&mut self, spec: &ClusterSpec) -> Result<(), ClusterError> {
        if spec.status_nodes == 0 {
            return Ok(());
        }
        let bin = spec.bin_dir.join("holdfast-status");
        if !bin.exists() {
            return Err(ClusterError::Missing(bin));
        }
        let members: Vec<(u32, u16)> = (1..=spec.status_nodes)
            .map(|id| free_port().map(|p| (id, p)))
            .collect::<Result<_, _>>()?;
        let list: Vec<String> = members
            .iter()
            .map(|(id, port)| format!("{{id={id}, addr=\"127.0.0.1:{port}\"}}"))
            .collect();
        for (id, port) in &members {
            let sets = [
                format!("node.id={id}"),
                format!("cluster.members=[{}]", list.join(", ")),
                format!("node.data_addr=127.0.0.1:{port}"),
                "node.admin_addr=127.0.0.1:0".to_owned(),
                "log.filter=warn".to_owned(),
            ];
            let args: Vec<String> =
                sets.iter().flat_map(|s| ["--set".to_owned(), s.clone()]).collect();
            let env = [("HOLDFAST_STATUS_SECRET".to_owned(), LOCAL_SECRET.to_owned())];
            let log = spec.log_dir.join(format!("status-{id}.log"));
            let (child, line) = start_process(&bin, &args, &env, &log).await?;
            let field = |k: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(|| {
                        ClusterError::Spawn(
                            "holdfast-status".into(),
                            format!("ready line {line:?}"),
                        )
                    })
            };
            let pid = child.id().unwrap_or(0);
            self.status.push(StatusProc {
                data: field("data=")?,
                admin: field("admin=")?,
                pid,
                log,
                child: Some(child),
            });
        }
        Ok(())
    }

    /// The gateways' addresses.
    pub fn addrs(&self) -> Vec<GatewayAddr> {
        self.gateways.iter().map(|g| g.addr).collect()
    }

    /// Process ids of the live gateways.
    pub fn gateway_pids(&self) -> Vec<u32> {
        self.gateways.iter().filter(|g| g.child.is_some()).map(|g| g.pid).collect()
    }

    /// Every process id the cluster started (gateways and scheduler) that is still running.
    pub fn pids(&self) -> Vec<u32> {
        let mut p = self.gateway_pids();
        p.extend(self.scheduler.iter().filter(|s| s.child.is_some()).map(|s| s.pid));
        p.extend(self.status.iter().filter(|s| s.child.is_some()).map(|s| s.pid));
        p
    }

    /// Wait until the scheduler has heard from every live gateway (it answers dispatch
    /// requests with one), at most `timeout`.
    pub async fn wait_registered(&self, timeout: Duration) -> bool {
        let Some(s) = &self.scheduler else { return true };
        let url = format!("http://{}/v1/gateways", s.control);
        let want = self.gateway_pids().len();
        let Ok(http) =
            reqwest::Client::builder().timeout(Duration::from_secs(2)).no_proxy().build()
        else {
            return false;
        };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(resp) = http.get(&url).send().await
                && let Ok(v) = resp.json::<serde_json::Value>().await
            {
                let live = v["gateways"].as_array().map_or(0, Vec::len);
                if live >= want {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// `kill -9` gateway `i`; returns its pid.
    pub async fn kill_gateway(&mut self, i: usize) -> Option<u32> {
        self.stop_gateway(i, false).await
    }

    /// Stop gateway `i`: `SIGTERM` when `graceful` (the gateway reports itself draining,
    /// sends every client `REDIRECT` `SERVER_SHUTDOWN` and exits; `SIGKILL` after 30 s), else
    /// `SIGKILL`. Returns its pid.
    pub async fn stop_gateway(&mut self, i: usize, graceful: bool) -> Option<u32> {
        let g = self.gateways.get_mut(i)?;
        let mut child = g.child.take()?;
        if graceful {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
            if tokio::time::timeout(Duration::from_secs(30), child.wait()).await.is_ok() {
                return Some(g.pid);
            }
        }
        let _ = child.start_kill();
        let _ = child.wait().await;
        Some(g.pid)
    }

    /// `kill -9` every gateway still running, all at once, then wait for each to exit (a
    /// process holding many sockets takes a while to be torn down).
    pub async fn kill_all_gateways(&mut self) {
        let mut children: Vec<Child> =
            self.gateways.iter_mut().filter_map(|g| g.child.take()).collect();
        for c in &mut children {
            let _ = c.start_kill();
        }
        for mut c in children {
            let _ = c.wait().await;
        }
    }

    /// The first gateway still running, by index.
    pub fn first_live(&self) -> Option<usize> {
        self.gateways.iter().position(|g| g.child.is_some())
    }

    /// Stop everything: SIGINT to every process (a gateway's fast stop: `SIGTERM` would
    /// drain it), SIGKILL after `grace`.
    pub async fn shutdown(&mut self, grace: Duration) {
        for p in self.pollers.drain(..) {
            p.abort();
        }
        let mut children: Vec<Child> =
            self.gateways.iter_mut().filter_map(|g| g.child.take()).collect();
        children.extend(self.scheduler.as_mut().and_then(|s| s.child.take()));
        children.extend(self.status.iter_mut().filter_map(|s| s.child.take()));
        for c in &children {
            if let Some(pid) = c.id() {
                // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGINT);
                }
            }
        }
        let deadline = Instant::now() + grace;
        for mut c in children {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, c.wait()).await.is_err() {
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
        }
    }

    /// Connections each gateway reported established at its last poll.
    pub fn established(&self) -> Vec<u64> {
        self.gateways.iter().map(|g| g.established.load(Ordering::Relaxed)).collect()
    }
}

/// The settings giving a gateway its TLS listener and QUIC with the certificate in `certs`.
/// With a scheduler, the client ports are picked now and advertised as
/// `scheduler.endpoints` (the plain listener's too: setting endpoints replaces the default
/// one); without, they are port 0, read back from the ready line.
fn secure_sets(
    spec: &ClusterSpec,
    certs: &crate::certs::CertFiles,
    scheduler: bool,
) -> Result<Vec<String>, ClusterError> {
    let tcp_port = |on: bool| if on && scheduler { free_port() } else { Ok(0) };
    let listen = tcp_port(true)?;
    let tls = tcp_port(spec.tls)?;
    let quic = if spec.quic && scheduler { free_udp_port()? } else { 0 };
    let mut sets = Vec::new();
    let mut endpoints = vec![format!("\"tcp://127.0.0.1:{listen}\"")];
    if scheduler {
        sets.push(format!("listen.addr=127.0.0.1:{listen}"));
    }
    if spec.tls {
        sets.push(format!("tls.addr=127.0.0.1:{tls}"));
        sets.push(format!("tls.cert={}", certs.cert.display()));
        sets.push(format!("tls.key={}", certs.key.display()));
        endpoints.push(format!("\"tls://127.0.0.1:{tls}\""));
    }
    if spec.quic {
        sets.push("quic.enabled=true".to_owned());
        sets.push(format!("quic.addr=127.0.0.1:{quic}"));
        sets.push(format!("quic.cert_file={}", certs.cert.display()));
        sets.push(format!("quic.key_file={}", certs.key.display()));
        endpoints.push(format!("\"quic://127.0.0.1:{quic}\""));
    }
    if scheduler {
        sets.push(format!("scheduler.endpoints=[{}]", endpoints.join(", ")));
    }
    Ok(sets)
}

/// Start `bin args` with its output in `log`, and wait for its ready line on stdout.
async fn start_process(
    bin: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Result<(Child, String), ClusterError> {
    let name = bin
        .file_name()
        .map_or_else(|| bin.display().to_string(), |n| n.to_string_lossy().into_owned());
    let spawn_err = |e: std::io::Error| ClusterError::Spawn(name.clone(), e.to_string());
    let file = std::fs::File::create(log).map_err(spawn_err)?;
    let stderr = file.try_clone().map_err(spawn_err)?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let stdout =
        child.stdout.take().ok_or_else(|| ClusterError::Spawn(name.clone(), "no stdout".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut log_file = tokio::fs::File::from_std(file);
    let found = tokio::time::timeout(READY_TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = log_file.write_all(format!("{line}\n").as_bytes()).await;
            if line.contains(" ready: ") {
                return Some(line);
            }
        }
        None
    })
    .await;
    let Ok(Some(line)) = found else {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(ClusterError::NotReady(name, READY_TIMEOUT, log.to_owned()));
    };
    // Keep draining stdout into the log so the process never blocks on a full pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = log_file.write_all(format!("{line}\n").as_bytes()).await;
        }
    });
    Ok((child, line))
}

async fn poll_stats(http: std::net::SocketAddr, established: Arc<AtomicU64>) {
    let Ok(client) = reqwest::Client::builder().timeout(Duration::from_secs(2)).no_proxy().build()
    else {
        return;
    };
    let url = format!("http://{http}/v1/stats");
    loop {
        if let Ok(resp) = client.get(&url).send().await
            && let Ok(v) = resp.json::<serde_json::Value>().await
        {
            established.store(v["established"].as_u64().unwrap_or(0), Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Raise the kernel settings a run of `connections` needs, where this process may; one line
/// per setting saying what was done or why not. Never lowers a setting.
pub fn tune_kernel(connections: u64) -> Vec<String> {
    let mut out = Vec::new();
    let mut raise = |name: &str, want: u64| {
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        let Ok(cur) = std::fs::read_to_string(&path) else {
            out.push(format!("{name}: not present"));
            return;
        };
        let cur: u64 = cur.trim().parse().unwrap_or(0);
        if cur >= want {
            out.push(format!("{name} = {cur} (enough)"));
        } else {
            match std::fs::write(&path, want.to_string()) {
                Ok(()) => out.push(format!("{name} = {want} (was {cur})")),
                Err(e) => out.push(format!("{name} = {cur}: could not raise to {want}: {e}")),
            }
        }
    };
    raise("fs.file-max", (2 * connections + 100_000).max(4_194_304));
    raise("net.core.somaxconn", 4096);
    raise("net.ipv4.tcp_max_syn_backlog", 8192);
    if Path::new("/proc/sys/net/netfilter/nf_conntrack_max").exists() {
        raise("net.netfilter.nf_conntrack_max", 2 * connections + 65_536);
    }
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    match std::fs::read_to_string(path) {
        Ok(cur) => {
            let v: Vec<u64> = cur.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            if v.len() == 2 && v[0] <= 1024 && v[1] >= 65_535 {
                out.push(format!("net.ipv4.ip_local_port_range = {} {} (enough)", v[0], v[1]));
            } else {
                match std::fs::write(path, "1024 65535") {
                    Ok(()) => out.push(format!("net.ipv4.ip_local_port_range = 1024 65535 (was {})", cur.trim())),
                    Err(e) => out.push(format!(
                        "net.ipv4.ip_local_port_range = {}: could not widen: {e} (workers bind several source addresses instead)",
                        cur.trim()
                    )),
                }
            }
        }
        Err(_) => out.push("net.ipv4.ip_local_port_range: not present".into()),
    }
    out
}

/// Where the Holdfast binaries are: next to this executable (`target/<profile>/`).
pub fn default_bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}
