//! Delivery to this node's own connections: how a push or a kick reaches the event loops
//! that own its targets, and what each loop reported.
//!
//! The HTTP API ([`crate::api`]) and the internal listener ([`crate::cluster`], serving
//! pushes forwarded by other gateways) both call these functions; neither imports the other.
//! Every target ends up in the answer as delivered (with its connection and sequence),
//! offline or failed: nothing handed in is dropped silently. A loop whose command queue is
//! full refuses the command; its targets are reported as failed with `"busy"`, and when
//! nothing could be handed to any loop the call fails with [`Busy`].

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use holdfast_codec::Code;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::driver::{Command, PushMsg, PushReport, SendError, Targets};
use crate::ids::ConnId;
use crate::node::Node;

/// How long a caller waits for an event loop's report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Every event loop a call needed had a full command queue: retry later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the gateway's event loops are busy; retry")]
pub(crate) struct Busy;

/// One connection a push was written (or queued) to.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct Delivered {
    /// The user, for pushes addressed to users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) user: Option<Arc<str>>,
    /// The connection.
    pub(crate) conn_id: ConnId,
    /// The sequence the push got on it.
    pub(crate) seq: u32,
    /// The gateway holding the connection.
    pub(crate) gateway: u16,
}

/// A target a push or kick could not reach.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct Failed {
    /// The user, for pushes addressed to users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) user: Option<Arc<str>>,
    /// The connection, when the failure concerns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) conn_id: Option<ConnId>,
    /// The gateway concerned.
    pub(crate) gateway: u16,
    /// Why (`docs/API.md` lists every reason).
    pub(crate) reason: String,
}

/// The answer to a targeted push.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub(crate) struct PushAnswer {
    /// The message id, as a decimal string.
    pub(crate) message_id: String,
    /// Connections the push was written to.
    pub(crate) delivered: Vec<Delivered>,
    /// Users with no connection anywhere the push looked.
    pub(crate) offline_users: Vec<String>,
    /// Targets it could not reach.
    pub(crate) failed: Vec<Failed>,
}

/// What a push to all did on this node.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub(crate) struct AllAnswer {
    /// Connections that got it.
    pub(crate) delivered_count: usize,
    /// Connections it could not be written to.
    pub(crate) failed: Vec<Failed>,
    /// Event loops whose queue was full.
    pub(crate) workers_busy: usize,
    /// Event loops that did not report.
    pub(crate) workers_unavailable: usize,
}

/// What every gateway did with a push to many connections (to all, to a room): the
/// totals of those that answered, and one entry per gateway (`delivered_count`, or the
/// `error` that kept it from answering).
#[derive(Default)]
pub(crate) struct Tally {
    total: AllAnswer,
    gateways: Vec<serde_json::Value>,
}

impl Tally {
    /// Add what `gateway` did, or why it could not say.
    pub(crate) fn add(&mut self, gateway: u16, r: Result<AllAnswer, String>) {
        match r {
            Ok(a) => {
                self.gateways.push(
                    serde_json::json!({ "gateway": gateway, "delivered_count": a.delivered_count }),
                );
                self.total.delivered_count += a.delivered_count;
                self.total.failed.extend(a.failed);
                self.total.workers_busy += a.workers_busy;
                self.total.workers_unavailable += a.workers_unavailable;
            }
            Err(reason) => {
                self.gateways.push(serde_json::json!({ "gateway": gateway, "error": reason }))
            }
        }
    }

    /// The answer: `ids` (the message id field or fields), the totals and the gateways.
    pub(crate) fn answer(self, ids: (&str, serde_json::Value)) -> serde_json::Value {
        let mut out = serde_json::json!({
            "delivered_count": self.total.delivered_count,
            "failed": self.total.failed,
            "workers_busy": self.total.workers_busy,
            "workers_unavailable": self.total.workers_unavailable,
            "gateways": self.gateways,
        });
        out[ids.0] = ids.1;
        out
    }
}

/// What a kick did.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub(crate) struct KickAnswer {
    /// Connections told to close.
    pub(crate) kicked: Vec<ConnId>,
    /// Connections that could not be kicked.
    pub(crate) failed: Vec<Failed>,
}

/// Send the message to connections of this node, grouped by their event loop, and add the
/// reports to `answer`.
pub(crate) async fn to_conns(
    s: &Node,
    msg: &Arc<PushMsg>,
    conns: Vec<(ConnId, Option<Arc<str>>)>,
    answer: &mut PushAnswer,
) -> Result<(), Busy> {
    let me = s.cfg.node.id;
    let failed = |user, id, reason: &str| Failed {
        user,
        conn_id: Some(id),
        gateway: me,
        reason: reason.to_owned(),
    };
    let mut by_worker: BTreeMap<u8, Vec<ConnId>> = BTreeMap::new();
    let mut users: BTreeMap<ConnId, Option<Arc<str>>> = BTreeMap::new();
    for (id, user) in conns {
        if id.node() != me {
            answer.failed.push(failed(user, id, "not_on_this_node"));
            continue;
        }
        by_worker.entry(id.worker()).or_default().push(id);
        users.insert(id, user);
    }
    s.metrics.pushes_in.inc_by(users.len() as u64);
    let mut waits = Vec::new();
    let mut handed = 0;
    for (worker, ids) in by_worker {
        let (reply, rx) = oneshot::channel();
        let sent = match s.worker(worker) {
            Some(w) => w.send(Command::Push {
                msg: Arc::clone(msg),
                targets: Targets::Conns(ids.clone()),
                reply,
            }),
            None => Err(SendError::Stopped),
        };
        handed += usize::from(sent.is_ok());
        waits.push((ids, sent.map(|()| rx)));
    }
    if handed == 0 && waits.iter().any(|(_, r)| r.as_ref().err() == Some(&SendError::Busy)) {
        return Err(Busy);
    }
    let user_of = |id: &ConnId| users.get(id).cloned().flatten();
    for (ids, rx) in waits {
        let report = match rx {
            Ok(rx) => tokio::time::timeout(REPORT_TIMEOUT, rx).await.ok().and_then(Result::ok),
            Err(SendError::Busy) => {
                answer.failed.extend(ids.into_iter().map(|id| failed(user_of(&id), id, "busy")));
                continue;
            }
            Err(SendError::Stopped) => None,
        };
        let Some(report) = report else {
            answer
                .failed
                .extend(ids.into_iter().map(|id| failed(user_of(&id), id, "worker_unavailable")));
            continue;
        };
        for (id, seq) in report.delivered {
            answer.delivered.push(Delivered { user: user_of(&id), conn_id: id, seq, gateway: me });
        }
        for (id, why) in report.failed {
            answer.failed.push(failed(user_of(&id), id, why.as_str()));
        }
    }
    Ok(())
}

/// Push to users: every connection each has on this node. A user named twice gets it once;
/// `offline_users` are the users with no connection *here*.
pub(crate) async fn to_users_here(
    s: &Node,
    msg: &Arc<PushMsg>,
    users: &[String],
) -> Result<PushAnswer, Busy> {
    let mut answer = PushAnswer { message_id: msg.message_id.to_string(), ..Default::default() };
    let mut conns = Vec::new();
    let mut seen = HashSet::new();
    for user in users {
        if !seen.insert(user.as_str()) {
            continue;
        }
        let sessions = s.registry.lookup(user);
        if sessions.is_empty() {
            answer.offline_users.push(user.clone());
            continue;
        }
        let name: Arc<str> = Arc::from(user.as_str());
        conns.extend(sessions.into_iter().map(|x| (x.conn, Some(Arc::clone(&name)))));
    }
    s.metrics.pushes_offline.inc_by(answer.offline_users.len() as u64);
    to_conns(s, msg, conns, &mut answer).await?;
    Ok(answer)
}

/// Push to one connection of this node.
pub(crate) async fn to_conn_here(
    s: &Node,
    msg: &Arc<PushMsg>,
    conn: ConnId,
) -> Result<PushAnswer, Busy> {
    let mut answer = PushAnswer { message_id: msg.message_id.to_string(), ..Default::default() };
    to_conns(s, msg, vec![(conn, None)], &mut answer).await?;
    Ok(answer)
}

/// Push to every authenticated connection of this node.
pub(crate) async fn to_all_here(s: &Node, msg: &Arc<PushMsg>) -> Result<AllAnswer, Busy> {
    every_loop(s, |reply| Command::Push { msg: Arc::clone(msg), targets: Targets::All, reply })
        .await
}

/// Push `msgs` (in order, one write per member) to the members of `room` on this node:
/// every loop writes to its own.
pub(crate) async fn to_room_here(
    s: &Node,
    room: &Arc<str>,
    msgs: &Arc<[Arc<PushMsg>]>,
) -> Result<AllAnswer, Busy> {
    if s.rooms.find(room).is_none() {
        return Ok(AllAnswer::default());
    }
    every_loop(s, |reply| Command::PushMany {
        msgs: Arc::clone(msgs),
        targets: Targets::Room(Arc::clone(room)),
        reply,
    })
    .await
}

/// Send a push command to every event loop and add up their reports.
async fn every_loop(
    s: &Node,
    command: impl Fn(oneshot::Sender<PushReport>) -> Command,
) -> Result<AllAnswer, Busy> {
    let mut waits = Vec::new();
    let mut busy_workers = 0;
    let mut unavailable = 0;
    for w in s.all_workers() {
        let (reply, rx) = oneshot::channel();
        match w.send(command(reply)) {
            Ok(()) => waits.push(rx),
            Err(SendError::Busy) => busy_workers += 1,
            Err(SendError::Stopped) => unavailable += 1,
        }
    }
    if waits.is_empty() && busy_workers > 0 {
        return Err(Busy);
    }
    let mut total = PushReport::default();
    for rx in waits {
        match tokio::time::timeout(REPORT_TIMEOUT, rx).await.ok().and_then(Result::ok) {
            Some(r) => {
                total.delivered_count += r.delivered_count;
                total.failed.extend(r.failed);
            }
            None => unavailable += 1,
        }
    }
    s.metrics.pushes_in.inc_by((total.delivered_count + total.failed.len()) as u64);
    let me = s.cfg.node.id;
    Ok(AllAnswer {
        delivered_count: total.delivered_count,
        failed: total
            .failed
            .into_iter()
            .map(|(id, why)| Failed {
                user: None,
                conn_id: Some(id),
                gateway: me,
                reason: why.as_str().to_owned(),
            })
            .collect(),
        workers_busy: busy_workers,
        workers_unavailable: unavailable,
    })
}

/// Ask every event loop; the answers of those that gave one (the loops are busy: `Busy`).
pub(crate) async fn ask_every_loop<R>(
    s: &Node,
    command: impl Fn(oneshot::Sender<R>) -> Command,
) -> Result<Vec<R>, Busy> {
    let mut waits = Vec::new();
    let mut busy = false;
    for w in s.all_workers() {
        let (reply, rx) = oneshot::channel();
        match w.send(command(reply)) {
            Ok(()) => waits.push(rx),
            Err(SendError::Busy) => busy = true,
            Err(SendError::Stopped) => {}
        }
    }
    if busy {
        return Err(Busy);
    }
    let mut out = Vec::with_capacity(waits.len());
    for rx in waits {
        if let Some(r) = tokio::time::timeout(REPORT_TIMEOUT, rx).await.ok().and_then(Result::ok) {
            out.push(r);
        }
    }
    Ok(out)
}

/// Ask the event loop owning each connection of this node; answers by loop.
pub(crate) async fn ask_owners<R>(
    s: &Node,
    conns: Vec<ConnId>,
    command: impl Fn(Vec<ConnId>, oneshot::Sender<R>) -> Command,
) -> Result<Vec<R>, Busy> {
    let me = s.cfg.node.id;
    let mut by_worker: BTreeMap<u8, Vec<ConnId>> = BTreeMap::new();
    for id in conns.into_iter().filter(|id| id.node() == me) {
        by_worker.entry(id.worker()).or_default().push(id);
    }
    let mut waits = Vec::new();
    for (worker, ids) in by_worker {
        let (reply, rx) = oneshot::channel();
        match s.worker(worker).map(|w| w.send(command(ids, reply))) {
            Some(Ok(())) => waits.push(rx),
            Some(Err(SendError::Busy)) => return Err(Busy),
            _ => {}
        }
    }
    let mut out = Vec::with_capacity(waits.len());
    for rx in waits {
        if let Some(r) = tokio::time::timeout(REPORT_TIMEOUT, rx).await.ok().and_then(Result::ok) {
            out.push(r);
        }
    }
    Ok(out)
}

/// Kick connections of this node with a 3xx `code`.
pub(crate) fn kick_here(
    s: &Node,
    conns: Vec<ConnId>,
    code: Code,
    reason: &str,
) -> Result<KickAnswer, Busy> {
    let me = s.cfg.node.id;
    let mut answer = KickAnswer::default();
    let mut busy = false;
    for conn in conns {
        let worker = (conn.node() == me).then(|| s.worker(conn.worker())).flatten();
        let sent = match worker {
            Some(w) => w.send(Command::Kick { conn, code, reason: reason.to_owned() }),
            None => Err(SendError::Stopped),
        };
        let why = match sent {
            Ok(()) => {
                answer.kicked.push(conn);
                continue;
            }
            Err(SendError::Busy) => {
                busy = true;
                "busy"
            }
            Err(SendError::Stopped) => "not_on_this_node",
        };
        answer.failed.push(Failed {
            user: None,
            conn_id: Some(conn),
            gateway: me,
            reason: why.to_owned(),
        });
    }
    if answer.kicked.is_empty() && busy {
        return Err(Busy);
    }
    Ok(answer)
}
