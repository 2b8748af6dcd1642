//! The presence hook: where the gateway announces who is online on it.
//!
//! The node's own [`Registry`](crate::registry::Registry) answers "which connections does
//! user U have *here*"; a [`Presence`] answers the cluster's question "where is user U
//! online", for the push path of other services and for the scheduler. The embedded default,
//! [`InProcess`], keeps nothing beyond the registry: on a single node the registry *is* the
//! presence store. The status-cluster and Redis stores plug in behind the same trait.
//!
//! Both calls come from an event loop at login and at close, never per heartbeat, and must
//! not block: an implementation that talks to a remote store queues the update and sends it
//! from its own task.

use std::sync::Arc;

use holdfast_codec::Platform;

use crate::ids::ConnId;

/// Receives online/offline transitions of this node's authenticated connections.
pub trait Presence: Send + Sync + 'static {
    /// A connection of `user` authenticated on this node, from device `device` at
    /// `login_ms` (wall clock, ms since the Unix epoch).
    fn online(
        &self,
        user: &Arc<str>,
        conn: ConnId,
        platform: Platform,
        device: &str,
        login_ms: u64,
    );
    /// A connection of `user` on this node closed.
    fn offline(&self, user: &Arc<str>, conn: ConnId);
    /// A short name for logs and `/v1/stats`.
    fn name(&self) -> &'static str;
}

/// The embedded single-node store: the node registry already knows everything, so the
/// transitions need no further bookkeeping.
#[derive(Debug, Default, Clone, Copy)]
pub struct InProcess;

impl Presence for InProcess {
    fn online(&self, _: &Arc<str>, _: ConnId, _: Platform, _: &str, _: u64) {}

    fn offline(&self, _user: &Arc<str>, _conn: ConnId) {}

    fn name(&self) -> &'static str {
        "in-process"
    }
}
