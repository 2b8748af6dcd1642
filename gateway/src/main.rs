//! `holdfast-gateway`: run a gateway node.
//!
//! With no arguments it starts a working single node on the defaults: clients on
//! `0.0.0.0:7100`, the HTTP API and `/metrics` on `127.0.0.1:7180`, in-process presence, and
//! the development JWT secret (with a warning). See `docs/CONFIG.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use holdfast_gateway::config::{Config, DEV_SECRET};

/// Holdfast gateway: holds client long connections, authenticates, heartbeats and pushes.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (optional; every setting has a default).
    #[arg(long, short = 'c', env = "HOLDFAST_CONFIG")]
    config: Option<PathBuf>,
    /// Override a setting, e.g. `--set listen.addr=0.0.0.0:7200` (repeatable; wins over the
    /// file and the environment).
    #[arg(long = "set", value_name = "SECTION.FIELD=VALUE")]
    sets: Vec<String>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.log.filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if cfg.log.json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    holdfast_gateway::memory::tune_allocator();
    let args = Args::parse();
    let cfg = match Config::load(args.config.as_deref(), &args.sets, std::env::vars()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("holdfast-gateway: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = cfg.validate() {
        eprintln!("holdfast-gateway: configuration error: {e}");
        return ExitCode::from(2);
    }
    if args.print_config {
        print!("{}", cfg.to_toml());
        return ExitCode::SUCCESS;
    }
    if args.check_config {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    init_logging(&cfg);
    if cfg.uses_dev_secret() {
        tracing::warn!(
            "auth.secret is not set: tokens are verified with the PUBLIC development secret \
             {DEV_SECRET:?}. Anyone can mint tokens. Set HOLDFAST_JWT_SECRET or auth.secret \
             (or use RS256/ES256) before exposing this gateway."
        );
    }
    let mut running = match holdfast_gateway::start_default(cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("holdfast-gateway: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Tests and scripts wait for this line; keep its format (`tls=` only with a TLS listener,
    // `cluster=` only with a shared presence backend, `health=` only with a TCP check port).
    let mut ready =
        format!("holdfast-gateway ready: tcp={} http={}", running.tcp_addr, running.http_addr);
    if let Some(tls) = running.tls_addr {
        ready.push_str(&format!(" tls={tls}"));
    }
    if let Some(cluster) = running.cluster_addr {
        ready.push_str(&format!(" cluster={cluster}"));
    }
    if let Some(health) = running.health_addr {
        ready.push_str(&format!(" health={health}"));
    }
    if let Some((quic, cert)) = &running.quic {
        ready.push_str(&format!(" quic={quic}"));
        let what = match (cert.dev, cert.generated) {
            (true, true) => "generated a self-signed development certificate",
            (true, false) => "self-signed development certificate",
            (false, _) => "certificate",
        };
        // Clients pin the fingerprint (`holdfast-loadtest client --quic
        // --insecure-dev-cert SHA256`) or trust the file (`--ca FILE`).
        println!("holdfast-gateway quic: {what} {} sha256={}", cert.path.display(), cert.sha256);
    }
    println!("{ready}");
    tracing::info!(tcp = %running.tcp_addr, http = %running.http_addr, "gateway started");
    let reload = |running: &holdfast_gateway::Running| {
        // SIGHUP: re-read the configuration and apply what can change live: [auth], and the
        // TLS certificate and key. A configuration that does not load changes nothing.
        let reloaded = Config::load(args.config.as_deref(), &args.sets, std::env::vars())
            .and_then(|cfg| cfg.validate().map(|()| cfg));
        let cfg = match reloaded {
            Ok(cfg) => cfg,
            Err(e) => {
                running.tls_reload_refused();
                tracing::error!(error = %e, "SIGHUP: reload refused; the old [auth] and TLS certificate stay");
                return;
            }
        };
        match running.reload_auth(&cfg.auth) {
            Ok(()) => tracing::info!("SIGHUP: [auth] reloaded"),
            Err(e) => tracing::error!(error = %e, "SIGHUP: reload refused; the old [auth] stays"),
        }
        if running.tls_addr.is_some() {
            match running.reload_tls(&cfg.tls) {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
                Err(e) => tracing::error!(
                    error = %e,
                    field = e.field(),
                    "SIGHUP: TLS reload refused; the old certificate stays"
                ),
            }
        }
    };
    if running.wait_for_signal(reload) == holdfast_gateway::Stop::Drain {
        running.drain(reload);
    }
    tracing::info!("shutting down");
    running.shutdown();
    ExitCode::SUCCESS
}
