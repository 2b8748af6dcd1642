//! `holdfast-loadtest`: mint tokens, run a demo client, run load scenarios against gateways
//! or a local cluster it launches. See `docs/LOADTEST.md`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};
use holdfast_loadtest::cluster::{Cluster, ClusterSpec, default_bin_dir, tune_kernel};
use holdfast_loadtest::plan::{GatewayAddr, Target, Transport};
use holdfast_loadtest::progress::Progress;
use holdfast_loadtest::quic::Trust;
use holdfast_loadtest::scenario::{RunSpec, Scenario};
use holdfast_loadtest::{DEV_SECRET, demo, scenario, token};

/// How a QUIC client trusts the gateway's certificate.
#[derive(ClapArgs, Debug)]
struct TrustArgs {
    /// PEM file of the CA (or the self-signed certificate) to trust over QUIC.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Over QUIC, trust exactly the certificate with this SHA-256 (hex, as the gateway
    /// prints it). For development certificates only.
    #[arg(long, conflicts_with = "ca")]
    insecure_dev_cert: Option<String>,
}

impl TrustArgs {
    /// The trust these flags give; an error if neither is given.
    fn trust(self) -> Result<Trust, String> {
        match (self.ca, self.insecure_dev_cert) {
            (Some(ca), _) => Ok(Trust::Ca(ca)),
            (None, Some(sha)) => Ok(Trust::Pinned(sha)),
            (None, None) => Err("QUIC needs --ca FILE or --insecure-dev-cert SHA256".into()),
        }
    }
}

/// Holdfast load generator, demo client and cluster launcher.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print a development token (HS256) for a user.
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        user: String,
        /// The shared secret; default the gateway's development secret.
        #[arg(long, env = "HOLDFAST_JWT_SECRET", default_value = DEV_SECRET)]
        secret: String,
        /// Validity in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
        /// Bind the token to this device id.
        #[arg(long)]
        device: Option<String>,
        /// Bind the token to this platform (ios, android, web, ...).
        #[arg(long)]
        platform: Option<String>,
    },
    /// Connect as one user, print every push, acknowledge it.
    Client {
        /// The gateway's client address (its TLS listener's with `--tls-ca`).
        #[arg(long, default_value = "127.0.0.1:7100")]
        addr: SocketAddr,
        /// Connect over TLS, trusting the CA certificates in this PEM file.
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        /// The name the gateway's certificate must carry (default: `--addr`'s IP).
        #[arg(long, requires = "tls_ca")]
        tls_name: Option<String>,
        /// The user id.
        #[arg(long)]
        user: String,
        /// A token; default: minted with `--secret`.
        #[arg(long)]
        token: Option<String>,
        /// The secret to mint a token with.
        #[arg(long, env = "HOLDFAST_JWT_SECRET", default_value = DEV_SECRET)]
        secret: String,
        /// Platform: ios, android, windows, macos, linux, web, other.
        #[arg(long, default_value = "linux")]
        platform: String,
        /// Device id.
        #[arg(long, default_value = "cli")]
        device: String,
        /// Exit after this many pushes (default: run until closed).
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this many seconds.
        #[arg(long)]
        timeout_secs: Option<u64>,
        /// Connect over QUIC (`--addr` is then the gateway's `[quic]` UDP address); trust
        /// its certificate with `--ca` or `--insecure-dev-cert`.
        #[arg(long)]
        quic: bool,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Hold N idle QUIC connections (users `quic-0`, `quic-1`, ...) until Ctrl-C or SIGTERM;
    /// prints `holding N` once all are authenticated (for memory measurements).
    QuicHold {
        /// The gateway's `[quic]` address.
        #[arg(long, default_value = "127.0.0.1:7101")]
        addr: SocketAddr,
        /// Connections to hold.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Heartbeat interval to ask for, in ms (clamped by the gateway).
        #[arg(long, default_value_t = 600_000)]
        heartbeat_ms: u64,
        /// The secret to mint tokens with.
        #[arg(long, env = "HOLDFAST_JWT_SECRET", default_value = DEV_SECRET)]
        secret: String,
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Three clients receive pushes you can watch, then (by default) 10,000 clients for
    /// about half a minute: hold, unicast pushes, broadcasts; a summary table and a report.
    Demo {
        /// The gateway's client address.
        #[arg(long, default_value = "127.0.0.1:7100")]
        addr: SocketAddr,
        /// The gateway's HTTP API address.
        #[arg(long, default_value = "127.0.0.1:7180")]
        http: SocketAddr,
        /// The secret to mint tokens with.
        #[arg(long, env = "HOLDFAST_JWT_SECRET", default_value = DEV_SECRET)]
        secret: String,
        /// Clients of the load part (0 skips it).
        #[arg(long, default_value_t = 10_000)]
        clients: u64,
        /// Seconds of each measured phase of the load part.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Where the report goes (default `loadtest-out/demo-<time>`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run load scenarios against gateways, a scheduler, or a local cluster it starts.
    Run(Box<RunArgs>),
    /// Start a local cluster (gateways, optionally a scheduler), print where everything is,
    /// and keep it up until Ctrl-C or SIGTERM; then stop every process it started.
    Cluster(ClusterArgs),
    /// Render `report.html` again from a run's `result.json` (next to it, or to `--out`).
    Report {
        /// The `result.json` of a run.
        json: PathBuf,
        /// Where to write the HTML (default: `report.html` beside the JSON).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Internal: one worker process of a run (reads its plan on stdin).
    #[command(hide = true)]
    Worker,
}

#[derive(ClapArgs, Debug)]
struct ClusterArgs {
    /// Gateway processes (each holds at most `--gateway-max-connections`).
    #[arg(long, default_value_t = 1)]
    gateways: u32,
    /// Also start a scheduler; every gateway registers with it.
    #[arg(long)]
    scheduler: bool,
    /// Also start a static ring of this many status nodes: the gateways keep presence
    /// there and route pushes and kicks to each other.
    #[arg(long, default_value_t = 0)]
    status_nodes: u32,
    /// `listen.max_connections` of each gateway; keep it below the open-file limit (20,000 here).
    #[arg(long, default_value_t = 19_500)]
    gateway_max_connections: u32,
    /// `node.workers` of each gateway (0 = one per CPU).
    #[arg(long, default_value_t = 0)]
    gateway_workers: u32,
    /// Extra gateway setting, `section.field=value` (repeatable).
    #[arg(long = "gateway-set")]
    gateway_sets: Vec<String>,
    /// Where `holdfast-gateway` and `holdfast-scheduler` are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where the logs go (default `loadtest-out/cluster-<time>`).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Do not touch kernel settings.
    #[arg(long)]
    no_sysctl: bool,
    /// The gateways' token secret (default: their development secret).
    #[arg(long, env = "HOLDFAST_JWT_SECRET")]
    secret: Option<String>,
    /// Give every gateway a TLS listener too, with a certificate for 127.0.0.1 and
    /// localhost signed by a CA generated into the log directory (`certs/ca.pem`).
    #[arg(long)]
    tls: bool,
    /// Enable every gateway's QUIC listener too, with the same generated certificate.
    #[arg(long)]
    quic: bool,
}

#[derive(ClapArgs, Debug)]
struct RunArgs {
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

fn main() -> ExitCode {
    let args = Args::parse();
    if let Cmd::Worker = args.cmd {
        return match holdfast_loadtest::worker::main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("holdfast-loadtest worker: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // One thread: child processes are spawned from it, and PR_SET_PDEATHSIG follows the
    // thread that forked (see `coordinator::die_with_parent`).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args.cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("holdfast-loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

fn timestamp() -> String {
    let secs = holdfast_loadtest::plan::wall_ns() / 1_000_000_000;
    format!("{secs}")
}

/// A watch that turns true on Ctrl-C or SIGTERM.
fn stop_signal() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        let _ = tx.send(true);
    });
    rx
}

async fn run(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Token { user, secret, ttl, device, platform } => {
            let t = token::mint(
                &secret,
                &user,
                Duration::from_secs(ttl),
                device.as_deref(),
                platform.as_deref(),
            )
            .map_err(|e| e.to_string())?;
            println!("{t}");
            Ok(())
        }
        Cmd::Client {
            addr,
            tls_ca,
            tls_name,
            user,
            token,
            secret,
            platform,
            device,
            count,
            timeout_secs,
            quic,
            trust,
        } => {
            let trust = if quic { Some(trust.trust()?) } else { None };
            let token = match token {
                Some(t) => t,
                None => token::mint(&secret, &user, Duration::from_secs(86_400), None, None)
                    .map_err(|e| e.to_string())?,
            };
            let over = match (&trust, tls_ca.as_deref()) {
                (Some(t), _) => demo::Over::Quic(t),
                (None, Some(ca)) => demo::Over::Tls(ca, tls_name.as_deref()),
                (None, None) => demo::Over::Tcp,
            };
            let work =
                demo::client(addr, over, &user, token, demo::platform(&platform), &device, count);
            match timeout_secs {
                Some(s) => tokio::time::timeout(Duration::from_secs(s), work)
                    .await
                    .map_err(|_| format!("timed out after {s} s"))?,
                None => work.await,
            }
        }
        Cmd::QuicHold { addr, count, heartbeat_ms, secret, trust } => {
            let trust = trust.trust()?;
            let hold = holdfast_loadtest::quic::hold(addr, &trust, count, &secret, heartbeat_ms);
            let mut stop = stop_signal();
            tokio::select! {
                r = hold => r.map_err(|e| e.to_string()),
                _ = stop.changed() => Ok(()),
            }
        }
        Cmd::Demo { addr, http, secret, clients, secs, out } => {
            demo::demo(addr, http, &secret).await?;
            if clients == 0 {
                return Ok(());
            }
            println!();
            println!(
                "Now {clients} clients: connect, hold with heartbeats, unicast pushes, broadcasts."
            );
            let out =
                out.unwrap_or_else(|| PathBuf::from(format!("loadtest-out/demo-{}", timestamp())));
            let spec = RunSpec {
                label: "demo".into(),
                command: command_line(),
                clients,
                rate: 5000.0,
                per_worker: 19_000,
                max_pending: 512,
                heartbeat_ms: 10_000,
                token_ttl_secs: 3600,
                secret,
                user_prefix: "demo-".into(),
                sources_per_worker: 4,
                scenarios: vec![Scenario::Hold, Scenario::Push, Scenario::Broadcast],
                hold_secs: secs,
                settle_secs: 0.0,
                push_rate: 1000.0,
                push_secs: secs,
                broadcasts: 3,
                rooms: 0,
                refresh_secs: secs,
                flood_every: 10,
                flood_rate: 100,
                flood_workers: 0,
                kick_users: 0,
                kick_code: 303,
                storm_timeout_secs: 30.0,
                backoff_ms: (500, 30_000),
                cross_gateway: false,
                target: Target::Fixed,
                transport: Transport::Tcp,
                ca: None,
                gateways: vec![GatewayAddr::plain(addr, http)],
                gateway_pids: vec![],
                exe: std::env::current_exe().map_err(|e| e.to_string())?,
                out_dir: out,
                ramp_timeout_secs: 0.0,
                kernel: vec![],
            };
            let mut progress = Progress::new(false);
            let result = scenario::run(spec, None, &mut progress, stop_signal())
                .await
                .map_err(|e| e.to_string())?;
            drop(progress);
            println!("\nSummary\n{}", result.summary_table());
            if let Some(p) = result.files.get("html") {
                println!("Open the report: {}", p.display());
            }
            Ok(())
        }
        Cmd::Run(args) => run_scenarios(*args).await,
        Cmd::Cluster(args) => cluster(args).await,
        Cmd::Report { json, out } => {
            let text = std::fs::read(&json).map_err(|e| format!("{}: {e}", json.display()))?;
            let result: holdfast_loadtest::report::RunResult =
                serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", json.display()))?;
            let out = out.unwrap_or_else(|| json.with_file_name("report.html"));
            std::fs::write(&out, holdfast_loadtest::report::html::render(&result))
                .map_err(|e| format!("{}: {e}", out.display()))?;
            println!("{}", out.display());
            Ok(())
        }
        Cmd::Worker => Ok(()),
    }
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

async fn run_scenarios(a: RunArgs) -> Result<(), String> {
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

/// ` tls ADDR` and ` quic ADDR` for the listeners a gateway has.
fn secure_addrs(g: &GatewayAddr) -> String {
    let mut out = String::new();
    if let Some(tls) = g.tls {
        out.push_str(&format!(" tls {tls}"));
    }
    if let Some(quic) = g.quic {
        out.push_str(&format!(" quic {quic}"));
    }
    out
}

async fn cluster(a: ClusterArgs) -> Result<(), String> {
    let log_dir =
        a.log_dir.unwrap_or_else(|| PathBuf::from(format!("loadtest-out/cluster-{}", timestamp())));
    if !a.no_sysctl {
        let want = u64::from(a.gateways) * u64::from(a.gateway_max_connections);
        for k in tune_kernel(want) {
            println!("kernel: {k}");
        }
    }
    let spec = ClusterSpec {
        gateways: a.gateways,
        max_connections: a.gateway_max_connections,
        gateway_workers: a.gateway_workers,
        scheduler: a.scheduler,
        status_nodes: a.status_nodes,
        gateway_sets: a.gateway_sets,
        bin_dir: a.bin_dir.unwrap_or_else(default_bin_dir),
        log_dir: log_dir.clone(),
        jwt_secret: a.secret,
        tls: a.tls,
        quic: a.quic,
        cert_dir: log_dir.join("certs"),
    };
    let stop = stop_signal();
    let mut c = Cluster::start(&spec).await.map_err(|e| e.to_string())?;
    for g in &c.gateways {
        println!(
            "gateway {} pid {} clients {}{} api http://{} metrics http://{}/metrics log {}",
            g.name,
            g.pid,
            g.addr.tcp,
            secure_addrs(&g.addr),
            g.addr.http,
            g.addr.http,
            g.log.display()
        );
    }
    if let Some(ca) = &c.ca {
        println!("TLS/QUIC clients trust {}", ca.display());
    }
    if let Some(s) = &c.scheduler {
        println!(
            "scheduler pid {} dispatch http://{}/v1/dispatch control http://{} metrics http://{}/metrics log {}",
            s.pid,
            s.dispatch,
            s.control,
            s.control,
            s.log.display()
        );
        let ok = c.wait_registered(Duration::from_secs(20)).await;
        println!("scheduler sees every gateway: {ok}");
    }
    for n in &c.status {
        println!(
            "status pid {} data {} admin http://{} log {}",
            n.pid,
            n.data,
            n.admin,
            n.log.display()
        );
    }
    println!("cluster ready: {} process(es); Ctrl-C stops them all", c.pids().len());
    let mut stop = stop;
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            break;
        }
    }
    println!("stopping the cluster");
    c.shutdown(Duration::from_secs(5)).await;
    println!("cluster stopped");
    Ok(())
}
