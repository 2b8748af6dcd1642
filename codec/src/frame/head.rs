//! The 10-byte frame header (`docs/PROTOCOL.md` § Frame header) and the per-type flag bits.
//!
//! ```text
//! offset 0  u32 length   body bytes after the header (the header is not counted)
//! offset 4  u8  type     the frame type
//! offset 5  u8  flags    per-type flag bits
//! offset 6  u32 id       sequence number or request id, per type; 0 where none
//! ```
//!
//! Version 1 defines one flag bit per type at most, always bit 0: `PUSH` `ACK_REQUIRED` and
//! `ERROR` `FATAL`. Every other bit, `AUTH_OK` bit 0 included (reserved), is sent as 0 and
//! ignored on receipt (`docs/PROTOCOL.md` § Flag registry).

use bytes::BufMut;

/// "Every frame starts with the same 10-byte header."
pub const HEADER_LEN: usize = 10;

/// `PUSH` flag bit 0: the client MUST acknowledge this push.
pub const FLAG_ACK_REQUIRED: u8 = 1;
/// `ERROR` flag bit 0: the sender closes the connection after this frame.
pub const FLAG_FATAL: u8 = 1;
/// `REDIRECT` flag bit 0, `OVERLAP`: the server keeps delivering on this connection until
/// the client has connected elsewhere and closes it (make-before-break).
pub const FLAG_OVERLAP: u8 = 1;

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Number of body bytes that follow the header.
    pub length: u32,
    /// The frame type byte.
    pub kind: u8,
    /// The per-type flag bits.
    pub flags: u8,
    /// Sequence number or request id, per type; 0 where the type defines none.
    pub id: u32,
}

impl Head {
    /// Read the header at the start of `src`, or `None` if fewer than [`HEADER_LEN`] bytes
    /// are there. Nothing is validated: the type and length are the caller's to judge.
    pub fn peek(src: &[u8]) -> Option<Head> {
        let bytes: &[u8; HEADER_LEN] = src.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Head {
            length: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            kind: bytes[4],
            flags: bytes[5],
            id: u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]),
        })
    }

    /// Read only the body length from the first 4 bytes of `src`, or `None` if fewer are
    /// there; this is what the size check runs on, before the rest of the header arrives.
    pub fn peek_length(src: &[u8]) -> Option<u32> {
        let bytes: [u8; 4] = src.get(..4)?.try_into().ok()?;
        Some(u32::from_be_bytes(bytes))
    }

    /// Append the 10 header bytes to `dst`.
    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_u32(self.length);
        dst.put_u8(self.kind);
        dst.put_u8(self.flags);
        dst.put_u32(self.id);
    }

    /// "The whole frame is `10 + length` bytes."
    pub fn frame_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.length)
    }
}

/// Patch the header `id` of an already-encoded frame in place.
///
/// The gateway encodes a broadcast `PUSH` once and patches each connection's sequence into
/// its copy. A `frame` shorter than the header is left unchanged (it is not a frame).
pub fn set_id(frame: &mut [u8], id: u32) {
    if let Some(bytes) = frame.get_mut(6..HEADER_LEN) {
        bytes.copy_from_slice(&id.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_big_endian_length_type_flags_id() {
        let head = Head { length: 0x0102_0304, kind: 0x06, flags: 0x01, id: 0x0A0B_0C0D };
        let mut buf = Vec::new();
        head.encode(&mut buf);
        assert_eq!(buf, [1, 2, 3, 4, 6, 1, 0x0A, 0x0B, 0x0C, 0x0D]);
        assert_eq!(Head::peek(&buf), Some(head));
        assert_eq!(Head::peek(&buf[..9]), None);
        assert_eq!(Head::peek_length(&buf[..4]), Some(0x0102_0304));
        assert_eq!(Head::peek_length(&buf[..3]), None);
        assert_eq!(head.frame_len(), 10 + 0x0102_0304);
    }

    #[test]
    fn set_id_patches_only_the_id() {
        let head = Head { length: 2, kind: 0x06, flags: 0x01, id: 7 };
        let mut buf = Vec::new();
        head.encode(&mut buf);
        buf.extend_from_slice(b"hi");
        set_id(&mut buf, 0xDEAD_BEEF);
        assert_eq!(Head::peek(&buf), Some(Head { id: 0xDEAD_BEEF, ..head }));
        assert_eq!(&buf[10..], b"hi");
        let mut short = [0u8; 9];
        set_id(&mut short, 1);
        assert_eq!(short, [0u8; 9]);
    }
}
