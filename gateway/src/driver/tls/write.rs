//! The write side of [`Tls`]: sealing records (with a key update at the key's limit),
//! plaintext in from the session, flushing ciphertext, and `close_notify`.

use std::io;

use super::{EARLY_MAX, Phase, Socket, Tls, fail};
use crate::driver::record::{ALERT, APPLICATION_DATA, MAX_PLAINTEXT};

impl Tls {
    /// Protect one record of `typ` into `outgoing`, updating the key at its limit first.
    pub(super) fn seal(&mut self, typ: u8, data: &[u8]) -> io::Result<()> {
        let Phase::Open(open) = &mut self.phase else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        if open.tx.seq >= open.tx_limit.saturating_sub(1) {
            self.update_tx()?;
        }
        let Phase::Open(open) = &mut self.phase else {
            return Err(io::ErrorKind::BrokenPipe.into());
        };
        open.tx.seal(typ, data, &mut self.outgoing).map_err(fail)
    }

    /// Take plaintext from the session: at most one record per call, nothing while earlier
    /// ciphertext is unwritten.
    pub(crate) fn write<S: Socket>(&mut self, tcp: &mut S, data: &[u8]) -> io::Result<usize> {
        if self.fin {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if !self.outgoing.is_empty() {
            self.flush(tcp)?;
            if !self.outgoing.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
        match self.phase {
            Phase::Handshake(_) => {
                let n = data.len().min(EARLY_MAX.saturating_sub(self.early.len()));
                if n == 0 && !data.is_empty() {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                self.early.extend_from_slice(&data[..n]);
                Ok(n)
            }
            Phase::Open(_) => {
                let n = data.len().min(MAX_PLAINTEXT);
                self.seal(APPLICATION_DATA, &data[..n])?;
                self.flush(tcp)?;
                Ok(n)
            }
            Phase::Failed => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    /// Write unwritten ciphertext as far as the socket takes it (`Ok` also when it would
    /// block: see [`Tls::pending_output`]); shut the write side once all is out after
    /// [`Tls::shutdown_write`].
    pub(crate) fn flush<S: Socket>(&mut self, tcp: &mut S) -> io::Result<()> {
        let mut done = 0;
        let result = loop {
            if done == self.outgoing.len() {
                break Ok(());
            }
            match tcp.write(&self.outgoing[done..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => done += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.outgoing.drain(..done);
        if self.outgoing.is_empty() {
            self.outgoing = Vec::new();
            if self.fin && matches!(self.phase, Phase::Open(_)) {
                tcp.shut_write();
            }
        }
        result
    }

    /// Send `close_notify` and then shut the socket's write side, once everything before it
    /// is written (after the handshake, if it is still going on).
    pub(crate) fn shutdown_write<S: Socket>(&mut self, tcp: &mut S) {
        if self.fin {
            return;
        }
        match self.phase {
            Phase::Open(_) => {
                if self.seal(ALERT, &[1, 0]).is_ok() {
                    self.fin = true;
                    let _ = self.flush(tcp);
                }
            }
            Phase::Handshake(_) => {
                self.fin = true;
                if self.early.is_empty() {
                    // Nothing to say (a deadline passed, the node stops): the end, now.
                    tcp.shut_write();
                }
                // Otherwise what the session wrote goes once the handshake completes.
            }
            Phase::Failed => {
                tcp.shut_write();
            }
        }
    }
}
