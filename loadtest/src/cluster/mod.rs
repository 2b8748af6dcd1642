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

mod launch;
mod process;
mod running;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::process::Child;

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
