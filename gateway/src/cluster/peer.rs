//! The internal gateway ↔ gateway channel: its wire format, its handshake, and the client
//! side ([`Peers`]: one persistent, pipelined connection per other gateway).
//!
//! # Wire
//!
//! TCP. After the handshake, both directions carry frames
//! `u32 length | u32 id | u8 kind | JSON body` (big-endian; `length` counts what follows it,
//! at most [`MAX_FRAME`]). The client sends requests (`kind` 1, a [`PeerRequest`]) with ids
//! it chooses; the server answers each with the same id, `kind` 2 and a [`PeerAnswer`], in
//! any order (requests are served concurrently).
//!
//! # Handshake (a cluster secret; both sides prove they hold it)
//!
//! 1. server → client: `"HFGP"` | `u8 version (1)` | `u16 server id` | 32-byte nonce `ns`;
//! 2. client → server: `u16 client id` | 32-byte nonce `nc` |
//!    HMAC-SHA256(secret, `"holdfast-peer/1 client"` ‖ `ns` ‖ client id ‖ server id);
//! 3. server → client: HMAC-SHA256(secret, `"holdfast-peer/1 server"` ‖ `nc` ‖ server id ‖
//!    client id), or it closes the connection without a byte.
//!
//! Nothing after the handshake is parsed before it succeeded: a peer without the secret can
//! neither push, kick nor learn anything but the server's id. The server gives a
//! handshake [`HANDSHAKE_TIMEOUT`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::config::PeerConfig;
use crate::deliver::{AllAnswer, KickAnswer, PushAnswer};
use crate::ids::ConnId;
use crate::metrics::{ClusterMetrics, FORWARD_OUTCOMES};

/// The largest frame either side accepts, in bytes (a 16 MiB push, base64-encoded, fits).
pub(crate) const MAX_FRAME: u32 = 32 << 20;
/// Time a connecting peer has to complete the handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The server's greeting magic.
const MAGIC: &[u8; 4] = b"HFGP";
const VERSION: u8 = 1;
const KIND_REQUEST: u8 = 1;
const KIND_ANSWER: u8 = 2;

/// A message as it travels between gateways.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct WireMsg {
    /// The business message id.
    pub(crate) message_id: u64,
    /// Topic.
    pub(crate) topic: String,
    /// Payload, base64 (standard alphabet).
    pub(crate) payload: String,
    /// Whether clients must acknowledge it.
    pub(crate) ack: bool,
}

/// What one gateway asks another.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum PeerRequest {
    /// Push to these users' connections on the receiving gateway.
    Push {
        /// The message.
        msg: WireMsg,
        /// The users.
        users: Vec<String>,
    },
    /// Push to one connection of the receiving gateway.
    PushConn {
        /// The message.
        msg: WireMsg,
        /// The connection.
        conn: ConnId,
    },
    /// Push to every connection of the receiving gateway.
    PushAll {
        /// The message.
        msg: WireMsg,
    },
    /// Kick connections of the receiving gateway with a 3xx code.
    Kick {
        /// The connections.
        conns: Vec<ConnId>,
        /// The code.
        code: u16,
        /// The reason text.
        reason: String,
    },
    /// A newer login elsewhere displaced these connections (kick policy): `KICK` 301.
    Displace {
        /// The connections.
        conns: Vec<ConnId>,
    },
    /// Push these messages (in order, one write per member) to the receiving gateway's
    /// members of a room.
    PushRoom {
        /// The room.
        room: String,
        /// The messages.
        msgs: Vec<WireMsg>,
    },
    /// Put these users' connections and these connections of the receiving gateway in a
    /// room; with `sticky`, keep the room for the users' later logins there.
    RoomJoin {
        /// The room.
        room: String,
        /// Users.
        #[serde(default)]
        users: Vec<String>,
        /// Connections.
        #[serde(default)]
        conns: Vec<ConnId>,
        /// Keep the room for the users' later logins.
        #[serde(default)]
        sticky: bool,
    },
    /// Take these users' connections and these connections out of a room (and forget the
    /// users' sticky membership).
    RoomLeave {
        /// The room.
        room: String,
        /// Users.
        #[serde(default)]
        users: Vec<String>,
        /// Connections.
        #[serde(default)]
        conns: Vec<ConnId>,
    },
    /// The receiving gateway's members of a room: connections, and their users as hashes.
    RoomUsers {
        /// The room.
        room: String,
    },
}

/// What a gateway answers.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub(crate) enum PeerAnswer {
    /// For `push` and `push_conn`.
    Push(PushAnswer),
    /// For `push_all`.
    All(AllAnswer),
    /// For `kick`.
    Kick(KickAnswer),
    /// For `push_room`.
    Room(AllAnswer),
    /// For `room_join` and `room_leave`.
    Members(crate::rooms::ops::Members),
    /// For `room_users`.
    RoomUsers {
        /// `rooms::user_hash` of each member's user (duplicates included).
        users: Vec<u64>,
    },
    /// For `displace`: how many were handed to their event loop.
    Displaced {
        /// The count.
        handed: usize,
    },
    /// The request could not be served (its event loops were busy, or it was malformed).
    Error {
        /// Why.
        error: String,
    },
}

/// Why a forward to another gateway failed; each maps to a `failed.reason` of the push
/// answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ForwardError {
    /// No `cluster.peers` entry for that gateway.
    #[error("gateway {0} is not in cluster.peers")]
    UnknownPeer(u16),
    /// Could not connect or authenticate, or the connection broke.
    #[error("gateway {gateway} unavailable: {why}")]
    Unavailable {
        /// The gateway.
        gateway: u16,
        /// What happened.
        why: String,
    },
    /// No answer within `cluster.forward_timeout_ms`.
    #[error("gateway {0} did not answer in time")]
    Timeout(u16),
    /// The peer answered with an error.
    #[error("gateway {gateway} refused: {error}")]
    Refused {
        /// The gateway.
        gateway: u16,
        /// Its message.
        error: String,
    },
}

impl ForwardError {
    /// The `failed.reason` of the push answer.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            ForwardError::UnknownPeer(_) => "unknown_gateway",
            ForwardError::Unavailable { .. } => "forward_unavailable",
            ForwardError::Timeout(_) => "forward_timeout",
            ForwardError::Refused { error, .. } if error.contains("busy") => "busy",
            ForwardError::Refused { .. } => "forward_refused",
        }
    }

    fn outcome(&self) -> usize {
        let label = match self {
            ForwardError::UnknownPeer(_) => "unknown_peer",
            ForwardError::Timeout(_) => "timeout",
            ForwardError::Unavailable { .. } | ForwardError::Refused { .. } => "unavailable",
        };
        FORWARD_OUTCOMES.iter().position(|o| *o == label).unwrap_or(1)
    }
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC takes keys of any length.
    let mut m = HmacSha256::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    for p in parts {
        m.update(p);
    }
    m
}

fn nonce() -> std::io::Result<[u8; 32]> {
    let mut n = [0u8; 32];
    getrandom::getrandom(&mut n).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(n)
}

fn client_mac(secret: &[u8], ns: &[u8; 32], client: u16, server: u16) -> HmacSha256 {
    mac(secret, &[b"holdfast-peer/1 client", ns, &client.to_be_bytes(), &server.to_be_bytes()])
}

fn server_mac(secret: &[u8], nc: &[u8; 32], server: u16, client: u16) -> HmacSha256 {
    mac(secret, &[b"holdfast-peer/1 server", nc, &server.to_be_bytes(), &client.to_be_bytes()])
}

/// The server's side of the handshake; the client's gateway id once it proved the secret.
pub(crate) async fn accept_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    secret: &[u8],
    me: u16,
) -> std::io::Result<u16> {
    let ns = nonce()?;
    let mut hello = Vec::with_capacity(39);
    hello.extend_from_slice(MAGIC);
    hello.push(VERSION);
    hello.extend_from_slice(&me.to_be_bytes());
    hello.extend_from_slice(&ns);
    stream.write_all(&hello).await?;
    let mut answer = [0u8; 66];
    stream.read_exact(&mut answer).await?;
    let client = u16::from_be_bytes([answer[0], answer[1]]);
    let mut nc = [0u8; 32];
    nc.copy_from_slice(&answer[2..34]);
    client_mac(secret, &ns, client, me).verify_slice(&answer[34..66]).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::PermissionDenied, "bad peer credentials")
    })?;
    let proof = server_mac(secret, &nc, me, client).finalize().into_bytes();
    stream.write_all(&proof).await?;
    Ok(client)
}

/// The client's side of the handshake; the server's gateway id.
pub(crate) async fn connect_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    secret: &[u8],
    me: u16,
) -> std::io::Result<u16> {
    let mut hello = [0u8; 39];
    stream.read_exact(&mut hello).await?;
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    if &hello[..4] != MAGIC || hello[4] != VERSION {
        return Err(bad("not a holdfast gateway peer (bad greeting)"));
    }
    let server = u16::from_be_bytes([hello[5], hello[6]]);
    let mut ns = [0u8; 32];
    ns.copy_from_slice(&hello[7..39]);
    let nc = nonce()?;
    let mut answer = Vec::with_capacity(66);
    answer.extend_from_slice(&me.to_be_bytes());
    answer.extend_from_slice(&nc);
    answer.extend_from_slice(&client_mac(secret, &ns, me, server).finalize().into_bytes());
    stream.write_all(&answer).await?;
    let mut proof = [0u8; 32];
    stream.read_exact(&mut proof).await.map_err(|_| bad("the peer refused our credentials"))?;
    server_mac(secret, &nc, server, me)
        .verify_slice(&proof)
        .map_err(|_| bad("the peer does not hold the cluster secret"))?;
    Ok(server)
}

/// Encode one frame.
pub(crate) fn frame(id: u32, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(13 + body.len());
    f.extend_from_slice(&((5 + body.len()) as u32).to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.push(kind);
    f.extend_from_slice(body);
    f
}

/// Read one frame: `(id, kind, body)`; `None` at a clean end of stream.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<(u32, u8, Vec<u8>)>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len);
    if !(5..=MAX_FRAME).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("peer frame of {len} bytes"),
        ));
    }
    let mut rest = vec![0u8; len as usize];
    r.read_exact(&mut rest).await?;
    let id = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let kind = rest[4];
    rest.drain(..5);
    Ok(Some((id, kind, rest)))
}

/// The answer kind.
pub(crate) const ANSWER: u8 = KIND_ANSWER;
/// The request kind.
pub(crate) const REQUEST: u8 = KIND_REQUEST;

type Waiters = Arc<Mutex<HashMap<u32, oneshot::Sender<Vec<u8>>>>>;

/// One live connection to a peer.
struct Link {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    waiters: Waiters,
    dead: Arc<AtomicBool>,
}

/// The connection to one other gateway, made on first use and remade after a failure.
struct Peer {
    id: u16,
    addr: String,
    link: tokio::sync::Mutex<Option<Link>>,
}

/// The client side: every other gateway of `cluster.peers`.
pub(crate) struct Peers {
    me: u16,
    secret: Arc<[u8]>,
    peers: HashMap<u16, Arc<Peer>>,
    next_id: AtomicU32,
    connect_timeout: Duration,
    forward_timeout: Duration,
    metrics: ClusterMetrics,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Peers {
    /// The peers of `cfg`; nothing connects until the first call.
    pub(crate) fn new(
        me: u16,
        secret: Arc<[u8]>,
        peers: &[PeerConfig],
        connect_timeout: Duration,
        forward_timeout: Duration,
        metrics: ClusterMetrics,
    ) -> Peers {
        Peers {
            me,
            secret,
            peers: peers
                .iter()
                .map(|p| {
                    let peer = Peer {
                        id: p.id,
                        addr: p.addr.clone(),
                        link: tokio::sync::Mutex::new(None),
                    };
                    (p.id, Arc::new(peer))
                })
                .collect(),
            next_id: AtomicU32::new(1),
            connect_timeout,
            forward_timeout,
            metrics,
        }
    }

    /// Every configured peer's gateway id, in order.
    pub(crate) fn ids(&self) -> Vec<u16> {
        let mut ids: Vec<u16> = self.peers.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Send `req` to gateway `gateway` and wait (at most `cluster.forward_timeout_ms`,
    /// connecting included) for its answer.
    pub(crate) async fn call(
        &self,
        gateway: u16,
        req: &PeerRequest,
    ) -> Result<PeerAnswer, ForwardError> {
        let started = Instant::now();
        let r =
            match tokio::time::timeout(self.forward_timeout, self.call_inner(gateway, req)).await {
                Ok(r) => r,
                Err(_) => Err(ForwardError::Timeout(gateway)),
            };
        let m = &self.metrics;
        m.forward_duration.observe(started.elapsed().as_secs_f64());
        let outcome = match &r {
            Ok(_) => 0,
            Err(e) => e.outcome(),
        };
        m.forwards[outcome].inc();
        r
    }

    async fn call_inner(
        &self,
        gateway: u16,
        req: &PeerRequest,
    ) -> Result<PeerAnswer, ForwardError> {
        let peer = self.peers.get(&gateway).ok_or(ForwardError::UnknownPeer(gateway))?;
        let unavailable = |why: String| ForwardError::Unavailable { gateway, why };
        let body = serde_json::to_vec(req).map_err(|e| unavailable(e.to_string()))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut guard = peer.link.lock().await;
            if guard.as_ref().is_none_or(|l| l.dead.load(Ordering::Acquire)) {
                *guard = Some(self.connect(peer).await.map_err(|e| unavailable(e.to_string()))?);
            }
            let Some(link) = guard.as_ref() else {
                return Err(unavailable("no connection".into()));
            };
            lock(&link.waiters).insert(id, tx);
            if link.tx.send(frame(id, KIND_REQUEST, &body)).is_err() {
                lock(&link.waiters).remove(&id);
                link.dead.store(true, Ordering::Release);
                return Err(unavailable("connection closed".into()));
            }
        }
        let answer = rx.await.map_err(|_| unavailable("connection lost".into()))?;
        match serde_json::from_slice::<PeerAnswer>(&answer) {
            Ok(PeerAnswer::Error { error }) => Err(ForwardError::Refused { gateway, error }),
            Ok(a) => Ok(a),
            Err(e) => Err(unavailable(format!("bad answer: {e}"))),
        }
    }

    async fn connect(&self, peer: &Peer) -> std::io::Result<Link> {
        let fut = async {
            let mut stream = TcpStream::connect(peer.addr.as_str()).await?;
            stream.set_nodelay(true)?;
            let server = connect_handshake(&mut stream, &self.secret, self.me).await?;
            if server != peer.id {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is gateway {server}, not {}", peer.addr, peer.id),
                ));
            }
            Ok(stream)
        };
        let stream = tokio::time::timeout(self.connect_timeout, fut).await.map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
        })??;
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let waiters: Waiters = Arc::new(Mutex::new(HashMap::new()));
        let dead = Arc::new(AtomicBool::new(false));
        let (w_dead, r_dead) = (Arc::clone(&dead), Arc::clone(&dead));
        tokio::spawn(async move {
            // Write everything queued, then flush: concurrent calls share syscalls.
            while let Some(first) = rx.recv().await {
                let mut buf = first;
                while let Ok(more) = rx.try_recv() {
                    buf.extend_from_slice(&more);
                }
                if wr.write_all(&buf).await.is_err() {
                    break;
                }
            }
            w_dead.store(true, Ordering::Release);
        });
        let r_waiters = Arc::clone(&waiters);
        let gateway = peer.id;
        tokio::spawn(async move {
            loop {
                match read_frame(&mut rd).await {
                    Ok(Some((id, KIND_ANSWER, body))) => {
                        if let Some(w) = lock(&r_waiters).remove(&id) {
                            let _ = w.send(body);
                        }
                    }
                    Ok(Some((_, kind, _))) => {
                        tracing::warn!(gateway, kind, "unexpected frame from peer; closing");
                        break;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(gateway, error = %e, "peer connection lost");
                        break;
                    }
                }
            }
            r_dead.store(true, Ordering::Release);
            // Dropping the senders fails every call still waiting on this connection.
            lock(&r_waiters).clear();
        });
        Ok(Link { tx, waiters, dead })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn handshake_needs_the_same_secret_on_both_sides() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move { accept_handshake(&mut a, b"s3cret", 1).await });
        assert_eq!(connect_handshake(&mut b, b"s3cret", 2).await.expect("client ok"), 1);
        assert_eq!(server.await.expect("joined").expect("server ok"), 2);

        let (mut a, mut b) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move { accept_handshake(&mut a, b"s3cret", 1).await });
        let client = tokio::spawn(async move { connect_handshake(&mut b, b"wrong", 2).await });
        let s = server.await.expect("joined");
        assert_eq!(s.expect_err("refused").kind(), std::io::ErrorKind::PermissionDenied);
        assert!(client.await.expect("joined").is_err());
    }

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused() {
        let bytes = frame(7, KIND_REQUEST, b"{}");
        let mut r = &bytes[..];
        assert_eq!(read_frame(&mut r).await.expect("ok"), Some((7, KIND_REQUEST, b"{}".to_vec())));
        let mut huge = (MAX_FRAME + 1).to_be_bytes().to_vec();
        huge.extend_from_slice(&[0; 16]);
        let mut r = &huge[..];
        assert!(read_frame(&mut r).await.is_err());
        let mut empty: &[u8] = &[];
        assert_eq!(read_frame(&mut empty).await.expect("clean end"), None);
    }
}
