//! Encoding: the `encode` of requests and answers, and the field writers.

use bytes::{BufMut, BytesMut};
use holdfast_codec::{HEADER_LEN, Head};

use super::*;

impl Request {
    /// Append this request as a frame with request id `id`.
    pub fn encode(&self, id: u32, dst: &mut BytesMut) {
        let flags = match self {
            Request::Resync { first: true, .. } => FLAG_FIRST,
            _ => 0,
        };
        frame(dst, self.kind() as u8, flags, id, |b| match self {
            Request::Hello { mac } => b.put_slice(mac),
            Request::Apply { epoch, gateway, generation, writes } => {
                b.put_u64(*epoch);
                b.put_u16(*gateway);
                b.put_u64(*generation);
                b.put_u16(writes.len() as u16);
                for w in writes {
                    match w {
                        Write::Online { user, conn, device, platform, login_ms } => {
                            b.put_u8(1);
                            put_user(b, user);
                            b.put_u64(*conn);
                            b.put_u8(*platform);
                            b.put_u64(*login_ms);
                            put_str_u8(b, device);
                        }
                        Write::Offline { user, conn } => {
                            b.put_u8(2);
                            put_user(b, user);
                            b.put_u64(*conn);
                        }
                    }
                }
            }
            Request::Lookup { epoch, users } => {
                b.put_u64(*epoch);
                b.put_u16(users.len() as u16);
                for u in users {
                    put_user(b, u);
                }
            }
            Request::Renew { gateway, generation, ttl_ms } => {
                b.put_u16(*gateway);
                b.put_u64(*generation);
                b.put_u32(*ttl_ms);
            }
            Request::List { gateway } => b.put_u16(*gateway),
            Request::Resync { epoch, gateway, generation, sessions, .. } => {
                b.put_u64(*epoch);
                b.put_u16(*gateway);
                b.put_u64(*generation);
                put_entries(b, sessions);
            }
            Request::Counts | Request::Ring => {}
            Request::Install(ring) => put_ring(b, ring),
            Request::Merge { leases, sessions } => {
                b.put_u16(leases.len() as u16);
                for l in leases {
                    b.put_u16(l.gateway);
                    b.put_u64(l.generation);
                    b.put_u32(u32::try_from(l.remaining.as_millis()).unwrap_or(u32::MAX));
                }
                put_entries(b, sessions);
            }
            Request::Migrate { epoch } => b.put_u64(*epoch),
        });
    }
}

impl Response {
    /// Append this answer as a frame with id `id`; `asked` is the request's kind (ignored
    /// for `CHALLENGE` and `ERROR`).
    pub fn encode(&self, id: u32, asked: Kind, dst: &mut BytesMut) {
        let (kind, flags) = match self {
            Response::Challenge { .. } => (Kind::Challenge as u8, 0),
            Response::Error { fatal, .. } => {
                (Kind::Error as u8, if *fatal { FLAG_FATAL } else { 0 })
            }
            _ => (asked as u8 | 0x80, 0),
        };
        frame(dst, kind, flags, id, |b| match self {
            Response::Challenge { version, nonce } => {
                b.put_u16(*version);
                b.put_slice(nonce);
            }
            Response::HelloOk { node, incarnation, epoch } => {
                b.put_u16(node.0);
                b.put_u64(*incarnation);
                b.put_u64(*epoch);
            }
            Response::Applied(n) => b.put_u16(*n),
            Response::Found(all) => {
                b.put_u16(all.len() as u16);
                for list in all {
                    b.put_u16(list.len() as u16);
                    for s in list {
                        put_session(b, s);
                    }
                }
            }
            Response::Renewed { incarnation, epoch, created } => {
                b.put_u64(*incarnation);
                b.put_u64(*epoch);
                b.put_u8(u8::from(*created));
            }
            Response::Listed(entries) => put_entries(b, entries),
            Response::Resynced => {}
            Response::Counts { counts, stored } => {
                b.put_u64(counts.sessions);
                b.put_u64(counts.users.unwrap_or(0));
                b.put_u32(counts.gateways);
                b.put_u64(*stored);
            }
            Response::Ring(ring) => put_ring(b, ring),
            Response::Installed(e) => b.put_u64(*e),
            Response::Merged(n) => b.put_u32(*n),
            Response::Migrated(n) => b.put_u64(*n),
            Response::Error { code, epoch, detail, message, .. } => {
                b.put_u8(*code as u8);
                b.put_u64(*epoch);
                b.put_u64(*detail);
                let m = &message.as_bytes()[..message.len().min(1024)];
                b.put_u16(m.len() as u16);
                b.put_slice(m);
            }
        });
    }
}

fn frame(dst: &mut BytesMut, kind: u8, flags: u8, id: u32, body: impl FnOnce(&mut BytesMut)) {
    let start = dst.len();
    dst.put_bytes(0, HEADER_LEN);
    body(dst);
    let length = (dst.len() - start - HEADER_LEN) as u32;
    let mut head = Vec::with_capacity(HEADER_LEN);
    Head { length, kind, flags, id }.encode(&mut head);
    dst[start..start + HEADER_LEN].copy_from_slice(&head);
}

fn put_user(b: &mut BytesMut, u: &str) {
    let bytes = &u.as_bytes()[..u.len().min(MAX_USER_LEN)];
    b.put_u16(bytes.len() as u16);
    b.put_slice(bytes);
}

fn put_str_u8(b: &mut BytesMut, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(MAX_DEVICE_LEN)];
    b.put_u8(bytes.len() as u8);
    b.put_slice(bytes);
}

fn put_session(b: &mut BytesMut, s: &Session) {
    b.put_u64(s.conn);
    b.put_u16(s.gateway);
    b.put_u64(s.generation);
    b.put_u8(s.platform);
    b.put_u64(s.login_ms);
    put_str_u8(b, &s.device);
}

fn put_entries(b: &mut BytesMut, entries: &[(UserId, Session)]) {
    b.put_u32(entries.len() as u32);
    for (u, s) in entries {
        put_user(b, u);
        put_session(b, s);
    }
}

fn put_members(b: &mut BytesMut, members: &[Member]) {
    b.put_u16(members.len() as u16);
    for m in members {
        b.put_u16(m.id.0);
        b.put_u16(m.weight.max(1));
        put_str_u8(b, &m.addr);
    }
}

fn put_ring(b: &mut BytesMut, ring: &RingState) {
    b.put_u64(ring.epoch);
    b.put_u16(ring.vnodes);
    b.put_u8(ring.replicas);
    b.put_u8(u8::from(ring.read_next));
    put_members(b, &ring.current);
    match &ring.next {
        None => b.put_u8(0),
        Some(next) => {
            b.put_u8(1);
            put_members(b, next);
        }
    }
}
