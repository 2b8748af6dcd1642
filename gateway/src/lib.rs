//! The Holdfast gateway: holds client long connections, authenticates them, keeps them alive
//! with heartbeats and delivers pushes.
//!
//! # How the pieces fit
//!
//! - [`server`] assembles a running node: an acceptor thread with a `socket2` listener hands
//!   each accepted socket to one of N [`worker`] event loops (mio), which own their
//!   connections for life; a small tokio runtime serves the HTTP [`api`] and runs the
//!   [`upstream`] and [`events`] webhooks.
//! - A worker keeps one compact [`conn`] record per connection in a slab, one timer entry
//!   per connection in its [`wheel`], and applies the protocol rules of `holdfast_codec`.
//! - Logins go through [`auth`] (JWT) and the node [`registry`] (user → connections, kick
//!   policy); online/offline transitions are announced to a [`presence`] store.
//! - Everything else reaches a worker through its command queue ([`dispatch`]); connection
//!   ids ([`ids`]) say which worker owns a connection.
//! - [`config`] is the configuration (TOML, environment, CLI); [`metrics`] the Prometheus
//!   handles, resolved at start-up.

pub mod api;
pub mod auth;
pub mod config;
pub mod conn;
pub mod dispatch;
pub mod events;
pub mod ids;
pub mod metrics;
pub mod presence;
pub mod registry;
pub mod server;
pub mod upstream;
mod webhook;
pub mod wheel;
pub mod worker;

pub use server::{Running, StartError, start, start_default};
