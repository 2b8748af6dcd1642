//! Round trips of every request and answer, and hostile bodies.

use super::*;
use bytes::{BufMut, BytesMut};
use holdfast_codec::{HEADER_LEN, Head, check_head};

fn roundtrip(req: Request) {
    let mut buf = BytesMut::new();
    req.encode(7, &mut buf);
    let head = check_head(&buf, DEFAULT_MAX_FRAME).unwrap().unwrap();
    assert_eq!(head.id, 7);
    assert_eq!(head.frame_len() as usize, buf.len());
    let got = Request::decode(&head, &buf[HEADER_LEN..]).unwrap();
    assert_eq!(got, req);
    // every strict prefix of the body is an error, never a panic
    for cut in 0..buf.len() - HEADER_LEN {
        let _ = Request::decode(&head, &buf[HEADER_LEN..HEADER_LEN + cut]);
    }
}

fn session() -> Session {
    Session {
        conn: 1 << 50,
        gateway: 3,
        device: "phone".into(),
        platform: 2,
        login_ms: 99,
        generation: 5,
    }
}

fn members() -> Vec<Member> {
    vec![Member { id: NodeId(1), addr: "127.0.0.1:1".into(), weight: 2 }]
}

#[test]
fn requests_roundtrip() {
    roundtrip(Request::Hello { mac: [9; 32] });
    roundtrip(Request::Apply {
        epoch: 4,
        gateway: 2,
        generation: 77,
        writes: vec![
            Write::Online {
                user: "alice".into(),
                conn: 5,
                device: "d".into(),
                platform: 1,
                login_ms: 3,
            },
            Write::Offline { user: "bob".into(), conn: 6 },
        ],
    });
    roundtrip(Request::Lookup { epoch: 1, users: vec!["a".into(), "bé".into()] });
    roundtrip(Request::Renew { gateway: 1, generation: 2, ttl_ms: 3000 });
    roundtrip(Request::List { gateway: 9 });
    roundtrip(Request::Resync {
        epoch: 3,
        gateway: 3,
        generation: 5,
        first: true,
        sessions: vec![("u".into(), session())],
    });
    roundtrip(Request::Counts);
    roundtrip(Request::Ring);
    roundtrip(Request::Install(RingState {
        epoch: 2,
        vnodes: 160,
        replicas: 2,
        current: members(),
        next: Some(vec![]),
        read_next: true,
    }));
    roundtrip(Request::Merge {
        leases: vec![LeaseTransfer {
            gateway: 1,
            generation: 2,
            remaining: std::time::Duration::from_millis(1500),
        }],
        sessions: vec![("u".into(), session())],
    });
    roundtrip(Request::Migrate { epoch: 8 });
}

#[test]
fn responses_roundtrip() {
    let cases = [
        (Kind::Hello, Response::HelloOk { node: NodeId(2), incarnation: 3, epoch: 4 }),
        (Kind::Apply, Response::Applied(16)),
        (Kind::Lookup, Response::Found(vec![vec![session()], vec![]])),
        (Kind::Renew, Response::Renewed { incarnation: 1, epoch: 2, created: true }),
        (Kind::List, Response::Listed(vec![("x".into(), session())])),
        (Kind::Resync, Response::Resynced),
        (
            Kind::Counts,
            Response::Counts {
                counts: Counts { sessions: 1, users: Some(2), gateways: 3 },
                stored: 4,
            },
        ),
        (
            Kind::Ring,
            Response::Ring(RingState {
                epoch: 2,
                vnodes: 160,
                replicas: 2,
                current: members(),
                next: None,
                read_next: false,
            }),
        ),
        (Kind::Install, Response::Installed(5)),
        (Kind::Merge, Response::Merged(6)),
        (Kind::Migrate, Response::Migrated(7)),
        (
            Kind::Lookup,
            Response::Error {
                code: Code::Moved,
                epoch: 9,
                detail: 0,
                message: "moved".into(),
                fatal: false,
            },
        ),
    ];
    for (asked, resp) in cases {
        let mut buf = BytesMut::new();
        resp.encode(3, asked, &mut buf);
        let head = Head::peek(&buf).unwrap();
        assert_eq!(Response::decode(&head, &buf[HEADER_LEN..], Some(asked)).unwrap(), resp);
    }
    let ch = Response::Challenge { version: VERSION, nonce: [1; 32] };
    let mut buf = BytesMut::new();
    ch.encode(0, Kind::Challenge, &mut buf);
    let head = Head::peek(&buf).unwrap();
    assert_eq!(Response::decode(&head, &buf[HEADER_LEN..], None).unwrap(), ch);
}

#[test]
fn hostile_counts_do_not_allocate() {
    // APPLY claiming 65535 writes in a 20-byte body
    let mut body = BytesMut::new();
    body.put_u64(1);
    body.put_u16(1);
    body.put_u64(1);
    body.put_u16(u16::MAX);
    let head = Head { length: body.len() as u32, kind: Kind::Apply as u8, flags: 0, id: 1 };
    assert_eq!(Request::decode(&head, &body), Err(WireError::Truncated("write count")));
    let head = Head { length: 0, kind: 0x55, flags: 0, id: 1 };
    assert_eq!(Request::decode(&head, &[]), Err(WireError::UnknownKind(0x55)));
    let head = Head { length: 2, kind: Kind::Counts as u8, flags: 0, id: 1 };
    assert_eq!(Request::decode(&head, &[0, 0]), Err(WireError::Malformed("trailing bytes")));
}

#[test]
fn hello_mac_depends_on_secret_and_nonce() {
    let m = hello_mac(b"s", &[1; 32]);
    assert!(verify_hello(b"s", &[1; 32], &m));
    assert!(!verify_hello(b"t", &[1; 32], &m));
    assert!(!verify_hello(b"s", &[2; 32], &m));
}

proptest::proptest! {
    #[test]
    fn arbitrary_bodies_never_panic(kind in 0u8..=0x0C, flags: u8, body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
        let head = Head { length: body.len() as u32, kind, flags, id: 1 };
        if let Ok(req) = Request::decode(&head, &body) {
            // whatever decodes re-encodes to the same request
            let mut buf = BytesMut::new();
            req.encode(1, &mut buf);
            let h = Head::peek(&buf).unwrap();
            proptest::prop_assert_eq!(Request::decode(&h, &buf[HEADER_LEN..]).unwrap(), req);
        }
    }
}
