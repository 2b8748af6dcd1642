//! The read side of [`Tls`]: plaintext out of the socket's ciphertext under the readiness
//! contract of the module doc — the read budget, the handshake's bytes, then records, and
//! the peer's key updates.

use std::io;

use super::{KEY_UPDATE, Open, Phase, READ_BUDGET, READ_CHUNK, Socket, Tls, TlsFailure, fail};
use crate::driver::record::{
    self, ALERT, APPLICATION_DATA, HANDSHAKE, Keys, MAX_CIPHERTEXT, RecordError,
};

impl Tls {
    /// Read plaintext: see the module doc for the readiness contract.
    pub(crate) fn read<S: Socket>(&mut self, tcp: &mut S, buf: &mut [u8]) -> io::Result<usize> {
        if matches!(self.phase, Phase::Failed) {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let mut n = self.take_plain(buf);
        let mut taken = 0;
        let mut drained = false;
        loop {
            if n < buf.len()
                && let Err(e) = self.process(tcp, buf, &mut n)
            {
                self.phase = Phase::Failed;
                self.release();
                return Err(e);
            }
            // A short socket read emptied it: the next arrival is a new readiness event, so
            // plaintext in hand goes now without another read (one syscall per heartbeat,
            // as on plain TCP). With nothing in hand, read on to see the end or `WouldBlock`.
            if n == buf.len() || self.eof || (drained && n > 0) {
                return Ok(n);
            }
            if taken >= READ_BUDGET {
                if n == 0 {
                    self.failure.get_or_insert(TlsFailure::Malformed);
                    self.phase = Phase::Failed;
                    self.release();
                    return Err(fail(RecordError::Flood));
                }
                self.unread = true;
                return Ok(n);
            }
            match self.read_socket(tcp) {
                Ok((0, _)) => {
                    self.eof = true;
                    if matches!(self.phase, Phase::Handshake(_)) {
                        self.failure = Some(TlsFailure::Closed);
                    }
                    return Ok(n);
                }
                Ok((k, short)) => {
                    taken += k;
                    drained = short;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && n > 0 => return Ok(n),
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the last read stopped before the socket was drained: read again next turn
    /// even though it returned less than the buffer (edge-triggered readiness will not say).
    pub(crate) fn read_again(&mut self) -> bool {
        std::mem::take(&mut self.unread)
    }

    /// Serve decrypted plaintext kept from an earlier read.
    fn take_plain(&mut self, buf: &mut [u8]) -> usize {
        let rest = &self.plain[self.plain_at..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.plain_at += n;
        if self.plain_at == self.plain.len() {
            self.plain = Vec::new();
            self.plain_at = 0;
        }
        n
    }

    /// Give plaintext to the caller's buffer, keeping what does not fit.
    pub(super) fn deliver(plain: &mut Vec<u8>, buf: &mut [u8], n: &mut usize, data: &[u8]) {
        let fit = data.len().min(buf.len() - *n);
        buf[*n..*n + fit].copy_from_slice(&data[..fit]);
        *n += fit;
        plain.extend_from_slice(&data[fit..]);
    }

    /// Read what the socket has (at least what the record in progress still needs) into
    /// `incoming`.
    /// Returns the count and whether it was short (the socket had no more for now).
    fn read_socket<S: Socket>(&mut self, tcp: &mut S) -> io::Result<(usize, bool)> {
        let have = self.incoming.len();
        let need = match self.phase {
            Phase::Open(_) if have >= record::HEADER => {
                let len = usize::from(u16::from_be_bytes([self.incoming[3], self.incoming[4]]));
                (record::HEADER + len.min(MAX_CIPHERTEXT)).saturating_sub(have)
            }
            _ => 0,
        };
        if need > READ_CHUNK {
            // The rest of a large record: straight into its buffer.
            self.incoming.resize(have + need, 0);
            let r = tcp.read(&mut self.incoming[have..]);
            self.incoming.truncate(have + *r.as_ref().unwrap_or(&0));
            return r.map(|k| (k, k < need));
        }
        // Small reads go through the stack, so `incoming` holds only what is kept (a partial
        // record: a stalled `ClientHello` costs its own bytes, not a 4 KiB buffer).
        let mut chunk = [0u8; READ_CHUNK];
        let k = tcp.read(&mut chunk)?;
        self.incoming.extend_from_slice(&chunk[..k]);
        Ok((k, k < READ_CHUNK))
    }

    /// Make progress with what `incoming` holds: the handshake's steps, or records.
    fn process<S: Socket>(&mut self, tcp: &mut S, buf: &mut [u8], n: &mut usize) -> io::Result<()> {
        if matches!(self.phase, Phase::Handshake(_)) {
            self.handshake(tcp, buf, n)?;
        }
        if matches!(self.phase, Phase::Open(_)) {
            self.records(tcp, buf, n)?;
        }
        Ok(())
    }

    /// Open every complete record in `incoming`, as long as the caller's buffer has room.
    fn records<S: Socket>(&mut self, tcp: &mut S, buf: &mut [u8], n: &mut usize) -> io::Result<()> {
        let mut at = 0;
        let result = loop {
            if *n == buf.len() || self.eof {
                break Ok(());
            }
            let len = match record::record_len(&self.incoming[at..]) {
                Ok(Some(len)) => len,
                Ok(None) => break Ok(()),
                Err(e) => break Err(fail(e)),
            };
            let Phase::Open(open) = &mut self.phase else { break Ok(()) };
            let (typ, data) = match open.rx.open(&mut self.incoming[at..at + len]) {
                Ok(r) => r,
                Err(e) => break Err(fail(e)),
            };
            let outcome = match typ {
                APPLICATION_DATA => {
                    Tls::deliver(&mut self.plain, buf, n, data);
                    Ok(None)
                }
                ALERT => match data {
                    // close_notify; user_canceled is followed by one.
                    [_, 0] => {
                        self.eof = true;
                        Ok(None)
                    }
                    [_, 90] => Ok(None),
                    _ => Err(fail(RecordError::Unprotected)),
                },
                HANDSHAKE => Tls::post_handshake(open, data),
                _ => Err(fail(RecordError::Unprotected)),
            };
            at += len;
            match outcome {
                Ok(None) => {}
                Ok(Some(request)) => {
                    if let Err(e) = self.key_update(request) {
                        break Err(e);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        self.incoming.drain(..at);
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        result?;
        if !self.outgoing.is_empty() {
            self.flush(tcp)?;
        }
        Ok(())
    }

    /// Handle post-handshake messages; `Some(update_requested)` for a `KeyUpdate`, whose
    /// receive side is already updated.
    fn post_handshake(open: &mut Open, mut data: &[u8]) -> io::Result<Option<bool>> {
        let mut request = None;
        while !data.is_empty() {
            // A client sends only KeyUpdate after the handshake (§4.6); a message split
            // across records is refused (a KeyUpdate is 5 bytes).
            let [typ, a, b, c, rest @ ..] = data else {
                return Err(fail(RecordError::Unprotected));
            };
            let len = u32::from_be_bytes([0, *a, *b, *c]) as usize;
            if *typ != KEY_UPDATE || len != 1 || rest.is_empty() || rest[0] > 1 {
                return Err(fail(RecordError::Unprotected));
            }
            request = Some(request.unwrap_or(false) || rest[0] == 1);
            let (seq, secrets) = open.kernel.update_rx_secret().map_err(fail)?;
            open.rx = Keys::new(seq, &secrets).ok_or_else(|| fail(RecordError::Unprotected))?;
            data = &rest[1..];
        }
        Ok(request)
    }

    /// After the peer's `KeyUpdate`: answer one that asked for it with our own.
    fn key_update(&mut self, requested: bool) -> io::Result<()> {
        if requested { self.update_tx() } else { Ok(()) }
    }

    /// Send `KeyUpdate(update_not_requested)` under the old key, then switch to the next.
    pub(super) fn update_tx(&mut self) -> io::Result<()> {
        let Phase::Open(open) = &mut self.phase else { return Ok(()) };
        open.tx.seal(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], &mut self.outgoing).map_err(fail)?;
        let (seq, secrets) = open.kernel.update_tx_secret().map_err(fail)?;
        open.tx = Keys::new(seq, &secrets).ok_or_else(|| fail(RecordError::Unprotected))?;
        Ok(())
    }
}
