//! Socket I/O: a readiness event (a connect completing, reads, writes), what the kernel
//! refused kept until the next writable edge, and the session's output after each input.

use std::io::ErrorKind;
use std::task::Poll as TaskPoll;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::conn::Phase;
use super::link::{Link, is_tls_failure};
use super::timers::Kind;
use super::{Engine, MAX_UNSENT, READS_PER_TURN};

impl Engine {
    pub(super) fn on_ready(&mut self, idx: usize, writable: bool, readable: bool, now: Instant) {
        let c = &mut self.conns[idx];
        let connecting = c.phase == Phase::Connecting;
        let Some(mut link) = c.link() else { return };
        if connecting && let Link::Quic(q) = &mut link {
            match q.poll_connect() {
                TaskPoll::Pending => return,
                TaskPoll::Ready(Ok(())) => {
                    self.set_phase(idx, Phase::Handshake);
                    self.conns[idx].session.connect(now);
                    self.after_input(idx, now);
                }
                TaskPoll::Ready(Err(_)) => return self.connect_failed(idx, now),
            }
        } else if connecting {
            let Some(stream) = link.tcp() else { return };
            match stream.take_error() {
                Ok(None) => {}
                Ok(Some(_)) | Err(_) => return self.connect_failed(idx, now),
            }
            match stream.peer_addr() {
                Ok(_) => {
                    self.set_phase(idx, Phase::Handshake);
                    self.conns[idx].session.connect(now);
                    self.after_input(idx, now);
                }
                // Not connected yet and no error: a spurious wake-up.
                Err(e) if e.kind() == ErrorKind::NotConnected && !readable => return,
                Err(_) => return self.connect_failed(idx, now),
            }
        }
        if writable {
            self.flush_link(idx, now);
            self.flush_unsent(idx, now);
        }
        if readable {
            self.read(idx, now);
            // Reading may have made room to write (a TLS handshake completing releases the
            // plaintext rustls held): retry what was refused.
            if self.conns[idx].unsent.is_some() {
                self.flush_unsent(idx, now);
            }
        }
    }

    /// Write what the transport holds (TLS records); a failure closes the connection.
    fn flush_link(&mut self, idx: usize, now: Instant) {
        let c = &mut self.conns[idx];
        let Some(mut link) = c.link() else { return };
        match link.flush() {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => {
                c.session.transport_closed(now);
                self.after_input(idx, now);
            }
        }
    }

    fn read(&mut self, idx: usize, now: Instant) {
        for _ in 0..READS_PER_TURN {
            let c = &mut self.conns[idx];
            let Some(mut link) = c.link() else { return };
            match link.read(&mut self.buf) {
                Ok(0) => {
                    c.session.transport_closed(now);
                    return self.after_input(idx, now);
                }
                Ok(n) => {
                    let again = link.read_again();
                    c.session.receive(&self.buf[..n], now);
                    self.after_input(idx, now);
                    if n < self.buf.len() && !again {
                        // A short read emptied the socket's receive queue; anything that
                        // arrives later raises a new edge. Saves the read that would only
                        // say WouldBlock: one syscall per heartbeat.
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    if is_tls_failure(&e) {
                        self.counters.tls_failed += 1;
                    }
                    c.session.transport_closed(now);
                    return self.after_input(idx, now);
                }
            }
        }
        self.again.push(idx as u32);
    }

    /// Write `bytes` after whatever is still unsent; keep the rest.
    pub(super) fn write(&mut self, idx: usize, bytes: Bytes, now: Instant) {
        let c = &mut self.conns[idx];
        if !c.is_open() {
            return;
        }
        if let Some(prev) = c.unsent.take() {
            let mut joined = BytesMut::with_capacity(prev.len() + bytes.len());
            joined.extend_from_slice(&prev);
            joined.extend_from_slice(&bytes);
            c.unsent = Some(joined.freeze());
            if c.unsent.as_ref().is_some_and(|u| u.len() > MAX_UNSENT) {
                c.session.transport_closed(now);
            }
            return;
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let Some(mut link) = c.link() else { return };
            match link.write(&rest) {
                Ok(n) => {
                    let _ = rest.split_to(n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    c.unsent = Some(rest);
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    c.session.transport_closed(now);
                    return;
                }
            }
        }
    }

    fn flush_unsent(&mut self, idx: usize, now: Instant) {
        if let Some(bytes) = self.conns[idx].unsent.take() {
            self.write(idx, bytes, now);
            self.after_input(idx, now);
        }
    }

    /// Drain what the session wants written and what it has to say; re-arm its timer.
    pub(super) fn after_input(&mut self, idx: usize, now: Instant) {
        loop {
            while let Some(bytes) = self.conns[idx].session.poll_transmit() {
                self.write(idx, bytes, now);
            }
            let Some(event) = self.conns[idx].session.poll_event() else { break };
            self.on_event(idx, event, now);
        }
        self.rearm(idx);
    }

    fn rearm(&mut self, idx: usize) {
        let Some(at) = self.conns[idx].session.poll_timeout() else { return };
        let at_ns = self.ns(at);
        let c = &mut self.conns[idx];
        if at_ns < c.armed_ns {
            c.armed_ns = at_ns;
            let generation = c.generation;
            self.timers.set(at_ns, idx as u32, generation, Kind::Session);
        }
    }
}
