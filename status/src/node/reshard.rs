//! Ring changes: online resharding with epochs. `docs/STATUS.md` § Epochs explains why
//! each step is there; in short, from a stable ring A at epoch `e` to B:
//!
//! 1. `e+1`, *copying*: writes go to the owners in A ∪ B, lookups read A. Installed on
//!    every member of A ∪ B before step 2 (members of A that cannot be reached are
//!    skipped: removing a dead node is a ring change too).
//! 2. every reachable member of A copies ([`migrate`]) each session it holds to the owners
//!    in B that are not owners in A; tombstones keep a copy from reviving an offline.
//! 3. `e+2`, *switching*: writes still go to A ∪ B, lookups read B (now complete).
//! 4. `e+3`, *stable* B: writes and lookups use B; members drop what they no longer own.
//!
//! A client whose epoch is older than a node's gets `MOVED` and refetches the ring; since
//! each epoch is installed everywhere before the next one starts, a client is never more
//! than one epoch from what any node accepts, and every write it makes reaches the nodes
//! that lookups at its epoch or the next read from.
//!
//! [`change_ring`] is the coordinator (any member; the admin API's `POST /v1/ring`). It is
//! resumable: run again after a failure, it continues from the phase the ring is in.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::placement::{Member, NodeId, Placement};
use crate::types::Session;
use crate::types::UserId;
use crate::wire::{Code, Request, Response, RingState};

use super::{Node, error, lock};

/// Sessions per `MERGE` frame.
const MERGE_CHUNK: usize = 4096;

/// This node's part of step 2: copy what moves to its new owners. Answers `MIGRATED`
/// with the number of sessions sent, or an error.
pub async fn migrate(node: &Node, epoch: u64) -> Response {
    let now = Instant::now();
    let (leases, plan, ring) = {
        let core = lock(&node.core);
        let (Some(ring), Some(p)) = (&core.ring, &core.placements) else {
            return error(Code::NotServing, 0, 0, "no ring");
        };
        if ring.epoch != epoch || ring.next.is_none() || ring.read_next {
            return error(Code::Moved, ring.epoch, 0, "not in the copying phase of that epoch");
        }
        let Some(next) = &p.next else {
            return error(Code::Internal, ring.epoch, 0, "no next placement");
        };
        let mut plan: HashMap<NodeId, Vec<(UserId, Session)>> = HashMap::new();
        for user in core.table.users() {
            let old = p.current.owners(user);
            let targets: Vec<NodeId> = next
                .owners(user)
                .into_iter()
                .filter(|n| *n != node.id && !old.contains(n))
                .collect();
            if targets.is_empty() {
                continue;
            }
            let sessions = core.table.lookup(user, now);
            if sessions.is_empty() {
                continue;
            }
            let user: UserId = UserId::from(user);
            for t in targets {
                let list = plan.entry(t).or_default();
                list.extend(sessions.iter().map(|s| (user.clone(), s.clone())));
            }
        }
        let (leases, _) = core.table.export(now, |_| false);
        (leases, plan, ring.clone())
    };
    let to_send: u64 = plan.values().map(|v| v.len() as u64).sum();
    node.set_migration(|m| {
        m.epoch = epoch;
        m.state = "copying".into();
        m.to_send = to_send;
        m.sent = 0;
        m.error = None;
    });
    for (target, sessions) in plan {
        let Some(addr) = Node::member_addr(&ring, target) else {
            return error(Code::Internal, epoch, 0, format!("no address for node {target}"));
        };
        let conn = node.peer(&addr);
        // Leases go first, even with no sessions, so the target can serve them.
        let mut chunks: Vec<Vec<(UserId, Session)>> =
            sessions.chunks(MERGE_CHUNK).map(|c| c.to_vec()).collect();
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        for chunk in chunks {
            let n = chunk.len() as u64;
            let req = Request::Merge { leases: leases.clone(), sessions: chunk };
            if let Err(e) = conn.call(req, node.peer_timeout()).await {
                let msg = format!("copy to node {target} failed: {e}");
                node.set_migration(|m| {
                    m.state = "failed".into();
                    m.error = Some(msg.clone());
                });
                return error(Code::Internal, epoch, 0, msg);
            }
            node.metrics.migration_sent.inc_by(n);
            node.set_migration(|m| m.sent += n);
        }
    }
    node.set_migration(|m| m.state = "idle".into());
    Response::Migrated(to_send)
}

/// Why a ring change did not complete.
#[derive(thiserror::Error, Debug)]
pub enum ChangeError {
    /// Another change runs on this coordinator.
    #[error("a ring change is already running")]
    Busy,
    /// The requested members are not a valid ring.
    #[error("invalid members: {0}")]
    Invalid(String),
    /// This node has no ring.
    #[error("this node is not in a ring")]
    NoRing,
    /// A step failed; run the change again to resume it.
    #[error("ring change failed at epoch {epoch}: {why}")]
    Failed {
        /// The epoch the ring is at.
        epoch: u64,
        /// What failed.
        why: String,
    },
}

/// Change the ring to `members` (see the module doc). Returns the final epoch.
pub async fn change_ring(node: &Arc<Node>, mut members: Vec<Member>) -> Result<u64, ChangeError> {
    let _guard = node.changing.try_lock().map_err(|_| ChangeError::Busy)?;
    members.sort_by_key(|m| m.id);
    if members.is_empty() {
        return Err(ChangeError::Invalid("no members".into()));
    }
    if members.windows(2).any(|w| w[0].id == w[1].id) {
        return Err(ChangeError::Invalid("duplicate id".into()));
    }
    if members.iter().any(|m| m.weight == 0 || m.addr.is_empty() || m.addr.len() > 255) {
        return Err(ChangeError::Invalid("weight 0 or bad address".into()));
    }
    let mut ring = node.ring().ok_or(ChangeError::NoRing)?;
    let result = run(node, &mut ring, members).await;
    node.set_migration(|m| {
        m.epoch = ring.epoch;
        match &result {
            Ok(_) => {
                m.state = "idle".into();
                m.error = None;
            }
            Err(e) => {
                m.state = "failed".into();
                m.error = Some(e.to_string());
            }
        }
    });
    result
}

async fn run(
    node: &Arc<Node>,
    ring: &mut RingState,
    members: Vec<Member>,
) -> Result<u64, ChangeError> {
    let same = |a: &[Member], b: &[Member]| {
        let mut a = a.to_vec();
        a.sort_by_key(|m| m.id);
        a == b
    };
    match &ring.next {
        None if same(&ring.current, &members) => return Ok(ring.epoch),
        None => {
            // Step 1.
            let next = RingState {
                epoch: ring.epoch + 1,
                next: Some(members.clone()),
                read_next: false,
                ..ring.clone()
            };
            install_all(node, &next).await?;
            *ring = next;
        }
        Some(n) if same(n, &members) => {} // resume
        Some(_) => {
            return Err(ChangeError::Failed {
                epoch: ring.epoch,
                why: "another change is half done; finish it first (POST its members again)".into(),
            });
        }
    }
    if !ring.read_next {
        // Step 2.
        copy_all(node, ring).await?;
        // Step 3.
        let switching = RingState { epoch: ring.epoch + 1, read_next: true, ..ring.clone() };
        install_all(node, &switching).await?;
        *ring = switching;
    }
    // Step 4.
    let stable = RingState {
        epoch: ring.epoch + 1,
        current: members,
        next: None,
        read_next: false,
        ..ring.clone()
    };
    install_to(node, &stable, &ring.all_members()).await?;
    *ring = stable;
    tracing::info!(epoch = ring.epoch, "ring change complete");
    Ok(ring.epoch)
}

/// Install `state` on every member of either side; members of the next side must answer.
async fn install_all(node: &Arc<Node>, state: &RingState) -> Result<(), ChangeError> {
    install_to(node, state, &state.all_members()).await
}

async fn install_to(
    node: &Arc<Node>,
    state: &RingState,
    targets: &[Member],
) -> Result<(), ChangeError> {
    node.set_migration(|m| {
        m.epoch = state.epoch;
        m.state = "coordinating".into();
    });
    let required: Vec<NodeId> = match &state.next {
        Some(next) => next.iter().map(|m| m.id).collect(),
        None => state.current.iter().map(|m| m.id).collect(),
    };
    let calls = targets.iter().map(|m| {
        let node = Arc::clone(node);
        let m = m.clone();
        let state = state.clone();
        async move {
            if m.id == node.id {
                return (m, Ok(node.install(state)));
            }
            let r = node.peer(&m.addr).call(Request::Install(state), node.peer_timeout()).await;
            let r = match r {
                Ok(Response::Installed(e)) => Ok(e),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e.to_string()),
            };
            (m, r)
        }
    });
    for (m, r) in futures_util::future::join_all(calls).await {
        match r {
            Ok(e) if e >= state.epoch => {}
            Ok(e) => {
                return Err(ChangeError::Failed {
                    epoch: state.epoch,
                    why: format!("node {} stayed at epoch {e}", m.id),
                });
            }
            Err(why) if required.contains(&m.id) => {
                return Err(ChangeError::Failed {
                    epoch: state.epoch,
                    why: format!("node {}: {why}", m.id),
                });
            }
            Err(why) => tracing::warn!(node = %m.id, %why, "leaving member unreachable; skipped"),
        }
    }
    Ok(())
}

async fn copy_all(node: &Arc<Node>, ring: &RingState) -> Result<(), ChangeError> {
    let sources = ring.current.clone();
    let total = sources.len() as u32;
    node.set_migration(|m| {
        m.state = "coordinating".into();
        m.nodes_total = total;
        m.nodes_done = 0;
    });
    let next_ids: Vec<NodeId> = ring.next.iter().flatten().map(|m| m.id).collect();
    let calls = sources.iter().map(|m| {
        let node = Arc::clone(node);
        let m = m.clone();
        let epoch = ring.epoch;
        async move {
            let r = if m.id == node.id {
                Ok(migrate(&node, epoch).await)
            } else {
                node.peer(&m.addr).call(Request::Migrate { epoch }, node.peer_timeout() * 30).await
            };
            node.set_migration(|s| s.nodes_done += 1);
            (m, r)
        }
    });
    for (m, r) in futures_util::future::join_all(calls).await {
        match r {
            Ok(Response::Migrated(n)) => tracing::info!(node = %m.id, sent = n, "copy done"),
            Ok(other) => {
                return Err(ChangeError::Failed {
                    epoch: ring.epoch,
                    why: format!("node {}: {other:?}", m.id),
                });
            }
            // A source that cannot be reached is tolerable only if it is leaving and the
            // keys it held have another old owner (R ≥ 2): its replicas copied them.
            Err(e) if !next_ids.contains(&m.id) && ring.replicas >= 2 => {
                tracing::warn!(node = %m.id, error = %e, "leaving member unreachable; its replicas copy its keys");
            }
            Err(e) => {
                return Err(ChangeError::Failed {
                    epoch: ring.epoch,
                    why: format!("node {}: {e}", m.id),
                });
            }
        }
    }
    Ok(())
}

/// Placement of a ring state's read side (for tests and the admin API).
pub fn read_placement(ring: &RingState) -> Placement {
    Placement::new(ring.read_members(), ring.vnodes, ring.replicas)
}
