//! The kick policy across gateways: a login on this gateway displaces the user's older
//! sessions on every gateway, as `sessions.kick_policy` says.
//!
//! The node registry applies the policy to this gateway's own connections at once, in the
//! event loop. For the other gateways' connections the gateway needs the presence store,
//! which the loops must never wait on, so:
//!
//! 1. [`Observed`] wraps the store the batching task writes through; when a batch with
//!    logins is acknowledged, it hands those logins to this task;
//! 2. the task looks their users up (one lookup for everything that arrived meanwhile),
//!    and for each login takes the sessions the policy puts in one group with it (same
//!    platform for `per_platform`, all for `per_user`): every session of the group but the
//!    newest (by login time, then connection id) is displaced;
//! 3. displaced sessions on other gateways get a `displace` request over the internal
//!    channel (their gateway sends `KICK` `LOGGED_IN_ELSEWHERE`, 301); one of this gateway
//!    (a newer login elsewhere won) goes to its own event loop.
//!
//! Checking only after the login's own write was acknowledged makes two near-simultaneous
//! logins on two gateways resolve: the store orders the writes per user, so the later of
//! the two checks sees both sessions and both checks agree on which is newest.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures_util::future::join_all;
use holdfast_codec::Platform;
use holdfast_status::{
    Counts, GatewayId, Lease, LeaseId, PresenceStore, Renewed, Session, StoreFuture, UserId, Write,
};
use tokio::sync::mpsc;

use super::peer::PeerRequest;
use crate::config::KickPolicy;
use crate::driver::Internal;
use crate::ids::ConnId;
use crate::node::Node;

/// A login whose online write the store acknowledged.
#[derive(Clone, Debug)]
pub(crate) struct Login {
    user: UserId,
    conn: u64,
}

/// The store the batching task writes through: reports acknowledged logins.
pub(crate) struct Observed {
    inner: Arc<dyn PresenceStore>,
    logins: Option<mpsc::UnboundedSender<Login>>,
}

impl Observed {
    /// Wrap `inner`; acknowledged logins go to `logins` (none: the policy is `none`).
    pub(crate) fn new(
        inner: Arc<dyn PresenceStore>,
        logins: Option<mpsc::UnboundedSender<Login>>,
    ) -> Observed {
        Observed { inner, logins }
    }
}

impl PresenceStore for Observed {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn renew(&self, lease: Lease) -> StoreFuture<'_, Renewed> {
        self.inner.renew(lease)
    }

    fn apply(&self, lease: LeaseId, writes: Vec<Write>) -> StoreFuture<'_, ()> {
        let Some(tx) = self.logins.clone() else { return self.inner.apply(lease, writes) };
        let logins: Vec<Login> = writes
            .iter()
            .filter_map(|w| match w {
                // A room's member count is kept as a reserved key (`holdfast_status::rooms`):
                // not a login.
                Write::Online { user, .. } if holdfast_status::rooms::is_room_key(user) => None,
                Write::Online { user, conn, .. } => Some(Login { user: user.clone(), conn: *conn }),
                Write::Offline { .. } => None,
            })
            .collect();
        let applied = self.inner.apply(lease, writes);
        Box::pin(async move {
            applied.await?;
            for login in logins {
                let _ = tx.send(login);
            }
            Ok(())
        })
    }

    fn lookup(&self, users: Vec<UserId>) -> StoreFuture<'_, Vec<Vec<Session>>> {
        self.inner.lookup(users)
    }

    fn sessions_of(&self, gateway: GatewayId) -> StoreFuture<'_, Vec<(UserId, Session)>> {
        self.inner.sessions_of(gateway)
    }

    fn resync(&self, lease: LeaseId, sessions: Vec<(UserId, Session)>) -> StoreFuture<'_, ()> {
        self.inner.resync(lease, sessions)
    }

    fn counts(&self) -> StoreFuture<'_, Counts> {
        self.inner.counts()
    }
}

/// Most logins checked with one lookup.
const MAX_CHECK: usize = 512;

/// The sessions `login` displaces: every session of its group but the newest.
fn displaced(policy: KickPolicy, login: u64, sessions: &[Session]) -> Vec<&Session> {
    let Some(own) = sessions.iter().find(|s| s.conn == login) else {
        return Vec::new(); // closed meanwhile: it displaces nothing
    };
    let group: Vec<&Session> = sessions
        .iter()
        .filter(|s| match policy {
            KickPolicy::PerPlatform => s.platform == own.platform,
            KickPolicy::PerUser => true,
            KickPolicy::None => false,
        })
        .collect();
    let Some(newest) = group.iter().max_by_key(|s| (s.login_ms, s.conn)).map(|s| s.conn) else {
        return Vec::new();
    };
    group.into_iter().filter(|s| s.conn != newest).collect()
}

/// Check acknowledged logins against every gateway's sessions until the channel closes.
pub(crate) async fn run(node: Arc<Node>, mut rx: mpsc::UnboundedReceiver<Login>) {
    let Some(cluster) = node.cluster.as_ref() else { return };
    let policy = node.cfg.sessions.kick_policy;
    let me = node.cfg.node.id;
    while let Some(first) = rx.recv().await {
        let mut logins = vec![first];
        while logins.len() < MAX_CHECK {
            match rx.try_recv() {
                Ok(l) => logins.push(l),
                Err(_) => break,
            }
        }
        let mut users: Vec<UserId> = Vec::new();
        let mut seen = HashSet::new();
        for l in &logins {
            if seen.insert(l.user.clone()) {
                users.push(l.user.clone());
            }
        }
        let found = match cluster.store.lookup(users.clone()).await {
            Ok(found) => found,
            Err(e) => {
                // The next login of these users checks again; nothing else to do now.
                tracing::warn!(error = %e, logins = logins.len(), "kick-policy lookup failed");
                continue;
            }
        };
        let by_user: std::collections::HashMap<&UserId, &Vec<Session>> =
            users.iter().zip(found.iter()).collect();
        let mut remote: BTreeMap<GatewayId, HashSet<u64>> = BTreeMap::new();
        for l in &logins {
            let Some(sessions) = by_user.get(&l.user) else { continue };
            for s in displaced(policy, l.conn, sessions) {
                if s.gateway == me {
                    let id = ConnId(s.conn);
                    if let Some(w) = node.worker(id.worker()) {
                        w.send_internal(Internal::Displaced(id));
                    }
                } else {
                    remote.entry(s.gateway).or_default().insert(s.conn);
                }
            }
        }
        let node = &node;
        let calls = remote.into_iter().map(|(gateway, conns)| {
            let conns: Vec<ConnId> = conns.into_iter().map(ConnId).collect();
            let n = conns.len() as u64;
            async move {
                match cluster.peers.call(gateway, &PeerRequest::Displace { conns }).await {
                    Ok(_) => node.metrics.cluster.remote_displaced.inc_by(n),
                    Err(e) => {
                        tracing::warn!(gateway, error = %e, "displacing older sessions failed")
                    }
                }
            }
        });
        join_all(calls).await;
    }
}

/// The platform of a stored session, for answers.
pub(crate) fn platform_name(byte: u8) -> &'static str {
    Platform::from_u8(byte).as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(conn: u64, gateway: u16, platform: u8, login_ms: u64) -> Session {
        Session { conn, gateway, device: "d".into(), platform, login_ms, generation: 1 }
    }

    #[test]
    fn the_newest_of_a_group_stays() {
        let all = [s(1, 1, 1, 100), s(2, 2, 1, 200), s(3, 2, 2, 50)];
        let conns = |v: Vec<&Session>| v.into_iter().map(|s| s.conn).collect::<Vec<_>>();
        // A login (conn 2, newest iOS) displaces the older iOS session only.
        assert_eq!(conns(displaced(KickPolicy::PerPlatform, 2, &all)), vec![1]);
        // Checked from the older login's side, the answer is the same.
        assert_eq!(conns(displaced(KickPolicy::PerPlatform, 1, &all)), vec![1]);
        assert_eq!(conns(displaced(KickPolicy::PerUser, 2, &all)), vec![1, 3]);
        assert!(displaced(KickPolicy::None, 2, &all).is_empty());
        // A login that closed meanwhile displaces nothing.
        assert!(displaced(KickPolicy::PerUser, 9, &all).is_empty());
        // Same login time: the larger connection id wins.
        let tie = [s(5, 1, 1, 100), s(6, 2, 1, 100)];
        assert_eq!(conns(displaced(KickPolicy::PerPlatform, 5, &tie)), vec![5]);
    }
}
