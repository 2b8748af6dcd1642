//! Holdfast status: presence, the answer to "is user U online, on which gateway, with which
//! device?" for every push that does not know where its user is.
//!
//! This crate is both the library the gateway links (the [`PresenceStore`] trait and its
//! backends) and the `holdfast-status` node binary (a member of the status ring). It is
//! **not** responsible for what the gateway does with the answers (kick policy, routing a
//! push to another gateway, fencing itself when its lease is lost): it tells the gateway,
//! through typed errors and [`Renewed::resync`], what it must do.
//!
//! # Layout
//!
//! - [`types`]: the data model: [`Session`], [`Write`], [`Lease`], [`LeaseId`], [`Counts`].
//! - [`error`]: [`StoreError`], what a store call fails with (moved, fenced, unavailable,
//!   timeout, invalid, protocol).
//! - [`store`]: the [`PresenceStore`] trait and how a gateway drives it.
//! - [`table`]: the sans-IO core: sessions by user (each user's sessions packed in one
//!   allocation), leases by gateway, fencing, tombstones.
//! - [`memory`]: [`InProcessStore`], the table behind a mutex (single-node default).
//! - [`batcher`]: [`batcher::Batcher`], the gateway's presence task: queue, batch, renew,
//!   resync, fence.
//! - [`placement`]: the consistent-hash ring (xxh3-64 keys, vnodes, weights, R replicas)
//!   behind our own [`placement::Placement`].
//! - [`wire`]: the binary protocol between clients and nodes, sans-IO.
//! - [`conn`]: a pipelined, authenticated connection to one node.
//! - [`cluster`]: [`cluster::ClusterStore`], the status-cluster client.
//! - [`redis_store`]: [`redis_store::RedisStore`], Redis and Redis Cluster.
//! - [`client_metrics`]: `holdfast_status_client_*` metrics of the remote stores.
//! - [`rooms`]: rooms kept as reserved keys of the same store (which gateways hold a
//!   room's members, and how many), so every backend keeps them with no new operation.
//! - [`node`]: the status node: request handling, listener, ring changes, admin API.
//!
//! # A write's way through the status cluster
//!
//! The gateway's batching task calls [`PresenceStore::apply`] with a batch of writes under
//! its lease. [`cluster::ClusterStore`] places each user with the ring it knows (both
//! sides of a ring change), sends one `APPLY` frame per owner node over a pipelined
//! [`conn::NodeConn`], and waits for the answers. Each node's listener
//! ([`node::server`]) decodes the frame ([`wire`]), checks the epoch and the lease
//! ([`node::Node::handle`]), applies the writes to its [`table::Table`] and answers. A
//! `MOVED` answer makes the client fetch the ring and redo the batch.
//!
//! `docs/STATUS.md` explains the ring, the epoch protocol, leases and fencing, failures,
//! and the protocol byte by byte.

#![forbid(unsafe_code)]

pub mod batcher;
pub mod client_metrics;
pub mod cluster;
pub mod conn;
pub mod error;
pub mod memory;
pub mod node;
pub mod placement;
pub mod redis_store;
pub mod rooms;
pub mod store;
pub mod table;
pub mod types;
pub mod wire;

pub use error::{FenceReason, StoreError};
pub use memory::InProcessStore;
pub use store::{PresenceStore, StoreFuture};
pub use types::{Counts, GatewayId, Generation, Lease, LeaseId, Renewed, Session, UserId, Write};
