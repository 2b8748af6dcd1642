//! The field encodings of `docs/PROTOCOL.md` § Conventions (`u8`…`u64`, `str8`, `str16`,
//! `rest`), as a bounds-checked reader over a body and as writers and limit checks for
//! encoding. Every frame module is written in terms of these, so a length prefix is checked
//! in exactly one place.

use bytes::{Buf, BufMut, Bytes};

use crate::error::{DecodeError, EncodeError};
use crate::frame::FrameType;

/// "`str8` is a `u8` byte length followed by that many bytes of UTF-8 (at most 255 bytes)."
pub(crate) const STR8_MAX: usize = u8::MAX as usize;
/// "`str16` is a `u16` byte length followed by that many bytes of UTF-8."
pub(crate) const STR16_MAX: usize = u16::MAX as usize;

/// A cursor over one frame body that turns every short read into `MALFORMED_FRAME`.
pub(crate) struct Reader {
    frame: FrameType,
    body: Bytes,
}

impl Reader {
    /// Read the body of a frame of type `frame`.
    pub(crate) fn new(frame: FrameType, body: Bytes) -> Reader {
        Reader { frame, body }
    }

    /// A `MALFORMED_FRAME` error for this frame type.
    pub(crate) fn malformed(&self, reason: &'static str) -> DecodeError {
        DecodeError::Malformed { frame: self.frame, reason }
    }

    fn need(&self, n: usize, reason: &'static str) -> Result<(), DecodeError> {
        // "a body that ends before its last field, or whose length prefixes point past its
        // end, is `MALFORMED_FRAME` (101)."
        if self.body.remaining() < n { Err(self.malformed(reason)) } else { Ok(()) }
    }

    /// A `u8`; `reason` names the field for the error if the body ends first.
    pub(crate) fn u8(&mut self, reason: &'static str) -> Result<u8, DecodeError> {
        self.need(1, reason)?;
        Ok(self.body.get_u8())
    }

    /// A big-endian `u16`.
    pub(crate) fn u16(&mut self, reason: &'static str) -> Result<u16, DecodeError> {
        self.need(2, reason)?;
        Ok(self.body.get_u16())
    }

    /// A big-endian `u32`.
    pub(crate) fn u32(&mut self, reason: &'static str) -> Result<u32, DecodeError> {
        self.need(4, reason)?;
        Ok(self.body.get_u32())
    }

    /// A big-endian `u64`.
    pub(crate) fn u64(&mut self, reason: &'static str) -> Result<u64, DecodeError> {
        self.need(8, reason)?;
        Ok(self.body.get_u64())
    }

    fn text(&mut self, n: usize, reason: &'static str) -> Result<String, DecodeError> {
        self.need(n, reason)?;
        // "Text fields MUST be valid UTF-8; a receiver rejects invalid UTF-8 as a malformed
        // frame."
        let text = std::str::from_utf8(&self.body[..n])
            .map_err(|_| self.malformed("text field is not valid UTF-8"))?
            .to_owned();
        self.body.advance(n);
        Ok(text)
    }

    /// A `str8`: `u8` length, then that many bytes of UTF-8.
    pub(crate) fn str8(&mut self, reason: &'static str) -> Result<String, DecodeError> {
        let n = self.u8(reason)?;
        self.text(usize::from(n), reason)
    }

    /// A `str16`: `u16` length, then that many bytes of UTF-8; at most `max` bytes.
    pub(crate) fn str16(
        &mut self,
        max: usize,
        reason: &'static str,
        too_long: &'static str,
    ) -> Result<String, DecodeError> {
        let n = usize::from(self.u16(reason)?);
        if n > max {
            return Err(self.malformed(too_long));
        }
        self.text(n, reason)
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.body.remaining()
    }

    /// The *rest* field: every remaining byte, zero-copy.
    pub(crate) fn rest(self) -> Bytes {
        self.body
    }

    /// End of a body without a *rest* field.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        // "Bodies of types without a *rest* field MUST NOT carry trailing bytes
        // (`MALFORMED_FRAME`)."
        if self.body.has_remaining() {
            Err(self.malformed("trailing bytes after the last field"))
        } else {
            Ok(())
        }
    }
}

/// Check that a length (bytes of text, or entries of a list) is within `min..=max`.
pub(crate) fn check_len(
    frame: FrameType,
    field: &'static str,
    len: usize,
    min: usize,
    max: usize,
) -> Result<(), EncodeError> {
    if (min..=max).contains(&len) {
        Ok(())
    } else {
        Err(EncodeError::FieldLength { frame, field, len, min, max })
    }
}

/// A field whose value (not its length) the wire format does not allow.
pub(crate) fn invalid(frame: FrameType, field: &'static str, reason: &'static str) -> EncodeError {
    EncodeError::FieldValue { frame, field, reason }
}

/// The body length as the header's `u32`, or an error if it does not fit.
pub(crate) fn body_u32(frame: FrameType, len: usize) -> Result<u32, EncodeError> {
    u32::try_from(len).map_err(|_| EncodeError::BodyTooLarge { frame, len })
}

/// Write a `str8` whose length the caller has checked.
pub(crate) fn put_str8<B: BufMut>(dst: &mut B, text: &str) {
    dst.put_u8(text.len() as u8);
    dst.put_slice(text.as_bytes());
}

/// Write a `str16` whose length the caller has checked.
pub(crate) fn put_str16<B: BufMut>(dst: &mut B, text: &str) {
    dst.put_u16(text.len() as u16);
    dst.put_slice(text.as_bytes());
}
