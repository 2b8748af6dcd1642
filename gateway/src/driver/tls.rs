//! [`Tls`]: a server TLS connection over a non-blocking socket, as the event loops need it —
//! ciphertext in from the socket, plaintext out to the session and back, readiness kept
//! honest.
//!
//! Two phases. **Handshake**: rustls's unbuffered server connection (boxed, with our own
//! `incoming`/`outgoing` buffers) until it can send application data. **Open**: rustls hands
//! over the traffic keys and a `KernelConnection` (the interface meant for kernel TLS, used
//! here for key updates); records are protected by [`record`](super::record). Every buffer
//! is freed as soon as it is empty, so an idle established connection holds the keys, the
//! `KernelConnection` and this struct: about 1.1 KB, where rustls's buffered connection keeps
//! about 7 KB (`docs/BENCHMARKS.md` § TLS).
//!
//! Readiness: [`Tls::read`] decrypts every complete record it has and reads the socket until
//! it would block or the caller's buffer is full, so a short read still means "nothing more
//! until the next readable event" — as for plain TCP — except when it stopped at its
//! per-turn budget of ciphertext, which [`Tls::read_again`] tells. [`Tls::write`] takes at most one
//! record's worth of plaintext per call and refuses more (`WouldBlock`) while earlier
//! ciphertext is still unwritten; what is unwritten is [`Tls::pending_output`], and the loop
//! keeps writable interest until [`Tls::flush`] has written it.

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::ServerConfig;
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError};

use super::record::{
    self, ALERT, APPLICATION_DATA, HANDSHAKE, Keys, MAX_CIPHERTEXT, MAX_PLAINTEXT, RecordError,
};

/// Bytes read from the socket at a time (more when a record in progress needs more).
const READ_CHUNK: usize = 4096;
/// Ciphertext one [`Tls::read`] takes from the socket at most: one turn's worth, as one plain
/// read of the loop's buffer would be. What is left waits for the next turn
/// ([`Tls::read_again`]); 64 KiB without a byte of plaintext is abuse and ends the connection.
const READ_BUDGET: usize = 64 * 1024;
/// The most plaintext the session may write before the handshake completes (its refusals
/// are a few dozen bytes); beyond it writes wait.
const EARLY_MAX: usize = 16 * 1024;
/// The most handshake bytes kept waiting for rustls (a `ClientHello` is a few hundred bytes
/// to a few KiB; TLS allows one to span records): what a stalled or hostile handshake can
/// hold until its deadline.
const HANDSHAKE_MAX: usize = 64 * 1024;
/// `HandshakeType.key_update` (§4.6.3).
const KEY_UPDATE: u8 = 24;
/// The first byte of a TLS handshake record: what a `ClientHello` starts with.
const HANDSHAKE_RECORD: u8 = 22;

/// Why a TLS handshake did not complete: the `reason` label of
/// `holdfast_gateway_tls_handshake_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TlsFailure {
    /// The first bytes are not a TLS handshake record (plain protocol or garbage on the TLS
    /// port).
    #[error("TLS listener: not a TLS ClientHello")]
    NotTls = 0,
    /// The client sent an alert (for example, it does not trust the certificate).
    #[error("TLS handshake: the client sent an alert")]
    PeerAlert = 1,
    /// No protocol version, cipher suite, group, signature scheme or ALPN protocol in common.
    #[error("TLS handshake: nothing in common with the client")]
    Incompatible = 2,
    /// A malformed or unexpected handshake message.
    #[error("TLS handshake: malformed or unexpected message")]
    Malformed = 3,
    /// The handshake deadline (`listen.handshake_timeout_ms`) passed first.
    #[error("TLS handshake: deadline passed")]
    Timeout = 4,
    /// The client closed, or the socket failed, during the handshake.
    #[error("TLS handshake: connection closed")]
    Closed = 5,
}

impl TlsFailure {
    /// Every reason, in label order.
    pub const ALL: [TlsFailure; 6] = [
        TlsFailure::NotTls,
        TlsFailure::PeerAlert,
        TlsFailure::Incompatible,
        TlsFailure::Malformed,
        TlsFailure::Timeout,
        TlsFailure::Closed,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsFailure::NotTls => "not_tls",
            TlsFailure::PeerAlert => "peer_alert",
            TlsFailure::Incompatible => "incompatible",
            TlsFailure::Malformed => "malformed",
            TlsFailure::Timeout => "timeout",
            TlsFailure::Closed => "closed",
        }
    }

    fn of(e: &rustls::Error) -> TlsFailure {
        match e {
            rustls::Error::AlertReceived(_) => TlsFailure::PeerAlert,
            rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => {
                TlsFailure::Incompatible
            }
            _ => TlsFailure::Malformed,
        }
    }
}

/// Where the connection is.
enum Phase {
    /// rustls runs the handshake.
    Handshake(Box<UnbufferedServerConnection>),
    /// Established: our record layer with the keys rustls handed over.
    Open(Box<Open>),
    /// The handshake or a record failed; nothing more is read or written.
    Failed,
}

/// An established connection's protection state.
struct Open {
    rx: Keys,
    tx: Keys,
    /// Records after which the send key is updated (the suite's confidentiality limit).
    tx_limit: u64,
    /// rustls's half that derives the next traffic secrets on a key update.
    kernel: KernelConnection<ServerConnectionData>,
}

/// A TLS server connection's state beside its socket (see the module doc).
pub(crate) struct Tls {
    phase: Phase,
    /// Ciphertext read and not processed yet (at most one record plus a read).
    incoming: Vec<u8>,
    /// Ciphertext not written yet.
    outgoing: Vec<u8>,
    /// Plaintext decrypted and not read yet, from `plain_at`.
    plain: Vec<u8>,
    plain_at: usize,
    /// Plaintext the session wrote before the handshake completed.
    early: Vec<u8>,
    /// Why the handshake failed, once it has.
    failure: Option<TlsFailure>,
    /// A completed handshake not yet counted ([`Tls::take_established`]).
    established_news: bool,
    /// The handshake completed (whatever happened after).
    established: bool,
    /// The session asked to shut the write side: `close_notify`, then `FIN` once written.
    fin: bool,
    /// The peer's `close_notify` or the socket's end was seen.
    eof: bool,
    /// The first byte was looked at (a TLS handshake record, or the connection failed).
    hello_seen: bool,
    /// The last read stopped at [`READ_BUDGET`], the socket not drained.
    unread: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = match self.phase {
            Phase::Handshake(_) => "handshake",
            Phase::Open(_) => "open",
            Phase::Failed => "failed",
        };
        f.debug_struct("Tls").field("phase", &phase).field("failure", &self.failure).finish()
    }
}

/// The byte stream under TLS: a non-blocking socket (a `mio` TCP stream; in tests, a
/// scripted one).
pub(crate) trait Socket: Read + Write {
    /// Shut the write side (the peer sees the end).
    fn shut_write(&mut self);
}

impl Socket for TcpStream {
    fn shut_write(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// An error that ends the connection, carrying what it was for the loop's metrics.
fn fail(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Tls {
    /// A connection about to receive a `ClientHello`; `initial` are bytes already read (after
    /// a PROXY header).
    pub(crate) fn new(config: Arc<ServerConfig>, initial: Vec<u8>) -> Result<Tls, rustls::Error> {
        let conn = UnbufferedServerConnection::new(config)?;
        Ok(Tls {
            phase: Phase::Handshake(Box::new(conn)),
            incoming: initial,
            outgoing: Vec::new(),
            plain: Vec::new(),
            plain_at: 0,
            early: Vec::new(),
            failure: None,
            established_news: false,
            established: false,
            fin: false,
            eof: false,
            hello_seen: false,
            unread: false,
        })
    }

    /// The handshake failure of a connection that ends before its handshake completed
    /// (`Closed` if nothing more precise is known); `None` once established.
    pub(crate) fn unfinished(&self) -> Option<TlsFailure> {
        if self.established {
            return None;
        }
        match self.phase {
            Phase::Open(_) => None,
            Phase::Handshake(_) => Some(TlsFailure::Closed),
            Phase::Failed => self.failure.or(Some(TlsFailure::Closed)),
        }
    }

    /// True once after the handshake completed (for the loop's count).
    pub(crate) fn take_established(&mut self) -> bool {
        std::mem::take(&mut self.established_news)
    }

    /// Ciphertext (and plaintext waiting for the handshake) not handed to the kernel yet.
    pub(crate) fn unsent(&self) -> usize {
        self.outgoing.len() + self.early.len()
    }

    /// Whether ciphertext is waiting for the socket to be writable.
    pub(crate) fn pending_output(&self) -> bool {
        !self.outgoing.is_empty()
    }

    // ----- reading ----------------------------------------------------------------------

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
    fn deliver(plain: &mut Vec<u8>, buf: &mut [u8], n: &mut usize, data: &[u8]) {
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

    /// Drive rustls's handshake as far as `incoming` allows; switch to the open phase once
    /// it may send application data.
    fn handshake<S: Socket>(
        &mut self,
        tcp: &mut S,
        buf: &mut [u8],
        n: &mut usize,
    ) -> io::Result<()> {
        if !self.hello_seen && !self.incoming.is_empty() {
            if self.incoming[0] != HANDSHAKE_RECORD {
                self.failure = Some(TlsFailure::NotTls);
                return Err(fail(TlsFailure::NotTls));
            }
            self.hello_seen = true;
        }
        if self.incoming.len() > HANDSHAKE_MAX {
            self.failure = Some(TlsFailure::Malformed);
            return Err(fail(TlsFailure::Malformed));
        }
        loop {
            let Tls { phase, incoming, outgoing, plain, failure, eof, .. } = self;
            let Phase::Handshake(conn) = phase else { return Ok(()) };
            let status = conn.process_tls_records(incoming);
            let discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(e) => {
                    let reason = TlsFailure::of(&e);
                    tracing::debug!(error = %e, reason = reason.as_str(), "TLS handshake failed");
                    *failure = Some(reason);
                    return Err(fail(reason));
                }
            };
            let mut done = false;
            let mut blocked = false;
            match state {
                ConnectionState::EncodeTlsData(mut enc) => {
                    let start = outgoing.len();
                    let need = match enc.encode(&mut []) {
                        Err(EncodeError::InsufficientSize(s)) => s.required_size,
                        _ => 0,
                    };
                    outgoing.resize(start + need, 0);
                    if enc.encode(&mut outgoing[start..]).is_err() {
                        outgoing.truncate(start);
                    }
                }
                ConnectionState::TransmitTlsData(t) => {
                    // Ours to send from here; written below or when writable.
                    t.done();
                }
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(record) = r.next_record() {
                        match record {
                            Ok(rec) => Tls::deliver(plain, buf, n, rec.payload),
                            Err(e) => {
                                *failure = Some(TlsFailure::Malformed);
                                return Err(fail(e));
                            }
                        }
                    }
                }
                ConnectionState::WriteTraffic(_) => done = true,
                ConnectionState::BlockedHandshake => blocked = true,
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    *eof = true;
                    *failure = Some(TlsFailure::Closed);
                    blocked = true;
                }
                _ => {
                    *failure = Some(TlsFailure::Malformed);
                    return Err(fail(TlsFailure::Malformed));
                }
            }
            self.incoming.drain(..discard);
            if done {
                return self.establish(tcp);
            }
            if blocked {
                self.flush(tcp)?;
                return Ok(());
            }
        }
    }

    /// The handshake is complete: take the keys, send what the session wrote meanwhile.
    fn establish<S: Socket>(&mut self, tcp: &mut S) -> io::Result<()> {
        let Phase::Handshake(conn) = std::mem::replace(&mut self.phase, Phase::Failed) else {
            return Ok(());
        };
        let (secrets, kernel) = conn.dangerous_into_kernel_connection().map_err(|e| {
            self.failure = Some(TlsFailure::Malformed);
            fail(e)
        })?;
        let (Some(rx), Some(tx)) =
            (Keys::new(secrets.rx.0, &secrets.rx.1), Keys::new(secrets.tx.0, &secrets.tx.1))
        else {
            self.failure = Some(TlsFailure::Incompatible);
            return Err(fail(TlsFailure::Incompatible));
        };
        let tx_limit = kernel
            .negotiated_cipher_suite()
            .tls13()
            .map_or(u64::MAX, |s| s.common.confidentiality_limit);
        self.phase = Phase::Open(Box::new(Open { rx, tx, tx_limit, kernel }));
        self.established_news = true;
        self.established = true;
        let early = std::mem::take(&mut self.early);
        for chunk in early.chunks(MAX_PLAINTEXT) {
            self.seal(APPLICATION_DATA, chunk)?;
        }
        if self.fin {
            self.seal(ALERT, &[1, 0])?; // close_notify
        }
        self.flush(tcp)
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
    fn update_tx(&mut self) -> io::Result<()> {
        let Phase::Open(open) = &mut self.phase else { return Ok(()) };
        open.tx.seal(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], &mut self.outgoing).map_err(fail)?;
        let (seq, secrets) = open.kernel.update_tx_secret().map_err(fail)?;
        open.tx = Keys::new(seq, &secrets).ok_or_else(|| fail(RecordError::Unprotected))?;
        Ok(())
    }

    // ----- writing ----------------------------------------------------------------------

    /// Protect one record of `typ` into `outgoing`, updating the key at its limit first.
    fn seal(&mut self, typ: u8, data: &[u8]) -> io::Result<()> {
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

    /// Free what a failed connection holds.
    fn release(&mut self) {
        self.incoming = Vec::new();
        self.plain = Vec::new();
        self.plain_at = 0;
        self.early = Vec::new();
    }
}

#[cfg(test)]
pub(crate) mod tests;
