//! What can be wrong with inbound bytes ([`DecodeError`]) or with a frame the application
//! asks to send ([`EncodeError`]), and the one mapping from decode errors to wire codes.
//!
//! "Need more bytes" is not an error: the decoder returns `Ok(None)` and waits.
//! Every [`DecodeError`] is decided by the peer's bytes; the receiver answers `ERROR` with
//! [`DecodeError::code`] and flag `FATAL`, then closes. Every [`EncodeError`] is decided by
//! our own application: it asked for a frame the wire format cannot carry.

use crate::{Code, FrameType};

/// Inbound bytes that are not a valid frame; the connection MUST be closed.
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Header + body exceeds the receiver's maximum frame size (checked from the first
    /// 4 bytes, before the body is buffered).
    #[error("frame of {size} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The whole frame's size as announced, header included.
        size: u64,
        /// The receiver's maximum frame size.
        max: u32,
    },
    /// A critical frame type (0x00–0x7F) this version does not define.
    #[error("unknown critical frame type {0:#04x}")]
    UnknownType(u8),
    /// A body that does not match its type's layout or limits, or text that is not UTF-8.
    #[error("malformed {frame:?} frame: {reason}")]
    Malformed {
        /// The frame type whose body was wrong.
        frame: FrameType,
        /// What was wrong, for logs.
        reason: &'static str,
    },
}

impl DecodeError {
    /// The wire code the receiver sends in its fatal `ERROR` for this error.
    pub fn code(&self) -> Code {
        match self {
            DecodeError::FrameTooLarge { .. } => Code::FRAME_TOO_LARGE,
            DecodeError::UnknownType(_) => Code::UNKNOWN_FRAME_TYPE,
            DecodeError::Malformed { .. } => Code::MALFORMED_FRAME,
        }
    }
}

/// A frame the wire format cannot represent; nothing was written.
///
/// Encoding never truncates and never panics: it checks every length limit before it
/// writes the first byte, and refuses the whole frame if one is exceeded. A frame that
/// encodes without error always decodes back to itself.
#[non_exhaustive]
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A text field, byte field or list is longer (or shorter) than its type allows,
    /// for example a `str8` over 255 bytes or a `HELLO` with no versions.
    #[error("{frame:?} field `{field}` has length {len}, outside the allowed {min}..={max}")]
    FieldLength {
        /// The frame type.
        frame: FrameType,
        /// The field's name as in `docs/PROTOCOL.md`.
        field: &'static str,
        /// Its length (bytes for text, entries for lists).
        len: usize,
        /// The smallest length allowed.
        min: usize,
        /// The largest length allowed.
        max: usize,
    },
    /// A field holds a value its type forbids, for example a `HELLO.max_frame` that is
    /// non-zero and below 1,024 or a `REFRESH` with request id 0.
    #[error("{frame:?} field `{field}` is invalid: {reason}")]
    FieldValue {
        /// The frame type.
        frame: FrameType,
        /// The field's name as in `docs/PROTOCOL.md` (`id` for the header's).
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The body would not fit the header's 32-bit length field.
    #[error("{frame:?} body of {len} bytes does not fit the 32-bit length field")]
    BodyTooLarge {
        /// The frame type.
        frame: FrameType,
        /// The body length asked for.
        len: usize,
    },
    /// An [`Extension`](crate::Extension) whose type byte is a critical type (below 0x80).
    #[error("extension frame with critical type byte {0:#04x}")]
    NotExtension(u8),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_decode_error_maps_to_its_code() {
        assert_eq!(DecodeError::FrameTooLarge { size: 1, max: 0 }.code(), Code::FRAME_TOO_LARGE);
        assert_eq!(DecodeError::UnknownType(0x7F).code(), Code::UNKNOWN_FRAME_TYPE);
        let malformed = DecodeError::Malformed { frame: FrameType::Push, reason: "x" };
        assert_eq!(malformed.code(), Code::MALFORMED_FRAME);
    }
}
