//! `holdfast-loadtest`: the load generator and benchmark harness of Holdfast.
//!
//! It simulates many real clients (thousands per process, a million across processes),
//! each speaking the protocol through `holdfast_codec::client::Session` exactly as an app
//! would, drives a real local cluster (gateways, scheduler) through scenarios, and reports
//! what happened: live progress, a JSON result and a self-contained HTML report.
//!
//! It is not a gateway test suite (that is `tests/`), and it never connects outside
//! 127.0.0.0/8 unless told to.
//!
//! # Layout
//!
//! - [`engine`]: one mio event loop per worker process driving every client's `Session`
//!   (no task or buffer per client) over plain TCP, TLS (rustls's sans-IO connection on the
//!   same socket) or QUIC (quinn on a runtime thread of the worker, polled by waker);
//!   [`net`]: sockets bound to a worker's own source addresses with
//!   `IP_BIND_ADDRESS_NO_PORT`; [`control`]: the worker's HTTP side (scheduler dispatch by
//!   transport, push API) and command intake, off the event loop.
//!   - `engine/mod.rs`: the `Engine`, its construction, its loop (wake-ups, one turn);
//!   - `engine/connect.rs`: the ramp, sessions and tokens, connecting, dropping, closing;
//!   - `engine/io.rs`: readiness on a socket, reads, writes, what the kernel refused;
//!   - `engine/session.rs`: session events, reconnect advice, token refresh, timers firing;
//!   - `engine/commands.rs`: control-thread replies and commands in, stats and histograms out;
//!   - `engine/jobs.rs`: pushes at a rate, a refresh of every client, the flood;
//!   - `engine/{conn,link,timers}.rs`: a client's record, its transport, the deadline heap.
//! - [`worker`]: the `worker` subcommand, one process of at most ~19,000 clients;
//!   [`plan`]: what the coordinator and workers say to each other (JSON lines).
//! - [`coordinator`]: spawns the workers, sends commands, aggregates their statistics and
//!   merges their HDR histograms exactly ([`stats`]).
//! - [`cluster`]: the local cluster launcher (gateway processes, a scheduler they
//!   register with, a status ring they keep presence in, TLS and QUIC listeners with a
//!   certificate from [`certs`]), readiness on ready lines, teardown of everything.
//!   - `cluster/mod.rs`: the spec, the process records, kernel settings, the binaries' place;
//!   - `cluster/launch.rs`: starting the status ring, the scheduler, each gateway; a restart;
//!   - `cluster/running.rs`: live processes, scheduler registration, stopping and teardown;
//!   - `cluster/process.rs`: free ports, starting a process up to its ready line, stats polls.
//! - [`scenario`]: ramp, hold, CPU per heartbeat, unicast pushes, broadcast, pushes to
//!   rooms (clients `JOIN` `lt/{i % rooms}` with `--rooms`), token refresh, flood fairness,
//!   kick, drain, reconnect storm, full-fleet restart; [`progress`]: the terminal
//!   view; [`report`]: the JSON result and the HTML report with inline SVG charts;
//!   [`procfs`]: CPU and memory of processes.
//!   - `scenario/mod.rs`: the scenarios, the run spec, worker plans, `run` and its phase order;
//!   - `scenario/measure.rs`: pumping worker reports, the timeline, closing a phase, the result;
//!   - `scenario/steady.rs`: the ramp and the holds (`hold`, `heartbeat-cpu`);
//!   - `scenario/push.rs`: `push`, `room-push`, `broadcast`, `room-broadcast`;
//!   - `scenario/flood.rs`: `flood` (push p99 without and with a flood);
//!   - `scenario/session.rs`: `refresh` and `kick`;
//!   - `scenario/outage.rs`: `drain`, `storm`, `fleet-restart`.
//! - [`token`] mints development JWTs; [`demo`] and [`drive`](mod@drive) run a few clients on tokio for the
//!   `client` and `demo` subcommands, over TCP, TLS ([`tls`]: `client --tls-ca`) or QUIC
//!   ([`quic`]: connect, trust by CA file or pinned fingerprint).
//! - [`cli`]: the command line, which `main.rs` parses and dispatches:
//!   - `cli/mod.rs`: the subcommands and flags; `token`, `client`, `quic-hold`, `demo`, `report`;
//!   - `cli/run.rs`: the `run` subcommand: its flags turned into a run spec (and a cluster);
//!   - `cli/cluster.rs`: the `cluster` subcommand.
//!
//! # How a run flows
//!
//! `holdfast-loadtest run` (or `demo`) builds a [`scenario::RunSpec`], starts a cluster if
//! asked, and hands each worker a [`plan::Plan`] on its stdin. Workers ramp their clients
//! and write a [`plan::Report::Stats`] line every second; the coordinator sums them into a
//! timeline, steps through the scenario's phases with [`plan::Command`]s, asks for each
//! phase's histograms ([`plan::Command::TakeHistograms`]), merges them, and finally writes
//! `result.json` and `report.html`.

pub mod certs;
pub mod cli;
pub mod cluster;
pub mod control;
pub mod coordinator;
pub mod demo;
pub mod drive;
pub mod engine;
pub mod net;
pub mod plan;
pub mod procfs;
pub mod progress;
pub mod quic;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod tls;
pub mod token;
pub mod worker;

pub use drive::{DriveError, Flow, drive};

/// The gateway's built-in development secret (`docs/CONFIG.md`).
pub const DEV_SECRET: &str = "holdfast-dev-secret";
