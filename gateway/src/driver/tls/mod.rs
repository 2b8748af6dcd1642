//! `Tls`: a server TLS connection over a non-blocking socket, as the event loops need it —
//! ciphertext in from the socket, plaintext out to the session and back, readiness kept
//! honest.
//!
//! Two phases. **Handshake**: rustls's unbuffered server connection (boxed, with our own
//! `incoming`/`outgoing` buffers) until it can send application data. **Open**: rustls hands
//! over the traffic keys and a `KernelConnection` (the interface meant for kernel TLS, used
//! here for key updates); records are protected by `record` (`driver::record`). Every buffer
//! is freed as soon as it is empty, so an idle established connection holds the keys, the
//! `KernelConnection` and this struct: about 1.1 KB, where rustls's buffered connection keeps
//! about 7 KB (`docs/BENCHMARKS.md` § TLS).
//!
//! Readiness: `Tls::read` decrypts every complete record it has and reads the socket until
//! it would block or the caller's buffer is full, so a short read still means "nothing more
//! until the next readable event" — as for plain TCP — except when it stopped at its
//! per-turn budget of ciphertext, which `Tls::read_again` tells. `Tls::write` takes at most one
//! record's worth of plaintext per call and refuses more (`WouldBlock`) while earlier
//! ciphertext is still unwritten; what is unwritten is `Tls::pending_output`, and the loop
//! keeps writable interest until `Tls::flush` has written it.
//!
//! This file holds the state (`Tls`, its phases) and the failure reasons ([`TlsFailure`]);
//! `handshake.rs` drives rustls until it hands over the keys, `read.rs` is the read side
//! (the read budget, records, the peer's key updates) and `write.rs` the write side
//! (sealing, flushing, `close_notify`).

mod handshake;
mod read;
mod write;

use std::io::{self, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::ServerConfig;
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};

use super::record::Keys;

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
