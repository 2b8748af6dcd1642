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
//! - [`worker`]: the `worker` subcommand, one process of at most ~19,000 clients;
//!   [`plan`]: what the coordinator and workers say to each other (JSON lines).
//! - [`coordinator`]: spawns the workers, sends commands, aggregates their statistics and
//!   merges their HDR histograms exactly ([`stats`]).
//! - [`cluster`]: the local cluster launcher (gateway processes, a scheduler they
//!   register with, a status ring they keep presence in, TLS and QUIC listeners with a
//!   certificate from [`certs`]), readiness on ready lines, teardown of everything.
//! - [`scenario`]: ramp, hold, CPU per heartbeat, unicast pushes, broadcast, pushes to
//!   rooms (clients `JOIN` `lt/{i % rooms}` with `--rooms`), token refresh, flood fairness,
//!   kick, drain, reconnect storm, full-fleet restart; [`progress`]: the terminal
//!   view; [`report`]: the JSON result and the HTML report with inline SVG charts;
//!   [`procfs`]: CPU and memory of processes.
//! - [`token`] mints development JWTs; [`demo`] and [`drive`] run a few clients on tokio for the
//!   `client` and `demo` subcommands, over TCP, TLS ([`tls`]: `client --tls-ca`) or QUIC
//!   ([`quic`]: connect, trust by CA file or pinned fingerprint).
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
