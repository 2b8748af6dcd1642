//! Routing a push or a kick to the gateways that hold its targets.
//!
//! A push to users delivers to this gateway's own connections from the node registry (the
//! freshest view of them), looks every user up in the presence store (one call for the
//! whole request), and forwards one request per *other* gateway holding some of the users,
//! concurrently, over the internal channel — never a fan-out to every gateway. The answers
//! are merged into one: every connection delivered (with its gateway), every failure (a
//! forward that failed is reported once per user it concerned, with its gateway and a
//! reason), and the users that are offline everywhere the push looked.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use base64::Engine;
use futures_util::future::join_all;
use holdfast_codec::Code;
use holdfast_status::rooms::is_room_key;
use holdfast_status::{Session, StoreError, UserId};
use serde_json::json;

use super::Cluster;
use super::peer::{ForwardError, PeerAnswer, PeerRequest, WireMsg};
use crate::deliver::{self, Busy, Failed, KickAnswer, PushAnswer, Tally};
use crate::driver::PushMsg;
use crate::ids::ConnId;
use crate::node::Node;

/// The `failed.reason` when the presence store could not be asked.
pub(crate) const PRESENCE_UNAVAILABLE: &str = "presence_unavailable";

/// A message as it travels to another gateway.
pub(crate) fn wire(msg: &PushMsg) -> WireMsg {
    WireMsg {
        message_id: msg.message_id,
        topic: msg.topic.clone(),
        payload: base64::engine::general_purpose::STANDARD.encode(&msg.payload),
        ack: msg.ack_required,
    }
}

impl Cluster {
    /// Look users up, within `presence.call_timeout_ms`.
    /// A name that is a room's reserved key (`holdfast_status::rooms`; no token's `sub`
    /// can be one) is answered offline, never looked up.
    pub(crate) async fn lookup(&self, users: Vec<UserId>) -> Result<Vec<Vec<Session>>, StoreError> {
        let limit = self.call_timeout;
        if users.iter().any(|u| is_room_key(u)) {
            let asked: Vec<UserId> = users.iter().filter(|u| !is_room_key(u)).cloned().collect();
            let mut found = tokio::time::timeout(limit, self.store.lookup(asked))
                .await
                .unwrap_or(Err(StoreError::Timeout(limit)))?
                .into_iter();
            return Ok(users
                .iter()
                .map(|u| if is_room_key(u) { Vec::new() } else { found.next().unwrap_or_default() })
                .collect());
        }
        tokio::time::timeout(limit, self.store.lookup(users))
            .await
            .unwrap_or(Err(StoreError::Timeout(limit)))
    }
}

/// A failure entry of an answer.
pub(crate) fn failed(
    user: Option<Arc<str>>,
    conn: Option<ConnId>,
    gateway: u16,
    reason: &str,
) -> Failed {
    Failed { user, conn_id: conn, gateway, reason: reason.to_owned() }
}

/// Push to users wherever they are connected.
///
/// A user whom presence placed on another gateway that then no longer held them has
/// usually just moved: in a make-before-break move (`docs/PROTOCOL.md` § Moving without a
/// gap) the old connection may close while the push is on its way to it, and the new one
/// may be on this gateway already. Such users get one second look, here and in presence
/// (skipping the gateways that said no), before they are answered offline.
pub(crate) async fn push_users(
    node: &Node,
    cluster: &Cluster,
    msg: &Arc<PushMsg>,
    users: &[String],
) -> Result<PushAnswer, Busy> {
    let mut seen = HashSet::new();
    let unique: Vec<String> = users.iter().filter(|u| seen.insert(u.as_str())).cloned().collect();
    let (mut answer, gone) = route_users(node, cluster, msg, &unique, &HashSet::new()).await?;
    if gone.is_empty() {
        return Ok(answer);
    }
    let mut seen = HashSet::new();
    let again: Vec<String> =
        gone.iter().filter(|(u, _)| seen.insert(u.as_str())).map(|(u, _)| u.clone()).collect();
    let (second, _) = route_users(node, cluster, msg, &again, &gone).await?;
    answer.delivered.extend(second.delivered);
    answer.failed.extend(second.failed);
    answer.offline_users.extend(second.offline_users);
    Ok(answer)
}

/// One look for `users` (each named once): delivered here, then forwarded to every other
/// gateway presence names for them, except the `(user, gateway)` pairs in `skip`.
///
/// Users found nowhere are `offline_users` of the answer, unless some gateway presence
/// named said it no longer held them: those are returned apart, with every such gateway,
/// for a second look.
async fn route_users(
    node: &Node,
    cluster: &Cluster,
    msg: &Arc<PushMsg>,
    users: &[String],
    skip: &HashSet<(String, u16)>,
) -> Result<(PushAnswer, HashSet<(String, u16)>), Busy> {
    let me = node.cfg.node.id;
    let mut answer = deliver::to_users_here(node, msg, users).await?;
    let offline_here = std::mem::take(&mut answer.offline_users);
    let keys: Vec<UserId> = users.iter().map(|u| Arc::from(u.as_str())).collect();
    let found = match cluster.lookup(keys).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "presence lookup for a push failed");
            for u in offline_here {
                answer.failed.push(failed(Some(Arc::from(u)), None, me, PRESENCE_UNAVAILABLE));
            }
            return Ok((answer, HashSet::new()));
        }
    };
    // gateway -> its users; user -> the other gateways that hold it
    let mut remote: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    let mut holders: HashMap<&str, Vec<u16>> = HashMap::new();
    for (user, sessions) in users.iter().zip(found) {
        let mut gateways: Vec<u16> = sessions
            .iter()
            .map(|s| s.gateway)
            .filter(|g| *g != me && !skip.contains(&(user.clone(), *g)))
            .collect();
        gateways.sort_unstable();
        gateways.dedup();
        for g in &gateways {
            remote.entry(*g).or_default().push(user.clone());
        }
        holders.insert(user.as_str(), gateways);
    }
    let wire = wire(msg);
    let calls = remote.into_iter().map(|(gateway, users)| {
        let req = PeerRequest::Push { msg: wire.clone(), users: users.clone() };
        async move { (gateway, users, cluster.peers.call(gateway, &req).await) }
    });
    // (user, gateway) pairs a gateway said are offline there
    let mut offline_there: HashSet<(String, u16)> = HashSet::new();
    for (gateway, users, result) in join_all(calls).await {
        let result = match result {
            Ok(PeerAnswer::Push(a)) => Ok(a),
            Ok(other) => Err(ForwardError::Refused {
                gateway,
                error: format!("unexpected answer {other:?}"),
            }),
            Err(e) => Err(e),
        };
        match result {
            Ok(a) => {
                answer.delivered.extend(a.delivered);
                answer.failed.extend(a.failed);
                offline_there.extend(a.offline_users.into_iter().map(|u| (u, gateway)));
            }
            Err(e) => {
                tracing::warn!(gateway, error = %e, "push forward failed");
                for u in users {
                    answer.failed.push(failed(Some(Arc::from(u)), None, gateway, e.reason()));
                }
            }
        }
    }
    let mut gone = HashSet::new();
    for u in offline_here {
        let elsewhere = holders.get(u.as_str()).map_or(&[][..], |g| g.as_slice());
        if !elsewhere.iter().all(|g| offline_there.contains(&(u.clone(), *g))) {
            continue;
        }
        if elsewhere.is_empty() {
            answer.offline_users.push(u);
        } else {
            gone.extend(elsewhere.iter().map(|g| (u.clone(), *g)));
        }
    }
    Ok((answer, gone))
}

/// Push to one connection, on whichever gateway holds it.
pub(crate) async fn push_conn(
    node: &Node,
    cluster: &Cluster,
    msg: &Arc<PushMsg>,
    conn: ConnId,
) -> Result<PushAnswer, Busy> {
    let gateway = conn.node();
    if gateway == node.cfg.node.id {
        return deliver::to_conn_here(node, msg, conn).await;
    }
    let req = PeerRequest::PushConn { msg: wire(msg), conn };
    match cluster.peers.call(gateway, &req).await {
        Ok(PeerAnswer::Push(a)) => Ok(a),
        other => {
            let reason = match other {
                Err(e) => e.reason(),
                Ok(_) => "forward_refused",
            };
            Ok(PushAnswer {
                message_id: msg.message_id.to_string(),
                failed: vec![failed(None, Some(conn), gateway, reason)],
                ..PushAnswer::default()
            })
        }
    }
}

/// Push to every connection of every gateway: this one and each of `cluster.peers`.
pub(crate) async fn push_all(
    node: &Node,
    cluster: &Cluster,
    msg: &Arc<PushMsg>,
) -> Result<serde_json::Value, Busy> {
    let me = node.cfg.node.id;
    let wire = wire(msg);
    let req = PeerRequest::PushAll { msg: wire };
    let remote = join_all(cluster.peers.ids().into_iter().map(|g| {
        let req = &req;
        async move { (g, cluster.peers.call(g, req).await) }
    }));
    let (local, remote) = tokio::join!(deliver::to_all_here(node, msg), remote);
    if local.is_err() && remote.is_empty() {
        return Err(Busy);
    }
    let mut tally = Tally::default();
    tally.add(me, local.map_err(|_| "busy".to_owned()));
    for (g, r) in remote {
        tally.add(
            g,
            match r {
                Ok(PeerAnswer::All(a)) => Ok(a),
                Ok(_) => Err("forward_refused".to_owned()),
                Err(e) => Err(e.reason().to_owned()),
            },
        );
    }
    Ok(tally.answer(("message_id", json!(msg.message_id.to_string()))))
}

/// Kick connections, each on the gateway that holds it.
pub(crate) async fn kick(
    node: &Node,
    cluster: &Cluster,
    user: Option<&str>,
    conns: Vec<ConnId>,
    code: Code,
    reason: &str,
) -> Result<KickAnswer, Busy> {
    let me = node.cfg.node.id;
    let mut by_gateway: BTreeMap<u16, Vec<ConnId>> = BTreeMap::new();
    for c in conns {
        by_gateway.entry(c.node()).or_default().push(c);
    }
    let mut answer = KickAnswer::default();
    if let Some(user) = user {
        match cluster.lookup(vec![Arc::from(user)]).await {
            Ok(found) => {
                for s in found.into_iter().flatten().filter(|s| s.gateway != me) {
                    by_gateway.entry(s.gateway).or_default().push(ConnId(s.conn));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "presence lookup for a kick failed");
                answer.failed.push(failed(Some(Arc::from(user)), None, me, PRESENCE_UNAVAILABLE));
            }
        }
    }
    let local = by_gateway.remove(&me).unwrap_or_default();
    let calls = by_gateway.into_iter().map(|(gateway, conns)| {
        let req =
            PeerRequest::Kick { conns: conns.clone(), code: code.0, reason: reason.to_owned() };
        async move { (gateway, conns, cluster.peers.call(gateway, &req).await) }
    });
    let remote = join_all(calls).await;
    let mut busy = false;
    if !local.is_empty() {
        match deliver::kick_here(node, local.clone(), code, reason) {
            Ok(a) => {
                answer.kicked.extend(a.kicked);
                answer.failed.extend(a.failed);
            }
            Err(Busy) => {
                busy = true;
                answer.failed.extend(local.into_iter().map(|c| failed(None, Some(c), me, "busy")));
            }
        }
    }
    for (gateway, conns, r) in remote {
        match r {
            Ok(PeerAnswer::Kick(a)) => {
                answer.kicked.extend(a.kicked);
                answer.failed.extend(a.failed);
            }
            other => {
                let why = match other {
                    Err(e) => e.reason(),
                    Ok(_) => "forward_refused",
                };
                answer
                    .failed
                    .extend(conns.into_iter().map(|c| failed(None, Some(c), gateway, why)));
            }
        }
    }
    if busy && answer.kicked.is_empty() {
        return Err(Busy);
    }
    Ok(answer)
}
