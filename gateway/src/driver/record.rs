//! TLS 1.3 record protection (RFC 8446 §5) for established connections, sans-IO.
//!
//! rustls runs the handshake; once it is done the gateway takes the traffic keys
//! (`dangerous_into_kernel_connection`, the interface meant for kernel TLS) and protects
//! records here, so an idle connection keeps two keys, two IVs and two sequence numbers
//! instead of rustls's buffers and expanded cipher states. The AEAD itself is `ring`'s; a
//! key is expanded for each record (a fraction of a microsecond), never kept.
//!
//! Only what an established connection needs: application data, alerts, and post-handshake
//! handshake messages (which `driver/tls/` passes to rustls's `KernelConnection` for key
//! updates).

use ring::aead;
use rustls::ConnectionTrafficSecrets;
use zeroize::Zeroize;

/// The record header: type, legacy version, length.
pub(crate) const HEADER: usize = 5;
/// "The length MUST NOT exceed 2^14 bytes" (`TLSInnerPlaintext` content, §5.4).
pub(crate) const MAX_PLAINTEXT: usize = 1 << 14;
/// "The length MUST NOT exceed 2^14 + 256 bytes" (`TLSCiphertext.length`, §5.2).
pub(crate) const MAX_CIPHERTEXT: usize = (1 << 14) + 256;
/// The AEAD tag of every TLS 1.3 cipher suite.
const TAG: usize = 16;

/// `ContentType.alert`.
pub(crate) const ALERT: u8 = 21;
/// `ContentType.handshake`.
pub(crate) const HANDSHAKE: u8 = 22;
/// `ContentType.application_data`: every protected record's outer type, and the type of the
/// session's bytes inside.
pub(crate) const APPLICATION_DATA: u8 = 23;

/// Why a record was refused: every one ends the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecordError {
    /// A ciphertext or plaintext longer than the limits of §5.2 and §5.4.
    #[error("TLS record too long")]
    Overflow,
    /// An outer type other than `application_data` after the handshake (§5.2: a protected
    /// record's `opaque_type` is always 23).
    #[error("unprotected TLS record after the handshake")]
    Unprotected,
    /// The record does not authenticate under the current key.
    #[error("TLS record authentication failed")]
    BadRecordMac,
    /// The inner plaintext is all padding (§5.4: "MUST terminate the connection with an
    /// `unexpected_message` alert").
    #[error("TLS record without a content type")]
    NoContentType,
    /// A turn's worth of ciphertext (64 KiB) without a byte of application data: empty
    /// records, alerts or key updates in a loop.
    #[error("TLS records without application data")]
    Flood,
    /// The key has protected 2^64 - 1 records (§5.3: "MUST NOT wrap").
    #[error("TLS sequence numbers exhausted")]
    Exhausted,
}

/// The AEAD of a TLS 1.3 cipher suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

/// One direction's traffic protection: key, IV and the next record's sequence number.
pub(crate) struct Keys {
    cipher: Cipher,
    key_len: u8,
    key: [u8; 32],
    iv: [u8; 12],
    /// The next record's sequence number.
    pub(crate) seq: u64,
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys").field("cipher", &self.cipher).field("seq", &self.seq).finish()
    }
}

impl Keys {
    /// Keys from the secrets rustls hands over, starting at sequence number `seq`.
    pub(crate) fn new(seq: u64, secrets: &ConnectionTrafficSecrets) -> Option<Keys> {
        let (cipher, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Cipher::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Cipher::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (Cipher::Chacha20Poly1305, key, iv)
            }
            _ => return None,
        };
        let (key, iv) = (key.as_ref(), iv.as_ref());
        let key_len = if cipher == Cipher::Aes128Gcm { 16 } else { 32 };
        if key.len() != key_len || iv.len() != 12 {
            return None;
        }
        let mut keys = Keys { cipher, key_len: key.len() as u8, key: [0; 32], iv: [0; 12], seq };
        keys.key[..key.len()].copy_from_slice(key);
        keys.iv.copy_from_slice(iv);
        Some(keys)
    }

    fn aead(&self) -> aead::LessSafeKey {
        let alg = match self.cipher {
            Cipher::Aes128Gcm => &aead::AES_128_GCM,
            Cipher::Aes256Gcm => &aead::AES_256_GCM,
            Cipher::Chacha20Poly1305 => &aead::CHACHA20_POLY1305,
        };
        let key = &self.key[..usize::from(self.key_len)];
        // `Keys::new` checked the length against the cipher.
        let unbound = aead::UnboundKey::new(alg, key).expect("key length matches the suite");
        aead::LessSafeKey::new(unbound)
    }

    /// §5.3: the sequence number, big-endian and left-padded, XORed with the IV.
    fn nonce(&self) -> aead::Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        aead::Nonce::assume_unique_for_key(nonce)
    }

    fn advance(&mut self) -> Result<(), RecordError> {
        self.seq =
            self.seq.checked_add(1).filter(|s| *s < u64::MAX).ok_or(RecordError::Exhausted)?;
        Ok(())
    }

    /// Append one protected record carrying `data` of inner type `typ` to `out`.
    pub(crate) fn seal(
        &mut self,
        typ: u8,
        data: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        if data.len() > MAX_PLAINTEXT {
            return Err(RecordError::Overflow);
        }
        let len = data.len() + 1 + TAG;
        let header = [APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
        let start = out.len();
        out.reserve(HEADER + len);
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out.push(typ);
        let nonce = self.nonce();
        let tag = self
            .aead()
            .seal_in_place_separate_tag(nonce, aead::Aad::from(header), &mut out[start + HEADER..])
            .map_err(|_| RecordError::Overflow)?;
        out.extend_from_slice(tag.as_ref());
        self.advance()
    }

    /// Unprotect the record `record` (header included, see [`record_len`]): its inner type
    /// and content, decrypted in place.
    pub(crate) fn open<'a>(&mut self, record: &'a mut [u8]) -> Result<(u8, &'a [u8]), RecordError> {
        if record.len() < HEADER + TAG + 1 {
            return Err(RecordError::BadRecordMac);
        }
        let (header, body) = record.split_at_mut(HEADER);
        let aad = [header[0], header[1], header[2], header[3], header[4]];
        let nonce = self.nonce();
        let plain = self
            .aead()
            .open_in_place(nonce, aead::Aad::from(aad), body)
            .map_err(|_| RecordError::BadRecordMac)?;
        self.advance()?;
        // §5.4: the content type is the last non-zero byte; zeros after it are padding.
        let end = plain.iter().rposition(|b| *b != 0).ok_or(RecordError::NoContentType)?;
        if end > MAX_PLAINTEXT {
            return Err(RecordError::Overflow);
        }
        Ok((plain[end], &plain[..end]))
    }
}

/// The length of the record at the start of `buf` once all of it is there (`Ok(None)` until
/// then), or why it is refused from its header alone.
pub(crate) fn record_len(buf: &[u8]) -> Result<Option<usize>, RecordError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != APPLICATION_DATA {
        return Err(RecordError::Unprotected);
    }
    if buf.len() < HEADER {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if len > MAX_CIPHERTEXT {
        return Err(RecordError::Overflow);
    }
    Ok((buf.len() >= HEADER + len).then_some(HEADER + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(cipher: u8, seq: u64) -> Keys {
        let key = rustls::crypto::cipher::AeadKey::from([7u8; 32]); // 32 bytes: AES-256, ChaCha
        let iv = rustls::crypto::cipher::Iv::from([9u8; 12]);
        let secrets = match cipher {
            0 => ConnectionTrafficSecrets::Aes256Gcm { key, iv },
            _ => ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv },
        };
        Keys::new(seq, &secrets).expect("keys")
    }

    #[test]
    fn sealed_records_open_in_order_and_tampering_is_refused() {
        for cipher in [0, 1] {
            let (mut tx, mut rx) = (keys(cipher, 3), keys(cipher, 3));
            let mut wire = Vec::new();
            tx.seal(APPLICATION_DATA, b"hello", &mut wire).expect("seal");
            tx.seal(ALERT, &[1, 0], &mut wire).expect("seal");
            let first = record_len(&wire).expect("header").expect("complete");
            assert_eq!(first, HEADER + 5 + 1 + TAG);
            assert_eq!(record_len(&wire[..first - 1]), Ok(None));
            let (head, tail) = wire.split_at_mut(first);
            assert_eq!(rx.open(head).expect("opens"), (APPLICATION_DATA, &b"hello"[..]));
            let mut second = tail.to_vec();
            let mut tampered = second.clone();
            tampered[HEADER] ^= 1;
            assert_eq!(keys(cipher, 4).open(&mut tampered), Err(RecordError::BadRecordMac));
            assert_eq!(rx.open(&mut second).expect("opens"), (ALERT, &[1u8, 0][..]));
            assert_eq!((tx.seq, rx.seq), (5, 5));
            // Out of order (a replayed or dropped record) does not authenticate.
            let mut again = Vec::new();
            keys(cipher, 3).seal(APPLICATION_DATA, b"x", &mut again).expect("seal");
            assert_eq!(rx.open(&mut again), Err(RecordError::BadRecordMac));
        }
    }

    #[test]
    fn headers_are_checked_before_anything_is_buffered() {
        assert_eq!(record_len(&[22, 3, 1, 0, 5]), Err(RecordError::Unprotected));
        assert_eq!(record_len(&[23, 3, 3, 0x41, 1]), Err(RecordError::Overflow));
        assert_eq!(record_len(&[23, 3]), Ok(None));
        let mut tx = keys(0, 0);
        assert_eq!(
            tx.seal(23, &vec![0; MAX_PLAINTEXT + 1], &mut Vec::new()),
            Err(RecordError::Overflow)
        );
        let mut all_padding = Vec::new();
        tx.seal(0, &[], &mut all_padding).expect("seal");
        assert_eq!(keys(0, 0).open(&mut all_padding), Err(RecordError::NoContentType));
    }
}
