//! The Holdfast gateway: holds client long connections, authenticates them, keeps them alive
//! with heartbeats and delivers pushes.
//!
//! It is **not** the presence cluster (`holdfast-status`), the scheduler
//! (`holdfast-scheduler`) or the wire format (`holdfast-codec`, which this crate drives);
//! business logic lives behind its webhooks.
//!
//! # Layout
//!
//! - [`session`]: the server side of one connection as a sans-IO state machine — handshake,
//!   heartbeats and idle, token expiry and refresh, acknowledgements, upstream accounting,
//!   backpressure decisions, rate limit, every close reason. No socket, clock or thread;
//!   tested on a virtual clock. A file per concern: `mod.rs` (the state, the verdicts, the
//!   close), `input.rs`, `output.rs`, `timers.rs` (deadlines), `close.rs`, `limits.rs`.
//! - [`driver`]: the I/O — the acceptor (plain and TLS listeners), N mio event loops that
//!   each own their connections for life and pump one session per connection over a
//!   [`driver::Transport`] (plain TCP, PROXY, TLS: rustls's handshake, then our TLS 1.3
//!   record layer, behind the connection's rare-state pointer; `driver/tls/`: the state in
//!   `mod.rs`, then `handshake.rs`, `read.rs`, `write.rs`), the compact connection
//!   record, the timing wheel, the loops' command queues; [`driver::quic`]: a quinn
//!   endpoint on its own thread feeding one more loop of the same code over QUIC streams
//!   (`[quic]`, off by default).
//! - `node` (crate-private): the node's shared state — configuration, metrics, registry,
//!   verifier, webhooks, presence, worker handles — so the API, the loops and the assembly
//!   never import one another.
//! - Control plane, ordinary tokio code off the hot path: `api` (crate-private: the HTTP
//!   push API, `GET /v1/presence`, health, `/metrics`), [`upstream`] and [`events`]
//!   (webhooks), [`presence`] (the hook the loops call at login and close), `cluster`
//!   (crate-private: shared presence through `holdfast_status`, the internal channel for
//!   cross-gateway push and kick, the kick policy across gateways), `fence` (crate-private:
//!   self-fencing without a lease), [`agent`] (registration and shed orders of
//!   `holdfast_scheduler`), `health` (crate-private: `/healthz` and the TCP check port as
//!   L4 balancers see them), `drain` (crate-private: the graceful drain), `deliver`
//!   (crate-private: delivery to this node's own connections, shared by the API and the
//!   internal channel), and `rooms` (crate-private: room names and member counts of the
//!   node, the per-room push rate, the join webhook; each loop keeps its own members in
//!   `driver`).
//! - Shared pieces: [`auth`] (JWT), [`tls`] (the certificate chain and key, the live server
//!   configuration `SIGHUP` replaces), [`registry`] (user → connections, kick policy), [`ids`]
//!   (connection ids), [`metrics`] (the handles in `mod.rs`, families by concern in
//!   `labels.rs`, `webhooks.rs`, `cluster.rs`, `quic.rs`, helpers in `register.rs`),
//!   [`config`], [`memory`] (allocator tuning, trimming after bursts); [`server`] assembles
//!   and stops a node.
//!
//! # A request's way through
//!
//! The acceptor hands a socket to a loop (round-robin). The loop reads it when readable and
//! feeds the bytes to the connection's [`session::Session`], which decodes whole frames and
//! answers in place (`PONG`), or asks the node through an event (a `HELLO` to verify, an
//! `UPSTREAM` to forward, the close). The loop writes what the session produced and re-arms
//! the connection's one timer at the session's next deadline. A push from the HTTP API goes
//! to the owning loop's bounded queue; the loop encodes it once and hands each target
//! session its copy. A push to a room goes to every loop (and, in a cluster, to every
//! gateway the store names for the room); each loop writes it to its own members.

pub mod agent;
mod api;
pub mod auth;
mod cluster;
pub mod config;
mod deliver;
mod drain;
pub mod driver;
pub mod events;
mod fence;
mod flapping;
mod health;
pub mod ids;
pub mod memory;
pub mod metrics;
mod node;
pub mod presence;
pub mod registry;
mod rooms;
pub mod server;
pub mod session;
pub mod tls;
pub mod upstream;
mod webhook;

pub use cluster::ClusterError;
pub use server::{Running, StartError, Stop, start, start_default};
