//! `holdfast-status`: run a status node.
//!
//! With no arguments it starts a one-node ring for development: the binary protocol on
//! `127.0.0.1:7300`, the admin API and `/metrics` on `127.0.0.1:7380`, and the public
//! development secret (with a warning). See `docs/STATUS.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use holdfast_status::node::config::{Config, DEV_SECRET};

/// Holdfast status node: presence on a consistent-hash ring.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (optional; every setting has a default).
    #[arg(long, short = 'c', env = "HOLDFAST_STATUS_CONFIG")]
    config: Option<PathBuf>,
    /// Override a setting, e.g. `--set node.id=2` (repeatable; wins over the file).
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
    let args = Args::parse();
    let cfg = match Config::load(args.config.as_deref(), &args.sets, std::env::vars()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("holdfast-status: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = cfg.validate() {
        eprintln!("holdfast-status: configuration error: {e}");
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
            "cluster.secret is not set: peers authenticate with the PUBLIC development secret \
             {DEV_SECRET:?}. Set HOLDFAST_STATUS_SECRET before exposing this node."
        );
    }
    // One thread: a current-thread runtime (no work stealing, no cross-thread wake-ups).
    let runtime = if cfg.node.threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(cfg.node.threads))
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("holdfast-status: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let running = match holdfast_status::node::run::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("holdfast-status: cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        // Tests and scripts wait for this line; keep its format.
        println!(
            "holdfast-status ready: data={} admin={} node={} epoch={}",
            running.data_addr,
            running.admin_addr,
            running.node.id,
            running.node.epoch()
        );
        tracing::info!(data = %running.data_addr, admin = %running.admin_addr, "status node started");
        wait_for_signal().await;
        tracing::info!("shutting down");
        running.stop();
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
