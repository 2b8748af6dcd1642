//! Frames: the header ([`head`]), the frame structs and [`Frame`], which ties a header to a
//! body. The byte layout of each body lives in `body.rs`, the field encodings it is written
//! in (`str8`, `str16`, ...) in `wire.rs`.

mod body;
pub mod head;
mod wire;

use bytes::{BufMut, Bytes};

pub use body::{MAX_ACK_IDS, MAX_ADDRESSES, MAX_ROOM, MAX_TOKEN, MAX_VERSIONS, MIN_MAX_FRAME};
pub use head::{HEADER_LEN, Head};

use crate::error::{DecodeError, EncodeError};
use wire::{Reader, body_u32};

/// The frame type byte (`docs/PROTOCOL.md` § Frame types).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// Client hello / authentication.
    Hello = 0x01,
    /// Authentication succeeded.
    AuthOk = 0x02,
    /// Authentication failed.
    AuthFail = 0x03,
    /// Liveness probe.
    Ping = 0x04,
    /// Answer to a probe.
    Pong = 0x05,
    /// Server-to-client message.
    Push = 0x06,
    /// Client acknowledgement of pushes.
    Ack = 0x07,
    /// Client-to-backend request.
    Upstream = 0x08,
    /// Backend reply to an upstream request.
    UpstreamReply = 0x09,
    /// Session ended by the server for a user reason.
    Kick = 0x0A,
    /// Go-away: reconnect, possibly elsewhere.
    Redirect = 0x0B,
    /// Error about a request or the connection.
    Error = 0x0C,
    /// Client request to replace the session's token.
    Refresh = 0x0D,
    /// Server accepted a `REFRESH`.
    RefreshOk = 0x0E,
    /// Client request to become a member of a room.
    Join = 0x0F,
    /// Client request to stop being a member of a room.
    Leave = 0x10,
    /// Server accepted a `JOIN` or `LEAVE`.
    RoomOk = 0x11,
}

impl FrameType {
    /// Every frame type this version defines.
    pub const ALL: [FrameType; 17] = [
        FrameType::Hello,
        FrameType::AuthOk,
        FrameType::AuthFail,
        FrameType::Ping,
        FrameType::Pong,
        FrameType::Push,
        FrameType::Ack,
        FrameType::Upstream,
        FrameType::UpstreamReply,
        FrameType::Kick,
        FrameType::Redirect,
        FrameType::Error,
        FrameType::Refresh,
        FrameType::RefreshOk,
        FrameType::Join,
        FrameType::Leave,
        FrameType::RoomOk,
    ];

    /// The type for a byte, or `None` if this version does not define it.
    pub fn from_u8(byte: u8) -> Option<FrameType> {
        FrameType::ALL.iter().copied().find(|t| *t as u8 == byte)
    }

    /// "Types 0x80–0xFF are extensions": unknown ones are skipped, not fatal.
    pub fn is_extension(byte: u8) -> bool {
        byte >= 0x80
    }

    /// Which side sends this type.
    pub fn direction(self) -> Direction {
        use FrameType::*;
        match self {
            Hello | Ack | Upstream | Refresh | Join | Leave => Direction::ClientToServer,
            AuthOk | AuthFail | Push | UpstreamReply | Kick | Redirect | RefreshOk | RoomOk => {
                Direction::ServerToClient
            }
            Ping | Pong | Error => Direction::Both,
        }
    }
}

/// Which side of a connection may send a frame type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Only the client.
    ClientToServer,
    /// Only the server.
    ServerToClient,
    /// Either side.
    Both,
}

/// The client platform byte in `HELLO` (`docs/PROTOCOL.md` § Platforms).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Platform {
    /// Not given.
    #[default]
    Unknown = 0,
    /// iOS.
    Ios = 1,
    /// Android.
    Android = 2,
    /// Windows.
    Windows = 3,
    /// macOS.
    MacOs = 4,
    /// Linux.
    Linux = 5,
    /// A browser.
    Web = 6,
    /// Anything else; reserved values 8–255 decode to this.
    Other = 7,
}

impl Platform {
    /// Every platform, in wire order.
    pub const ALL: [Platform; 8] = [
        Platform::Unknown,
        Platform::Ios,
        Platform::Android,
        Platform::Windows,
        Platform::MacOs,
        Platform::Linux,
        Platform::Web,
        Platform::Other,
    ];

    /// Decode the platform byte; reserved values are [`Platform::Other`].
    pub fn from_u8(byte: u8) -> Platform {
        Platform::ALL.get(byte as usize).copied().unwrap_or(Platform::Other)
    }

    /// A short lower-case name, suitable for a bounded metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Unknown => "unknown",
            Platform::Ios => "ios",
            Platform::Android => "android",
            Platform::Windows => "windows",
            Platform::MacOs => "macos",
            Platform::Linux => "linux",
            Platform::Web => "web",
            Platform::Other => "other",
        }
    }
}

/// `HELLO`: the client's first frame (versions, heartbeat wish, frame limit, token, device).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Hello {
    /// Protocol versions the client speaks, most preferred first (1–16 entries).
    pub versions: Vec<u16>,
    /// Capability bits the client supports.
    pub capabilities: u32,
    /// The heartbeat interval the client would like, in ms; 0 = no preference.
    pub heartbeat_ms: u32,
    /// The largest frame (header + body) the client accepts, in bytes; 0 = the default
    /// 65,536; otherwise at least [`MIN_MAX_FRAME`] (1,024). The server never sends a larger
    /// frame ([`rules::client_max_frame`](crate::rules::client_max_frame)).
    pub max_frame: u32,
    /// The client platform.
    pub platform: Platform,
    /// The authentication token (a JWT for the Holdfast gateway), at most 8,192 bytes.
    pub token: String,
    /// A stable device or install identifier (at most 255 bytes).
    pub device_id: String,
    /// The client application's version (at most 255 bytes).
    pub app_version: String,
}

/// `AUTH_OK`: the server accepted the client.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AuthOk {
    /// The protocol version chosen.
    pub version: u16,
    /// The capability bits in force.
    pub capabilities: u32,
    /// This connection's cluster-unique id.
    pub conn_id: u64,
    /// The heartbeat interval granted, in ms.
    pub heartbeat_ms: u32,
    /// Silence after which the server closes the connection, in ms.
    pub idle_timeout_ms: u32,
    /// The largest frame (header + body) the server accepts, in bytes.
    pub max_frame: u32,
    /// The server's limit of unacknowledged `ACK_REQUIRED` pushes on this connection: a
    /// client that lets more go unacknowledged is closed with `SLOW_CONSUMER`.
    pub max_unacked: u32,
    /// When the server ends the session with `KICK` `TOKEN_EXPIRED_KICK` unless the token is
    /// refreshed first, wall-clock ms since the Unix epoch; 0 = never.
    pub token_expires_ms: u64,
    /// The server's wall clock when it sent the frame, ms since the Unix epoch.
    pub server_time_ms: u64,
}

/// `AUTH_FAIL`: the server refused the client; it closes next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthFail {
    /// Why (2xx, or `UNSUPPORTED_VERSION`).
    pub code: crate::Code,
    /// Detail for logs.
    pub reason: String,
}

/// `PING` or `PONG`: liveness probe and its echo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ping {
    /// The ping id (header `id`); a `PONG` echoes it.
    pub id: u32,
    /// Optional sender timestamp; a `PONG` echoes it.
    pub timestamp: Option<u64>,
}

/// `PUSH`: a message from the business backend to the client.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Push {
    /// Per-connection push sequence (header `id`), starting at 1.
    pub seq: u32,
    /// Flag `ACK_REQUIRED`.
    pub ack_required: bool,
    /// The backend's message id, stable across redeliveries.
    pub message_id: u64,
    /// Content type or topic (at most 255 bytes).
    pub topic: String,
    /// The message, opaque; zero-copy.
    pub payload: Bytes,
}

/// `ACK`: cumulative and selective acknowledgement of pushes.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Ack {
    /// Every push with sequence ≤ this has been processed (header `id`); 0 = none.
    pub cumulative: u32,
    /// Message ids received beyond the cumulative sequence (at most 1,024).
    pub message_ids: Vec<u64>,
}

/// `UPSTREAM`: a client request for the business backend.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Upstream {
    /// Request id (header `id`); 0 = no reply wanted.
    pub request_id: u32,
    /// Business route (at most 255 bytes).
    pub route: String,
    /// The request, opaque; zero-copy.
    pub payload: Bytes,
}

/// `UPSTREAM_REPLY`: the backend's answer to an `UPSTREAM`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct UpstreamReply {
    /// The request id answered (header `id`).
    pub request_id: u32,
    /// The backend's status (0 = success).
    pub status: u16,
    /// The reply, opaque; zero-copy.
    pub payload: Bytes,
}

/// `KICK`: the session ends for a reason about the user; the server closes next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kick {
    /// Why (3xx).
    pub code: crate::Code,
    /// Detail.
    pub reason: String,
}

/// `REDIRECT`: go away and reconnect after a jittered delay, possibly elsewhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// Why (4xx).
    pub code: crate::Code,
    /// Minimum wait before reconnecting, in ms.
    pub delay_ms: u32,
    /// Upper bound of the extra uniform random wait, in ms.
    pub jitter_ms: u32,
    /// Suggested gateways as `host:port`, best first (at most 16); empty = ask the scheduler.
    pub addresses: Vec<String>,
    /// Flag `OVERLAP`: make-before-break. The server keeps this connection open and keeps
    /// delivering on it until the client, connected and authenticated elsewhere, closes it.
    pub overlap: bool,
}

/// `ERROR`: a request failed, or (with `fatal`) the connection is about to close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorFrame {
    /// The request id concerned (header `id`), or 0.
    pub request_id: u32,
    /// Flag `FATAL`: the sender closes after this frame.
    pub fatal: bool,
    /// What went wrong.
    pub code: crate::Code,
    /// Detail.
    pub message: String,
}

/// `REFRESH`: the client replaces the session's token on the open connection.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Refresh {
    /// Request id (header `id`), chosen by the client; never 0.
    pub request_id: u32,
    /// The new token, at most 8,192 bytes.
    pub token: String,
}

/// `REFRESH_OK`: the server accepted a `REFRESH`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RefreshOk {
    /// The request id answered (header `id`).
    pub request_id: u32,
    /// The session's new expiry, as `AUTH_OK.token_expires_ms`; 0 = never.
    pub token_expires_ms: u64,
}

/// `JOIN` or `LEAVE`: the client asks to become, or stop being, a member of a room.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RoomRequest {
    /// Request id (header `id`), chosen by the client; never 0.
    pub request_id: u32,
    /// The room's name, 1–255 bytes.
    pub room: String,
}

/// `ROOM_OK`: the server accepted a `JOIN` or `LEAVE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RoomOk {
    /// The request id answered (header `id`).
    pub request_id: u32,
    /// How many rooms the connection is a member of after the request.
    pub rooms: u16,
}

/// An extension frame (type 0x80–0xFF) this version does not interpret; receivers skip it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension {
    /// The type byte (0x80–0xFF).
    pub kind: u8,
    /// The flags byte.
    pub flags: u8,
    /// The header `id`.
    pub id: u32,
    /// The body, opaque; zero-copy.
    pub body: Bytes,
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// `HELLO`.
    Hello(Hello),
    /// `AUTH_OK`.
    AuthOk(AuthOk),
    /// `AUTH_FAIL`.
    AuthFail(AuthFail),
    /// `PING`.
    Ping(Ping),
    /// `PONG`.
    Pong(Ping),
    /// `PUSH`.
    Push(Push),
    /// `ACK`.
    Ack(Ack),
    /// `UPSTREAM`.
    Upstream(Upstream),
    /// `UPSTREAM_REPLY`.
    UpstreamReply(UpstreamReply),
    /// `KICK`.
    Kick(Kick),
    /// `REDIRECT`.
    Redirect(Redirect),
    /// `ERROR`.
    Error(ErrorFrame),
    /// `REFRESH`.
    Refresh(Refresh),
    /// `REFRESH_OK`.
    RefreshOk(RefreshOk),
    /// `JOIN`.
    Join(RoomRequest),
    /// `LEAVE`.
    Leave(RoomRequest),
    /// `ROOM_OK`.
    RoomOk(RoomOk),
    /// An extension type this version does not interpret.
    Extension(Extension),
}

impl Frame {
    /// The header's type byte for this frame.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Hello(_) => FrameType::Hello as u8,
            Frame::AuthOk(_) => FrameType::AuthOk as u8,
            Frame::AuthFail(_) => FrameType::AuthFail as u8,
            Frame::Ping(_) => FrameType::Ping as u8,
            Frame::Pong(_) => FrameType::Pong as u8,
            Frame::Push(_) => FrameType::Push as u8,
            Frame::Ack(_) => FrameType::Ack as u8,
            Frame::Upstream(_) => FrameType::Upstream as u8,
            Frame::UpstreamReply(_) => FrameType::UpstreamReply as u8,
            Frame::Kick(_) => FrameType::Kick as u8,
            Frame::Redirect(_) => FrameType::Redirect as u8,
            Frame::Error(_) => FrameType::Error as u8,
            Frame::Refresh(_) => FrameType::Refresh as u8,
            Frame::RefreshOk(_) => FrameType::RefreshOk as u8,
            Frame::Join(_) => FrameType::Join as u8,
            Frame::Leave(_) => FrameType::Leave as u8,
            Frame::RoomOk(_) => FrameType::RoomOk as u8,
            Frame::Extension(e) => e.kind,
        }
    }

    /// The header this frame encodes with, after checking every field limit.
    pub fn head(&self) -> Result<Head, EncodeError> {
        let (len, flags, id) = match self {
            Frame::Hello(h) => (h.check()?, 0, 0),
            Frame::AuthOk(_) => (AuthOk::BODY_LEN, 0, 0),
            Frame::AuthFail(a) => (a.check()?, 0, 0),
            Frame::Ping(p) | Frame::Pong(p) => (p.body_len(), 0, p.id),
            Frame::Push(p) => (p.check()?, p.flags(), p.seq),
            Frame::Ack(a) => (a.check()?, 0, a.cumulative),
            Frame::Upstream(u) => (u.check()?, 0, u.request_id),
            Frame::UpstreamReply(u) => (u.body_len(), 0, u.request_id),
            Frame::Kick(k) => (k.check()?, 0, 0),
            Frame::Redirect(r) => (r.check()?, r.flags(), 0),
            Frame::Error(e) => (e.check()?, e.flags(), e.request_id),
            Frame::Refresh(r) => (r.check()?, 0, r.request_id),
            Frame::RefreshOk(r) => (RefreshOk::BODY_LEN, 0, r.request_id),
            Frame::Join(r) => (r.check(FrameType::Join)?, 0, r.request_id),
            Frame::Leave(r) => (r.check(FrameType::Leave)?, 0, r.request_id),
            Frame::RoomOk(r) => (RoomOk::BODY_LEN, 0, r.request_id),
            Frame::Extension(e) => {
                if !FrameType::is_extension(e.kind) {
                    return Err(EncodeError::NotExtension(e.kind));
                }
                (e.body.len(), e.flags, e.id)
            }
        };
        let frame = FrameType::from_u8(self.kind()).unwrap_or(FrameType::Error);
        Ok(Head { length: body_u32(frame, len)?, kind: self.kind(), flags, id })
    }

    /// The whole frame's size on the wire, header included.
    pub fn encoded_len(&self) -> Result<usize, EncodeError> {
        Ok(HEADER_LEN + self.head()?.length as usize)
    }

    /// Append the frame (header and body) to `dst`.
    ///
    /// Every limit is checked before the first byte is written: on error `dst` is unchanged.
    /// The caller makes sure `dst` has room (a `BytesMut` or `Vec<u8>` grows by itself).
    pub fn encode<B: BufMut>(&self, dst: &mut B) -> Result<(), EncodeError> {
        let head = self.head()?;
        head.encode(dst);
        match self {
            Frame::Hello(h) => h.put_body(dst),
            Frame::AuthOk(a) => a.put_body(dst),
            Frame::AuthFail(a) => a.put_body(dst),
            Frame::Ping(p) | Frame::Pong(p) => p.put_body(dst),
            Frame::Push(p) => p.put_body(dst),
            Frame::Ack(a) => a.put_body(dst),
            Frame::Upstream(u) => u.put_body(dst),
            Frame::UpstreamReply(u) => u.put_body(dst),
            Frame::Kick(k) => k.put_body(dst),
            Frame::Redirect(r) => r.put_body(dst),
            Frame::Error(e) => e.put_body(dst),
            Frame::Refresh(r) => r.put_body(dst),
            Frame::RefreshOk(r) => r.put_body(dst),
            Frame::Join(r) | Frame::Leave(r) => r.put_body(dst),
            Frame::RoomOk(r) => r.put_body(dst),
            Frame::Extension(e) => dst.put_slice(&e.body),
        }
        Ok(())
    }

    /// Parse a frame from its header and exactly `head.length` body bytes (zero-copy).
    ///
    /// An unknown critical type is [`DecodeError::UnknownType`]; an unknown extension type
    /// comes back as [`Frame::Extension`] for the caller to skip.
    pub fn decode(head: Head, body: Bytes) -> Result<Frame, DecodeError> {
        let Some(kind) = FrameType::from_u8(head.kind) else {
            if FrameType::is_extension(head.kind) {
                return Ok(Frame::Extension(Extension {
                    kind: head.kind,
                    flags: head.flags,
                    id: head.id,
                    body,
                }));
            }
            return Err(DecodeError::UnknownType(head.kind));
        };
        let r = Reader::new(kind, body);
        Ok(match kind {
            FrameType::Hello => Frame::Hello(Hello::read_body(r)?),
            FrameType::AuthOk => Frame::AuthOk(AuthOk::read_body(r)?),
            FrameType::AuthFail => Frame::AuthFail(AuthFail::read_body(r)?),
            FrameType::Ping => Frame::Ping(Ping::read_body(head.id, r)?),
            FrameType::Pong => Frame::Pong(Ping::read_body(head.id, r)?),
            FrameType::Push => Frame::Push(Push::read_body(head.id, head.flags, r)?),
            FrameType::Ack => Frame::Ack(Ack::read_body(head.id, r)?),
            FrameType::Upstream => Frame::Upstream(Upstream::read_body(head.id, r)?),
            FrameType::UpstreamReply => Frame::UpstreamReply(UpstreamReply::read_body(head.id, r)?),
            FrameType::Kick => Frame::Kick(Kick::read_body(r)?),
            FrameType::Redirect => Frame::Redirect(Redirect::read_body(head.flags, r)?),
            FrameType::Error => Frame::Error(ErrorFrame::read_body(head.id, head.flags, r)?),
            FrameType::Refresh => Frame::Refresh(Refresh::read_body(head.id, r)?),
            FrameType::RefreshOk => Frame::RefreshOk(RefreshOk::read_body(head.id, r)?),
            FrameType::Join => Frame::Join(RoomRequest::read_body(head.id, r)?),
            FrameType::Leave => Frame::Leave(RoomRequest::read_body(head.id, r)?),
            FrameType::RoomOk => Frame::RoomOk(RoomOk::read_body(head.id, r)?),
        })
    }
}
