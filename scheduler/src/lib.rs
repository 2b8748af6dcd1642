//! The Holdfast access scheduler (the Access Schedule Service): answers "which gateways
//! should this client use" by gray-release, proximity and load rules over the gateways' load
//! reports, and orders overloaded gateways to shed connections when the fleet is unbalanced.
//!
//! It is not on any connection's path: clients ask it once per (re)connect, gateways report
//! to it every few seconds. It holds no state that the gateways' next reports cannot
//! rebuild, so any number of instances can run side by side; the user's guide is
//! `docs/SCHEDULER.md`.
//!
//! # Layout
//!
//! The decision core is pure (no sockets, no clock, no randomness):
//!
//! - [`model`]: dimensions, transports, endpoints, platforms, app versions, names.
//! - [`hash`]: the one stable hash every placement uses (pinned by a golden test).
//! - [`cidr`]: IP prefixes and longest-prefix match (locations, trusted proxies).
//! - [`rules`]: the reloadable rules file (gray release, proximity, watermarks, limits).
//! - [`protocol`]: the gateway ↔ scheduler report and answer bodies and their signatures.
//! - [`fleet`]: the last accepted report of every gateway, fenced by generation and seq.
//! - [`view`]: a snapshot of rules + fleet with pools, watermarks, zones, ranks and rings.
//! - [`decide`]: the dispatch decision, a pure function of (view, request, now).
//! - [`rebalance`]: which gateways shed how many connections, a pure function of the view.
//! - [`ratelimit`]: GCRA rate limits per source and per instance, time as a parameter.
//!
//! The I/O shells are thin:
//!
//! - [`server`]: assembly; the refresher (rebuilds the view), the rules reloader and the
//!   rebalancer tasks; [`start`] returns a [`Running`] instance.
//! - [`api`]: the public `GET /v1/dispatch`.
//! - [`control`]: the internal listener: signed gateway reports, admin, `/metrics`.
//! - [`agent`]: the registration client a gateway embeds.
//! - [`config`]: the process configuration (TOML, environment, `--set`); [`metrics`]: the
//!   Prometheus handles, resolved at start-up.
//!
//! A dispatch request flows: [`api`] (client address, rate limits, parameters) →
//! [`decide::decide`] on the current [`view::View`] → JSON. A report flows: [`control`]
//! (signature, validation) → [`fleet::Fleet::apply`] → the refresher rebuilds the view →
//! the rebalancer plans orders → the next report's answer carries them to the gateway.

pub mod agent;
pub mod api;
pub mod cidr;
pub mod config;
pub mod control;
pub mod decide;
pub mod fleet;
pub mod hash;
pub mod metrics;
pub mod model;
pub mod protocol;
pub mod ratelimit;
pub mod rebalance;
pub mod rules;
pub mod server;
pub mod view;

pub use server::{Running, StartError, start};
