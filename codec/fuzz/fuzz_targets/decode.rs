//! Fuzz the frame decoder: arbitrary bytes, a maximum frame size from the first byte and a
//! cut point from the second.
//!
//! Invariants checked, beyond "no panic":
//! - `Ok(None)` consumes nothing, and only happens while a frame is incomplete;
//! - a decoded frame consumed exactly `10 + length` bytes (consumed + rest = input);
//! - a decoded frame respects the value rules the decoder enforces (a `HELLO.max_frame` of 0
//!   or at least 1,024, a `REFRESH`, `JOIN` or `LEAVE` request id other than 0, tokens of at
//!   most 8,192 bytes, room names of 1 to 255 bytes);
//! - re-encoding a decoded frame gives a frame of the same size that decodes to itself;
//! - the same stream delivered in two reads, cut anywhere, decodes to the same results.

#![no_main]

use bytes::BytesMut;
use holdfast_codec::frame::{MAX_ROOM, MAX_TOKEN, MIN_MAX_FRAME};
use holdfast_codec::{DEFAULT_MAX_FRAME, DecodeError, Frame, Head, decode, encode};
use libfuzzer_sys::fuzz_target;

fn max_frame(byte: u8) -> u32 {
    match byte {
        0xFF => u32::MAX,
        0xFE => DEFAULT_MAX_FRAME,
        b => u32::from(b) * 16,
    }
}

/// The rules on field values that a decoded frame must already satisfy.
fn check_values(frame: &Frame) {
    match frame {
        Frame::Hello(h) => {
            assert!(h.max_frame == 0 || h.max_frame >= MIN_MAX_FRAME, "HELLO.max_frame");
            assert!(h.token.len() <= MAX_TOKEN, "HELLO.token");
        }
        Frame::Refresh(r) => {
            assert_ne!(r.request_id, 0, "REFRESH with request id 0");
            assert!(r.token.len() <= MAX_TOKEN, "REFRESH.token");
        }
        Frame::Join(r) | Frame::Leave(r) => {
            assert_ne!(r.request_id, 0, "JOIN or LEAVE with request id 0");
            assert!((1..=MAX_ROOM).contains(&r.room.len()), "JOIN.room or LEAVE.room");
        }
        _ => {}
    }
}

/// Decode until the buffer needs more bytes (`None`) or fails, checking every step.
fn drain(src: &mut BytesMut, max: u32, out: &mut Vec<Result<Frame, DecodeError>>) -> bool {
    loop {
        let before = src.clone();
        match decode(src, max) {
            Ok(None) => {
                assert_eq!(*src, before, "Ok(None) consumed bytes");
                if let Some(head) = Head::peek(&before) {
                    assert!(head.frame_len() > before.len() as u64, "a whole frame was left");
                }
                return true;
            }
            Ok(Some(frame)) => {
                let head = Head::peek(&before).expect("decoded without a header");
                let consumed = before.len() - src.len();
                assert_eq!(consumed as u64, head.frame_len());
                assert_eq!(&before[consumed..], &src[..]);
                assert_eq!(frame.kind(), head.kind);
                check_values(&frame);

                let mut again = BytesMut::new();
                encode(&frame, &mut again).expect("a decoded frame must re-encode");
                assert_eq!(again.len(), consumed, "re-encoding changed the size");
                assert_eq!(&again[..4], &before[..4]);
                let redecoded = decode(&mut again, max).expect("re-encoded frame must decode");
                assert_eq!(redecoded.as_ref(), Some(&frame));
                assert!(again.is_empty());
                out.push(Ok(frame));
            }
            Err(e) => {
                assert!(before.len() >= 4, "error before the length was known: {e:?}");
                out.push(Err(e));
                return false;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let max = max_frame(first);
    let (cut, stream) = match rest.split_first() {
        Some((&c, s)) => (usize::from(c), s),
        None => (0, rest),
    };

    let mut whole = Vec::new();
    drain(&mut BytesMut::from(stream), max, &mut whole);

    // The second byte picks where the stream is cut, anywhere from 0 to its end.
    let at = cut * (stream.len() + 1) / 256;
    let mut split = Vec::new();
    let mut src = BytesMut::from(&stream[..at]);
    if drain(&mut src, max, &mut split) {
        src.extend_from_slice(&stream[at..]);
        drain(&mut src, max, &mut split);
    }
    assert_eq!(whole, split, "two reads decoded differently from one");
});
