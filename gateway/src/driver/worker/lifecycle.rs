//! What sessions ask of the node (login, token refresh, upstream, departure, displaced
//! logins), and the ends of a connection's life on the loop: adoption, shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use holdfast_codec::{Code, Hello, Redirect};
use mio::{Interest, Token};

use super::Worker;
use crate::driver::commands::{Admit, Internal};
use crate::driver::conn::{Carrier, Conn};
use crate::driver::feed::Feed;
use crate::driver::tls::TlsFailure;
use crate::events::{Event as NodeEvent, UnackedPush};
use crate::ids::ConnId;
use crate::metrics::Refusal;
use crate::session::{Close, CloseReason, Closed, Event, Phase, Session};
use crate::upstream::{SubmitError, UpstreamRequest};

/// A shutdown waits at most this long past the linger for clients to take their redirect.
const SHUTDOWN_GRACE_MS: u64 = 500;
/// The jitter of `REDIRECT` `SERVER_FULL`: refused clients reach the next gateway spread
/// over this many ms.
const FULL_JITTER_MS: u32 = 2_000;

impl<T: Carrier> Worker<T> {
    // ----- what sessions ask of the node ------------------------------------------------

    pub(super) fn on_session_event(&mut self, key: usize, event: Event) {
        match event {
            Event::Hello(hello) => self.authenticate(key, *hello),
            Event::Upstream(up) => self.forward_upstream(key, up),
            Event::Refresh { request_id, token } => self.refresh(key, request_id, &token),
            Event::Join { request_id, room } => self.on_join(key, request_id, room),
            Event::Leave { request_id, room } => {
                let rooms = self.leave_room(key, &room);
                self.node.metrics.room_leaves.inc();
                self.with(key, |c, ctx| c.session.room_done(ctx, request_id, Ok(rooms)));
            }
            Event::Closed(closed) => self.depart(key, closed),
        }
    }

    /// Verify a `HELLO`'s token, register the login and answer it.
    fn authenticate(&mut self, key: usize, hello: Hello) {
        let node = Arc::clone(&self.node);
        let m = &node.metrics;
        let id = self.conn_id(key);
        let _span = tracing::info_span!("conn", conn_id = %id).entered();
        if node.fence.is_fenced() {
            // No lease: this login could not be registered. `REDIRECT` is not allowed
            // before `AUTH_OK`, so the client just sees the connection close and tries
            // another gateway (see `fence.rs`).
            m.cluster.rejected_fenced.inc();
            self.with(key, |c, ctx| c.session.close(ctx, Close::Shutdown));
            return;
        }
        // Admission before the token is verified: refusals cost no signature check.
        let refusal = if node.draining.load(Ordering::Acquire) {
            // Accepted before the drain began: retry elsewhere, with backoff.
            Some(Refusal::Draining)
        } else {
            let ip = self.conns.get(key).and_then(|c| c.transport.peer_addr()).map(|a| a.ip());
            match (&node.sources, ip) {
                (Some(limiter), Some(ip)) if limiter.check(ip, node.mono_ns()).is_err() => {
                    Some(Refusal::SourceRate)
                }
                _ => None,
            }
        };
        if let Some(r) = refusal {
            m.admission_refused(r).inc();
            let reason = r.message().to_owned();
            self.with(key, |c, ctx| {
                c.session.close(ctx, Close::AuthFail(Code::OVERLOADED, reason))
            });
            return;
        }
        let now_secs = self.now.wall_ms / 1000;
        let verifier = node.verifier();
        let verdict = verifier
            .verify(&hello.token, now_secs)
            .and_then(|c| verifier.check_binding(&c, &hello.device_id, hello.platform).map(|()| c));
        let claims = match verdict {
            Ok(claims) => claims,
            Err(f) => {
                m.auth_failure(f.label()).inc();
                tracing::debug!(code = %f.code(), "authentication failed");
                self.with(key, |c, ctx| c.session.refuse(ctx, f.code(), f.reason()));
                return;
            }
        };
        if let Some(flapping) = &node.flapping
            && let Err(left) = flapping.login(&claims.sub, &hello.device_id, now_secs)
        {
            m.admission_refused(Refusal::Flapping).inc();
            tracing::debug!(user = %claims.sub, left_secs = left, "flapping client refused");
            let reason = format!("{}: {left} s left", Refusal::Flapping.message());
            self.with(key, |c, ctx| c.session.refuse(ctx, Code::THROTTLED, reason));
            return;
        }
        let registered = node.registry.register(&claims.sub, id, hello.platform);
        let keep_device = node.keeps_device() || claims.device.is_some();
        let expires = claims.exp.saturating_add(verifier.leeway_secs());
        let Some(remote) = self.with(key, |c, ctx| {
            c.user = Some(Arc::clone(&registered.user));
            // The device id is read only by the webhooks and by a refresh's device check;
            // without them an idle connection does not pay an allocation for it.
            if keep_device && !hello.device_id.is_empty() {
                c.transport.keep_device(Arc::from(hello.device_id.as_str()));
            }
            c.session.accept(ctx, expires);
            c.transport.peer_addr()
        }) else {
            return;
        };
        m.handshakes_ok.inc();
        m.connections_established.inc();
        node.handshake_ended();
        if !claims.rooms.is_empty() {
            self.rooms.set_claims(key as u32, &claims.rooms);
        }
        if !node.sticky.is_empty() {
            for room in node.sticky.of(&registered.user) {
                let joined = self.join_room(key, &room);
                m.room_join(joined.as_ref().err().map(|r| r.code)).inc();
                if let Err(r) = joined {
                    tracing::debug!(room = %room, code = %r.code, "sticky room not joined");
                }
            }
        }
        node.presence.online(
            &registered.user,
            id,
            hello.platform,
            &hello.device_id,
            self.now.wall_ms,
        );
        node.events.emit(NodeEvent::Connected {
            conn: id,
            user: Arc::clone(&registered.user),
            device: Arc::from(hello.device_id.as_str()),
            platform: hello.platform,
            remote: remote.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            region: claims.region.clone(),
            at_ms: self.now.wall_ms,
        });
        self.displaced.extend(registered.displaced);
    }

    /// Verify a refreshed token: same user, same device and platform bindings.
    fn refresh(&mut self, key: usize, request_id: u32, token: &str) {
        let node = Arc::clone(&self.node);
        let Some(conn) = self.conns.get(key) else { return };
        let user = conn.user.clone();
        let device = conn.transport.device().cloned();
        let platform = conn.session.platform();
        let now_secs = self.now.wall_ms / 1000;
        let verifier = node.verifier();
        let verdict = verifier
            .verify(token, now_secs)
            .and_then(|c| {
                let device = device.as_deref().unwrap_or("");
                verifier.check_binding(&c, device, platform).map(|()| c)
            })
            .map_err(|f| (f.code(), f.reason()))
            .and_then(|c| {
                if user.as_deref() == Some(c.sub.as_str()) {
                    Ok((c.exp.saturating_add(verifier.leeway_secs()), c.rooms))
                } else {
                    Err((Code::CLAIM_MISMATCH, "the new token is for another user".to_owned()))
                }
            });
        node.metrics.token_refresh(verdict.is_ok()).inc();
        let verdict = verdict.map(|(exp, rooms)| {
            // The new token's `rooms` claim governs later joins; joined rooms stay.
            self.rooms.set_claims(key as u32, &rooms);
            exp
        });
        self.with(key, |c, ctx| c.session.refresh_done(ctx, request_id, verdict));
    }

    /// Hand an `UPSTREAM` to the webhook, or answer why not.
    fn forward_upstream(&mut self, key: usize, up: holdfast_codec::Upstream) {
        let id = self.conn_id(key);
        let Some(conn) = self.conns.get(key) else { return };
        let request = UpstreamRequest {
            conn: id,
            request_id: up.request_id,
            user: conn.user.clone().unwrap_or_else(|| Arc::from("")),
            device: conn.transport.device().cloned().unwrap_or_else(|| Arc::from("")),
            platform: conn.session.platform(),
            route: up.route,
            payload: up.payload,
        };
        let code = match self.node.upstream.try_submit(request) {
            Ok(()) => return,
            Err(SubmitError::Disabled) => Code::UPSTREAM_UNAVAILABLE,
            Err(SubmitError::Full) => Code::TOO_MANY_REQUESTS,
        };
        self.with(key, |c, ctx| c.session.upstream_refused(ctx, up.request_id, code));
    }

    /// The bookkeeping of a connection leaving, done once: the close is counted, and an
    /// authenticated connection is unregistered and reported with its unacknowledged pushes.
    fn depart(&mut self, key: usize, closed: Closed) {
        let node = Arc::clone(&self.node);
        let m = &node.metrics;
        let id = self.conn_id(key);
        let _span = tracing::info_span!("conn", conn_id = %id).entered();
        tracing::debug!(reason = closed.reason.as_str(), "connection closing");
        m.close(closed.reason).inc();
        if let Some(failure) = self.conns.get(key).and_then(|c| c.transport.tls_unfinished()) {
            let failure = match (failure, closed.reason) {
                (TlsFailure::Closed, CloseReason::HandshakeTimeout) => TlsFailure::Timeout,
                (f, _) => f,
            };
            tracing::debug!(reason = failure.as_str(), "TLS handshake failed");
            m.tls_handshake_failed(failure).inc();
        }
        if !closed.established {
            node.handshake_ended();
            return;
        }
        m.connections_established.dec();
        if closed.moving {
            m.connections_moving.dec();
        }
        for no in self.rooms.remove_conn(key as u32) {
            node.rooms.leave(no);
        }
        let Some(conn) = self.conns.get(key) else { return };
        let Some(user) = conn.user.clone() else { return };
        let unacked: Vec<UnackedPush> = closed
            .unacked
            .into_iter()
            .map(|(seq, message_id)| UnackedPush { seq, message_id })
            .collect();
        m.pushes_unacked_on_close.inc_by(unacked.len() as u64);
        node.registry.unregister(&user, id);
        node.presence.offline(&user, id);
        node.events.emit(NodeEvent::Disconnected {
            conn: id,
            user,
            device: conn.transport.device().cloned().unwrap_or_else(|| Arc::from("")),
            platform: conn.session.platform(),
            reason: closed.reason.as_str(),
            at_ms: self.now.wall_ms,
            unacked,
        });
    }

    /// Drop a closed connection: the socket, its slot, the node's counts.
    pub(super) fn release(&mut self, key: usize) {
        if self.outbox.as_ref().is_some_and(|o| o.holds(self.index, key)) {
            self.flush_outbox(None); // before the socket closes and its number is reused
        }
        let Some(mut conn) = self.conns.remove(key) else { return };
        let _ = self.poll.registry().deregister(&mut conn.transport);
        self.queued_delta -= conn.session.queued() as i64;
        self.node.metrics.connections.dec();
        self.node.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// A login on this node displaced `id`: `KICK` 301, here or through its own loop.
    pub(super) fn displace(&mut self, id: ConnId) {
        if let Some(key) = self.find(id) {
            if self.conns.get(key).is_some_and(|c| c.session.phase() == Phase::Moving) {
                // The newer login is this client moving (make-before-break): the old
                // connection closes when the client has moved, or at its hold deadline.
                self.node.metrics.kicks_skipped_moving.inc();
                return;
            }
            self.node.metrics.kicks_logged_in_elsewhere.inc();
            let reason = "logged in elsewhere".to_owned();
            self.call(key, |c, ctx| {
                c.session.close(ctx, Close::Kick(Code::LOGGED_IN_ELSEWHERE, reason))
            });
        } else if id.worker() != self.index
            && let Some(worker) = self.node.worker(id.worker())
        {
            worker.send_internal(Internal::Displaced(id));
        }
    }

    /// A transport that will not be adopted after all: the node's counts forget it.
    pub(super) fn forget_arrival(&self) {
        self.node.admission_dropped();
    }

    pub(super) fn adopt(&mut self, transport: T, peer: SocketAddr, refusal: Option<Admit>) {
        let m = &self.node.metrics;
        if self.stopping.is_some() {
            self.forget_arrival();
            return;
        }
        let conn = Conn::new(transport, Session::new(self.now));
        let Some((key, generation)) = self.conns.insert(conn) else {
            tracing::warn!(%peer, "worker connection table full; connection refused");
            self.forget_arrival();
            m.rejected_max_connections.inc();
            return;
        };
        let Some(conn) = self.conns.get_mut(key) else { return };
        // Writable interest is added only while bytes are queued (`want_writable`).
        let interest = Interest::READABLE;
        if let Err(e) = self.poll.registry().register(&mut conn.transport, Token(key), interest) {
            tracing::warn!(%peer, error = %e, "cannot register socket");
            drop(self.conns.remove(key)); // closes the socket
            self.forget_arrival();
            return;
        }
        conn.transport.adopted(Feed::<T>::token(key, generation));
        m.connections.inc();
        if let Some(r) = refusal {
            // Told at once: the client reads it as the answer to its HELLO, and the close
            // lingers until the client goes, so its HELLO is read, not answered with a reset.
            let close = match r {
                // Full: go to a less loaded gateway (or ask the scheduler).
                Admit::Full => Close::Redirect(Redirect {
                    code: Code::SERVER_FULL,
                    delay_ms: 0,
                    jitter_ms: FULL_JITTER_MS,
                    // Addresses of the transport the client came over.
                    addresses: self.node.alternatives(self.transport_of(key)),
                    overlap: false,
                }),
                Admit::Refused(r) => Close::AuthFail(Code::OVERLOADED, r.message().to_owned()),
            };
            self.call(key, |c, ctx| c.session.close(ctx, close));
            return;
        }
        self.rearm(key);
    }

    /// The transport connection `key` came over: QUIC on the QUIC loop (after the TCP
    /// ones), TLS or plain TCP on a TCP loop.
    fn transport_of(&self, key: usize) -> holdfast_scheduler::model::Transport {
        use holdfast_scheduler::model::Transport;
        if usize::from(self.index) >= self.node.worker_count {
            Transport::Quic
        } else if self.conns.get(key).is_some_and(|c| c.transport.is_tls()) {
            Transport::Tls
        } else {
            Transport::Tcp
        }
    }

    /// Close every connection: authenticated ones hear `REDIRECT` `SERVER_SHUTDOWN` and get
    /// up to the linger to take it; the loop stops when all are gone or the time is up.
    pub(super) fn begin_shutdown(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        let linger = u64::from(self.limits.linger_ms);
        self.stopping = Some(self.now.ms() + linger + SHUTDOWN_GRACE_MS);
        for key in self.conns.keys() {
            let established = self.conns.get(key).is_some_and(|c| c.session.is_established());
            let close = if established {
                Close::Redirect(Redirect {
                    code: Code::SERVER_SHUTDOWN,
                    delay_ms: 0,
                    jitter_ms: 5_000,
                    addresses: Vec::new(),
                    overlap: false,
                })
            } else {
                Close::Shutdown
            };
            self.call(key, |c, ctx| c.session.close(ctx, close));
        }
        for b in self.broadcasts.drain(..) {
            let _ = b.reply.send(b.report);
        }
        for s in std::mem::take(&mut self.sweeps) {
            self.end_sweep(&s);
        }
    }

    /// Drop whatever is left when the shutdown's time is up.
    pub(super) fn abandon_all(&mut self) {
        for key in self.conns.keys() {
            self.release(key);
        }
    }
}
