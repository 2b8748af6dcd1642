//! The golden vectors of `docs/PROTOCOL.md` § Golden vectors: `tests/golden/<name>.txt`
//! (the fields, format in `tests/golden/README.md`) and `<name>.bin` (the exact bytes).
//!
//! For every vector the reference codec must encode the fields to exactly the bytes and
//! decode the bytes to exactly the fields. The `.txt` files are the source: run with
//! `HOLDFAST_BLESS=1` to (re)write the `.bin` files from them, then review the diff.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use holdfast_codec::{
    Ack, AuthFail, AuthOk, Code, DEFAULT_MAX_FRAME, ErrorFrame, Extension, Frame, FrameType,
    HEADER_LEN, Hello, Kick, Ping, Platform, Push, Redirect, Refresh, RefreshOk, RoomOk,
    RoomRequest, Upstream, UpstreamReply, decode, encode,
};

/// Fewer vectors than this means the directory was emptied, not found or lost a file: the
/// vectors `tests/golden/README.md` lists, which
/// `readme_and_spec_list_exactly_the_vectors_there_are` checks name for name.
const MIN_VECTORS: usize = 36;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("golden")
}

fn blessing() -> bool {
    std::env::var("HOLDFAST_BLESS").is_ok_and(|v| v == "1")
}

// ---------------------------------------------------------------------------------------
// The `.txt` format
// ---------------------------------------------------------------------------------------

/// The name a frame type has in `docs/PROTOCOL.md` and on the `type:` line.
fn wire_name(t: FrameType) -> &'static str {
    match t {
        FrameType::Hello => "HELLO",
        FrameType::AuthOk => "AUTH_OK",
        FrameType::AuthFail => "AUTH_FAIL",
        FrameType::Ping => "PING",
        FrameType::Pong => "PONG",
        FrameType::Push => "PUSH",
        FrameType::Ack => "ACK",
        FrameType::Upstream => "UPSTREAM",
        FrameType::UpstreamReply => "UPSTREAM_REPLY",
        FrameType::Kick => "KICK",
        FrameType::Redirect => "REDIRECT",
        FrameType::Error => "ERROR",
        FrameType::Refresh => "REFRESH",
        FrameType::RefreshOk => "REFRESH_OK",
        FrameType::Join => "JOIN",
        FrameType::Leave => "LEAVE",
        FrameType::RoomOk => "ROOM_OK",
    }
}

/// The flag bit each type defines (bit 0 in version 1), by name.
fn flag_name(t: FrameType) -> Option<&'static str> {
    match t {
        FrameType::Push => Some("ACK_REQUIRED"),
        FrameType::Error => Some("FATAL"),
        FrameType::Redirect => Some("OVERLAP"),
        _ => None,
    }
}

/// The `field: value` lines of one vector, consumed in order.
struct Lines<'a> {
    lines: std::vec::IntoIter<(&'a str, &'a str)>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Result<Lines<'a>, String> {
        if !text.ends_with('\n') || text.ends_with("\n\n") {
            return Err("the file must end with exactly one newline".into());
        }
        let mut lines = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let (key, value) = line
                .split_once(": ")
                .ok_or_else(|| format!("line {}: not `field: value`: {line:?}", n + 1))?;
            lines.push((key, value));
        }
        Ok(Lines { lines: lines.into_iter() })
    }

    /// The value of the next line, which must be `field`.
    fn take(&mut self, field: &str) -> Result<&'a str, String> {
        match self.lines.next() {
            Some((key, value)) if key == field => Ok(value),
            Some((key, _)) => Err(format!("expected field `{field}`, found `{key}`")),
            None => Err(format!("missing field `{field}`")),
        }
    }

    fn uint<T: TryFrom<u64>>(&mut self, field: &str) -> Result<T, String> {
        let v = self.take(field)?;
        parse_uint(v).map_err(|e| format!("{field}: {e}"))
    }

    fn string(&mut self, field: &str) -> Result<String, String> {
        parse_string(self.take(field)?).map_err(|e| format!("{field}: {e}"))
    }

    fn hex(&mut self, field: &str) -> Result<Bytes, String> {
        parse_hex(self.take(field)?).map(Bytes::from).map_err(|e| format!("{field}: {e}"))
    }

    fn list<T>(
        &mut self,
        field: &str,
        item: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        let items = parse_list(self.take(field)?).map_err(|e| format!("{field}: {e}"))?;
        items.iter().map(|s| item(s)).collect::<Result<_, _>>().map_err(|e| format!("{field}: {e}"))
    }

    /// `flags: [...]` for a known type: true if its one flag bit is set.
    fn flag(&mut self, t: FrameType) -> Result<bool, String> {
        let names = self.list("flags", |s| Ok(s.to_owned()))?;
        match names.as_slice() {
            [] => Ok(false),
            [name] if Some(name.as_str()) == flag_name(t) => Ok(true),
            other => Err(format!("flags: {other:?} are not the flags of {}", wire_name(t))),
        }
    }

    /// `id:` that a type without an id must give as 0.
    fn zero_id(&mut self) -> Result<(), String> {
        match self.uint::<u32>("id")? {
            0 => Ok(()),
            id => Err(format!("id: this type carries no id, but {id} is given")),
        }
    }

    fn done(mut self) -> Result<(), String> {
        match self.lines.next() {
            None => Ok(()),
            Some((key, _)) => Err(format!("unexpected extra field `{key}`")),
        }
    }
}

fn parse_uint<T: TryFrom<u64>>(s: &str) -> Result<T, String> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if !canonical {
        return Err(format!("{s:?} is not a decimal integer"));
    }
    let v: u64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    T::try_from(v).map_err(|_| format!("{v} is out of range"))
}

/// A JSON string literal: `"`, escapes `\" \\ \/ \b \f \n \r \t \uXXXX` (with surrogate
/// pairs), no raw control characters.
fn parse_string(s: &str) -> Result<String, String> {
    let inner = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .ok_or_else(|| format!("{s:?} is not a quoted string"))?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let e = chars.next().ok_or("dangling backslash")?;
                out.push(match e {
                    '"' => '"',
                    '\\' => '\\',
                    '/' => '/',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'u' => {
                        let hi = hex4(&mut chars)?;
                        let code = if (0xD800..0xDC00).contains(&hi) {
                            if chars.next() != Some('\\') || chars.next() != Some('u') {
                                return Err("unpaired surrogate".into());
                            }
                            let lo = hex4(&mut chars)?;
                            if !(0xDC00..0xE000).contains(&lo) {
                                return Err("unpaired surrogate".into());
                            }
                            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                        } else {
                            hi
                        };
                        char::from_u32(code).ok_or("invalid \\u escape")?
                    }
                    other => return Err(format!("unknown escape \\{other}")),
                });
            }
            '"' => return Err("unescaped quote inside a string".into()),
            c if c.is_control() && (c as u32) < 0x20 => {
                return Err("raw control character in a string".into());
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The four hex digits of a `\\u` escape.
fn hex4(chars: &mut std::str::Chars<'_>) -> Result<u32, String> {
    let digits: String = chars.take(4).collect();
    if digits.len() != 4 {
        return Err("short \\u escape".into());
    }
    u32::from_str_radix(&digits, 16).map_err(|e| e.to_string())
}

/// `hex:` followed by an even number of lower-case hex digits (possibly none).
fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let digits = s.strip_prefix("hex:").ok_or_else(|| format!("{s:?} does not start hex:"))?;
    if digits.len() % 2 != 0 || !digits.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!("{digits:?} is not lower-case hex bytes"));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

/// `[a, b, c]`: items separated by `, `; commas inside quoted strings do not split.
fn parse_list(s: &str) -> Result<Vec<String>, String> {
    let inner = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(|| format!("{s:?} is not a [list]"))?;
    if inner.is_empty() {
        return Ok(Vec::new());
    }
    let mut items = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in inner.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&inner[start..]);
    items
        .into_iter()
        .enumerate()
        .map(|(n, item)| {
            let item = if n == 0 { item } else { item.strip_prefix(' ').unwrap_or("\0") };
            if item.is_empty() || item.starts_with(' ') || item.ends_with(' ') || item == "\0" {
                Err(format!("list {s:?} is not `[a, b]`"))
            } else {
                Ok(item.to_owned())
            }
        })
        .collect()
}

/// Parse one vector into the frame it describes.
fn parse_vector(text: &str) -> Result<Frame, String> {
    let mut l = Lines::new(text)?;
    let type_name = l.take("type")?;
    if type_name == "EXTENSION" {
        let kind = l.uint("kind")?;
        let flags = l.uint("flags")?;
        let id = l.uint("id")?;
        let body = l.hex("body")?;
        l.done()?;
        return Ok(Frame::Extension(Extension { kind, flags, id, body }));
    }
    let t = FrameType::ALL
        .into_iter()
        .find(|t| wire_name(*t) == type_name)
        .ok_or_else(|| format!("unknown type {type_name:?}"))?;
    let flag = l.flag(t)?;
    let frame = match t {
        FrameType::Hello => {
            l.zero_id()?;
            Frame::Hello(Hello {
                versions: l.list("versions", parse_uint)?,
                capabilities: l.uint("capabilities")?,
                heartbeat_ms: l.uint("heartbeat_ms")?,
                max_frame: l.uint("max_frame")?,
                platform: {
                    let p: u8 = l.uint("platform")?;
                    let platform = Platform::from_u8(p);
                    if platform as u8 != p {
                        return Err(format!("platform {p} is reserved"));
                    }
                    platform
                },
                token: l.string("token")?,
                device_id: l.string("device_id")?,
                app_version: l.string("app_version")?,
            })
        }
        FrameType::AuthOk => {
            l.zero_id()?;
            Frame::AuthOk(AuthOk {
                version: l.uint("version")?,
                capabilities: l.uint("capabilities")?,
                conn_id: l.uint("conn_id")?,
                heartbeat_ms: l.uint("heartbeat_ms")?,
                idle_timeout_ms: l.uint("idle_timeout_ms")?,
                max_frame: l.uint("max_frame")?,
                max_unacked: l.uint("max_unacked")?,
                token_expires_ms: l.uint("token_expires_ms")?,
                server_time_ms: l.uint("server_time_ms")?,
            })
        }
        FrameType::AuthFail => {
            l.zero_id()?;
            Frame::AuthFail(AuthFail { code: Code(l.uint("code")?), reason: l.string("reason")? })
        }
        FrameType::Ping | FrameType::Pong => {
            let id = l.uint("id")?;
            let timestamp = match l.take("timestamp")? {
                "none" => None,
                v => Some(parse_uint(v).map_err(|e| format!("timestamp: {e}"))?),
            };
            let ping = Ping { id, timestamp };
            if t == FrameType::Ping { Frame::Ping(ping) } else { Frame::Pong(ping) }
        }
        FrameType::Push => Frame::Push(Push {
            seq: l.uint("id")?,
            ack_required: flag,
            message_id: l.uint("message_id")?,
            topic: l.string("topic")?,
            payload: l.hex("payload")?,
        }),
        FrameType::Ack => Frame::Ack(Ack {
            cumulative: l.uint("id")?,
            message_ids: l.list("message_ids", parse_uint)?,
        }),
        FrameType::Upstream => Frame::Upstream(Upstream {
            request_id: l.uint("id")?,
            route: l.string("route")?,
            payload: l.hex("payload")?,
        }),
        FrameType::UpstreamReply => Frame::UpstreamReply(UpstreamReply {
            request_id: l.uint("id")?,
            status: l.uint("status")?,
            payload: l.hex("payload")?,
        }),
        FrameType::Kick => {
            l.zero_id()?;
            Frame::Kick(Kick { code: Code(l.uint("code")?), reason: l.string("reason")? })
        }
        FrameType::Redirect => {
            l.zero_id()?;
            Frame::Redirect(Redirect {
                code: Code(l.uint("code")?),
                delay_ms: l.uint("delay_ms")?,
                jitter_ms: l.uint("jitter_ms")?,
                addresses: l.list("addresses", parse_string)?,
                overlap: flag,
            })
        }
        FrameType::Error => Frame::Error(ErrorFrame {
            request_id: l.uint("id")?,
            fatal: flag,
            code: Code(l.uint("code")?),
            message: l.string("message")?,
        }),
        FrameType::Refresh => {
            Frame::Refresh(Refresh { request_id: l.uint("id")?, token: l.string("token")? })
        }
        FrameType::RefreshOk => Frame::RefreshOk(RefreshOk {
            request_id: l.uint("id")?,
            token_expires_ms: l.uint("token_expires_ms")?,
        }),
        FrameType::Join => {
            Frame::Join(RoomRequest { request_id: l.uint("id")?, room: l.string("room")? })
        }
        FrameType::Leave => {
            Frame::Leave(RoomRequest { request_id: l.uint("id")?, room: l.string("room")? })
        }
        FrameType::RoomOk => {
            Frame::RoomOk(RoomOk { request_id: l.uint("id")?, rooms: l.uint("rooms")? })
        }
    };
    l.done()?;
    Ok(frame)
}

fn quote(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn hex(bytes: &[u8]) -> String {
    let digits: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("hex:{digits}")
}

fn list<T>(items: &[T], item: impl Fn(&T) -> String) -> String {
    format!("[{}]", items.iter().map(item).collect::<Vec<_>>().join(", "))
}

/// The canonical `.txt` of a frame: what every vector file must contain byte for byte.
fn format_vector(frame: &Frame) -> String {
    let mut f: Vec<(&str, String)> = Vec::new();
    if let Frame::Extension(e) = frame {
        f.push(("type", "EXTENSION".into()));
        f.push(("kind", e.kind.to_string()));
        f.push(("flags", e.flags.to_string()));
        f.push(("id", e.id.to_string()));
        f.push(("body", hex(&e.body)));
    } else {
        let t = FrameType::from_u8(frame.kind()).unwrap();
        let head = frame.head().unwrap();
        let flags = match flag_name(t) {
            Some(name) if head.flags & 1 != 0 => format!("[{name}]"),
            _ => "[]".into(),
        };
        f.push(("type", wire_name(t).into()));
        f.push(("flags", flags));
        f.push(("id", head.id.to_string()));
        match frame {
            Frame::Hello(h) => {
                f.push(("versions", list(&h.versions, u16::to_string)));
                f.push(("capabilities", h.capabilities.to_string()));
                f.push(("heartbeat_ms", h.heartbeat_ms.to_string()));
                f.push(("max_frame", h.max_frame.to_string()));
                f.push(("platform", (h.platform as u8).to_string()));
                f.push(("token", quote(&h.token)));
                f.push(("device_id", quote(&h.device_id)));
                f.push(("app_version", quote(&h.app_version)));
            }
            Frame::AuthOk(a) => {
                f.push(("version", a.version.to_string()));
                f.push(("capabilities", a.capabilities.to_string()));
                f.push(("conn_id", a.conn_id.to_string()));
                f.push(("heartbeat_ms", a.heartbeat_ms.to_string()));
                f.push(("idle_timeout_ms", a.idle_timeout_ms.to_string()));
                f.push(("max_frame", a.max_frame.to_string()));
                f.push(("max_unacked", a.max_unacked.to_string()));
                f.push(("token_expires_ms", a.token_expires_ms.to_string()));
                f.push(("server_time_ms", a.server_time_ms.to_string()));
            }
            Frame::AuthFail(AuthFail { code, reason }) | Frame::Kick(Kick { code, reason }) => {
                f.push(("code", code.0.to_string()));
                f.push(("reason", quote(reason)));
            }
            Frame::Ping(p) | Frame::Pong(p) => {
                let ts = p.timestamp.map_or_else(|| "none".into(), |t| t.to_string());
                f.push(("timestamp", ts));
            }
            Frame::Push(p) => {
                f.push(("message_id", p.message_id.to_string()));
                f.push(("topic", quote(&p.topic)));
                f.push(("payload", hex(&p.payload)));
            }
            Frame::Ack(a) => f.push(("message_ids", list(&a.message_ids, u64::to_string))),
            Frame::Upstream(u) => {
                f.push(("route", quote(&u.route)));
                f.push(("payload", hex(&u.payload)));
            }
            Frame::UpstreamReply(u) => {
                f.push(("status", u.status.to_string()));
                f.push(("payload", hex(&u.payload)));
            }
            Frame::Redirect(r) => {
                f.push(("code", r.code.0.to_string()));
                f.push(("delay_ms", r.delay_ms.to_string()));
                f.push(("jitter_ms", r.jitter_ms.to_string()));
                f.push(("addresses", list(&r.addresses, |a| quote(a))));
            }
            Frame::Error(e) => {
                f.push(("code", e.code.0.to_string()));
                f.push(("message", quote(&e.message)));
            }
            Frame::Refresh(r) => f.push(("token", quote(&r.token))),
            Frame::RefreshOk(r) => f.push(("token_expires_ms", r.token_expires_ms.to_string())),
            Frame::Join(r) | Frame::Leave(r) => f.push(("room", quote(&r.room))),
            Frame::RoomOk(r) => f.push(("rooms", r.rooms.to_string())),
            Frame::Extension(_) => unreachable!("handled above"),
        }
    }
    f.into_iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
}

// ---------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------

struct Vector {
    name: String,
    text: String,
    frame: Frame,
    bin: Vec<u8>,
}

fn encode_frame(frame: &Frame) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(frame, &mut buf).unwrap_or_else(|e| panic!("{frame:?} does not encode: {e}"));
    buf.to_vec()
}

/// Every vector in the directory, sorted by name, loaded once for all tests (so blessing
/// writes each file once). Panics listing every problem found.
fn load_vectors() -> &'static [Vector] {
    static VECTORS: OnceLock<Vec<Vector>> = OnceLock::new();
    VECTORS.get_or_init(read_vectors)
}

/// Read the directory; in bless mode write the `.bin` files from the `.txt` files first.
fn read_vectors() -> Vec<Vector> {
    let dir = golden_dir();
    let mut files: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let (Some(stem), Some(ext)) = (path.file_stem(), path.extension()) else { continue };
        let slot = files.entry(stem.to_string_lossy().into_owned()).or_default();
        match ext.to_str() {
            Some("txt") => slot.0 = true,
            Some("bin") => slot.1 = true,
            _ => {}
        }
    }
    files.remove("README");

    let mut problems = Vec::new();
    let mut vectors = Vec::new();
    for (name, (has_txt, has_bin)) in files {
        if !has_txt {
            problems.push(format!("{name}.bin has no {name}.txt"));
            continue;
        }
        let text = fs::read_to_string(dir.join(format!("{name}.txt"))).unwrap();
        let frame = match parse_vector(&text) {
            Ok(frame) => frame,
            Err(e) => {
                problems.push(format!("{name}.txt: {e}"));
                continue;
            }
        };
        let bin_path = dir.join(format!("{name}.bin"));
        if blessing() {
            fs::write(&bin_path, encode_frame(&frame)).unwrap();
        } else if !has_bin {
            problems.push(format!("{name}.txt has no {name}.bin (run with HOLDFAST_BLESS=1)"));
            continue;
        }
        let bin = fs::read(&bin_path).unwrap();
        vectors.push(Vector { name, text, frame, bin });
    }
    assert!(problems.is_empty(), "golden vector problems:\n  {}", problems.join("\n  "));
    assert!(
        vectors.len() >= MIN_VECTORS,
        "only {} golden vectors in {}; expected at least {MIN_VECTORS}",
        vectors.len(),
        dir.display()
    );
    vectors
}

fn find<'a>(vectors: &'a [Vector], name: &str) -> &'a Vector {
    vectors.iter().find(|v| v.name == name).unwrap_or_else(|| panic!("no vector {name}"))
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn every_vector_encodes_and_decodes_byte_exact() {
    let vectors = load_vectors();
    let mut failures = Vec::new();
    for v in vectors {
        let encoded = encode_frame(&v.frame);
        if encoded != v.bin {
            failures.push(format!(
                "{}: encode gives\n    {}\n  but {}.bin holds\n    {}",
                v.name,
                hex(&encoded),
                v.name,
                hex(&v.bin)
            ));
        }
        let mut src = BytesMut::from(&v.bin[..]);
        match decode(&mut src, DEFAULT_MAX_FRAME) {
            Ok(Some(frame)) if frame == v.frame && src.is_empty() => {}
            other => failures.push(format!(
                "{}: decode gives {other:?} with {} bytes left, expected {:?}",
                v.name,
                src.len(),
                v.frame
            )),
        }
        let canonical = format_vector(&v.frame);
        if canonical != v.text {
            failures.push(format!("{}.txt is not canonical; it should read:\n{canonical}", v.name));
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn vectors_cover_every_frame_type_and_the_listed_variants() {
    let vectors = load_vectors();
    let frames: Vec<&Frame> = vectors.iter().map(|v| &v.frame).collect();
    for t in FrameType::ALL {
        assert!(
            frames.iter().any(|f| f.kind() == t as u8),
            "no golden vector of type {}",
            wire_name(t)
        );
    }
    let has = |what: &str, pred: &dyn Fn(&Frame) -> bool| {
        assert!(frames.iter().any(|f| pred(f)), "no golden vector with {what}");
    };
    has("HELLO with several versions", &|f| matches!(f, Frame::Hello(h) if h.versions.len() > 1));
    has("HELLO with the default max_frame", &|f| matches!(f, Frame::Hello(h) if h.max_frame == 0));
    has("HELLO with a max_frame", &|f| matches!(f, Frame::Hello(h) if h.max_frame != 0));
    has(
        "AUTH_OK with a token expiry",
        &|f| matches!(f, Frame::AuthOk(a) if a.token_expires_ms != 0),
    );
    has("AUTH_OK without one", &|f| matches!(f, Frame::AuthOk(a) if a.token_expires_ms == 0));
    has("REFRESH_OK", &|f| matches!(f, Frame::RefreshOk(_)));
    has(
        "ERROR refusing a refresh",
        &|f| matches!(f, Frame::Error(e) if !e.fatal && e.request_id != 0 && e.code.0 / 100 == 2),
    );
    has(
        "ERROR refusing a room request",
        &|f| matches!(f, Frame::Error(e) if !e.fatal && e.request_id != 0 && e.code.0 / 100 == 7),
    );
    has("JOIN", &|f| matches!(f, Frame::Join(_)));
    has("LEAVE", &|f| matches!(f, Frame::Leave(_)));
    has("ROOM_OK", &|f| matches!(f, Frame::RoomOk(_)));
    has(
        "ERROR answering an upstream",
        &|f| matches!(f, Frame::Error(e) if !e.fatal && e.request_id != 0 && e.code.0 / 100 == 5),
    );
    has("PING without timestamp", &|f| matches!(f, Frame::Ping(p) if p.timestamp.is_none()));
    has("PING with timestamp", &|f| matches!(f, Frame::Ping(p) if p.timestamp.is_some()));
    has("PONG", &|f| matches!(f, Frame::Pong(_)));
    has(
        "PUSH ack_required with a binary payload",
        &|f| matches!(f, Frame::Push(p) if p.ack_required && std::str::from_utf8(&p.payload).is_err()),
    );
    has("PUSH without ack_required", &|f| matches!(f, Frame::Push(p) if !p.ack_required));
    has("ACK with ids", &|f| matches!(f, Frame::Ack(a) if !a.message_ids.is_empty()));
    has("ACK without ids", &|f| matches!(f, Frame::Ack(a) if a.message_ids.is_empty()));
    has("UPSTREAM fire-and-forget", &|f| matches!(f, Frame::Upstream(u) if u.request_id == 0));
    has("UPSTREAM with a request id", &|f| matches!(f, Frame::Upstream(u) if u.request_id != 0));
    has("ERROR fatal", &|f| matches!(f, Frame::Error(e) if e.fatal));
    has("ERROR non-fatal", &|f| matches!(f, Frame::Error(e) if !e.fatal && e.request_id != 0));
    has(
        "REDIRECT without addresses",
        &|f| matches!(f, Frame::Redirect(r) if r.addresses.is_empty()),
    );
    has("REDIRECT with 2 addresses, one [::1]:7100", &|f| {
        matches!(f, Frame::Redirect(r) if r.addresses.len() == 2
            && r.addresses.iter().any(|a| a == "[::1]:7100"))
    });
    has("EXTENSION 0x80", &|f| matches!(f, Frame::Extension(e) if e.kind == 0x80));
    has("non-ASCII text", &|f| {
        matches!(f, Frame::Kick(k) if !k.reason.is_ascii())
            || matches!(f, Frame::Hello(h) if !h.device_id.is_ascii())
    });
}

#[test]
fn every_vector_split_at_every_byte_waits_then_decodes() {
    for v in load_vectors() {
        for at in 0..v.bin.len() {
            let mut src = BytesMut::from(&v.bin[..at]);
            assert_eq!(decode(&mut src, DEFAULT_MAX_FRAME), Ok(None), "{} cut at {at}", v.name);
            assert_eq!(&src[..], &v.bin[..at], "{} cut at {at}: consumed bytes", v.name);
            src.extend_from_slice(&v.bin[at..]);
            let got = decode(&mut src, DEFAULT_MAX_FRAME);
            assert_eq!(got, Ok(Some(v.frame.clone())), "{} cut at {at}", v.name);
            assert!(src.is_empty(), "{} cut at {at}: bytes left", v.name);
        }
    }
}

#[test]
fn all_vectors_as_one_stream_decode_in_order() {
    let vectors = load_vectors();
    let mut stream = BytesMut::new();
    for v in vectors {
        stream.extend_from_slice(&v.bin);
    }
    for v in vectors {
        assert_eq!(decode(&mut stream, DEFAULT_MAX_FRAME), Ok(Some(v.frame.clone())), "{}", v.name);
    }
    assert_eq!(decode(&mut stream, DEFAULT_MAX_FRAME), Ok(None));
    assert!(stream.is_empty());
}

/// A few vectors assembled by hand from the tables in `docs/PROTOCOL.md`, so the vectors
/// are checked against the spec and not only against the codec that blessed them.
#[test]
fn vectors_match_the_byte_layout_written_in_the_spec() {
    let vectors = load_vectors();
    let mut ping = vec![0, 0, 0, 8, 0x04, 0, 0, 0, 0, 7];
    ping.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
    assert_eq!(find(vectors, "ping_timestamp").bin, ping);
    assert_eq!(find(vectors, "ping_empty").bin, [0, 0, 0, 0, 0x04, 0, 0, 0, 0, 1]);
    assert_eq!(find(vectors, "pong_empty").bin, [0, 0, 0, 0, 0x05, 0, 0, 0, 0, 1]);

    // PUSH: header (length 26, type 6, flag ACK_REQUIRED, seq 1), message_id u64,
    // topic str8 "chat.msg", payload rest.
    let mut push = vec![0, 0, 0, 26, 0x06, 0x01, 0, 0, 0, 1];
    push.extend_from_slice(&1_234_567_890_123u64.to_be_bytes());
    push.push(8);
    push.extend_from_slice(b"chat.msg");
    push.extend_from_slice(&[0x00, 0xff, 0x10, 0x20, 0x0a, 0x0d, 0x7f, 0x80, 0xc3]);
    assert_eq!(find(vectors, "push_ack_required_binary").bin, push);

    // REDIRECT: code u16, delay_ms u32, jitter_ms u32, u8 count, count × str8.
    let a = b"gw-7.example.net:7100";
    let b = b"[::1]:7100";
    let len = 2 + 4 + 4 + 1 + 1 + a.len() + 1 + b.len();
    let mut redirect = vec![0, 0, 0, len as u8, 0x0B, 0, 0, 0, 0, 0];
    redirect.extend_from_slice(&401u16.to_be_bytes());
    redirect.extend_from_slice(&1000u32.to_be_bytes());
    redirect.extend_from_slice(&5000u32.to_be_bytes());
    redirect.push(2);
    redirect.push(a.len() as u8);
    redirect.extend_from_slice(a);
    redirect.push(b.len() as u8);
    redirect.extend_from_slice(b);
    assert_eq!(find(vectors, "redirect_two_addresses").bin, redirect);
    // REDIRECT with OVERLAP: flag bit 0 in the header, the body as above.
    let one = b"10.0.0.7:7100";
    let mut overlap = vec![0, 0, 0, (11 + 1 + one.len()) as u8, 0x0B, 1, 0, 0, 0, 0];
    overlap.extend_from_slice(&401u16.to_be_bytes());
    overlap.extend_from_slice(&0u32.to_be_bytes());
    overlap.extend_from_slice(&5000u32.to_be_bytes());
    overlap.push(1);
    overlap.push(one.len() as u8);
    overlap.extend_from_slice(one);
    assert_eq!(find(vectors, "redirect_overlap").bin, overlap);

    // ACK: header id = cumulative, u16 count, count × u64.
    let ack = &find(vectors, "ack_cumulative").bin;
    assert_eq!(ack, &[0, 0, 0, 2, 0x07, 0, 0, 0, 0, 32, 0, 0]);

    // ERROR fatal: flag bit 0.
    let error = &find(vectors, "error_fatal").bin;
    assert_eq!(&error[4..10], &[0x0C, 0x01, 0, 0, 0, 0]);
    assert_eq!(&error[10..12], &107u16.to_be_bytes());

    // HELLO: versions, capabilities, heartbeat_ms, max_frame, platform, token str16,
    // device_id str8, app_version str8.
    let hello = &find(vectors, "hello_two_versions").bin;
    assert_eq!(hello[4], 0x01);
    let body = &hello[HEADER_LEN..];
    assert_eq!(&body[..5], &[2, 0, 2, 0, 1]);
    assert_eq!(&body[5..9], &0u32.to_be_bytes());
    assert_eq!(&body[9..13], &240_000u32.to_be_bytes());
    assert_eq!(&body[13..17], &0u32.to_be_bytes(), "max_frame 0: the default");
    assert_eq!(body[17], 1);
    let token_len = usize::from(u16::from_be_bytes([body[18], body[19]]));
    let device = &body[20 + token_len..];
    assert_eq!(usize::from(device[0]), "Zoë’s iPhone".len());
    assert_eq!(&device[1..=device[0] as usize], "Zoë’s iPhone".as_bytes());
    assert_eq!(&body[body.len() - 6..], b"\x055.2.1");
    let hello = &find(vectors, "hello_max_frame").bin;
    assert_eq!(&hello[HEADER_LEN + 11..HEADER_LEN + 15], &1_024u32.to_be_bytes());

    // AUTH_OK: version u16, capabilities u32, conn_id u64, heartbeat_ms u32,
    // idle_timeout_ms u32, max_frame u32, max_unacked u32, token_expires_ms u64,
    // server_time_ms u64; no flags.
    let mut auth_ok = vec![0, 0, 0, 46, 0x02, 0, 0, 0, 0, 0];
    auth_ok.extend_from_slice(&1u16.to_be_bytes());
    auth_ok.extend_from_slice(&0u32.to_be_bytes());
    auth_ok.extend_from_slice(&72_058_697_861_300_225u64.to_be_bytes());
    auth_ok.extend_from_slice(&30_000u32.to_be_bytes());
    auth_ok.extend_from_slice(&90_000u32.to_be_bytes());
    auth_ok.extend_from_slice(&65_536u32.to_be_bytes());
    auth_ok.extend_from_slice(&1_024u32.to_be_bytes());
    auth_ok.extend_from_slice(&1_700_003_600_000u64.to_be_bytes());
    auth_ok.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
    assert_eq!(find(vectors, "auth_ok").bin, auth_ok);

    // REFRESH: header id = request id, token str16. REFRESH_OK: the same id,
    // token_expires_ms u64. The refusal: ERROR, no FATAL flag, the same id, code 202.
    let refresh = &find(vectors, "refresh").bin;
    assert_eq!(&refresh[4..10], &[0x0D, 0, 0, 0, 0, 3]);
    let token_len = usize::from(u16::from_be_bytes([refresh[10], refresh[11]]));
    assert_eq!(refresh.len(), HEADER_LEN + 2 + token_len);
    let mut refresh_ok = vec![0, 0, 0, 8, 0x0E, 0, 0, 0, 0, 3];
    refresh_ok.extend_from_slice(&1_700_007_200_000u64.to_be_bytes());
    assert_eq!(find(vectors, "refresh_ok").bin, refresh_ok);
    let refused = &find(vectors, "error_refresh_refused").bin;
    assert_eq!(&refused[4..12], &[0x0C, 0, 0, 0, 0, 3, 0, 202]);

    // JOIN and LEAVE: header id = request id, room str8. ROOM_OK: the same id, rooms u16.
    // The refusal: ERROR, no FATAL flag, the request id, code 701, message str16.
    let mut join = vec![0, 0, 0, 8, 0x0F, 0, 0, 0, 0, 7, 7];
    join.extend_from_slice(b"live/42");
    assert_eq!(find(vectors, "join").bin, join);
    let mut leave = vec![0, 0, 0, 8, 0x10, 0, 0, 0, 0, 8, 7];
    leave.extend_from_slice(b"live/42");
    assert_eq!(find(vectors, "leave").bin, leave);
    assert_eq!(find(vectors, "room_ok").bin, [0, 0, 0, 2, 0x11, 0, 0, 0, 0, 7, 0, 1]);
    let mut forbidden = vec![0, 0, 0, 20, 0x0C, 0, 0, 0, 0, 9, 0x02, 0xBD, 0, 16];
    forbidden.extend_from_slice(b"room not allowed");
    assert_eq!(find(vectors, "error_room_forbidden").bin, forbidden);

    // EXTENSION: the header as given, the body as is.
    assert_eq!(
        find(vectors, "extension_0x80").bin,
        [0, 0, 0, 4, 0x80, 0, 0, 0, 0, 9, 0xde, 0xad, 0xbe, 0xef]
    );
}

#[test]
fn protocol_md_describes_every_frame_type() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/PROTOCOL.md");
    let spec = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for t in FrameType::ALL {
        let name = wire_name(t);
        let byte = t as u8;
        let heading = format!("`{name}` (0x{byte:02X})");
        assert!(spec.contains(&heading), "PROTOCOL.md has no section for {heading}");
        let row = format!("| `0x{byte:02X}` | `{name}` |");
        assert!(spec.contains(&row), "PROTOCOL.md § Frame types has no row {row}");
    }
    assert!(spec.contains("`0x80`–`0xFF`"), "PROTOCOL.md does not define the extension range");
    assert!(spec.contains("codec/tests/golden/"), "PROTOCOL.md does not point at the vectors");
}

/// The section of `spec` under `heading`, up to the next `## `.
fn section<'a>(spec: &'a str, heading: &str) -> &'a str {
    let start = spec.find(heading).unwrap_or_else(|| panic!("PROTOCOL.md has no {heading:?}"));
    let rest = &spec[start + heading.len()..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

#[test]
fn protocol_md_registries_cover_every_type_byte_flag_and_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/PROTOCOL.md");
    let spec = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));

    // Opcode registry: one row per assigned type, then the reserved and extension ranges,
    // which together cover every byte 0x00-0xFF.
    let opcodes = section(&spec, "\n## Opcode registry\n");
    let mut covered = vec![false; 256];
    for line in opcodes.lines().filter(|l| l.starts_with("| `0x")) {
        let cell = line.split(" | ").next().unwrap().trim_start_matches("| ");
        let bytes: Vec<u8> = cell
            .split('–')
            .map(|b| u8::from_str_radix(b.trim_matches('`').trim_start_matches("0x"), 16).unwrap())
            .collect();
        let (lo, hi) = (bytes[0], *bytes.last().unwrap());
        for b in lo..=hi {
            assert!(!covered[usize::from(b)], "type {b:#04x} is in two rows");
            covered[usize::from(b)] = true;
        }
        if let Some(t) = FrameType::from_u8(lo) {
            assert_eq!(lo, hi);
            assert!(line.contains(&format!("`{}`", wire_name(t))), "row {line:?}");
        }
    }
    assert!(covered.iter().all(|c| *c), "the opcode registry misses a type byte");
    assert!(opcodes.contains("| `0x80`–`0xFF` |") && opcodes.contains("| `0x12`–`0x7F` |"));

    // Flag registry: the defined bits by name; AUTH_OK bit 0 reserved.
    let flags = section(&spec, "\n## Flag registry\n");
    for t in FrameType::ALL {
        let row = flags
            .lines()
            .find(|l| l.starts_with("| ") && l.split(" | ").next().unwrap().contains(wire_name(t)))
            .unwrap_or_else(|| panic!("no flag registry row for {}", wire_name(t)));
        match flag_name(t) {
            Some(name) => assert!(row.contains(&format!("| `{name}`")), "{row}"),
            None => assert!(row.contains("| reserved"), "{row}"),
        }
    }

    // Code registry: every code with its number and name, nothing else.
    let codes = section(&spec, "\n## Codes\n");
    let rows: Vec<&str> =
        codes.lines().filter(|l| l.starts_with("| ") && l.contains(" | `")).collect();
    for code in Code::ALL {
        let row = format!("| {} | `{}` |", code.0, code.name().unwrap());
        assert!(rows.iter().any(|r| r.starts_with(&row)), "PROTOCOL.md § Codes has no row {row}");
    }
    let numbered = rows
        .iter()
        .filter(|r| r[2..].split(" | ").next().is_some_and(|c| c.parse::<u16>().is_ok()))
        .count();
    assert_eq!(numbered, Code::ALL.len(), "the codes table lists a code the crate does not know");
}

/// Every backticked vector name in the first cell of the table rows of `text` after
/// `heading`, up to the next heading of the same level.
fn listed_vectors(text: &str, heading: &str) -> Vec<String> {
    let start = text.find(heading).unwrap_or_else(|| panic!("no section {heading:?}"));
    let level = heading.split(' ').next().unwrap_or("#");
    let section = &text[start + heading.len()..];
    let end = section.find(&format!("\n{level} ")).unwrap_or(section.len());
    let mut names = Vec::new();
    for line in section[..end].lines() {
        let Some(cell) = line.strip_prefix("| ").and_then(|l| l.split(" |").next()) else {
            continue;
        };
        names.extend(cell.split('`').skip(1).step_by(2).map(str::to_owned));
    }
    names.sort();
    names
}

#[test]
fn readme_and_spec_list_exactly_the_vectors_there_are() {
    let mut have: Vec<String> = load_vectors().iter().map(|v| v.name.clone()).collect();
    have.sort();
    assert_eq!(have.len(), MIN_VECTORS, "update MIN_VECTORS with the vectors");
    let readme = fs::read_to_string(golden_dir().join("README.md")).unwrap();
    assert_eq!(listed_vectors(&readme, "## The vectors"), have, "README.md § The vectors");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/PROTOCOL.md");
    let spec = fs::read_to_string(path).unwrap();
    assert_eq!(listed_vectors(&spec, "## Golden vectors"), have, "PROTOCOL.md § Golden vectors");
}

#[test]
fn the_vector_parser_is_strict() {
    let good = "type: PING\nflags: []\nid: 1\ntimestamp: none\n";
    assert_eq!(parse_vector(good), Ok(Frame::Ping(Ping { id: 1, timestamp: None })));
    let bad = [
        "",
        "type: PING\nflags: []\nid: 1\ntimestamp: none",
        "type: PING\nflags: []\nid: 1\ntimestamp: none\n\n",
        "type: PING\nflags: []\nid: 1\n",
        "type: PING\nid: 1\nflags: []\ntimestamp: none\n",
        "type: PING\nflags: []\nid: 1\ntimestamp: none\nextra: 1\n",
        "type: PING\nflags: [FATAL]\nid: 1\ntimestamp: none\n",
        "type: PING\nflags: []\nid: 01\ntimestamp: none\n",
        "type: PING\nflags: []\nid: -1\ntimestamp: none\n",
        "type: PING\nflags: []\nid: 4294967296\ntimestamp: none\n",
        "type: PONGG\nflags: []\nid: 1\ntimestamp: none\n",
        "type: KICK\nflags: []\nid: 3\ncode: 301\nreason: \"x\"\n",
        "type: KICK\nflags: []\nid: 0\ncode: 301\nreason: x\n",
        "type: KICK\nflags: []\nid: 0\ncode: 301\nreason: \"\\q\"\n",
        "type: PUSH\nflags: []\nid: 1\nmessage_id: 1\ntopic: \"\"\npayload: hex:0\n",
        "type: PUSH\nflags: []\nid: 1\nmessage_id: 1\ntopic: \"\"\npayload: hex:AB\n",
        "type: PUSH\nflags: []\nid: 1\nmessage_id: 1\ntopic: \"\"\npayload: 0a\n",
        "type: ACK\nflags: []\nid: 1\nmessage_ids: [1,2]\n",
        "type: ACK\nflags: []\nid: 1\nmessage_ids: [1, ]\n",
        "type: EXTENSION\nkind: 128\nflags: 256\nid: 0\nbody: hex:\n",
    ];
    for text in bad {
        assert!(parse_vector(text).is_err(), "accepted {text:?}");
    }
    let addresses = r#"["a, b", "[::1]:7100", "q\"\\"]"#;
    assert_eq!(
        parse_list(addresses).unwrap().iter().map(|s| parse_string(s).unwrap()).collect::<Vec<_>>(),
        ["a, b", "[::1]:7100", "q\"\\"]
    );
    assert_eq!(parse_string(r#""\ud83d\ude00\u00e9""#).unwrap(), "😀é");
    assert_eq!(quote("a\"\\\n\u{1}é"), r#""a\"\\\n\u0001é""#);
}
