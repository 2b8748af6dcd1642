//! The in-process store: a [`Table`] behind a mutex, with the same lease rules as the
//! cluster. The single-node default: nothing to run, nothing shared with other gateways.

use std::sync::Mutex;
use std::time::Instant;

use crate::error::StoreError;
use crate::store::{PresenceStore, StoreFuture, check_user, check_writes};
use crate::table::{LeaseError, Table};
use crate::types::{Counts, GatewayId, Lease, LeaseId, Renewed, Session, UserId, Write};

/// An in-memory [`PresenceStore`]; dead sessions are swept on every renewal.
#[derive(Debug, Default)]
pub struct InProcessStore {
    table: Mutex<Table>,
}

impl InProcessStore {
    /// An empty store.
    pub fn new() -> InProcessStore {
        InProcessStore::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Table) -> T) -> T {
        // A panic while holding the lock cannot leave the table half-updated in a way that
        // breaks its invariants more than the panic itself; keep serving.
        let mut guard = self.table.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}

/// Map a table's lease refusal to the caller's error.
pub(crate) fn lease_error(id: LeaseId, e: LeaseError) -> StoreError {
    match e {
        LeaseError::Fenced(reason) => {
            StoreError::Fenced { gateway: id.gateway, generation: id.generation, reason }
        }
        LeaseError::Unknown | LeaseError::Newer => StoreError::Fenced {
            gateway: id.gateway,
            generation: id.generation,
            reason: crate::error::FenceReason::Expired,
        },
    }
}

impl PresenceStore for InProcessStore {
    fn name(&self) -> &'static str {
        "in-process"
    }

    fn renew(&self, lease: Lease) -> StoreFuture<'_, Renewed> {
        let r = self.with(|t| {
            let now = Instant::now();
            t.sweep(now);
            t.renew(lease.id, lease.ttl, now)
        });
        Box::pin(async move {
            r.map(|_| Renewed { resync: false }).map_err(|reason| StoreError::Fenced {
                gateway: lease.id.gateway,
                generation: lease.id.generation,
                reason,
            })
        })
    }

    fn apply(&self, lease: LeaseId, writes: Vec<Write>) -> StoreFuture<'_, ()> {
        let r = check_writes(&writes).and_then(|()| {
            self.with(|t| t.apply(lease, &writes, Instant::now()))
                .map(|_| ())
                .map_err(|e| lease_error(lease, e))
        });
        Box::pin(async move { r })
    }

    fn lookup(&self, users: Vec<UserId>) -> StoreFuture<'_, Vec<Vec<Session>>> {
        let r = users.iter().try_for_each(|u| check_user(u)).map(|()| {
            let now = Instant::now();
            self.with(|t| users.iter().map(|u| t.lookup(u, now)).collect())
        });
        Box::pin(async move { r })
    }

    fn sessions_of(&self, gateway: GatewayId) -> StoreFuture<'_, Vec<(UserId, Session)>> {
        let r = self.with(|t| t.list(gateway, Instant::now()));
        Box::pin(async move { Ok(r) })
    }

    fn resync(&self, lease: LeaseId, sessions: Vec<(UserId, Session)>) -> StoreFuture<'_, ()> {
        let r = sessions.iter().try_for_each(|(u, _)| check_user(u)).and_then(|()| {
            self.with(|t| t.resync(lease, true, &sessions, Instant::now()))
                .map_err(|e| lease_error(lease, e))
        });
        Box::pin(async move { r })
    }

    fn counts(&self) -> StoreFuture<'_, Counts> {
        let r = self.with(|t| t.counts(Instant::now()));
        Box::pin(async move { Ok(r) })
    }
}
