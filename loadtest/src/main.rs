//! `holdfast-loadtest`: mint tokens, run a demo client, run load scenarios against gateways
//! or a local cluster it launches. See `docs/LOADTEST.md`.

use std::process::ExitCode;

use clap::Parser;
use holdfast_loadtest::cli::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    if args.is_worker() {
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
    match runtime.block_on(args.run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("holdfast-loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}
