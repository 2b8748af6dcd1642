//! The [`PresenceStore`] trait: what the gateway calls, whatever the backend.
//!
//! # How the gateway uses it
//!
//! One batching task per gateway owns an `Arc<dyn PresenceStore>`:
//!
//! 1. at start, pick a generation larger than any before (start time in ms) and
//!    [`renew`](PresenceStore::renew) the lease; then renew every `ttl / 3`;
//! 2. queue online/offline transitions from the event loops; flush them with
//!    [`apply`](PresenceStore::apply) in batches (a few hundred writes, or every few ms);
//!    on a transient error ([`StoreError::is_transient`]) keep the batch and retry, so the
//!    event loops never wait on presence;
//! 3. when a renewal answers [`Renewed::resync`], call [`resync`](PresenceStore::resync)
//!    with every session the gateway holds (stop flushing while it runs);
//! 4. on [`StoreError::Fenced`], the lease is lost: stop accepting (fence yourself), pick a
//!    new generation, renew, resync;
//! 5. lookups for the push API go through [`lookup`](PresenceStore::lookup), many users at
//!    once, from any task.
//!
//! Every call has its own deadline inside the backend (configured per backend) and fails
//! with [`StoreError::Timeout`] rather than hang.

use std::future::Future;
use std::pin::Pin;

use crate::error::StoreError;
use crate::rooms::{self, RoomId, RoomShare};
use crate::types::{Counts, GatewayId, Lease, LeaseId, Renewed, Session, UserId, Write};

/// The future a store call returns (boxed so the trait can be used as `dyn`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A presence store: sessions by user, fenced by gateway leases. See the module doc.
pub trait PresenceStore: Send + Sync + 'static {
    /// A short name for logs and metrics (`in-process`, `status`, `redis`, `redis-cluster`).
    fn name(&self) -> &'static str;

    /// Renew (or take) the gateway's lease. A larger generation than the store knows
    /// replaces the older one and all its sessions; a smaller one, or the same one after it
    /// lapsed, fails with [`StoreError::Fenced`].
    fn renew(&self, lease: Lease) -> StoreFuture<'_, Renewed>;

    /// Apply a batch of the gateway's writes, in order, under its lease. Refused as a whole
    /// with [`StoreError::Fenced`] if the lease is not live with this generation.
    fn apply(&self, lease: LeaseId, writes: Vec<Write>) -> StoreFuture<'_, ()>;

    /// The live sessions of each user, in the order asked (an empty list: offline).
    fn lookup(&self, users: Vec<UserId>) -> StoreFuture<'_, Vec<Vec<Session>>>;

    /// The live sessions of one gateway, with their users.
    fn sessions_of(&self, gateway: GatewayId) -> StoreFuture<'_, Vec<(UserId, Session)>>;

    /// Replace everything the store holds for the gateway by `sessions` (its full set; the
    /// sessions' `gateway` and `generation` fields are taken from `lease`).
    fn resync(&self, lease: LeaseId, sessions: Vec<(UserId, Session)>) -> StoreFuture<'_, ()>;

    /// How much the store holds (may walk the store: an admin call, not a hot one).
    fn counts(&self) -> StoreFuture<'_, Counts>;

    /// The gateways holding members of each room, in the order asked (an empty list: no
    /// gateway with a live lease holds any). A lookup of the rooms' keys
    /// ([`crate::rooms`]); gateways write their shares with [`rooms::share_write`].
    fn rooms_lookup(&self, rooms: Vec<RoomId>) -> StoreFuture<'_, Vec<Vec<RoomShare>>> {
        Box::pin(async move {
            let keys = rooms.iter().map(|r| rooms::room_key(r)).collect();
            let found = self.lookup(keys).await?;
            Ok(found.iter().map(|sessions| rooms::shares(sessions)).collect())
        })
    }
}

/// Check a batch against the limits every backend shares.
pub(crate) fn check_writes(writes: &[Write]) -> Result<(), StoreError> {
    for w in writes {
        check_user(w.user())?;
        if let Write::Online { device, .. } = w
            && device.len() > crate::types::MAX_DEVICE_LEN
        {
            return Err(StoreError::Invalid(format!("device id of {} bytes", device.len())));
        }
    }
    Ok(())
}

/// Check a user id against [`MAX_USER_LEN`](crate::types::MAX_USER_LEN).
pub(crate) fn check_user(user: &str) -> Result<(), StoreError> {
    if user.is_empty() || user.len() > crate::types::MAX_USER_LEN {
        return Err(StoreError::Invalid(format!("user id of {} bytes", user.len())));
    }
    Ok(())
}
