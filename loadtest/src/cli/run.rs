//! The `run` subcommand: its flags, turned into a [`RunSpec`] (with a local cluster
//! started first when asked), run, and summed up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args as ClapArgs;

use super::cluster::secure_addrs;
use super::{command_line, stop_signal, timestamp};
use crate::DEV_SECRET;
use crate::cluster::{Cluster, ClusterSpec, default_bin_dir, tune_kernel};
use crate::plan::{GatewayAddr, Target, Transport};
use crate::progress::Progress;
use crate::scenario::{self, RunSpec, Scenario};

#[derive(ClapArgs, Debug)]
pub(super) struct RunArgs {
    /// Phases after the ramp, comma-separated: hold, heartbeat-cpu, push, broadcast,
    /// room-push, room-broadcast, refresh, flood, kick, drain, storm, fleet-restart (they run in that
    /// order; the room phases need --rooms).
    #[arg(long, value_delimiter = ',', default_value = "hold,push,broadcast")]
    scenarios: Vec<String>,
    /// Clients in total.
    #[arg(long, short = 'n', default_value_t = 1000)]
    clients: u64,
    /// Connects per second, all workers together (default 2,000; with heartbeat-cpu,
    /// clients ÷ heartbeat interval, so heartbeats are spread evenly).
    #[arg(long)]
    rate: Option<f64>,
    /// Most clients per worker process (each needs one file descriptor per client).
    #[arg(long, default_value_t = 19_000)]
    per_worker: u32,
    /// Most connections pending (connecting or authenticating) at once, all workers
    /// together (default 512; 64 over QUIC, where a burst of handshakes overflows the
    /// gateway's UDP receive buffer and the lost packets wait for quinn's retransmit timer).
    #[arg(long)]
    max_pending: Option<u32>,
    /// A gateway: `TCP` or `TCP/HTTP` (default HTTP: the TCP port + 80), then optionally
    /// `,tls=ADDR` and `,quic=ADDR` (its TLS and QUIC listeners, for --transport).
    /// Repeatable.
    #[arg(long = "gateway")]
    gateways: Vec<String>,
    /// How clients connect: `tcp`; `tls` (TLS 1.3 to each gateway's `[tls]` listener,
    /// rustls on the same event loop: ~8 KB more per client); `quic` (its `[quic]`
    /// listener, quinn on one runtime thread and one UDP socket per worker: ~37 KB more per
    /// client and ~3x the CPU per heartbeat; docs/LOADTEST.md § Transports). With --cluster the
    /// gateways get that listener and a generated certificate the clients trust; with
    /// --gateway, name the listeners there and give --ca. A scheduler is asked for
    /// gateways offering the transport (`transports=tls|quic`), so with --with-scheduler
    /// the launched gateways advertise `tls://` and `quic://` endpoints.
    #[arg(long, default_value = "tcp", value_parser = parse_transport)]
    transport: Transport,
    /// PEM file of the CA (or self-signed certificate) clients trust over TLS or QUIC
    /// (default with --cluster: the generated one).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Ask this scheduler (base URL of its dispatch API) for a gateway before each connect.
    #[arg(long)]
    scheduler: Option<String>,
    /// Gateway processes to measure (CPU, RSS) when not launched by this run. Repeatable.
    #[arg(long)]
    gateway_pid: Vec<u32>,
    /// Launch a local cluster of this many gateways for the run.
    #[arg(long)]
    cluster: Option<u32>,
    /// With `--cluster`: also launch a scheduler; clients then dispatch through it.
    #[arg(long)]
    with_scheduler: bool,
    /// With `--cluster`: also launch a ring of this many status nodes; the gateways keep
    /// presence there and route to each other, so pushes go through any gateway's API and a
    /// push to everyone is one call.
    #[arg(long, default_value_t = 0)]
    status_nodes: u32,
    /// The gateways given with `--gateway` route pushes to each other (a shared presence
    /// backend): push through any of them, to everyone through one.
    #[arg(long)]
    cross_gateway: bool,
    /// With `--cluster`: `listen.max_connections` of each gateway.
    #[arg(long, default_value_t = 19_500)]
    gateway_max_connections: u32,
    /// With `--cluster`: `node.workers` of each gateway (0 = one per CPU).
    #[arg(long, default_value_t = 0)]
    gateway_workers: u32,
    /// With `--cluster`: extra gateway setting `section.field=value` (repeatable).
    #[arg(long = "gateway-set")]
    gateway_sets: Vec<String>,
    /// With `--cluster`: where the binaries are (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// With `--cluster`: do not touch kernel settings.
    #[arg(long)]
    no_sysctl: bool,
    /// Heartbeat interval clients ask for, ms (0 = the gateway's default; a launched
    /// cluster's `heartbeat.min_ms` is lowered to it when needed).
    #[arg(long, default_value_t = 0)]
    heartbeat_ms: u64,
    /// Token lifetime, seconds; clients refresh at 80 % of it.
    #[arg(long, default_value_t = 86_400)]
    token_ttl_secs: u64,
    /// The HS256 secret tokens are signed with.
    #[arg(long, env = "HOLDFAST_JWT_SECRET", default_value = DEV_SECRET)]
    secret: String,
    /// User id prefix (letters, digits, `-`, `_`, `.`): client i is PREFIX + i.
    #[arg(long, default_value = "lt-")]
    user_prefix: String,
    /// Source addresses in 127.0.0.0/8 per worker (0 = the kernel's choice, 1-4).
    #[arg(long, default_value_t = 4)]
    sources_per_worker: u32,
    /// hold / heartbeat-cpu: seconds.
    #[arg(long, default_value_t = 10.0)]
    hold_secs: f64,
    /// heartbeat-cpu: quiet seconds before the measured hold.
    #[arg(long, default_value_t = 5.0)]
    settle_secs: f64,
    /// push, flood, storm: unicast pushes per second (storm: 0 = none).
    #[arg(long, default_value_t = 1000.0)]
    push_rate: f64,
    /// push: seconds; flood: seconds of each half.
    #[arg(long, default_value_t = 10.0)]
    push_secs: f64,
    /// broadcast: pushes to everyone; room-broadcast: pushes to room lt/0.
    #[arg(long, default_value_t = 3)]
    broadcasts: u32,
    /// Rooms the clients join (client i joins lt/{i % rooms} by its token's rooms claim;
    /// 0: none). room-push pushes to random rooms at --push-rate for --push-secs.
    #[arg(long, default_value_t = 0)]
    rooms: u32,
    /// refresh: the window over which every client refreshes, seconds.
    #[arg(long, default_value_t = 10.0)]
    refresh_secs: f64,
    /// flood: one client in this many floods.
    #[arg(long, default_value_t = 10)]
    flood_every: u32,
    /// flood: `PING`s per second per flooding client (keep it below the gateways'
    /// `limits.inbound_frames_per_sec`; a launched cluster sets that to 62,500).
    #[arg(long, default_value_t = 50_000)]
    flood_rate: u32,
    /// flood: put the flooders only in the last K worker processes (which then send no
    /// pushes), so the measuring clients' process never handles flood traffic; 0 mixes
    /// flooders into every worker.
    #[arg(long, default_value_t = 0)]
    flood_workers: u32,
    /// kick: users to kick through the API (spread over the client indices).
    #[arg(long, default_value_t = 100)]
    kick_users: u64,
    /// kick: the code, 3xx: 303 (token expired) makes clients come back with a new token;
    /// 301, 302, 304 make them stay away.
    #[arg(long, default_value_t = 303)]
    kick_code: u16,
    /// kick, drain, storm: longest wait for every client to be back, seconds.
    #[arg(long, default_value_t = 60.0)]
    storm_timeout_secs: f64,
    /// Reconnect backoff base, ms.
    #[arg(long, default_value_t = 500)]
    backoff_base_ms: u64,
    /// Reconnect backoff cap, ms.
    #[arg(long, default_value_t = 30_000)]
    backoff_cap_ms: u64,
    /// Give up on the ramp after this many seconds (default: from the rate).
    #[arg(long, default_value_t = 0.0)]
    ramp_timeout_secs: f64,
    /// Where `result.json`, `report.html` and the logs go (default `loadtest-out/<time>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print phase headlines and results only.
    #[arg(long)]
    quiet: bool,
}

fn parse_transport(s: &str) -> Result<Transport, String> {
    Transport::parse(s).ok_or_else(|| format!("{s:?}: tcp, tls or quic"))
}

fn parse_gateway(s: &str) -> Result<GatewayAddr, String> {
    let mut parts = s.split(',');
    let first = parts.next().unwrap_or_default();
    let (tcp, http) = match first.split_once('/') {
        Some((t, h)) => (t, Some(h)),
        None => (first, None),
    };
    let addr = |a: &str| a.parse::<SocketAddr>().map_err(|e| format!("--gateway {s}: {e}"));
    let tcp = addr(tcp)?;
    let http = match http {
        Some(h) => addr(h)?,
        None => SocketAddr::new(tcp.ip(), tcp.port().wrapping_add(80)),
    };
    let mut g = GatewayAddr::plain(tcp, http);
    for part in parts {
        match part.split_once('=') {
            Some(("tls", a)) => g.tls = Some(addr(a)?),
            Some(("quic", a)) => g.quic = Some(addr(a)?),
            _ => return Err(format!("--gateway {s}: {part:?} is not tls=ADDR or quic=ADDR")),
        }
    }
    Ok(g)
}

pub(super) async fn run_scenarios(a: RunArgs) -> Result<(), String> {
    let mut scenarios = Vec::new();
    for name in &a.scenarios {
        let s = Scenario::parse(name.trim()).ok_or_else(|| {
            let known: Vec<&str> = Scenario::ALL.iter().map(|(_, n)| *n).collect();
            format!("unknown scenario {name:?} (known: {})", known.join(", "))
        })?;
        scenarios.push(s);
    }
    if !a.user_prefix.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err("--user-prefix: letters, digits, '-', '_' and '.' only".into());
    }
    let out =
        a.out.clone().unwrap_or_else(|| PathBuf::from(format!("loadtest-out/{}", timestamp())));
    let mut kernel = Vec::new();
    let mut cluster = None;
    let mut gateways: Vec<GatewayAddr> =
        a.gateways.iter().map(|g| parse_gateway(g)).collect::<Result<_, _>>()?;
    let mut target = match &a.scheduler {
        Some(url) => Target::Dispatch { url: url.clone() },
        None => Target::Fixed,
    };
    let mut ca = a.ca.clone();
    if a.transport != Transport::Tcp && a.cluster.is_none() && ca.is_none() {
        return Err(format!("--transport {} needs --ca FILE (or --cluster)", a.transport.name()));
    }
    let stop = stop_signal();
    if let Some(n) = a.cluster {
        if !a.no_sysctl {
            kernel = tune_kernel(a.clients);
            for k in &kernel {
                println!("kernel: {k}");
            }
        }
        let mut sets = Vec::new();
        if a.heartbeat_ms > 0 && a.heartbeat_ms < 10_000 {
            sets.push(format!("heartbeat.min_ms={}", a.heartbeat_ms));
        }
        if scenarios.contains(&Scenario::Flood) {
            // The flooders stay below the limit; the limit must let them saturate a loop.
            sets.push("limits.inbound_frames_per_sec=62500".into());
            sets.push("limits.inbound_burst=62500".into());
        }
        sets.extend(a.gateway_sets.iter().cloned());
        let spec = ClusterSpec {
            gateways: n,
            max_connections: a.gateway_max_connections,
            gateway_workers: a.gateway_workers,
            scheduler: a.with_scheduler,
            status_nodes: a.status_nodes,
            gateway_sets: sets,
            bin_dir: a.bin_dir.clone().unwrap_or_else(default_bin_dir),
            log_dir: out.join("logs"),
            jwt_secret: (a.secret != DEV_SECRET).then(|| a.secret.clone()),
            tls: a.transport == Transport::Tls,
            quic: a.transport == Transport::Quic,
            cert_dir: out.join("certs"),
        };
        let c = Cluster::start(&spec).await.map_err(|e| e.to_string())?;
        for g in &c.gateways {
            println!(
                "cluster: {} pid {} tcp {} http {}{} log {}",
                g.name,
                g.pid,
                g.addr.tcp,
                g.addr.http,
                secure_addrs(&g.addr),
                g.log.display()
            );
        }
        if a.ca.is_none() {
            ca = c.ca.clone();
        }
        if let Some(s) = &c.scheduler {
            println!(
                "cluster: scheduler pid {} dispatch {} control {}",
                s.pid, s.dispatch, s.control
            );
            target = Target::Dispatch { url: format!("http://{}", s.dispatch) };
            if !c.wait_registered(Duration::from_secs(20)).await {
                let mut c = c;
                c.shutdown(Duration::from_secs(5)).await;
                return Err("the scheduler did not see every gateway within 20 s".into());
            }
        }
        gateways = c.addrs();
        cluster = Some(c);
    }
    let interval = if a.heartbeat_ms > 0 { a.heartbeat_ms } else { 30_000 };
    let rate = a.rate.unwrap_or_else(|| {
        if scenarios.contains(&Scenario::HeartbeatCpu) {
            (a.clients as f64 * 1000.0 / interval as f64).max(1.0)
        } else {
            2000.0
        }
    });
    let spec = RunSpec {
        label: a.scenarios.join(","),
        command: command_line(),
        clients: a.clients,
        rate,
        per_worker: a.per_worker,
        max_pending: a.max_pending.unwrap_or(match a.transport {
            Transport::Quic => 64,
            Transport::Tcp | Transport::Tls => 512,
        }),
        heartbeat_ms: a.heartbeat_ms,
        token_ttl_secs: a.token_ttl_secs,
        secret: a.secret.clone(),
        user_prefix: a.user_prefix.clone(),
        sources_per_worker: a.sources_per_worker,
        scenarios,
        hold_secs: a.hold_secs,
        settle_secs: a.settle_secs,
        push_rate: a.push_rate,
        push_secs: a.push_secs,
        broadcasts: a.broadcasts,
        rooms: a.rooms,
        refresh_secs: a.refresh_secs,
        flood_every: a.flood_every,
        flood_rate: a.flood_rate,
        flood_workers: a.flood_workers,
        kick_users: a.kick_users,
        kick_code: a.kick_code,
        storm_timeout_secs: a.storm_timeout_secs,
        backoff_ms: (a.backoff_base_ms, a.backoff_cap_ms.max(a.backoff_base_ms)),
        cross_gateway: a.cross_gateway || (a.cluster.is_some() && a.status_nodes > 0),
        target,
        transport: a.transport,
        ca,
        gateways,
        gateway_pids: a.gateway_pid.clone(),
        exe: std::env::current_exe().map_err(|e| e.to_string())?,
        out_dir: out,
        ramp_timeout_secs: a.ramp_timeout_secs,
        kernel,
    };
    let mut progress = Progress::new(a.quiet);
    let result = scenario::run(spec, cluster.as_mut(), &mut progress, stop).await;
    drop(progress);
    if let Some(c) = cluster.as_mut() {
        c.shutdown(Duration::from_secs(5)).await;
    }
    let result = result.map_err(|e| e.to_string())?;
    println!("\nSummary\n{}", result.summary_table());
    Ok(())
}
