//! Property and edge-case tests of the frame codec against `docs/PROTOCOL.md`.
//!
//! The invariants: a frame that encodes decodes back to itself and consumes exactly its
//! own bytes (consumed + rest = input); "need more bytes" is `Ok(None)` at every split
//! point and consumes nothing; no input makes `decode` panic; every limit of § Limits is
//! refused on encode (writing nothing) and on decode (`MALFORMED_FRAME`); the size check
//! runs on the first 4 bytes. The `tokio_util` impls (feature `tokio-codec`, on for the
//! crate's own tests) decode and encode the same way.

use bytes::{BufMut, Bytes, BytesMut};
use holdfast_codec::codec::CodecError;
use holdfast_codec::frame::MIN_MAX_FRAME;
use holdfast_codec::{
    Ack, AuthFail, AuthOk, Code, DEFAULT_MAX_FRAME, DecodeError, EncodeError, ErrorFrame,
    Extension, Frame, FrameCodec, FrameType, HEADER_LEN, Head, Hello, Kick, Ping, Platform, Push,
    Redirect, Refresh, RefreshOk, RoomOk, RoomRequest, Upstream, UpstreamReply, check_head, decode,
    encode,
};
use proptest::collection::vec;
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

/// Keep whole chars while the UTF-8 length stays within `max_bytes`.
fn truncate_utf8(chars: Vec<char>, max_bytes: usize) -> String {
    let mut s = String::new();
    for c in chars {
        if s.len() + c.len_utf8() > max_bytes {
            break;
        }
        s.push(c);
    }
    s
}

/// Text of at most `max_bytes` UTF-8 bytes: mostly short arbitrary Unicode, sometimes
/// exactly at (or just under) the limit, so the boundary itself is exercised.
fn text(max_bytes: usize) -> BoxedStrategy<String> {
    let short = vec(any::<char>(), 0..24).prop_map(move |c| truncate_utf8(c, max_bytes));
    let near =
        (max_bytes.saturating_sub(3)..=max_bytes, any::<char>()).prop_map(move |(len, c)| {
            // A multi-byte char first, then ASCII up to exactly `len` bytes.
            let mut s = truncate_utf8(vec![c], len);
            while s.len() < len {
                s.push('a');
            }
            s
        });
    prop_oneof![6 => short, 1 => near].boxed()
}

fn payload(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn code() -> impl Strategy<Value = Code> {
    prop_oneof![prop::sample::select(Code::ALL.to_vec()), any::<u16>().prop_map(Code),]
}

fn ping() -> impl Strategy<Value = Ping> {
    (any::<u32>(), any::<Option<u64>>()).prop_map(|(id, timestamp)| Ping { id, timestamp })
}

/// `HELLO.max_frame`: 0 (the default), the smallest allowed value, or anything above it.
fn hello_max_frame() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0), Just(MIN_MAX_FRAME), MIN_MAX_FRAME..=u32::MAX]
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        vec(any::<u16>(), 1..=16),
        any::<u32>(),
        any::<u32>(),
        hello_max_frame(),
        prop::sample::select(Platform::ALL.to_vec()),
        text(8192),
        text(255),
        text(255),
    )
        .prop_map(
            |(
                versions,
                capabilities,
                heartbeat_ms,
                max_frame,
                platform,
                token,
                device_id,
                app_version,
            )| Hello {
                versions,
                capabilities,
                heartbeat_ms,
                max_frame,
                platform,
                token,
                device_id,
                app_version,
            },
        )
}

fn auth_ok() -> impl Strategy<Value = AuthOk> {
    (
        any::<u16>(),
        any::<u32>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(
                version,
                capabilities,
                conn_id,
                heartbeat_ms,
                idle_timeout_ms,
                max_frame,
                max_unacked,
                token_expires_ms,
                server_time_ms,
            )| AuthOk {
                version,
                capabilities,
                conn_id,
                heartbeat_ms,
                idle_timeout_ms,
                max_frame,
                max_unacked,
                token_expires_ms,
                server_time_ms,
            },
        )
}

fn refresh() -> impl Strategy<Value = Refresh> {
    (1..=u32::MAX, text(8192)).prop_map(|(request_id, token)| Refresh { request_id, token })
}

fn refresh_ok() -> impl Strategy<Value = RefreshOk> {
    (any::<u32>(), any::<u64>())
        .prop_map(|(request_id, token_expires_ms)| RefreshOk { request_id, token_expires_ms })
}

/// Room names: 1 to 255 bytes (an empty one is pushed up to one byte).
fn room_request() -> impl Strategy<Value = RoomRequest> {
    (1..=u32::MAX, text(255)).prop_map(|(request_id, room)| {
        let room = if room.is_empty() { "r".to_owned() } else { room };
        RoomRequest { request_id, room }
    })
}

fn room_ok() -> impl Strategy<Value = RoomOk> {
    (any::<u32>(), any::<u16>()).prop_map(|(request_id, rooms)| RoomOk { request_id, rooms })
}

fn push() -> impl Strategy<Value = Push> {
    (any::<u32>(), any::<bool>(), any::<u64>(), text(255), payload(600)).prop_map(
        |(seq, ack_required, message_id, topic, payload)| Push {
            seq,
            ack_required,
            message_id,
            topic,
            payload,
        },
    )
}

fn ack() -> impl Strategy<Value = Ack> {
    let ids = prop_oneof![4 => vec(any::<u64>(), 0..40), 1 => vec(any::<u64>(), 1000..=1024)];
    (any::<u32>(), ids).prop_map(|(cumulative, message_ids)| Ack { cumulative, message_ids })
}

fn redirect() -> impl Strategy<Value = Redirect> {
    (code(), any::<u32>(), any::<u32>(), vec(text(255), 0..=16), any::<bool>()).prop_map(
        |(code, delay_ms, jitter_ms, addresses, overlap)| Redirect {
            code,
            delay_ms,
            jitter_ms,
            addresses,
            overlap,
        },
    )
}

fn extension() -> impl Strategy<Value = Extension> {
    (0x80u8..=0xFF, any::<u8>(), any::<u32>(), payload(300))
        .prop_map(|(kind, flags, id, body)| Extension { kind, flags, id, body })
}

/// Any frame the codec can encode, every type including extensions.
fn frame() -> BoxedStrategy<Frame> {
    prop_oneof![
        hello().prop_map(Frame::Hello),
        auth_ok().prop_map(Frame::AuthOk),
        (code(), text(2000)).prop_map(|(code, reason)| Frame::AuthFail(AuthFail { code, reason })),
        ping().prop_map(Frame::Ping),
        ping().prop_map(Frame::Pong),
        push().prop_map(Frame::Push),
        ack().prop_map(Frame::Ack),
        (any::<u32>(), text(255), payload(600)).prop_map(|(request_id, route, payload)| {
            Frame::Upstream(Upstream { request_id, route, payload })
        }),
        (any::<u32>(), any::<u16>(), payload(600)).prop_map(|(request_id, status, payload)| {
            Frame::UpstreamReply(UpstreamReply { request_id, status, payload })
        }),
        (code(), text(2000)).prop_map(|(code, reason)| Frame::Kick(Kick { code, reason })),
        redirect().prop_map(Frame::Redirect),
        (any::<u32>(), any::<bool>(), code(), text(2000)).prop_map(
            |(request_id, fatal, code, message)| {
                Frame::Error(ErrorFrame { request_id, fatal, code, message })
            }
        ),
        refresh().prop_map(Frame::Refresh),
        refresh_ok().prop_map(Frame::RefreshOk),
        room_request().prop_map(Frame::Join),
        room_request().prop_map(Frame::Leave),
        room_ok().prop_map(Frame::RoomOk),
        extension().prop_map(Frame::Extension),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn encoded(frame: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(frame, &mut buf).expect("generated frames respect every limit");
    buf
}

/// A frame assembled by hand: header fields and a raw body, bypassing the encoder.
fn raw(kind: u8, flags: u8, id: u32, body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u32(body.len() as u32);
    buf.put_u8(kind);
    buf.put_u8(flags);
    buf.put_u32(id);
    buf.put_slice(body);
    buf
}

/// The body bytes of an encoded frame.
fn body_of(frame: &Frame) -> Vec<u8> {
    encoded(frame)[HEADER_LEN..].to_vec()
}

fn assert_malformed(bytes: &[u8], frame: FrameType) {
    let mut src = BytesMut::from(bytes);
    match decode(&mut src, DEFAULT_MAX_FRAME) {
        Err(err @ DecodeError::Malformed { frame: f, .. }) => {
            assert_eq!(f, frame, "wrong frame type in {err:?} for {bytes:02x?}");
            assert_eq!(err.code(), Code::MALFORMED_FRAME);
            assert_eq!(err.code().0, 101);
        }
        other => panic!("expected Malformed {frame:?} for {bytes:02x?}, got {other:?}"),
    }
}

/// Decode a buffer until it stops: every frame, then how it stopped.
fn drain(src: &mut BytesMut, max_frame: u32) -> (Vec<Frame>, Result<(), DecodeError>) {
    let mut frames = Vec::new();
    loop {
        match decode(src, max_frame) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return (frames, Ok(())),
            Err(e) => return (frames, Err(e)),
        }
    }
}

/// Decode arbitrary bytes to exhaustion and check the decoder's invariants on the way.
fn check_arbitrary_input(input: &[u8], max_frame: u32) {
    let mut src = BytesMut::from(input);
    loop {
        let before = src.clone();
        match decode(&mut src, max_frame) {
            Ok(None) => {
                assert_eq!(src, before, "Ok(None) must consume nothing");
                if before.len() >= 4 {
                    let head_len = Head::peek_length(&before).unwrap();
                    assert!(HEADER_LEN as u64 + u64::from(head_len) <= u64::from(max_frame));
                }
                return;
            }
            Ok(Some(frame)) => {
                let head = Head::peek(&before).expect("a decoded frame had a header");
                let consumed = before.len() - src.len();
                assert_eq!(consumed as u64, head.frame_len(), "consumed + rest = input");
                assert_eq!(&before[consumed..], &src[..]);
                assert!(consumed as u64 <= u64::from(max_frame));
                assert_eq!(frame.kind(), head.kind);
                // Re-encoding canonicalises (undefined flag bits, reserved platforms) but
                // keeps the size, and decodes to the same frame.
                let again = encoded(&frame);
                assert_eq!(again.len(), consumed);
                let mut again_src = again.clone();
                assert_eq!(decode(&mut again_src, max_frame), Ok(Some(frame)));
                assert!(again_src.is_empty());
            }
            Err(_) => return,
        }
    }
}

const MAX_FRAMES: [u32; 8] = [0, 1, 4, 10, 11, 64, DEFAULT_MAX_FRAME, u32::MAX];

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_then_decode_is_identity_and_consumes_exactly_the_frame(
        frame in frame(),
        rest in vec(any::<u8>(), 0..16),
    ) {
        let mut src = encoded(&frame);
        let len = src.len();
        prop_assert_eq!(len, frame.encoded_len().unwrap());
        prop_assert_eq!(Head::peek(&src).unwrap(), frame.head().unwrap());
        prop_assert_eq!(Head::peek(&src).unwrap().kind, frame.kind());
        // Frame::encode into any BufMut writes the same bytes as codec::encode.
        let mut vec_dst = Vec::new();
        frame.encode(&mut vec_dst).unwrap();
        prop_assert_eq!(&vec_dst[..], &src[..]);

        src.extend_from_slice(&rest);
        let decoded = decode(&mut src, DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(decoded, Some(frame.clone()));
        prop_assert_eq!(&src[..], &rest[..], "the bytes after the frame are left untouched");

        // Frame::decode on the header and body directly agrees.
        let whole = encoded(&frame).freeze();
        let head = Head::peek(&whole).unwrap();
        prop_assert_eq!(Frame::decode(head, whole.slice(HEADER_LEN..)), Ok(frame));
    }

    #[test]
    fn split_at_every_byte_waits_then_yields_the_same_frame(frame in frame()) {
        let full = encoded(&frame);
        for at in 0..full.len() {
            let mut src = BytesMut::from(&full[..at]);
            prop_assert_eq!(decode(&mut src, DEFAULT_MAX_FRAME), Ok(None), "prefix {}", at);
            prop_assert_eq!(&src[..], &full[..at], "prefix {} consumed something", at);
            src.extend_from_slice(&full[at..]);
            prop_assert_eq!(decode(&mut src, DEFAULT_MAX_FRAME), Ok(Some(frame.clone())));
            prop_assert!(src.is_empty());
        }
    }

    #[test]
    fn byte_by_byte_feeding_yields_the_frame_only_at_the_last_byte(frame in frame()) {
        let full = encoded(&frame);
        let mut src = BytesMut::new();
        for (i, b) in full.iter().enumerate() {
            src.put_u8(*b);
            let got = decode(&mut src, DEFAULT_MAX_FRAME).unwrap();
            if i + 1 < full.len() {
                prop_assert_eq!(got, None);
                prop_assert_eq!(src.len(), i + 1);
            } else {
                prop_assert_eq!(got, Some(frame.clone()));
                prop_assert!(src.is_empty());
            }
        }
    }

    #[test]
    fn concatenated_frames_decode_in_order(
        frames in vec(frame(), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut stream = BytesMut::new();
        for f in &frames {
            encode(f, &mut stream).unwrap();
        }
        // In one buffer.
        let (got, end) = drain(&mut stream.clone(), DEFAULT_MAX_FRAME);
        prop_assert_eq!(&got, &frames);
        prop_assert_eq!(end, Ok(()));

        // And delivered in two reads cut anywhere.
        let at = cut.index(stream.len() + 1);
        let mut src = BytesMut::from(&stream[..at]);
        let (mut got, end) = drain(&mut src, DEFAULT_MAX_FRAME);
        prop_assert_eq!(end, Ok(()));
        src.extend_from_slice(&stream[at..]);
        let (more, end) = drain(&mut src, DEFAULT_MAX_FRAME);
        prop_assert_eq!(end, Ok(()));
        got.extend(more);
        prop_assert_eq!(got, frames);
        prop_assert!(src.is_empty());
    }

    #[test]
    fn random_bytes_never_panic(
        input in vec(any::<u8>(), 0..300),
        max_frame in prop::sample::select(MAX_FRAMES.to_vec()),
    ) {
        check_arbitrary_input(&input, max_frame);
    }

    #[test]
    fn random_bodies_with_a_consistent_header_never_panic(
        kind in prop_oneof![0u8..=0x12, 0x80u8..=0xFF, any::<u8>()],
        flags in any::<u8>(),
        id in any::<u32>(),
        body in vec(any::<u8>(), 0..120),
        max_frame in prop::sample::select(MAX_FRAMES.to_vec()),
    ) {
        check_arbitrary_input(&raw(kind, flags, id, &body), max_frame);
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        frame in frame(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        keep in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encoded(&frame).to_vec();
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        bytes.truncate(keep.index(bytes.len() + 1));
        check_arbitrary_input(&bytes, DEFAULT_MAX_FRAME);
    }

    #[test]
    fn undefined_flag_bits_are_ignored_on_receipt(frame in frame(), extra in 1u8..=0xFF) {
        // "bits a type does not define MUST be sent as 0 and MUST be ignored on receipt"
        prop_assume!(!matches!(frame, Frame::Extension(_)));
        let mut bytes = encoded(&frame);
        let defined = bytes[5];
        bytes[5] = defined | (extra & 0xFE);
        let mut src = bytes.clone();
        prop_assert_eq!(decode(&mut src, DEFAULT_MAX_FRAME), Ok(Some(frame)));
    }
}

// ---------------------------------------------------------------------------------------
// Encode limits
// ---------------------------------------------------------------------------------------

fn sample_hello() -> Hello {
    Hello {
        versions: vec![1],
        capabilities: 0,
        heartbeat_ms: 240_000,
        max_frame: 0,
        platform: Platform::Android,
        token: "tok".into(),
        device_id: "dev".into(),
        app_version: "5.2.1".into(),
    }
}

fn sample_redirect(addresses: Vec<String>) -> Redirect {
    Redirect {
        code: Code::SERVER_DRAINING,
        delay_ms: 1_000,
        jitter_ms: 5_000,
        addresses,
        overlap: false,
    }
}

/// The frame is refused with a `FieldLength` error naming `field`, and nothing is written
/// to either kind of destination, even one that already holds bytes.
fn assert_refused(frame: &Frame, field: &str) {
    let mut dst = BytesMut::new();
    let err = encode(frame, &mut dst).unwrap_err();
    match &err {
        EncodeError::FieldLength { field: f, .. } => assert_eq!(*f, field, "{err}"),
        other => panic!("expected FieldLength for {field}, got {other:?}"),
    }
    assert!(dst.is_empty(), "{field}: encode wrote {} bytes", dst.len());

    let mut vec_dst = vec![0xEE; 3];
    assert_eq!(frame.encode(&mut vec_dst), Err(err.clone()));
    assert_eq!(vec_dst, [0xEE; 3]);
    assert_eq!(frame.encoded_len(), Err(err.clone()));
    assert_eq!(FrameCodec::default().encode(frame, &mut dst).map_err(|e| e.to_string()), {
        Err(err.to_string())
    });
    assert!(dst.is_empty());
}

fn assert_accepted(frame: &Frame) {
    let mut src = encoded(frame);
    assert_eq!(decode(&mut src, DEFAULT_MAX_FRAME), Ok(Some(frame.clone())));
}

#[test]
fn hello_versions_must_be_1_to_16() {
    for n in [0, 17, 255, 256] {
        let frame = Frame::Hello(Hello { versions: vec![1; n], ..sample_hello() });
        assert_refused(&frame, "versions");
    }
    for n in [1, 16] {
        assert_accepted(&Frame::Hello(Hello { versions: vec![1; n], ..sample_hello() }));
    }
}

#[test]
fn hello_token_is_at_most_8192_bytes() {
    let frame = Frame::Hello(Hello { token: "t".repeat(8193), ..sample_hello() });
    assert_refused(&frame, "token");
    assert_accepted(&Frame::Hello(Hello { token: "t".repeat(8192), ..sample_hello() }));
}

/// The frame is refused with a `FieldValue` error naming `field`, and nothing is written.
fn assert_invalid_value(frame: &Frame, field: &str) {
    let mut dst = BytesMut::new();
    match encode(frame, &mut dst) {
        Err(EncodeError::FieldValue { field: f, .. }) => assert_eq!(f, field),
        other => panic!("expected FieldValue for {field}, got {other:?}"),
    }
    assert!(dst.is_empty());
    let mut vec_dst = vec![0xEE; 3];
    assert!(frame.encode(&mut vec_dst).is_err());
    assert_eq!(vec_dst, [0xEE; 3]);
}

#[test]
fn hello_max_frame_is_0_or_at_least_1024() {
    for max_frame in [1, 10, 256, 1_023] {
        let frame = Frame::Hello(Hello { max_frame, ..sample_hello() });
        assert_invalid_value(&frame, "max_frame");
        // The same body on the wire is MALFORMED_FRAME.
        let mut body = body_of(&Frame::Hello(sample_hello()));
        // versions (1 + 2) + capabilities (4) + heartbeat_ms (4) = offset 11.
        body[11..15].copy_from_slice(&max_frame.to_be_bytes());
        assert_malformed(&raw(0x01, 0, 0, &body), FrameType::Hello);
    }
    for max_frame in [0, 1_024, 65_536, u32::MAX] {
        let frame = Frame::Hello(Hello { max_frame, ..sample_hello() });
        assert_accepted(&frame);
        assert_eq!(&body_of(&frame)[11..15], &max_frame.to_be_bytes());
    }
}

#[test]
fn refresh_request_id_0_is_refused() {
    let frame = Frame::Refresh(Refresh { request_id: 0, token: "tok".into() });
    assert_invalid_value(&frame, "id");
    assert_malformed(&raw(0x0D, 0, 0, &[0, 3, b't', b'o', b'k']), FrameType::Refresh);
    assert_accepted(&Frame::Refresh(Refresh { request_id: 1, token: "tok".into() }));
    // REFRESH_OK carries whatever id it answers; the client judges it.
    assert_accepted(&Frame::RefreshOk(RefreshOk { request_id: 0, token_expires_ms: 0 }));
}

#[test]
fn refresh_token_is_at_most_8192_bytes() {
    let frame = Frame::Refresh(Refresh { request_id: 1, token: "t".repeat(8193) });
    assert_refused(&frame, "token");
    assert_accepted(&Frame::Refresh(Refresh { request_id: 1, token: "t".repeat(8192) }));
    let mut body = vec![];
    body.put_u16(8193);
    body.extend_from_slice(&[b't'; 8193]);
    assert_malformed(&raw(0x0D, 0, 1, &body), FrameType::Refresh);
}

#[test]
fn room_request_id_0_is_refused() {
    for kind in [FrameType::Join, FrameType::Leave] {
        let request = |request_id| RoomRequest { request_id, room: "live/42".into() };
        let frame = |r| if kind == FrameType::Join { Frame::Join(r) } else { Frame::Leave(r) };
        assert_invalid_value(&frame(request(0)), "id");
        assert_malformed(&raw(kind as u8, 0, 0, &[1, b'r']), kind);
        assert_accepted(&frame(request(1)));
        assert_accepted(&frame(request(u32::MAX)));
    }
    // ROOM_OK carries whatever id it answers; the client judges it.
    assert_accepted(&Frame::RoomOk(RoomOk { request_id: 0, rooms: 0 }));
    assert_accepted(&Frame::RoomOk(RoomOk { request_id: 9, rooms: u16::MAX }));
}

#[test]
fn room_names_are_1_to_255_bytes() {
    for kind in [FrameType::Join, FrameType::Leave] {
        let frame = |room: String| {
            let r = RoomRequest { request_id: 1, room };
            if kind == FrameType::Join { Frame::Join(r) } else { Frame::Leave(r) }
        };
        assert_refused(&frame(String::new()), "room");
        assert_refused(&frame("r".repeat(256)), "room");
        assert_accepted(&frame("r".into()));
        assert_accepted(&frame("r".repeat(255)));
        assert_accepted(&frame("é".repeat(127)));
        // Empty on the wire, or not UTF-8: MALFORMED_FRAME.
        assert_malformed(&raw(kind as u8, 0, 1, &[0]), kind);
        assert_malformed(&raw(kind as u8, 0, 1, &[2, 0xC3, 0x28]), kind);
        assert_malformed(&raw(kind as u8, 0, 1, &[1, 0xFF]), kind);
    }
}

#[test]
fn room_ok_body_is_exactly_2_bytes() {
    for len in [0, 1, 3, 4, 8] {
        assert_malformed(&raw(0x11, 0, 7, &vec![0; len]), FrameType::RoomOk);
    }
    let mut src = raw(0x11, 0, 7, &[0x01, 0x02]);
    let frame = Frame::RoomOk(RoomOk { request_id: 7, rooms: 0x0102 });
    assert_eq!(decode(&mut src, DEFAULT_MAX_FRAME), Ok(Some(frame)));
}

#[test]
fn auth_ok_flag_bit_0_is_reserved_and_ignored() {
    let ok = AuthOk { version: 1, max_unacked: 8, ..Default::default() };
    let mut bytes = encoded(&Frame::AuthOk(ok.clone()));
    assert_eq!(bytes[5], 0, "sent as 0");
    assert_eq!(bytes.len(), HEADER_LEN + 46);
    bytes[5] = 0x01;
    assert_eq!(decode(&mut bytes, DEFAULT_MAX_FRAME), Ok(Some(Frame::AuthOk(ok))));
}

#[test]
fn str8_fields_are_at_most_255_bytes() {
    let long = "é".repeat(128); // 256 bytes, 128 chars: the limit is in bytes
    assert_eq!(long.len(), 256);
    let cases = [
        (Frame::Hello(Hello { device_id: long.clone(), ..sample_hello() }), "device_id"),
        (Frame::Hello(Hello { app_version: long.clone(), ..sample_hello() }), "app_version"),
        (Frame::Push(Push { topic: "x".repeat(256), ..Default::default() }), "topic"),
        (Frame::Push(Push { topic: long.clone(), ..Default::default() }), "topic"),
        (Frame::Upstream(Upstream { route: long.clone(), ..Default::default() }), "route"),
        (Frame::Redirect(sample_redirect(vec!["a".into(), long.clone()])), "address"),
        (Frame::Join(RoomRequest { request_id: 1, room: long.clone() }), "room"),
        (Frame::Leave(RoomRequest { request_id: 1, room: "r".repeat(256) }), "room"),
    ];
    for (frame, field) in &cases {
        assert_refused(frame, field);
    }
    assert_accepted(&Frame::Push(Push { topic: "x".repeat(255), ..Default::default() }));
    assert_accepted(&Frame::Redirect(sample_redirect(vec!["a".repeat(255)])));
}

#[test]
fn ack_has_at_most_1024_ids() {
    let frame = Frame::Ack(Ack { cumulative: 9, message_ids: (0..1025).collect() });
    assert_refused(&frame, "message_ids");
    assert_accepted(&Frame::Ack(Ack { cumulative: 9, message_ids: (0..1024).collect() }));
}

#[test]
fn redirect_has_at_most_16_addresses() {
    let frame = Frame::Redirect(sample_redirect(vec!["h:1".into(); 17]));
    assert_refused(&frame, "addresses");
    assert_accepted(&Frame::Redirect(sample_redirect(vec!["h:1".into(); 16])));
}

#[test]
fn str16_text_is_at_most_65535_bytes() {
    let long = "m".repeat(65_536);
    let code = Code::INTERNAL_ERROR;
    assert_refused(&Frame::AuthFail(AuthFail { code, reason: long.clone() }), "reason");
    assert_refused(&Frame::Kick(Kick { code, reason: long.clone() }), "reason");
    let error = ErrorFrame { request_id: 1, fatal: true, code, message: long };
    assert_refused(&Frame::Error(error), "message");
}

#[test]
fn extension_kind_must_be_0x80_or_above() {
    for kind in [0x00, 0x01, 0x0C, 0x0D, 0x7F] {
        let frame = Frame::Extension(Extension { kind, flags: 0, id: 0, body: Bytes::new() });
        let mut dst = BytesMut::new();
        assert_eq!(encode(&frame, &mut dst), Err(EncodeError::NotExtension(kind)));
        assert!(dst.is_empty());
        let mut vec_dst = Vec::new();
        assert_eq!(frame.encode(&mut vec_dst), Err(EncodeError::NotExtension(kind)));
        assert!(vec_dst.is_empty());
    }
    for kind in [0x80, 0xFF] {
        let body = Bytes::from_static(b"x");
        assert_accepted(&Frame::Extension(Extension { kind, flags: 0xA5, id: 3, body }));
    }
}

// ---------------------------------------------------------------------------------------
// Malformed bodies
// ---------------------------------------------------------------------------------------

/// One frame of every type whose body has no *rest* field.
fn fixed_layout_frames() -> Vec<Frame> {
    vec![
        Frame::Hello(Hello { versions: vec![2, 1], max_frame: 4_096, ..sample_hello() }),
        Frame::AuthOk(AuthOk {
            version: 1,
            max_frame: 65_536,
            max_unacked: 1_024,
            token_expires_ms: 1_700_003_600_000,
            ..Default::default()
        }),
        Frame::AuthFail(AuthFail { code: Code::INVALID_TOKEN, reason: "bad sig".into() }),
        Frame::Ping(Ping { id: 1, timestamp: Some(42) }),
        Frame::Pong(Ping { id: 1, timestamp: Some(42) }),
        Frame::Ack(Ack { cumulative: 3, message_ids: vec![10, 11] }),
        Frame::Kick(Kick { code: Code::BANNED, reason: "bye".into() }),
        Frame::Redirect(sample_redirect(vec!["10.0.0.1:7100".into(), "[::1]:7100".into()])),
        Frame::Error(ErrorFrame {
            request_id: 4,
            fatal: false,
            code: Code::UPSTREAM_TIMEOUT,
            message: "slow".into(),
        }),
        Frame::Refresh(Refresh { request_id: 3, token: "tok-2".into() }),
        Frame::RefreshOk(RefreshOk { request_id: 3, token_expires_ms: 1_700_007_200_000 }),
        Frame::Join(RoomRequest { request_id: 7, room: "live/42".into() }),
        Frame::Leave(RoomRequest { request_id: 8, room: "live/42".into() }),
        Frame::RoomOk(RoomOk { request_id: 7, rooms: 1 }),
    ]
}

fn frame_type(frame: &Frame) -> FrameType {
    FrameType::from_u8(frame.kind()).expect("not an extension")
}

#[test]
fn truncated_bodies_are_malformed() {
    for frame in fixed_layout_frames() {
        let head = frame.head().unwrap();
        let body = body_of(&frame);
        for cut in 0..body.len() {
            // A PING/PONG body may legitimately be empty.
            if matches!(frame, Frame::Ping(_) | Frame::Pong(_)) && cut == 0 {
                continue;
            }
            assert_malformed(
                &raw(head.kind, head.flags, head.id, &body[..cut]),
                frame_type(&frame),
            );
        }
    }
    // Types with a *rest* field are malformed only if the fixed part is cut.
    let push = Frame::Push(Push { message_id: 1, topic: "chat".into(), ..Default::default() });
    let upstream = Frame::Upstream(Upstream { route: "chat.send".into(), ..Default::default() });
    let reply = Frame::UpstreamReply(UpstreamReply { status: 7, ..Default::default() });
    for frame in [push, upstream, reply] {
        let head = frame.head().unwrap();
        let body = body_of(&frame);
        for cut in 0..body.len() {
            assert_malformed(
                &raw(head.kind, head.flags, head.id, &body[..cut]),
                frame_type(&frame),
            );
        }
    }
}

#[test]
fn trailing_bytes_are_malformed_where_there_is_no_rest_field() {
    for frame in fixed_layout_frames() {
        let head = frame.head().unwrap();
        let mut body = body_of(&frame);
        body.push(0);
        assert_malformed(&raw(head.kind, head.flags, head.id, &body), frame_type(&frame));
    }
}

#[test]
fn ping_body_must_be_empty_or_8_bytes() {
    for kind in [FrameType::Ping, FrameType::Pong] {
        for len in [1, 3, 7, 9, 16] {
            assert_malformed(&raw(kind as u8, 0, 1, &vec![0; len]), kind);
        }
        let mut src = raw(kind as u8, 0, 1, &[0; 8]);
        assert!(decode(&mut src, DEFAULT_MAX_FRAME).unwrap().is_some());
    }
}

#[test]
fn invalid_utf8_is_malformed() {
    let bad = [0xC3u8, 0x28]; // a 2-byte lead followed by a non-continuation byte
    // PUSH topic.
    let mut body = vec![0; 8];
    body.push(bad.len() as u8);
    body.extend_from_slice(&bad);
    assert_malformed(&raw(0x06, 0, 1, &body), FrameType::Push);
    // UPSTREAM route: a lone continuation byte.
    assert_malformed(&raw(0x08, 0, 1, &[1, 0x80]), FrameType::Upstream);
    // KICK / AUTH_FAIL / ERROR text.
    for kind in [FrameType::AuthFail, FrameType::Kick, FrameType::Error] {
        assert_malformed(&raw(kind as u8, 0, 0, &[0x01, 0x2E, 0x00, 0x01, 0xFF]), kind);
    }
    // HELLO token, device_id and app_version, each in turn: a unique `~` marker byte in
    // the field is replaced by 0xFF, which never occurs in UTF-8.
    for field in 0..3 {
        let mut hello = sample_hello();
        match field {
            0 => hello.token = "a~".into(),
            1 => hello.device_id = "a~".into(),
            _ => hello.app_version = "a~".into(),
        }
        let mut body = body_of(&Frame::Hello(hello));
        let markers: Vec<usize> =
            body.iter().enumerate().filter(|(_, b)| **b == b'~').map(|(i, _)| i).collect();
        assert_eq!(markers.len(), 1);
        body[markers[0]] = 0xFF;
        assert_malformed(&raw(0x01, 0, 0, &body), FrameType::Hello);
    }
    // REDIRECT address.
    let mut body = body_of(&Frame::Redirect(sample_redirect(vec!["ab".into()])));
    let n = body.len();
    body[n - 1] = 0xFE;
    assert_malformed(&raw(0x0B, 0, 0, &body), FrameType::Redirect);
}

#[test]
fn ack_count_must_match_the_body() {
    let id = 7u64.to_be_bytes();
    let mut one_id = vec![0, 2];
    one_id.extend_from_slice(&id);
    assert_malformed(&raw(0x07, 0, 1, &one_id), FrameType::Ack);
    let mut two_ids = vec![0, 1];
    two_ids.extend_from_slice(&id);
    two_ids.extend_from_slice(&id);
    assert_malformed(&raw(0x07, 0, 1, &two_ids), FrameType::Ack);
    assert_malformed(&raw(0x07, 0, 1, &[0, 1, 0, 0, 0]), FrameType::Ack);
    // Over the limit of 1,024 even though the body holds them all.
    let mut many = vec![];
    many.put_u16(1025);
    for i in 0..1025u64 {
        many.put_u64(i);
    }
    assert_malformed(&raw(0x07, 0, 1, &many), FrameType::Ack);
}

#[test]
fn hello_versions_count_must_be_1_to_16_on_decode() {
    let good = body_of(&Frame::Hello(sample_hello()));
    // Count 0: the rest of the body no longer lines up, but the count itself is refused.
    let mut zero = good.clone();
    zero[0] = 0;
    zero.drain(1..3);
    assert_malformed(&raw(0x01, 0, 0, &zero), FrameType::Hello);
    // Count 17 with 17 versions present.
    let mut seventeen = vec![17];
    for _ in 0..17 {
        seventeen.put_u16(1);
    }
    seventeen.extend_from_slice(&good[3..]);
    assert_malformed(&raw(0x01, 0, 0, &seventeen), FrameType::Hello);
}

#[test]
fn hello_token_over_8192_bytes_is_malformed_on_decode() {
    let mut body = vec![1, 0, 1];
    body.extend_from_slice(&[0; 4 + 4 + 4 + 1]);
    body.put_u16(8193);
    body.extend_from_slice(&[b't'; 8193]);
    body.extend_from_slice(&[0, 0]);
    assert_malformed(&raw(0x01, 0, 0, &body), FrameType::Hello);
}

#[test]
fn redirect_over_16_addresses_is_malformed_on_decode() {
    let mut body = vec![];
    body.put_u16(401);
    body.put_u32(0);
    body.put_u32(0);
    body.put_u8(17);
    for _ in 0..17 {
        body.extend_from_slice(&[1, b'h']);
    }
    assert_malformed(&raw(0x0B, 0, 0, &body), FrameType::Redirect);
}

#[test]
fn length_prefix_past_the_end_is_malformed() {
    // str16 reason claims 10 bytes, 2 present.
    assert_malformed(&raw(0x0A, 0, 0, &[1, 45, 0, 10, b'h', b'i']), FrameType::Kick);
    // str8 topic claims 200 bytes.
    let mut body = vec![0; 8];
    body.extend_from_slice(&[200, b'x']);
    assert_malformed(&raw(0x06, 0, 1, &body), FrameType::Push);
}

#[test]
fn unknown_critical_types_are_refused_extensions_are_frames() {
    for kind in [0x00u8, 0x12, 0x40, 0x7F] {
        let mut src = raw(kind, 0, 0, &[1, 2, 3]);
        let err = decode(&mut src, DEFAULT_MAX_FRAME).unwrap_err();
        assert_eq!(err, DecodeError::UnknownType(kind));
        assert_eq!(err.code(), Code::UNKNOWN_FRAME_TYPE);
    }
    for kind in [0x80u8, 0xC0, 0xFF] {
        let mut src = raw(kind, 0x5A, 99, &[1, 2, 3]);
        let ext = Extension { kind, flags: 0x5A, id: 99, body: Bytes::from_static(&[1, 2, 3]) };
        assert_eq!(decode(&mut src, DEFAULT_MAX_FRAME), Ok(Some(Frame::Extension(ext))));
        assert!(src.is_empty());
    }
}

#[test]
fn reserved_platforms_decode_as_other() {
    let mut body = body_of(&Frame::Hello(sample_hello()));
    // versions (1 + 2) + capabilities (4) + heartbeat_ms (4) + max_frame (4) = offset 15.
    assert_eq!(body[15], Platform::Android as u8);
    for value in [8u8, 200, 255] {
        body[15] = value;
        let mut src = raw(0x01, 0, 0, &body);
        let Some(Frame::Hello(hello)) = decode(&mut src, DEFAULT_MAX_FRAME).unwrap() else {
            panic!("not a hello");
        };
        assert_eq!(hello.platform, Platform::Other);
    }
}

// ---------------------------------------------------------------------------------------
// Frame size
// ---------------------------------------------------------------------------------------

#[test]
fn frame_too_large_is_detected_from_the_first_4_bytes() {
    let max = DEFAULT_MAX_FRAME;
    let mut three = BytesMut::from(&[0x00, 0x01, 0x00][..]);
    assert_eq!(decode(&mut three, max), Ok(None));
    assert_eq!(three.len(), 3);

    // Body of max - 9 bytes: the whole frame is one byte too large.
    let over = (max - 9).to_be_bytes();
    let mut four = BytesMut::from(&over[..]);
    let err = decode(&mut four, max).unwrap_err();
    assert_eq!(err, DecodeError::FrameTooLarge { size: u64::from(max) + 1, max });
    assert_eq!(err.code(), Code::FRAME_TOO_LARGE);
    assert_eq!(check_head(&over, max), Err(err));

    // Body of max - 10 bytes: exactly the maximum, so it waits for the rest.
    let exact = (max - 10).to_be_bytes();
    let mut four = BytesMut::from(&exact[..]);
    assert_eq!(decode(&mut four, max), Ok(None));
    assert_eq!(check_head(&exact, max), Ok(None));

    // The largest announced length does not overflow.
    let huge = u32::MAX.to_be_bytes();
    let err = decode(&mut BytesMut::from(&huge[..]), u32::MAX).unwrap_err();
    assert_eq!(err, DecodeError::FrameTooLarge { size: u64::from(u32::MAX) + 10, max: u32::MAX });

    // A maximum below the header size refuses even an empty frame.
    let ping = encoded(&Frame::Ping(Ping::default()));
    assert_eq!(ping.len(), 10);
    assert!(matches!(
        decode(&mut ping.clone(), 9),
        Err(DecodeError::FrameTooLarge { size: 10, max: 9 })
    ));
    assert_eq!(decode(&mut ping.clone(), 10), Ok(Some(Frame::Ping(Ping::default()))));
}

#[test]
fn check_head_peeks_without_consuming() {
    let bytes = encoded(&Frame::Ping(Ping { id: 5, timestamp: Some(6) }));
    for at in 0..HEADER_LEN {
        assert_eq!(check_head(&bytes[..at], DEFAULT_MAX_FRAME), Ok(None));
    }
    let head = Head { length: 8, kind: 0x04, flags: 0, id: 5 };
    assert_eq!(check_head(&bytes[..HEADER_LEN], DEFAULT_MAX_FRAME), Ok(Some(head)));
    assert_eq!(check_head(&bytes, DEFAULT_MAX_FRAME), Ok(Some(head)));
    assert!(check_head(&bytes, 17).is_err());
}

// ---------------------------------------------------------------------------------------
// The tokio_util codec
// ---------------------------------------------------------------------------------------

#[test]
fn frame_codec_decodes_and_encodes_over_bytes_mut() {
    let mut codec = FrameCodec::default();
    assert_eq!(codec.max_frame, DEFAULT_MAX_FRAME);
    let frames = fixed_layout_frames();

    let mut wire = BytesMut::new();
    for f in &frames {
        Encoder::<&Frame>::encode(&mut codec, f, &mut wire).unwrap();
    }
    Encoder::<Frame>::encode(&mut codec, frames[0].clone(), &mut wire).unwrap();

    // Deliver the stream in 7-byte reads, as a socket might.
    let mut src = BytesMut::new();
    let mut got = Vec::new();
    for chunk in wire.chunks(7) {
        src.extend_from_slice(chunk);
        while let Some(f) = Decoder::decode(&mut codec, &mut src).unwrap() {
            got.push(f);
        }
    }
    let mut want = frames.clone();
    want.push(frames[0].clone());
    assert_eq!(got, want);
    assert!(src.is_empty());
    assert_eq!(codec.decode_eof(&mut src).unwrap(), None);
}

#[test]
fn frame_codec_reports_errors_by_kind() {
    let mut codec = FrameCodec::new(64);
    let mut src = raw(0x80, 0, 0, &[0; 55]);
    match Decoder::decode(&mut codec, &mut src) {
        Err(CodecError::Decode(DecodeError::FrameTooLarge { size: 65, max: 64 })) => {}
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }

    let mut src = raw(0x04, 0, 0, &[0; 3]);
    match Decoder::decode(&mut codec, &mut src) {
        Err(CodecError::Decode(e @ DecodeError::Malformed { frame: FrameType::Ping, .. })) => {
            assert_eq!(e.code(), Code::MALFORMED_FRAME);
        }
        other => panic!("expected Malformed, got {other:?}"),
    }

    let mut dst = BytesMut::new();
    let bad = Frame::Ack(Ack { cumulative: 0, message_ids: vec![0; 1025] });
    assert!(matches!(
        Encoder::<&Frame>::encode(&mut codec, &bad, &mut dst),
        Err(CodecError::Encode(EncodeError::FieldLength { .. }))
    ));
    assert!(dst.is_empty());

    // A stream that ends inside a frame is an error at EOF, not a silent drop.
    let mut partial = raw(0x04, 0, 0, &[0; 8]);
    partial.truncate(12);
    assert!(matches!(codec.decode_eof(&mut partial), Err(CodecError::Io(_))));
}

#[test]
fn frame_codec_waits_on_partial_frames_and_consumes_nothing() {
    let mut codec = FrameCodec::default();
    let full = encoded(&Frame::Push(Push {
        seq: 1,
        ack_required: true,
        message_id: 9,
        topic: "chat.msg".into(),
        payload: Bytes::from(vec![7; 1000]),
    }));
    for at in [0, 1, 4, 9, 10, 11, full.len() - 1] {
        let mut src = BytesMut::from(&full[..at]);
        assert_eq!(Decoder::decode(&mut codec, &mut src).unwrap(), None);
        assert_eq!(&src[..], &full[..at]);
        if at >= HEADER_LEN {
            // It reserves room for the rest of the frame.
            assert!(src.capacity() >= full.len());
        }
    }
}
