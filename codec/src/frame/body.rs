//! The body of every frame type, byte by byte (`docs/PROTOCOL.md` § Frame bodies): for each
//! type its `body_len`, `put_body` and `read_body`. Encoding checks every limit before the
//! first byte is written; decoding turns every short or oversized field into
//! `MALFORMED_FRAME`.

use bytes::BufMut;

use super::head::{FLAG_ACK_REQUIRED, FLAG_FATAL, FLAG_OVERLAP};
use super::wire::{Reader, STR8_MAX, STR16_MAX, check_len, invalid, put_str8, put_str16};
use super::{
    Ack, AuthFail, AuthOk, ErrorFrame, FrameType, Hello, Kick, Ping, Platform, Push, Redirect,
    Refresh, RefreshOk, RoomOk, RoomRequest, Upstream, UpstreamReply,
};
use crate::Code;
use crate::error::{DecodeError, EncodeError};

/// "`versions`: `u8` count `n` (1–16)".
pub const MAX_VERSIONS: usize = 16;
/// "`token` ... at most 8,192 bytes" (`HELLO` and `REFRESH`).
pub const MAX_TOKEN: usize = 8192;
/// "`max_frame` ... 0 means the default 65,536; a non-zero value below 1,024 is
/// `MALFORMED_FRAME`" (`HELLO`).
pub const MIN_MAX_FRAME: u32 = 1024;
/// "`message_ids` ... at most 1,024".
pub const MAX_ACK_IDS: usize = 1024;
/// "`addresses`: `u8` count `n` (0–16)".
pub const MAX_ADDRESSES: usize = 16;
/// "`room`: `str8` ... 1–255 bytes" (`JOIN` and `LEAVE`).
pub const MAX_ROOM: usize = 255;

impl Hello {
    pub(crate) fn check(&self) -> Result<usize, EncodeError> {
        let t = FrameType::Hello;
        check_len(t, "versions", self.versions.len(), 1, MAX_VERSIONS)?;
        if !hello_max_frame_ok(self.max_frame) {
            return Err(invalid(t, "max_frame", "non-zero and below 1,024"));
        }
        check_len(t, "token", self.token.len(), 0, MAX_TOKEN)?;
        check_len(t, "device_id", self.device_id.len(), 0, STR8_MAX)?;
        check_len(t, "app_version", self.app_version.len(), 0, STR8_MAX)?;
        Ok(1 + 2 * self.versions.len()
            + 4
            + 4
            + 4
            + 1
            + 2
            + self.token.len()
            + 1
            + self.device_id.len()
            + 1
            + self.app_version.len())
    }

    pub(crate) fn put_body<B: BufMut>(&self, dst: &mut B) {
        dst.put_u8(self.versions.len() as u8);
        for v in &self.versions {
            dst.put_u16(*v);
        }
        dst.put_u32(self.capabilities);
        dst.put_u32(self.heartbeat_ms);
        dst.put_u32(self.max_frame);
        dst.put_u8(self.platform as u8);
        put_str16(dst, &self.token);
        put_str8(dst, &self.device_id);
        put_str8(dst, &self.app_version);
    }

    pub(crate) fn read_body(mut r: Reader) -> Result<Hello, DecodeError> {
        let n = usize::from(r.u8("versions count")?);
        if !(1..=MAX_VERSIONS).contains(&n) {
            return Err(r.malformed("versions count must be 1 to 16"));
        }
        let mut versions = Vec::with_capacity(n);
        for _ in 0..n {
            versions.push(r.u16("versions")?);
        }
        let capabilities = r.u32("capabilities")?;
        let heartbeat_ms = r.u32("heartbeat_ms")?;
        let max_frame = r.u32("max_frame")?;
        // "0 means the default 65,536; a non-zero value below 1,024 is MALFORMED_FRAME."
        if !hello_max_frame_ok(max_frame) {
            return Err(r.malformed("max_frame is non-zero and below 1,024"));
        }
        let hello = Hello {
            versions,
            capabilities,
            heartbeat_ms,
            max_frame,
            platform: Platform::from_u8(r.u8("platform")?),
            token: r.str16(MAX_TOKEN, "token", "token longer than 8,192 bytes")?,
            device_id: r.str8("device_id")?,
            app_version: r.str8("app_version")?,
        };
        r.finish()?;
        Ok(hello)
    }
}

/// `HELLO.max_frame` is 0 (the default) or at least [`MIN_MAX_FRAME`].
fn hello_max_frame_ok(max_frame: u32) -> bool {
    max_frame == 0 || max_frame >= MIN_MAX_FRAME
}

impl AuthOk {
    /// `version u16, capabilities u32, conn_id u64, heartbeat_ms u32, idle_timeout_ms u32,
    /// max_frame u32, max_unacked u32, token_expires_ms u64, server_time_ms u64`.
    pub(crate) const BODY_LEN: usize = 2 + 4 + 8 + 4 + 4 + 4 + 4 + 8 + 8;

    pub(crate) fn put_body<B: BufMut>(&self, dst: &mut B) {
        dst.put_u16(self.version);
        dst.put_u32(self.capabilities);
        dst.put_u64(self.conn_id);
        dst.put_u32(self.heartbeat_ms);
        dst.put_u32(self.idle_timeout_ms);
        dst.put_u32(self.max_frame);
        dst.put_u32(self.max_unacked);
        dst.put_u64(self.token_expires_ms);
        dst.put_u64(self.server_time_ms);
    }

    pub(crate) fn read_body(mut r: Reader) -> Result<AuthOk, DecodeError> {
        // Flag bit 0 is reserved (it was `RESUMED` before session resume left version 1):
        // sent as 0, ignored on receipt, like every undefined bit.
        let ok = AuthOk {
            version: r.u16("version")?,
            capabilities: r.u32("capabilities")?,
            conn_id: r.u64("conn_id")?,
            heartbeat_ms: r.u32("heartbeat_ms")?,
            idle_timeout_ms: r.u32("idle_timeout_ms")?,
            max_frame: r.u32("max_frame")?,
            max_unacked: r.u32("max_unacked")?,
            token_expires_ms: r.u64("token_expires_ms")?,
            server_time_ms: r.u64("server_time_ms")?,
        };
        r.finish()?;
        Ok(ok)
    }
}

/// `code u16 | text str16`: the body shared by `AUTH_FAIL`, `KICK` and `ERROR`.
fn coded_len(frame: FrameType, field: &'static str, text: &str) -> Result<usize, EncodeError> {
    check_len(frame, field, text.len(), 0, STR16_MAX)?;
    Ok(2 + 2 + text.len())
}

fn put_coded<B: BufMut>(dst: &mut B, code: Code, text: &str) {
    dst.put_u16(code.0);
    put_str16(dst, text);
}

fn read_coded(mut r: Reader, field: &'static str) -> Result<(Code, String), DecodeError> {
    let code = Code(r.u16("code")?);
    let text = r.str16(STR16_MAX, field, field)?;
    r.finish()?;
    Ok((code, text))
}

impl AuthFail {
    pub(crate) fn check(&self) -> Result<usize, EncodeError> {
        coded_len(FrameType::AuthFail, "reason", &self.reason)
    }

    pub(crate) fn put_body<B: BufMut>(&self, dst: &mut B) {
        put_coded(dst, self.code, &self.reason);
    }

    pub(crate) fn read_body(r: Reader) -> Result<AuthFail, DecodeError> {
        let (code, reason) = read_coded(r, "reason")?;
        Ok(AuthFail { code, reason })
    }
}

impl Kick {
    pub(crate) fn check(&self) -> Result<usize, EncodeError> {
        coded_len(FrameType::Kick, "reason", &self.reason)
    }

    pub(crate) fn put_body<B: BufMut>(&self, dst: &mut B) {
        put_coded(dst, self.code, &self.reason);
    }

    pub(crate) fn read_body(r: Reader) -> Result<Kick, DecodeError> {
        let (code, reason) = read_coded(r, "reason")?;
        Ok(Kick { code, reason })
    }
}

impl ErrorFrame {
    pub(crate) fn check(&self) -> Result<usize, EncodeError> {
        coded_len(FrameType::Error, "message", &self.message)
    }

    pub(crate) fn flags(&self) -> u8 {
        if self.fatal { FLAG_FATAL } else { 0 }
    }

    pub(crate) fn put_body<B: BufMut>(&self, dst: &mut B) {
        put_coded(dst, self.code, &self.message);
    }

    pub(crate) fn read_body(id: u32, flags: u8, r: Reader) -> Result<ErrorFrame, DecodeError> {
        let (code, message) = read_coded(r, "message")?;
        Ok(ErrorFrame { request_id: id, fatal: flags & FLAG_FATAL != 0, code, message })
    }
}

impl Ping {
    pub(crate) fn body_len(&self) -> usize {
        if self.timestamp.is_some() { 8 } else { 0 }
    }

    pub(crate) fn put_body<B: BufMut>(&self, dst: &mut B) {
        if let Some(ts) = self.timestamp {
            dst.put_u64(ts);
        }
    }

    pub(crate) fn read_body(id: u32, mut r: Reader) -> Result<Ping, DecodeError> {
        // "The body is either empty (length 0) or exactly 8 bytes."
        let timestamp = match r.remaining() {
            0 => None,
            8 => Some(r.u64("timestamp")?),
            _ => return Err(r.malformed("PING/PONG body must be empty or 8 bytes")),
        };
        Ok(Ping { id, timestamp })
    }
}

impl Push {
    pub(crate) fn check(&self) -> Result<usize, EncodeError> {
        check_len(FrameType::Push, "topic", self.topic.len(), 0, STR8_MAX)?;
        Ok(8 + 1 + self.topic.len() + self.payload.len())
    }

    pub(crate) fn flags(&self) -> u8 {
        if self.ack_required { FLAG_ACK_REQUIRED } else { 0 }
    }

    pub(crate) fn put_body<B: BufMut>(&self, dst: &mut B) {
        dst.put_u64(self.message_id);
        put_str8(dst, &self.topic);
        dst.put_slice(&self.payload);
    }

    pub(crate) fn read_body(id: u32, flags: u8, mut r: Reader) -> Result<Push, DecodeError> {
        Ok(Push {
            seq: id,
            ack_required: flags & FLAG_ACK_REQUIRED != 0,
            message_id: r.u64("message_id")?,
            topic: r.str8("topic")?,
            payload: r.rest(),
        })
    }
}

impl Ack {
    pub(crate) fn check(&self) -> Result<usize, EncodeError> {
        check_len(FrameType::Ack, "message_ids", self.message_ids.len(), 0, MAX_ACK_IDS)?;
        Ok(2 + 8 * self.message_ids.len())
    }

    pub(crate) fn put_body<B: BufMut>(&self, dst: &mut B) {
        dst.put_u16(self.message_ids.len() as u16);
        for id in &self.message_ids {
            dst.put_u64(*id);
        }
    }

    pub(crate) fn read_body(id: u32, mut r: Reader) -> Result<Ack, DecodeError> {
        let n = usize::from(r.u16("message_ids count")?);
        if n > MAX_ACK_IDS {
            return Err(r.malformed("more than 1,024 message ids"));
        }
        if r.remaining() != 8 * n {
            return Err(r.malformed("message_ids count does not match the body length"));
        }
        let mut message_ids = Vec::with_capacity(n);
        for _ in 0..n {
            message_ids.push(r.u64("message_ids")?);
        }
        r.finish()?;
        Ok(Ack { cumulative: id, message_ids })
    }
}

impl Upstream {
    pub(crate) fn check(&self) -> Result<usize, EncodeError> {
        check_len(FrameType::Upstream, "route", self.route.len(), 0, STR8_MAX)?;
        Ok(1 + self.route.len() + self.payload.len())
    }

    pub(crate) fn put_body<B: BufMut>(&self, dst: &mut B) {
        put_str8(dst, &self.route);
        dst.put_slice(&self.payload);
    }

    pub(crate) fn read_body(id: u32, mut r: Reader) -> Result<Upstream, DecodeError> {
        Ok(Upstream { request_id: id, route: r.str8("route")?, payload: r.rest() })
    }
}

impl UpstreamReply {
    pub(crate) fn body_len(&self) -> usize {
        2 + self.payload.len()
    }

    pub(crate) fn put_body<B: BufMut>(&self, dst: &mut B) {
        dst.put_u16(self.status);
        dst.put_slice(&self.payload);
    }

    pub(crate) fn read_body(id: u32, mut r: Reader) -> Result<UpstreamReply, DecodeError> {
        Ok(UpstreamReply { request_id: id, status: r.u16("status")?, payload: r.rest() })
    }
}

impl Redirect {
    pub(crate) fn check(&self) -> Result<usize, EncodeError> {
        let t = FrameType::Redirect;
        check_len(t, "addresses", self.addresses.len(), 0, MAX_ADDRESSES)?;
        let mut len = 2 + 4 + 4 + 1;
        for a in &self.addresses {
            check_len(t, "address", a.len(), 0, STR8_MAX)?;
            len += 1 + a.len();
        }
        Ok(len)
    }

    pub(crate) fn flags(&self) -> u8 {
        if self.overlap { FLAG_OVERLAP } else { 0 }
    }

    pub(crate) fn put_body<B: BufMut>(&self, dst: &mut B) {
        dst.put_u16(self.code.0);
        dst.put_u32(self.delay_ms);
        dst.put_u32(self.jitter_ms);
        dst.put_u8(self.addresses.len() as u8);
        for a in &self.addresses {
            put_str8(dst, a);
        }
    }

    pub(crate) fn read_body(flags: u8, mut r: Reader) -> Result<Redirect, DecodeError> {
        let code = Code(r.u16("code")?);
        let delay_ms = r.u32("delay_ms")?;
        let jitter_ms = r.u32("jitter_ms")?;
        let n = usize::from(r.u8("addresses count")?);
        if n > MAX_ADDRESSES {
            return Err(r.malformed("more than 16 addresses"));
        }
        let mut addresses = Vec::with_capacity(n);
        for _ in 0..n {
            addresses.push(r.str8("address")?);
        }
        r.finish()?;
        Ok(Redirect { code, delay_ms, jitter_ms, addresses, overlap: flags & FLAG_OVERLAP != 0 })
    }
}

impl Refresh {
    pub(crate) fn check(&self) -> Result<usize, EncodeError> {
        let t = FrameType::Refresh;
        if self.request_id == 0 {
            return Err(invalid(t, "id", "request id 0"));
        }
        check_len(t, "token", self.token.len(), 0, MAX_TOKEN)?;
        Ok(2 + self.token.len())
    }

    pub(crate) fn put_body<B: BufMut>(&self, dst: &mut B) {
        put_str16(dst, &self.token);
    }

    pub(crate) fn read_body(id: u32, mut r: Reader) -> Result<Refresh, DecodeError> {
        // "Request id 0 in REFRESH is MALFORMED_FRAME": every refresh is answered, by id.
        if id == 0 {
            return Err(r.malformed("REFRESH with request id 0"));
        }
        let token = r.str16(MAX_TOKEN, "token", "token longer than 8,192 bytes")?;
        r.finish()?;
        Ok(Refresh { request_id: id, token })
    }
}

impl RefreshOk {
    /// `token_expires_ms u64`.
    pub(crate) const BODY_LEN: usize = 8;

    pub(crate) fn put_body<B: BufMut>(&self, dst: &mut B) {
        dst.put_u64(self.token_expires_ms);
    }

    pub(crate) fn read_body(id: u32, mut r: Reader) -> Result<RefreshOk, DecodeError> {
        let token_expires_ms = r.u64("token_expires_ms")?;
        r.finish()?;
        Ok(RefreshOk { request_id: id, token_expires_ms })
    }
}

impl RoomRequest {
    /// The body length of a `JOIN` or `LEAVE` (`frame`), after checking the request id and
    /// the room's length.
    pub(crate) fn check(&self, frame: FrameType) -> Result<usize, EncodeError> {
        if self.request_id == 0 {
            return Err(invalid(frame, "id", "request id 0"));
        }
        check_len(frame, "room", self.room.len(), 1, MAX_ROOM)?;
        Ok(1 + self.room.len())
    }

    pub(crate) fn put_body<B: BufMut>(&self, dst: &mut B) {
        put_str8(dst, &self.room);
    }

    pub(crate) fn read_body(id: u32, mut r: Reader) -> Result<RoomRequest, DecodeError> {
        // "Request id 0 in JOIN or LEAVE is MALFORMED_FRAME", as in REFRESH: every room
        // request is answered, by id.
        if id == 0 {
            return Err(r.malformed("JOIN or LEAVE with request id 0"));
        }
        let room = r.str8("room")?;
        if room.is_empty() {
            return Err(r.malformed("empty room name"));
        }
        r.finish()?;
        Ok(RoomRequest { request_id: id, room })
    }
}

impl RoomOk {
    /// `rooms u16`.
    pub(crate) const BODY_LEN: usize = 2;

    pub(crate) fn put_body<B: BufMut>(&self, dst: &mut B) {
        dst.put_u16(self.rooms);
    }

    pub(crate) fn read_body(id: u32, mut r: Reader) -> Result<RoomOk, DecodeError> {
        let rooms = r.u16("rooms")?;
        r.finish()?;
        Ok(RoomOk { request_id: id, rooms })
    }
}
