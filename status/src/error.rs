//! What a [`PresenceStore`](crate::PresenceStore) call can fail with: one enum, each variant
//! a case the caller acts on differently.

use std::time::Duration;

use crate::types::{GatewayId, Generation};

/// Why a lease claim was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FenceReason {
    /// A newer generation of this gateway holds (or held) the lease.
    Stale {
        /// The newest generation the store knows.
        current: Generation,
    },
    /// This generation's lease lapsed; its sessions are gone. Start a new generation, renew,
    /// then resync.
    Expired,
}

/// A presence call failed.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The status ring moved to a new epoch while the call ran and the client could not
    /// settle on it within its retries. Retry the call; the client has refreshed its ring.
    #[error("the status ring moved to epoch {epoch}; retry")]
    Moved {
        /// The newest epoch seen.
        epoch: u64,
    },
    /// The gateway's claim is fenced: its writes are refused and never resurrect sessions.
    #[error("gateway {gateway} generation {generation} is fenced: {reason:?}")]
    Fenced {
        /// The gateway.
        gateway: GatewayId,
        /// The generation it claimed.
        generation: Generation,
        /// Why.
        reason: FenceReason,
    },
    /// The store cannot be reached (no owner of some key answered, connection refused).
    /// Queue the writes and retry.
    #[error("presence store unavailable: {0}")]
    Unavailable(String),
    /// The call did not finish within its deadline.
    #[error("presence call timed out after {0:?}")]
    Timeout(Duration),
    /// The caller passed something the store cannot hold (an over-long user id, a batch
    /// over the limits). Retrying will not help.
    #[error("invalid presence request: {0}")]
    Invalid(String),
    /// The store answered something this client does not understand (a bug or a version
    /// mismatch); the connection was closed.
    #[error("presence protocol error: {0}")]
    Protocol(String),
}

impl StoreError {
    /// A short label for the `outcome` of metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            StoreError::Moved { .. } => "moved",
            StoreError::Fenced { .. } => "fenced",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Timeout(_) => "timeout",
            StoreError::Invalid(_) => "invalid",
            StoreError::Protocol(_) => "protocol",
        }
    }

    /// Whether the same call may succeed later (queue and retry) rather than never.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Moved { .. } | StoreError::Unavailable(_) | StoreError::Timeout(_)
        )
    }
}
