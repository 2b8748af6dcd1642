//! The binary-protocol listener: one task per connection, reading pipelined request
//! frames, answering each in order, writing all answers of one read in one syscall.
//!
//! A connection starts with the node's `CHALLENGE`; the first frame must be a `HELLO`
//! carrying the right MAC within `limits.handshake_timeout_ms`. Every reason this side
//! closes a connection goes through `refuse`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use holdfast_codec::{HEADER_LEN, check_head};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Node;
use crate::wire::{self, Code, Kind, Request, Response};

/// Accept connections until the listener fails.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let node = Arc::clone(&node);
                tokio::spawn(async move {
                    node.metrics.connections.inc();
                    let _ = stream.set_nodelay(true);
                    let reason = connection(&node, stream).await;
                    node.metrics.connections.dec();
                    tracing::debug!(%peer, reason, "connection closed");
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The one place a protocol violation closes a connection: a fatal `ERROR` frame with
/// `code`, appended to `out`; the caller writes `out` and closes.
fn refuse(node: &Node, out: &mut BytesMut, id: u32, code: Code, message: String) -> &'static str {
    if code == Code::Unauthenticated {
        node.metrics.auth_failures.inc();
    }
    tracing::debug!(?code, %message, "closing connection");
    Response::Error { code, epoch: node.epoch(), detail: 0, message, fatal: true }.encode(
        id,
        Kind::Error,
        out,
    );
    match code {
        Code::Unauthenticated => "unauthenticated",
        Code::TooLarge => "too_large",
        _ => "bad_request",
    }
}

async fn connection(node: &Node, mut stream: TcpStream) -> &'static str {
    let mut nonce = [0u8; 32];
    if getrandom::getrandom(&mut nonce).is_err() {
        return "no_randomness";
    }
    let mut out = BytesMut::with_capacity(4096);
    Response::Challenge { version: wire::VERSION, nonce }.encode(0, Kind::Challenge, &mut out);
    if stream.write_all(&out).await.is_err() {
        return "io_error";
    }
    out.clear();
    let max_frame = node.config().limits.max_frame;
    let handshake_deadline =
        Instant::now() + Duration::from_millis(node.config().limits.handshake_timeout_ms);
    let mut authenticated = false;
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        // Answer every complete frame buffered.
        let mut closing: Option<&'static str> = None;
        loop {
            let head = match check_head(&buf, max_frame) {
                Ok(Some(h)) if buf.len() as u64 >= h.frame_len() => h,
                Ok(_) => break,
                Err(e) => {
                    closing = Some(refuse(node, &mut out, 0, Code::TooLarge, e.to_string()));
                    break;
                }
            };
            let frame = buf.split_to(head.frame_len() as usize);
            let body = &frame[HEADER_LEN..];
            let started = Instant::now();
            let kind = Kind::request(head.kind);
            let req = match Request::decode(&head, body) {
                Ok(r) => r,
                Err(e) => {
                    let code = if authenticated { Code::BadRequest } else { Code::Unauthenticated };
                    if let Some(k) = kind {
                        node.metrics.request(k, Some(code), 0.0);
                    }
                    closing = Some(refuse(node, &mut out, head.id, code, e.to_string()));
                    break;
                }
            };
            let kind = req.kind();
            let resp = match req {
                Request::Hello { mac } => {
                    if !wire::verify_hello(node.secret(), &nonce, &mac) {
                        node.metrics.request(kind, Some(Code::Unauthenticated), 0.0);
                        closing = Some(refuse(
                            node,
                            &mut out,
                            head.id,
                            Code::Unauthenticated,
                            "wrong cluster secret".into(),
                        ));
                        break;
                    }
                    authenticated = true;
                    Response::HelloOk {
                        node: node.id,
                        incarnation: node.incarnation,
                        epoch: node.epoch(),
                    }
                }
                _ if !authenticated => {
                    node.metrics.request(kind, Some(Code::Unauthenticated), 0.0);
                    closing = Some(refuse(
                        node,
                        &mut out,
                        head.id,
                        Code::Unauthenticated,
                        "HELLO first".into(),
                    ));
                    break;
                }
                Request::Migrate { epoch } => {
                    // Long-running: answer what is buffered first, then copy.
                    if !out.is_empty() {
                        if stream.write_all(&out).await.is_err() {
                            return "io_error";
                        }
                        out.clear();
                    }
                    super::reshard::migrate(node, epoch).await
                }
                other => node.handle(other),
            };
            let code = match &resp {
                Response::Error { code, .. } => Some(*code),
                _ => None,
            };
            if code == Some(Code::Moved) {
                node.metrics.moved.inc();
            }
            node.metrics.request(kind, code, started.elapsed().as_secs_f64());
            resp.encode(head.id, kind, &mut out);
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return "io_error";
            }
            out.clear();
        }
        if let Some(reason) = closing {
            let _ = stream.shutdown().await;
            return reason;
        }
        let read = if authenticated {
            stream.read_buf(&mut buf).await
        } else {
            let left = handshake_deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.read_buf(&mut buf)).await {
                Ok(r) => r,
                Err(_) => {
                    refuse(node, &mut out, 0, Code::Unauthenticated, "no HELLO in time".into());
                    let _ = stream.write_all(&out).await;
                    return "handshake_timeout";
                }
            }
        };
        match read {
            Ok(0) => return "peer_closed",
            Ok(_) => {}
            Err(_) => return "io_error",
        }
    }
}
