//! The internal listener: serves pushes and kicks other gateways forward here.
//!
//! One task per peer connection reads requests after the handshake ([`super::peer`]) and
//! serves each in its own task, so a slow push to all does not hold up a push to one user;
//! answers go back through one writer task. Requests only ever reach this node's own
//! connections: a forwarded push is never forwarded again.

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use holdfast_codec::Code;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::peer::{
    ANSWER, HANDSHAKE_TIMEOUT, PeerAnswer, PeerRequest, REQUEST, WireMsg, accept_handshake, frame,
    read_frame,
};
use crate::deliver;
use crate::driver::{Internal, PushMsg};
use crate::node::Node;
use crate::rooms::{check_name, ops};

/// Accept peers on `listener` until the runtime stops.
pub(crate) async fn serve(node: Arc<Node>, listener: TcpListener, secret: Arc<[u8]>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "internal accept failed; retrying in 100 ms");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let node = Arc::clone(&node);
        let secret = Arc::clone(&secret);
        tokio::spawn(async move {
            if let Err(e) = connection(Arc::clone(&node), stream, &secret).await {
                tracing::debug!(%peer, error = %e, "peer connection ended");
            }
        });
    }
}

async fn connection(node: Arc<Node>, mut stream: TcpStream, secret: &[u8]) -> std::io::Result<()> {
    let m = &node.metrics.cluster;
    let me = node.cfg.node.id;
    let shaken = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_handshake(&mut stream, secret, me))
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))
        });
    let client = match shaken {
        Ok(c) => c,
        Err(e) => {
            m.peer_handshakes[1].inc();
            tracing::warn!(peer = ?stream.peer_addr().ok(), error = %e, "peer refused");
            return Err(e);
        }
    };
    m.peer_handshakes[0].inc();
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut buf = first;
            while let Ok(more) = rx.try_recv() {
                buf.extend_from_slice(&more);
            }
            if wr.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let result = loop {
        match read_frame(&mut rd).await {
            Ok(Some((id, REQUEST, body))) => {
                let node = Arc::clone(&node);
                let tx = tx.clone();
                tokio::spawn(async move {
                    node.metrics.cluster.forwards_served.inc();
                    let answer = match serde_json::from_slice::<PeerRequest>(&body) {
                        Ok(req) => handle(&node, req).await,
                        Err(e) => PeerAnswer::Error { error: format!("bad request: {e}") },
                    };
                    let body = serde_json::to_vec(&answer).unwrap_or_else(|e| {
                        format!(r#"{{"answer":"error","error":"unencodable answer: {e}"}}"#)
                            .into_bytes()
                    });
                    let _ = tx.send(frame(id, ANSWER, &body));
                });
            }
            Ok(Some((_, kind, _))) => {
                break Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("gateway {client} sent frame kind {kind}"),
                ));
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    drop(tx);
    let _ = writer.await;
    result
}

/// Turn a forwarded message back into the loops' form.
pub(crate) fn push_msg(msg: WireMsg) -> Result<Arc<PushMsg>, String> {
    let payload = base64::engine::general_purpose::STANDARD
        .decode(msg.payload.as_bytes())
        .map_err(|e| format!("payload: {e}"))?;
    Ok(Arc::new(PushMsg {
        message_id: msg.message_id,
        topic: msg.topic,
        payload: Bytes::from(payload),
        ack_required: msg.ack,
    }))
}

async fn handle(node: &Node, req: PeerRequest) -> PeerAnswer {
    let busy = |e: deliver::Busy| PeerAnswer::Error { error: e.to_string() };
    match req {
        PeerRequest::Push { msg, users } => match push_msg(msg) {
            Ok(msg) => {
                deliver::to_users_here(node, &msg, &users).await.map_or_else(busy, PeerAnswer::Push)
            }
            Err(error) => PeerAnswer::Error { error },
        },
        PeerRequest::PushConn { msg, conn } => match push_msg(msg) {
            Ok(msg) => {
                deliver::to_conn_here(node, &msg, conn).await.map_or_else(busy, PeerAnswer::Push)
            }
            Err(error) => PeerAnswer::Error { error },
        },
        PeerRequest::PushAll { msg } => match push_msg(msg) {
            Ok(msg) => deliver::to_all_here(node, &msg).await.map_or_else(busy, PeerAnswer::All),
            Err(error) => PeerAnswer::Error { error },
        },
        PeerRequest::Kick { conns, code, reason } => {
            if !(300..400).contains(&code) {
                return PeerAnswer::Error { error: format!("kick code {code} is not 3xx") };
            }
            deliver::kick_here(node, conns, Code(code), &reason).map_or_else(busy, PeerAnswer::Kick)
        }
        PeerRequest::PushRoom { room, msgs } => {
            let msgs: Result<Vec<_>, String> = msgs.into_iter().map(push_msg).collect();
            match msgs {
                Ok(msgs) => {
                    let room: Arc<str> = Arc::from(room);
                    deliver::to_room_here(node, &room, &Arc::from(msgs))
                        .await
                        .map_or_else(busy, PeerAnswer::Room)
                }
                Err(error) => PeerAnswer::Error { error },
            }
        }
        PeerRequest::RoomJoin { room, users, conns, sticky } => {
            if let Err(error) = check_name(&room, node.cfg.rooms.name_max) {
                return PeerAnswer::Error { error };
            }
            ops::join_here(node, &Arc::from(room), &users, conns, sticky)
                .await
                .map_or_else(busy, PeerAnswer::Members)
        }
        PeerRequest::RoomLeave { room, users, conns } => {
            ops::leave_here(node, &Arc::from(room), &users, conns)
                .await
                .map_or_else(busy, PeerAnswer::Members)
        }
        PeerRequest::RoomUsers { room } => ops::users_here(node, &Arc::from(room))
            .await
            .map_or_else(busy, |users| PeerAnswer::RoomUsers { users }),
        PeerRequest::Displace { conns } => {
            let mut handed = 0;
            for id in conns {
                if id.node() == node.cfg.node.id
                    && let Some(w) = node.worker(id.worker())
                {
                    handed += usize::from(w.send_internal(Internal::Displaced(id)));
                }
            }
            PeerAnswer::Displaced { handed }
        }
    }
}
