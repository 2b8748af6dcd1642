//! Codec throughput: encode and decode of the frames a gateway handles most.
//!
//! Run with `cargo bench -p holdfast-codec --bench codec`; figures are recorded in
//! `docs/BENCHMARKS.md`. Single-frame cases report bytes per second (the whole frame,
//! header included); the packed-buffer case reports frames per second.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use holdfast_codec::{
    Ack, AuthOk, DEFAULT_MAX_FRAME, Frame, Hello, Ping, Platform, Push, Refresh, decode, encode,
};

fn push(payload_len: usize) -> Frame {
    Frame::Push(Push {
        seq: 12_345,
        ack_required: true,
        message_id: 1_234_567_890_123,
        topic: "chat.msg".into(),
        payload: Bytes::from(vec![0x5A; payload_len]),
    })
}

/// The single-frame cases: a name and the frame.
fn cases() -> Vec<(&'static str, Frame)> {
    vec![
        ("ping", Frame::Ping(Ping { id: 7, timestamp: None })),
        ("push_100B", push(100)),
        ("push_1KiB", push(1024)),
        (
            "hello_token_300B",
            Frame::Hello(Hello {
                versions: vec![1],
                capabilities: 0,
                heartbeat_ms: 240_000,
                max_frame: 65_536,
                platform: Platform::Android,
                token: "t".repeat(300),
                device_id: "3f2a9c4e-5b1d-4e8f-9a7c-2d6b8e1f0a3c".into(),
                app_version: "5.2.1".into(),
            }),
        ),
        (
            "auth_ok",
            Frame::AuthOk(AuthOk {
                version: 1,
                capabilities: 0,
                conn_id: 0x0007_0100_0000_0001,
                heartbeat_ms: 240_000,
                idle_timeout_ms: 720_000,
                max_frame: 65_536,
                max_unacked: 1_024,
                token_expires_ms: 1_700_003_600_000,
                server_time_ms: 1_700_000_000_000,
            }),
        ),
        ("refresh_token_300B", Frame::Refresh(Refresh { request_id: 1, token: "t".repeat(300) })),
        (
            "ack_32_ids",
            Frame::Ack(Ack {
                cumulative: 1_000,
                message_ids: (0..32).map(|i| 1_234_567_890_000 + i).collect(),
            }),
        ),
    ]
}

fn encoded(frame: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(frame, &mut buf).expect("benchmark frames are valid");
    buf
}

/// `wire` in a `BytesMut` as a connection's read buffer holds it in steady state: already
/// promoted to a shared allocation by an earlier split, so the timed `decode` pays for
/// parsing and its own allocations (text, lists) but not for that one-time promotion.
fn read_buffer(wire: &[u8]) -> BytesMut {
    let mut buf = BytesMut::with_capacity(wire.len() + 1);
    buf.extend_from_slice(wire);
    drop(buf.split_off(wire.len()));
    buf
}

fn single_frames(c: &mut Criterion) {
    for (name, frame) in cases() {
        let wire = encoded(&frame).freeze();
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(wire.len() as u64));

        let mut dst = BytesMut::with_capacity(wire.len());
        group.bench_function("encode", |b| {
            b.iter(|| {
                dst.clear();
                encode(black_box(&frame), &mut dst).unwrap();
                black_box(&dst);
            })
        });

        group.bench_function("decode", |b| {
            b.iter_batched_ref(
                || read_buffer(&wire),
                |src| decode(black_box(src), DEFAULT_MAX_FRAME).unwrap().unwrap(),
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

fn packed_pings(c: &mut Criterion) {
    let ping = encoded(&Frame::Ping(Ping { id: 7, timestamp: None }));
    let count = 64 * 1024 / ping.len();
    let mut wire = BytesMut::with_capacity(64 * 1024);
    for _ in 0..count {
        wire.extend_from_slice(&ping);
    }
    let wire = wire.freeze();

    let mut group = c.benchmark_group("ping_x6553_64KiB");
    group.throughput(Throughput::Elements(count as u64));
    group.bench_function("decode_all", |b| {
        b.iter_batched_ref(
            || read_buffer(&wire),
            |src| {
                let mut n = 0;
                while let Some(frame) = decode(src, DEFAULT_MAX_FRAME).unwrap() {
                    black_box(frame);
                    n += 1;
                }
                assert_eq!(n, count);
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = single_frames, packed_pings
}
criterion_main!(benches);
