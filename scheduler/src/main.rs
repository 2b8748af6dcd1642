//! `holdfast-scheduler`: run a scheduler instance.
//!
//! With no arguments it starts a development instance: the dispatch API on `0.0.0.0:7300`,
//! gateway reports, admin and `/metrics` on `127.0.0.1:7380`, the built-in rules and the
//! development shared secret (with a warning). See `docs/SCHEDULER.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use holdfast_scheduler::config::{Config, DEV_SECRET};

/// Holdfast scheduler: tells clients which gateway to use and rebalances the fleet.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (optional; every setting has a default).
    #[arg(long, short = 'c', env = "HOLDFAST_SCHEDULER_CONFIG")]
    config: Option<PathBuf>,
    /// Override a setting, e.g. `--set dispatch.addr=0.0.0.0:7301` (repeatable; wins over
    /// the file and the environment).
    #[arg(long = "set", value_name = "SECTION.FIELD=VALUE")]
    sets: Vec<String>,
    /// Validate the configuration and the rules file, then exit.
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
            eprintln!("holdfast-scheduler: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = cfg.validate() {
        eprintln!("holdfast-scheduler: configuration error: {e}");
        return ExitCode::from(2);
    }
    if let Some(path) = &cfg.rules.file
        && let Err(e) = holdfast_scheduler::rules::Rules::load(path)
    {
        eprintln!("holdfast-scheduler: {e}");
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
            "control.secret is not set: reports are signed with the PUBLIC development secret \
             {DEV_SECRET:?}. Anyone who reaches the control port can register gateways. Set \
             HOLDFAST_SCHEDULER_SECRET (the same on every instance and gateway) before \
             exposing this instance."
        );
    }
    let running = match holdfast_scheduler::start(cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("holdfast-scheduler: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Tests and scripts wait for this line; keep its format.
    println!(
        "holdfast-scheduler ready: dispatch={} control={} instance={}",
        running.dispatch_addr, running.control_addr, running.instance
    );
    tracing::info!(dispatch = %running.dispatch_addr, control = %running.control_addr,
        instance = %running.instance, "scheduler started");
    running.wait_for_signal();
    tracing::info!("shutting down");
    running.shutdown();
    ExitCode::SUCCESS
}
