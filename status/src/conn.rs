//! A pipelined, authenticated connection to one status node: what the cluster client and
//! the nodes themselves (migration, ring changes) use to talk to a node.
//!
//! [`NodeConn::call`] may be called from many tasks at once. A writer task sends requests
//! as they come (draining everything queued before each write, so concurrent calls share
//! syscalls); a reader task matches answers to requests in order. The connection is made
//! lazily, on the first call, with the `CHALLENGE`/`HELLO` handshake; a broken connection
//! fails its pending calls with [`CallError::Unavailable`] and is remade on the next call.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use holdfast_codec::{HEADER_LEN, Head, check_head};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};

use crate::placement::NodeId;
use crate::wire::{self, Code, Kind, Request, Response};

/// What a call to a node can fail with.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// Could not connect, or the connection broke.
    #[error("node {addr} unavailable: {why}")]
    Unavailable {
        /// The node's address.
        addr: String,
        /// What happened.
        why: String,
    },
    /// No answer within the deadline.
    #[error("node {0} did not answer in time")]
    Timeout(String),
    /// The node answered with an error frame.
    #[error("node answered {code:?} (epoch {epoch}, detail {detail}): {message}")]
    Remote {
        /// The error code.
        code: Code,
        /// The node's epoch.
        epoch: u64,
        /// Code-specific detail.
        detail: u64,
        /// The node's message.
        message: String,
    },
    /// The node sent bytes this client cannot decode.
    #[error("protocol error from {addr}: {why}")]
    Protocol {
        /// The node's address.
        addr: String,
        /// What was wrong.
        why: String,
    },
}

/// What the node said in its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeHello {
    /// Its id.
    pub node: NodeId,
    /// Its incarnation (random per process start).
    pub incarnation: u64,
    /// Its epoch at handshake time.
    pub epoch: u64,
}

type Reply = oneshot::Sender<Result<Response, CallError>>;

struct Pending {
    id: u32,
    kind: Kind,
    reply: Reply,
}

struct Link {
    tx: mpsc::UnboundedSender<(Request, Reply)>,
    dead: Arc<AtomicBool>,
    hello: NodeHello,
}

/// A connection to one node; cheap to share behind an `Arc`.
pub struct NodeConn {
    addr: String,
    secret: Arc<[u8]>,
    connect_timeout: Duration,
    max_frame: u32,
    link: tokio::sync::Mutex<Option<Link>>,
}

impl std::fmt::Debug for NodeConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConn").field("addr", &self.addr).finish()
    }
}

impl NodeConn {
    /// A connection to `addr` (not made until the first call).
    pub fn new(addr: String, secret: Arc<[u8]>, connect_timeout: Duration) -> NodeConn {
        NodeConn {
            addr,
            secret,
            connect_timeout,
            max_frame: wire::DEFAULT_MAX_FRAME,
            link: tokio::sync::Mutex::new(None),
        }
    }

    /// The node's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn unavailable(&self, why: impl std::fmt::Display) -> CallError {
        CallError::Unavailable { addr: self.addr.clone(), why: why.to_string() }
    }

    /// Send `req` and wait for its answer, at most `deadline` (connecting included). An
    /// error frame from the node is [`CallError::Remote`].
    pub async fn call(&self, req: Request, deadline: Duration) -> Result<Response, CallError> {
        match tokio::time::timeout(deadline, self.call_inner(req)).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout(self.addr.clone())),
        }
    }

    /// The handshake answer of the current connection, connecting if needed.
    pub async fn hello(&self, deadline: Duration) -> Result<NodeHello, CallError> {
        let fut = async {
            let mut guard = self.link.lock().await;
            self.ensure(&mut guard).await.map(|l| l.hello)
        };
        tokio::time::timeout(deadline, fut)
            .await
            .unwrap_or_else(|_| Err(CallError::Timeout(self.addr.clone())))
    }

    async fn ensure<'a>(&self, guard: &'a mut Option<Link>) -> Result<&'a Link, CallError> {
        if guard.as_ref().is_some_and(|l| l.tx.is_closed() || l.dead.load(Ordering::Acquire)) {
            *guard = None;
        }
        if guard.is_none() {
            *guard = Some(self.connect().await?);
        }
        guard.as_ref().ok_or_else(|| self.unavailable("no link"))
    }

    async fn call_inner(&self, req: Request) -> Result<Response, CallError> {
        let rx = {
            let mut guard = self.link.lock().await;
            let link = self.ensure(&mut guard).await?;
            let (tx, rx) = oneshot::channel();
            if link.tx.send((req, tx)).is_err() {
                *guard = None;
                return Err(self.unavailable("connection closed"));
            }
            rx
        };
        match rx.await {
            Ok(Ok(Response::Error { code, epoch, detail, message, .. })) => {
                Err(CallError::Remote { code, epoch, detail, message })
            }
            Ok(r) => r,
            Err(_) => Err(self.unavailable("connection closed")),
        }
    }

    async fn connect(&self) -> Result<Link, CallError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| CallError::Timeout(self.addr.clone()))?
            .map_err(|e| self.unavailable(e))?;
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let mut buf = BytesMut::with_capacity(4096);
        let hs = async {
            let (head, body) = read_frame(&mut rd, &mut buf, self.max_frame, &self.addr).await?;
            let nonce = match Response::decode(&head, &body, None) {
                Ok(Response::Challenge { version: wire::VERSION, nonce }) => nonce,
                Ok(other) => {
                    return Err(self.protocol(format!("expected CHALLENGE, got {other:?}")));
                }
                Err(e) => return Err(self.protocol(e)),
            };
            let mut out = BytesMut::new();
            Request::Hello { mac: wire::hello_mac(&self.secret, &nonce) }.encode(0, &mut out);
            wr.write_all(&out).await.map_err(|e| self.unavailable(e))?;
            let (head, body) = read_frame(&mut rd, &mut buf, self.max_frame, &self.addr).await?;
            match Response::decode(&head, &body, Some(Kind::Hello)) {
                Ok(Response::HelloOk { node, incarnation, epoch }) => {
                    Ok(NodeHello { node, incarnation, epoch })
                }
                Ok(Response::Error { code, epoch, detail, message, .. }) => {
                    Err(CallError::Remote { code, epoch, detail, message })
                }
                Ok(other) => Err(self.protocol(format!("expected HELLO_OK, got {other:?}"))),
                Err(e) => Err(self.protocol(e)),
            }
        };
        let hello = tokio::time::timeout(self.connect_timeout, hs)
            .await
            .map_err(|_| CallError::Timeout(self.addr.clone()))??;
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(Mutex::new(VecDeque::new()));
        let dead = Arc::new(AtomicBool::new(false));
        tokio::spawn(writer(wr, rx, Arc::clone(&pending), Arc::clone(&dead), self.addr.clone()));
        tokio::spawn(reader(
            rd,
            buf,
            pending,
            self.max_frame,
            self.addr.clone(),
            Arc::clone(&dead),
        ));
        Ok(Link { tx, dead, hello })
    }

    fn protocol(&self, why: impl std::fmt::Display) -> CallError {
        CallError::Protocol { addr: self.addr.clone(), why: why.to_string() }
    }
}

/// Read one whole frame from `rd` (buffering in `buf`).
async fn read_frame(
    rd: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    max_frame: u32,
    addr: &str,
) -> Result<(Head, BytesMut), CallError> {
    loop {
        match check_head(buf, max_frame) {
            Err(e) => {
                return Err(CallError::Protocol { addr: addr.to_owned(), why: e.to_string() });
            }
            Ok(Some(head)) if buf.len() as u64 >= head.frame_len() => {
                let mut frame = buf.split_to(head.frame_len() as usize);
                let body = frame.split_off(HEADER_LEN);
                return Ok((head, body));
            }
            Ok(_) => {}
        }
        let n = rd
            .read_buf(buf)
            .await
            .map_err(|e| CallError::Unavailable { addr: addr.to_owned(), why: e.to_string() })?;
        if n == 0 {
            return Err(CallError::Unavailable {
                addr: addr.to_owned(),
                why: "closed by the node".into(),
            });
        }
    }
}

fn fail_all(pending: &Mutex<VecDeque<Pending>>, err: &CallError) {
    let drained: Vec<Pending> =
        pending.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
    for p in drained {
        let _ = p.reply.send(Err(err.clone()));
    }
}

async fn writer(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<(Request, Reply)>,
    pending: Arc<Mutex<VecDeque<Pending>>>,
    dead: Arc<AtomicBool>,
    addr: String,
) {
    let closed = || CallError::Unavailable { addr: addr.clone(), why: "connection closed".into() };
    let mut next_id: u32 = 1;
    let mut out = BytesMut::with_capacity(16 * 1024);
    while let Some(first) = rx.recv().await {
        let mut item = Some(first);
        while let Some((req, reply)) = item.take() {
            let id = next_id;
            next_id = next_id.wrapping_add(1).max(1);
            req.encode(id, &mut out);
            pending.lock().unwrap_or_else(|e| e.into_inner()).push_back(Pending {
                id,
                kind: req.kind(),
                reply,
            });
            if out.len() < 256 * 1024 {
                item = rx.try_recv().ok();
            }
        }
        if dead.load(Ordering::Acquire) || wr.write_all(&out).await.is_err() {
            dead.store(true, Ordering::Release);
            fail_all(&pending, &closed());
            return;
        }
        out.clear();
    }
}

async fn reader(
    mut rd: OwnedReadHalf,
    mut buf: BytesMut,
    pending: Arc<Mutex<VecDeque<Pending>>>,
    max_frame: u32,
    addr: String,
    dead: Arc<AtomicBool>,
) {
    read_loop(&mut rd, &mut buf, &pending, max_frame, &addr).await;
    dead.store(true, Ordering::Release);
}

async fn read_loop(
    rd: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    pending: &Mutex<VecDeque<Pending>>,
    max_frame: u32,
    addr: &str,
) {
    let addr = addr.to_owned();
    loop {
        let (head, body) = match read_frame(rd, buf, max_frame, &addr).await {
            Ok(f) => f,
            Err(e) => {
                fail_all(pending, &e);
                return;
            }
        };
        let Some(p) = pending.lock().unwrap_or_else(|e| e.into_inner()).pop_front() else {
            fail_all(
                pending,
                &CallError::Protocol { addr: addr.clone(), why: "unsolicited answer".into() },
            );
            return;
        };
        if head.id != p.id {
            let e = CallError::Protocol {
                addr: addr.clone(),
                why: format!("answer id {} for request {}", head.id, p.id),
            };
            let _ = p.reply.send(Err(e.clone()));
            fail_all(pending, &e);
            return;
        }
        let fatal = head.kind == Kind::Error as u8 && head.flags & wire::FLAG_FATAL != 0;
        let r = Response::decode(&head, &body, Some(p.kind))
            .map_err(|e| CallError::Protocol { addr: addr.clone(), why: e.to_string() });
        let broken = r.is_err() || fatal;
        let _ = p.reply.send(r);
        if broken {
            fail_all(
                pending,
                &CallError::Unavailable { addr: addr.clone(), why: "connection closed".into() },
            );
            return;
        }
    }
}
