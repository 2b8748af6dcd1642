//! What the API (and another gateway, over the internal channel) does with rooms:
//! server-side joins and leaves, a push to a room, a room's online counts — on this node
//! (`*_here`) and across the cluster.
//!
//! Across gateways: joins and leaves of users go to the gateways the presence store names
//! for them (with `sticky`, and for every leave of users, to every gateway, which keeps or
//! forgets the user's sticky rooms); a push goes to this node's members and to the
//! gateways the store names for the room (`holdfast_status::rooms`), never to every
//! gateway; counts add up each gateway's members and count distinct users by the union of
//! their user hashes.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use futures_util::future::join_all;
use holdfast_status::UserId;
use holdfast_status::rooms::RoomShare;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::cluster::peer::{PeerAnswer, PeerRequest};
use crate::cluster::route::{PRESENCE_UNAVAILABLE, failed, wire};
use crate::deliver::{self, Busy, Failed, Tally};
use crate::driver::{Command, PushMsg};
use crate::ids::ConnId;
use crate::node::Node;

/// One connection a join or leave concerned.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct Member {
    /// Its user, when the request named users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) user: Option<Arc<str>>,
    /// The connection.
    pub(crate) conn_id: ConnId,
    /// The gateway holding it.
    pub(crate) gateway: u16,
}

/// What a join or leave did.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub(crate) struct Members {
    /// Connections now in the room (join) or taken out of it (leave).
    pub(crate) conns: Vec<Member>,
    /// Users with no connection anywhere the request looked.
    pub(crate) offline_users: Vec<String>,
    /// Targets it could not reach or join, with the reason.
    pub(crate) failed: Vec<Failed>,
}

/// This node's connections of `users` (named once each), with their user; and the users
/// with none here.
fn local_conns(s: &Node, users: &[String]) -> (Vec<(ConnId, Arc<str>)>, Vec<String>) {
    let mut conns = Vec::new();
    let mut offline = Vec::new();
    let mut seen = HashSet::new();
    for user in users.iter().filter(|u| seen.insert(u.as_str())) {
        let sessions = s.registry.lookup(user);
        if sessions.is_empty() {
            offline.push(user.clone());
        }
        let name: Arc<str> = Arc::from(user.as_str());
        conns.extend(sessions.into_iter().map(|x| (x.conn, Arc::clone(&name))));
    }
    (conns, offline)
}

/// Put users' connections and connections of this node in `room` (a valid name); with
/// `sticky`, also keep the room for the users' later logins here.
pub(crate) async fn join_here(
    s: &Node,
    room: &Arc<str>,
    users: &[String],
    conns: Vec<ConnId>,
    sticky: bool,
) -> Result<Members, Busy> {
    let me = s.cfg.node.id;
    let mut answer = Members::default();
    if sticky {
        let max = s.cfg.rooms.max_per_conn;
        for user in users {
            if !s.sticky.add(user, room, max) {
                answer.failed.push(failed(
                    Some(Arc::from(user.as_str())),
                    None,
                    me,
                    "too_many_rooms",
                ));
            }
        }
    }
    let (named, offline) = local_conns(s, users);
    answer.offline_users = offline;
    let user_of: BTreeMap<ConnId, Arc<str>> = named.iter().cloned().collect();
    let mut all: Vec<ConnId> = named.into_iter().map(|(c, _)| c).collect();
    for c in conns {
        if c.node() == me {
            all.push(c);
        } else {
            answer.failed.push(failed(None, Some(c), me, "not_on_this_node"));
        }
    }
    let room = Arc::clone(room);
    let reports = deliver::ask_owners(s, all, |conns, reply| Command::Join {
        room: Arc::clone(&room),
        conns,
        reply,
    })
    .await?;
    for (conn, refused) in reports.into_iter().flatten() {
        let user = user_of.get(&conn).cloned();
        match refused {
            None => answer.conns.push(Member { user, conn_id: conn, gateway: me }),
            Some(why) => answer.failed.push(failed(user, Some(conn), me, &why)),
        }
    }
    Ok(answer)
}

/// Take users' connections and connections of this node out of `room`, and forget the
/// users' sticky membership of it here.
pub(crate) async fn leave_here(
    s: &Node,
    room: &Arc<str>,
    users: &[String],
    conns: Vec<ConnId>,
) -> Result<Members, Busy> {
    let me = s.cfg.node.id;
    for user in users {
        s.sticky.remove(user, room);
    }
    let (named, offline) = local_conns(s, users);
    let user_of: BTreeMap<ConnId, Arc<str>> = named.iter().cloned().collect();
    let mut all: Vec<ConnId> = named.into_iter().map(|(c, _)| c).collect();
    all.extend(conns.into_iter().filter(|c| c.node() == me));
    let room = Arc::clone(room);
    let reports = deliver::ask_owners(s, all, |conns, reply| Command::Leave {
        room: Arc::clone(&room),
        conns,
        reply,
    })
    .await?;
    let conns = reports
        .into_iter()
        .flatten()
        .map(|c| Member { user: user_of.get(&c).cloned(), conn_id: c, gateway: me })
        .collect();
    Ok(Members { conns, offline_users: offline, failed: Vec::new() })
}

/// The users of this node's members of `room`, as hashes (one per member).
pub(crate) async fn users_here(s: &Node, room: &Arc<str>) -> Result<Vec<u64>, Busy> {
    if s.rooms.find(room).is_none() {
        return Ok(Vec::new());
    }
    let room = Arc::clone(room);
    let answers =
        deliver::ask_every_loop(s, |reply| Command::RoomUsers { room: Arc::clone(&room), reply })
            .await?;
    Ok(answers.into_iter().flatten().collect())
}

/// Which operation a membership change is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Join (`sticky`: keep the room for the users' later logins).
    Join {
        /// Keep it for later logins.
        sticky: bool,
    },
    /// Leave.
    Leave,
}

/// A join or leave of users and connections, wherever they are connected.
pub(crate) async fn change(
    s: &Node,
    room: &Arc<str>,
    users: &[String],
    conns: Vec<ConnId>,
    what: Change,
) -> Result<Members, Busy> {
    let me = s.cfg.node.id;
    let (local_conns, remote_conns): (Vec<ConnId>, Vec<ConnId>) =
        conns.into_iter().partition(|c| c.node() == me);
    let mut answer = match what {
        Change::Join { sticky } => join_here(s, room, users, local_conns, sticky).await?,
        Change::Leave => leave_here(s, room, users, local_conns).await?,
    };
    let Some(cluster) = &s.cluster else {
        for c in remote_conns {
            answer.failed.push(failed(None, Some(c), c.node(), "not_on_this_node"));
        }
        return Ok(answer);
    };
    // gateway → (users, conns) to forward
    let mut remote: BTreeMap<u16, (BTreeSet<String>, Vec<ConnId>)> = BTreeMap::new();
    for c in remote_conns {
        remote.entry(c.node()).or_default().1.push(c);
    }
    let everywhere = matches!(what, Change::Join { sticky: true } | Change::Leave);
    let offline_here = std::mem::take(&mut answer.offline_users);
    let mut holders: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    if !users.is_empty() {
        if everywhere {
            // Every gateway keeps (or forgets) the users' sticky membership.
            for g in cluster.peers.ids() {
                remote.entry(g).or_default().0.extend(users.iter().cloned());
            }
        }
        let mut seen = HashSet::new();
        let unique: Vec<&String> = users.iter().filter(|u| seen.insert(u.as_str())).collect();
        let keys: Vec<UserId> = unique.iter().map(|u| Arc::from(u.as_str())).collect();
        match cluster.lookup(keys).await {
            Ok(found) => {
                for (user, sessions) in unique.iter().zip(found) {
                    let mut gateways: Vec<u16> =
                        sessions.iter().map(|x| x.gateway).filter(|g| *g != me).collect();
                    gateways.sort_unstable();
                    gateways.dedup();
                    for g in &gateways {
                        remote.entry(*g).or_default().0.insert((*user).clone());
                    }
                    holders.insert((*user).clone(), gateways);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "presence lookup for a room change failed");
                for u in &offline_here {
                    answer.failed.push(failed(
                        Some(Arc::from(u.as_str())),
                        None,
                        me,
                        PRESENCE_UNAVAILABLE,
                    ));
                }
                holders.clear();
            }
        }
    }
    let calls = remote.into_iter().map(|(gateway, (users, conns))| {
        let (room, users) = (room.to_string(), users.into_iter().collect::<Vec<_>>());
        let req = match what {
            Change::Join { sticky } => PeerRequest::RoomJoin { room, users, conns, sticky },
            Change::Leave => PeerRequest::RoomLeave { room, users, conns },
        };
        async move { (gateway, cluster.peers.call(gateway, &req).await) }
    });
    let mut offline_there: HashSet<(String, u16)> = HashSet::new();
    for (gateway, result) in join_all(calls).await {
        match result {
            Ok(PeerAnswer::Members(m)) => {
                answer.conns.extend(m.conns);
                answer.failed.extend(m.failed);
                offline_there.extend(m.offline_users.into_iter().map(|u| (u, gateway)));
            }
            Ok(_) => answer.failed.push(failed(None, None, gateway, "forward_refused")),
            Err(e) => {
                tracing::warn!(gateway, error = %e, "room change forward failed");
                answer.failed.push(failed(None, None, gateway, e.reason()));
            }
        }
    }
    for u in offline_here {
        // Unknown holders: the lookup failed, and the user is already reported as failed.
        let Some(gateways) = holders.get(&u) else { continue };
        if gateways.iter().all(|g| offline_there.contains(&(u.clone(), *g))) {
            answer.offline_users.push(u);
        }
    }
    Ok(answer)
}

/// The gateways holding members of `room` besides this one, from the store.
async fn remote_shares(
    s: &Node,
    cluster: &Cluster,
    room: &Arc<str>,
) -> Result<Vec<RoomShare>, String> {
    let me = s.cfg.node.id;
    let limit = cluster.call_timeout;
    let found = tokio::time::timeout(limit, cluster.store.rooms_lookup(vec![Arc::clone(room)]))
        .await
        .map_err(|_| "presence lookup timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(found.into_iter().flatten().filter(|r| r.gateway != me).collect())
}

/// Deliver `msgs` (in order) to every member of `room`: this node's, and those of every
/// gateway the store names for the room. The answer counts deliveries per gateway.
pub(crate) async fn push(
    s: &Node,
    room: &Arc<str>,
    msgs: Arc<[Arc<PushMsg>]>,
) -> Result<Value, Busy> {
    let me = s.cfg.node.id;
    let ids: Vec<String> = msgs.iter().map(|m| m.message_id.to_string()).collect();
    let mut tally = Tally::default();
    match &s.cluster {
        None => tally.add(me, Ok(deliver::to_room_here(s, room, &msgs).await?)),
        Some(cluster) => {
            let shares = match remote_shares(s, cluster, room).await {
                Ok(shares) => shares,
                Err(why) => {
                    tracing::warn!(error = %why, "room lookup for a push failed");
                    tally.add(me, Err(PRESENCE_UNAVAILABLE.to_owned()));
                    Vec::new()
                }
            };
            let req = PeerRequest::PushRoom {
                room: room.to_string(),
                msgs: msgs.iter().map(|m| wire(m)).collect(),
            };
            let remote = join_all(shares.iter().map(|r| {
                let req = &req;
                async move { (r.gateway, cluster.peers.call(r.gateway, req).await) }
            }));
            let (local, remote) = tokio::join!(deliver::to_room_here(s, room, &msgs), remote);
            if local.is_err() && remote.is_empty() {
                return Err(Busy);
            }
            tally.add(me, local.map_err(|_| "busy".to_owned()));
            for (g, r) in remote {
                let r = match r {
                    Ok(PeerAnswer::Room(a)) => Ok(a),
                    Ok(_) => Err("forward_refused".to_owned()),
                    Err(e) => Err(e.reason().to_owned()),
                };
                tally.add(g, r);
            }
        }
    }
    Ok(tally.answer(("message_ids", json!(ids))))
}

/// A room's online counts: connections and distinct users, in all and per gateway.
pub(crate) async fn counts(s: &Node, room: &Arc<str>) -> Result<Value, Busy> {
    let me = s.cfg.node.id;
    let mut hashes = users_here(s, room).await?;
    let mut gateways = Vec::new();
    let mut connections = hashes.len() as u64;
    let mut errors = Vec::new();
    if !hashes.is_empty() {
        gateways.push(json!({ "gateway": me, "connections": hashes.len() }));
    }
    if let Some(cluster) = &s.cluster {
        match remote_shares(s, cluster, room).await {
            Ok(shares) => {
                let req = PeerRequest::RoomUsers { room: room.to_string() };
                let answers = join_all(shares.iter().map(|r| {
                    let req = &req;
                    async move { (r.gateway, cluster.peers.call(r.gateway, req).await) }
                }))
                .await;
                for (g, r) in answers {
                    match r {
                        Ok(PeerAnswer::RoomUsers { users }) => {
                            if !users.is_empty() {
                                gateways.push(json!({ "gateway": g, "connections": users.len() }));
                            }
                            connections += users.len() as u64;
                            hashes.extend(users);
                        }
                        Ok(_) => errors.push(json!({ "gateway": g, "error": "forward_refused" })),
                        Err(e) => errors.push(json!({ "gateway": g, "error": e.reason() })),
                    }
                }
            }
            Err(why) => {
                tracing::warn!(error = %why, "room lookup for counts failed");
                errors.push(json!({ "gateway": me, "error": PRESENCE_UNAVAILABLE }));
            }
        }
    }
    hashes.sort_unstable();
    hashes.dedup();
    Ok(json!({
        "room": &**room,
        "connections": connections,
        "users": hashes.len(),
        "gateways": gateways,
        "failed": errors,
    }))
}
