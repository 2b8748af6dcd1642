//! Serving a ready connection: write what it has queued, read once and feed its session;
//! one with more to do is resumed next turn, within the backlog's share of the loop's time.

use std::io;
use std::time::Instant;

use super::{SLICE, Worker};
use crate::driver::conn::Carrier;
use crate::driver::feed::Feed;
use crate::driver::proxy::ProxyRefusal;
use crate::driver::transport::write_some;
use crate::session::{Close, Input, Phase};

/// A connection to come back to next turn.
#[derive(Clone, Copy)]
pub(super) struct Resume {
    key: usize,
    generation: u16,
    /// The peer's end of stream was signalled: keep reading until it is seen.
    read_closed: bool,
}

impl<T: Carrier> Worker<T> {
    // ----- readiness --------------------------------------------------------------------

    /// Adopt the transports that arrived on the feed, then serve the ones that woke: what
    /// a readiness event does for a socket (write what is queued, read once).
    pub(super) fn drain_feed(&mut self) {
        let Some(feed) = self.feed.as_mut() else { return };
        let (arrivals, ready) = feed.take();
        for a in arrivals {
            self.adopt(a.transport, a.peer, a.refusal);
        }
        for (i, &token) in ready.iter().enumerate() {
            if i % SLICE == SLICE - 1 {
                self.drain_commands();
            }
            let (key, generation) = Feed::<T>::untoken(token);
            if self.conns.find(key, generation).is_some() {
                self.on_writable(key);
                self.on_readable(key, false);
            }
        }
        if let Some(feed) = self.feed.as_mut() {
            feed.give_back(ready);
        }
    }

    /// Write what the session queued while the transport was full.
    pub(super) fn on_writable(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        // Records the transport holds (TLS) go first: the session's bytes follow them.
        if conn.transport.flush_output().is_err() {
            self.call(key, |c, ctx| c.session.close(ctx, Close::IoError));
            return;
        }
        if let Some(bytes) = conn.session.poll_transmit() {
            let written = write_some(&mut conn.transport, bytes);
            let kernel = conn.transport.unsent_bytes();
            self.call(key, |c, ctx| match written {
                Ok(n) => c.session.handle_transmitted(ctx, n, kernel),
                Err(_) => c.session.close(ctx, Close::IoError),
            });
        }
        if self
            .conns
            .get(key)
            .is_some_and(|c| c.session.queued() == 0 && !c.transport.pending_output())
        {
            self.want_writable(key, false);
        }
    }

    /// Read once and feed the session; come back next turn if there may be more.
    ///
    /// A short read means the socket is empty and the next arrival is a new edge, except
    /// when the event also signalled the peer's close: data and FIN can arrive in one
    /// readiness event, and no further event comes, so then reading goes on until the end
    /// of stream is seen.
    pub(super) fn on_readable(&mut self, key: usize, read_closed: bool) {
        let Some(conn) = self.conns.get(key) else { return };
        if conn.session.has_backlog() {
            return; // resumed in turn; reading more now would only grow its buffer
        }
        let generation = self.conns.generation(key);
        let mut buf = std::mem::take(&mut self.buf);
        while let Some(conn) = self.conns.get_mut(key) {
            match conn.transport.read(&mut buf) {
                Ok(0) => {
                    self.call(key, |c, ctx| c.session.handle_eof(ctx));
                    break;
                }
                Ok(n) => {
                    let more = self.feed(key, &buf[..n])
                        || self.conns.get_mut(key).is_some_and(|c| c.transport.read_again());
                    if more || n == buf.len() {
                        self.resume.push(Resume { key, generation, read_closed });
                        break;
                    }
                    if !read_closed || self.conns.get(key).is_none() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let close = match ProxyRefusal::of(&e) {
                        Some(refusal) => {
                            self.node.metrics.proxy_refused(refusal).inc();
                            tracing::debug!(reason = refusal.as_str(), "PROXY header refused");
                            Close::ProxyRefused
                        }
                        // TLS failures are counted when the connection departs.
                        None => Close::IoError,
                    };
                    self.call(key, |c, ctx| c.session.close(ctx, close));
                    break;
                }
            }
        }
        self.buf = buf;
        self.after_read_tls(key);
    }

    /// TLS, after a read: count a handshake that just completed, and keep writable interest
    /// while records wait for the socket (a handshake flight, a key update). For a plain
    /// connection both are a look at a null pointer.
    fn after_read_tls(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.transport.take_tls_established() {
            self.node.metrics.tls_handshakes.inc();
        }
        if conn.transport.pending_output() {
            self.want_writable(key, true);
        }
    }

    /// Feed bytes to a session; true when it has frames left for another turn.
    fn feed(&mut self, key: usize, data: &[u8]) -> bool {
        let mut input = self.call(key, |c, ctx| c.session.handle_input(ctx, data));
        // A HELLO was answered while settling: go on with what was pipelined after it.
        while input == Some(Input::Paused)
            && self.conns.get(key).is_some_and(|c| c.session.phase() != Phase::Authenticating)
        {
            input = self.call(key, |c, ctx| c.session.handle_input(ctx, &[]));
        }
        matches!(input, Some(Input::Yield | Input::Paused))
    }

    /// [`Self::resume_connections`], when the backlog has not used up its share of the
    /// loop's time (`limits.backlog_share_percent`).
    pub(super) fn resume_within_share(&mut self) {
        if self.resume.is_empty() || !self.backlog.may_run(self.now.mono_us) {
            return;
        }
        let started = Instant::now();
        self.resume_connections();
        self.backlog.spent(started.elapsed().as_micros() as u64);
    }

    /// Give the connections that yielded last turn their next turn.
    fn resume_connections(&mut self) {
        for (i, r) in std::mem::take(&mut self.resume).into_iter().enumerate() {
            if i > 0 {
                self.drain_commands();
            }
            if self.conns.find(r.key, r.generation).is_none() {
                continue;
            }
            if self.conns.get(r.key).is_some_and(|c| c.session.has_backlog())
                && self.feed(r.key, &[])
            {
                self.resume.push(r);
                continue;
            }
            self.on_readable(r.key, r.read_closed);
        }
    }
}
