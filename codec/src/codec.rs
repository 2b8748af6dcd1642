//! The decode/encode API over `BytesMut` ([`decode`], [`encode`], [`check_head`]), and with
//! the `tokio-codec` feature the same as a `tokio_util::codec::{Decoder, Encoder}` pair
//! (`FrameCodec`).

use bytes::BytesMut;
#[cfg(feature = "tokio-codec")]
use tokio_util::codec::{Decoder, Encoder};

use crate::error::{DecodeError, EncodeError};
use crate::frame::{Frame, HEADER_LEN, Head};

/// "The default maximum is 65,536 bytes (64 KiB)", header included.
pub const DEFAULT_MAX_FRAME: u32 = 65_536;

/// Take the next whole frame off the front of `src`, if one is there.
///
/// `Ok(None)` means "need more bytes" and leaves `src` untouched. As soon as the first four
/// bytes are there, `10 + length` is checked against `max_frame`, so an oversized frame is
/// refused before its body is buffered. On success the frame's bytes are split off `src`
/// and the body's `Bytes` fields share that allocation (zero-copy). Any error means the
/// connection must be closed: what is left in `src` is no longer a frame boundary.
pub fn decode(src: &mut BytesMut, max_frame: u32) -> Result<Option<Frame>, DecodeError> {
    let Some(head) = check_head(src, max_frame)? else {
        return Ok(None);
    };
    let total = HEADER_LEN + head.length as usize;
    if src.len() < total {
        return Ok(None);
    }
    let mut frame = src.split_to(total);
    let body = frame.split_off(HEADER_LEN).freeze();
    Frame::decode(head, body).map(Some)
}

/// Peek at the header in `src` and apply the size limit, without consuming anything.
///
/// Returns `Ok(None)` until the 10 header bytes are there, but fails with
/// [`DecodeError::FrameTooLarge`] as soon as the 4 length bytes are. Event-loop servers that
/// parse in place use this to decide how many bytes the frame needs.
pub fn check_head(src: &[u8], max_frame: u32) -> Result<Option<Head>, DecodeError> {
    let Some(length) = Head::peek_length(src) else {
        return Ok(None);
    };
    let size = HEADER_LEN as u64 + u64::from(length);
    if size > u64::from(max_frame) {
        return Err(DecodeError::FrameTooLarge { size, max: max_frame });
    }
    Ok(Head::peek(src))
}

/// Append `frame` to `dst`; on error nothing is written.
pub fn encode(frame: &Frame, dst: &mut BytesMut) -> Result<(), EncodeError> {
    let head = frame.head()?;
    dst.reserve(HEADER_LEN + head.length as usize);
    frame.encode(dst)
}

/// What the `tokio_util` codec can fail with: the peer's bytes, our frame, or the stream.
#[cfg(feature = "tokio-codec")]
#[derive(thiserror::Error, Debug)]
pub enum CodecError {
    /// The peer sent bytes that are not a valid frame.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// We asked to send a frame the wire format cannot carry.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The underlying stream failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// [`decode`] and [`encode`] as a `tokio_util` codec, with a maximum frame size (feature
/// `tokio-codec`).
#[cfg(feature = "tokio-codec")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameCodec {
    /// The largest frame (header + body) accepted, in bytes.
    pub max_frame: u32,
}

#[cfg(feature = "tokio-codec")]
impl FrameCodec {
    /// A codec accepting frames up to `max_frame` bytes, header included.
    pub fn new(max_frame: u32) -> FrameCodec {
        FrameCodec { max_frame }
    }
}

#[cfg(feature = "tokio-codec")]
impl Default for FrameCodec {
    fn default() -> FrameCodec {
        FrameCodec::new(DEFAULT_MAX_FRAME)
    }
}

#[cfg(feature = "tokio-codec")]
impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let frame = decode(src, self.max_frame)?;
        if frame.is_none() {
            // Reserve room for the rest of the frame so the next read fills it in one go.
            if let Some(head) = Head::peek(src) {
                let total = HEADER_LEN + head.length as usize;
                src.reserve(total.saturating_sub(src.len()));
            }
        }
        Ok(frame)
    }
}

#[cfg(feature = "tokio-codec")]
impl Encoder<&Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(encode(frame, dst)?)
    }
}

#[cfg(feature = "tokio-codec")]
impl Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        Ok(encode(&frame, dst)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Code, Ping};

    #[test]
    fn oversized_frame_is_refused_from_four_bytes() {
        let mut src = BytesMut::from(&[0x00, 0x01, 0x00, 0x00][..]);
        let err = decode(&mut src, DEFAULT_MAX_FRAME).unwrap_err();
        assert_eq!(err, DecodeError::FrameTooLarge { size: 65_546, max: 65_536 });
        assert_eq!(err.code(), Code::FRAME_TOO_LARGE);
    }

    #[test]
    fn frame_of_exactly_the_maximum_is_accepted() {
        let body = vec![0u8; 100 - HEADER_LEN];
        let frame =
            Frame::Extension(crate::Extension { kind: 0x80, flags: 0, id: 0, body: body.into() });
        let mut src = BytesMut::new();
        encode(&frame, &mut src).unwrap();
        assert_eq!(src.len(), 100);
        assert_eq!(decode(&mut src.clone(), 100).unwrap(), Some(frame));
        assert!(decode(&mut src, 99).is_err());
    }

    #[test]
    fn incomplete_input_waits_and_consumes_nothing() {
        let mut full = BytesMut::new();
        encode(&Frame::Ping(Ping { id: 9, timestamp: Some(1) }), &mut full).unwrap();
        let mut part = BytesMut::from(&full[..full.len() - 1]);
        assert_eq!(decode(&mut part, DEFAULT_MAX_FRAME).unwrap(), None);
        assert_eq!(part.len(), full.len() - 1);
    }

    #[test]
    fn unknown_critical_type_is_an_error_extension_is_a_frame() {
        let mut src = BytesMut::from(&[0, 0, 0, 0, 0x7F, 0, 0, 0, 0, 0][..]);
        assert_eq!(decode(&mut src, DEFAULT_MAX_FRAME), Err(DecodeError::UnknownType(0x7F)));
        let mut src = BytesMut::from(&[0, 0, 0, 1, 0xF0, 2, 0, 0, 0, 3, 0xAA][..]);
        let frame = decode(&mut src, DEFAULT_MAX_FRAME).unwrap().unwrap();
        assert_eq!(frame.kind(), 0xF0);
        assert!(src.is_empty());
    }

    #[test]
    fn encode_refuses_oversized_fields_and_writes_nothing() {
        let hello = Frame::Hello(crate::Hello { versions: vec![], ..Default::default() });
        let mut dst = BytesMut::new();
        assert!(encode(&hello, &mut dst).is_err());
        assert!(dst.is_empty());
        let push = Frame::Push(crate::Push { topic: "x".repeat(256), ..Default::default() });
        assert!(encode(&push, &mut dst).is_err());
        assert!(dst.is_empty());
    }
}
