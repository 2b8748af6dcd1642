//! The command line: the subcommands and their flags ([`Args`]), and what each does: a
//! token, a demo client, idle QUIC connections, the demo, a report rendered again here;
//! `run` and `cluster` in their own files.

mod cluster;
mod run;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};

use crate::plan::{GatewayAddr, Target, Transport};
use crate::progress::Progress;
use crate::quic::Trust;
use crate::scenario::{RunSpec, Scenario};
use crate::{DEV_SECRET, demo, scenario, token};
use cluster::ClusterArgs;
use run::RunArgs;

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
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

impl Args {
    /// Whether this is the internal `worker` subcommand (run without a tokio runtime).
    pub fn is_worker(&self) -> bool {
        matches!(self.cmd, Cmd::Worker)
    }

    /// Run the command on the current tokio runtime (the `worker` subcommand does nothing).
    pub async fn run(self) -> Result<(), String> {
        run(self.cmd).await
    }
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

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

fn timestamp() -> String {
    let secs = crate::plan::wall_ns() / 1_000_000_000;
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
            let hold = crate::quic::hold(addr, &trust, count, &secret, heartbeat_ms);
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
        Cmd::Run(args) => run::run_scenarios(*args).await,
        Cmd::Cluster(args) => cluster::cluster(args).await,
        Cmd::Report { json, out } => {
            let text = std::fs::read(&json).map_err(|e| format!("{}: {e}", json.display()))?;
            let result: crate::report::RunResult =
                serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", json.display()))?;
            let out = out.unwrap_or_else(|| json.with_file_name("report.html"));
            std::fs::write(&out, crate::report::html::render(&result))
                .map_err(|e| format!("{}: {e}", out.display()))?;
            println!("{}", out.display());
            Ok(())
        }
        Cmd::Worker => Ok(()),
    }
}
