//! The handshake phase of [`Tls`]: driving rustls's unbuffered server connection until it
//! can send application data, then taking over its traffic keys.

use std::io;

use rustls::unbuffered::{ConnectionState, EncodeError};

use super::{HANDSHAKE_MAX, HANDSHAKE_RECORD, Open, Phase, Socket, Tls, TlsFailure, fail};
use crate::driver::record::{ALERT, APPLICATION_DATA, Keys, MAX_PLAINTEXT};

impl Tls {
    /// Drive rustls's handshake as far as `incoming` allows; switch to the open phase once
    /// it may send application data.
    pub(super) fn handshake<S: Socket>(
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
}
