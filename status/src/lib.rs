//! Holdfast status: presence (who is online, on which gateway, with which device).
//!
//! (Draft doc; completed with the node and clients.)

#![forbid(unsafe_code)]

pub mod error;
pub mod memory;
pub mod placement;
pub mod store;
pub mod table;
pub mod types;
pub mod wire;

pub use error::{FenceReason, StoreError};
pub use memory::InProcessStore;
pub use store::{PresenceStore, StoreFuture};
pub use types::{Counts, GatewayId, Generation, Lease, LeaseId, Renewed, Session, UserId, Write};

pub mod client_metrics;
pub mod cluster;
pub mod conn;
pub mod node;
pub mod redis_store;
