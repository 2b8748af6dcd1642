//! One user's sessions packed into one allocation.
//!
//! A status node holds a million users with about one session each, so what a session
//! costs is the table's memory. A [`Record`] is a single boxed byte string:
//!
//! ```text
//! user_len u16 | user bytes | session*
//! session = conn u64 | login_ms u64 | generation u64 | gateway u16 | platform u8
//!         | device_len u8 | device bytes
//! ```
//!
//! (integers little-endian, unaligned). A user with one session and the ids of a typical
//! app (a 12-byte user id, an 8-byte device id) fits in one 64-byte allocator chunk, where a
//! map of `Box<str>` to `Vec<Session>` took four allocations. Records are rebuilt, never
//! edited in place: presence writes are rare per user, lookups are what must be cheap, and
//! they read the bytes directly.

use crate::types::{GatewayId, Generation, MAX_DEVICE_LEN, Session};

/// Fixed bytes of one packed session (before its device id).
const SESSION_FIXED: usize = 8 + 8 + 8 + 2 + 1 + 1;

/// The longest user id a record can hold (`types::MAX_USER_LEN` is far below it).
const MAX_KEY: usize = u16::MAX as usize;

/// One user's sessions; see the module doc for the layout.
#[derive(Debug)]
pub(super) struct Record(Box<[u8]>);

/// A packed session, read in place.
#[derive(Clone, Copy, Debug)]
pub(super) struct View<'a> {
    /// The session's bytes in its record (for copying it into a rebuilt record).
    bytes: &'a [u8],
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl<'a> View<'a> {
    /// The connection id.
    pub(super) fn conn(&self) -> u64 {
        u64_at(self.bytes, 0)
    }

    /// The login time, ms since the Unix epoch.
    fn login_ms(&self) -> u64 {
        u64_at(self.bytes, 8)
    }

    /// The lease generation written under.
    pub(super) fn generation(&self) -> Generation {
        u64_at(self.bytes, 16)
    }

    /// The gateway holding the connection.
    pub(super) fn gateway(&self) -> GatewayId {
        u16::from_le_bytes([self.bytes[24], self.bytes[25]])
    }

    fn platform(&self) -> u8 {
        self.bytes[26]
    }

    fn device(&self) -> &'a [u8] {
        &self.bytes[SESSION_FIXED..]
    }

    /// The session as the API returns it.
    pub(super) fn session(&self) -> Session {
        Session {
            conn: self.conn(),
            gateway: self.gateway(),
            device: String::from_utf8_lossy(self.device()).into(),
            platform: self.platform(),
            login_ms: self.login_ms(),
            generation: self.generation(),
        }
    }
}

/// A session to pack into a rebuilt record.
#[derive(Clone, Copy)]
pub(super) enum Part<'a> {
    /// One already packed (kept as is).
    Packed(View<'a>),
    /// A new one.
    New(&'a Session),
}

impl Part<'_> {
    fn len(&self) -> usize {
        match self {
            Part::Packed(v) => v.bytes.len(),
            Part::New(s) => SESSION_FIXED + clip(&s.device, MAX_DEVICE_LEN).len(),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Part::Packed(v) => out.extend_from_slice(v.bytes),
            Part::New(s) => {
                let device = clip(&s.device, MAX_DEVICE_LEN);
                out.extend_from_slice(&s.conn.to_le_bytes());
                out.extend_from_slice(&s.login_ms.to_le_bytes());
                out.extend_from_slice(&s.generation.to_le_bytes());
                out.extend_from_slice(&s.gateway.to_le_bytes());
                out.push(s.platform);
                out.push(device.len() as u8);
                out.extend_from_slice(device.as_bytes());
            }
        }
    }
}

impl Record {
    /// A record of `user` holding `parts`, or `None` when there are none (a user without
    /// sessions has no record). Allocates exactly the bytes it needs.
    pub(super) fn build<'p>(
        user: &[u8],
        parts: impl Iterator<Item = Part<'p>> + Clone,
    ) -> Option<Record> {
        let body: usize = parts.clone().map(|p| p.len()).sum();
        if body == 0 {
            return None;
        }
        let user = &user[..user.len().min(MAX_KEY)];
        let mut out = Vec::with_capacity(2 + user.len() + body);
        out.extend_from_slice(&(user.len() as u16).to_le_bytes());
        out.extend_from_slice(user);
        for p in parts {
            p.write(&mut out);
        }
        Some(Record(out.into_boxed_slice()))
    }

    /// A record of `user` with one session.
    pub(super) fn one(user: &str, session: &Session) -> Option<Record> {
        Record::build(user.as_bytes(), std::iter::once(Part::New(session)))
    }

    fn user_len(&self) -> usize {
        usize::from(u16::from_le_bytes([self.0[0], self.0[1]]))
    }

    /// The user id's bytes.
    pub(super) fn user(&self) -> &[u8] {
        &self.0[2..2 + self.user_len()]
    }

    /// The user id (always UTF-8: records are built from `&str`s).
    pub(super) fn user_str(&self) -> &str {
        std::str::from_utf8(self.user()).unwrap_or_default()
    }

    /// The packed sessions, in the order they were added.
    pub(super) fn sessions(&self) -> Sessions<'_> {
        Sessions { rest: &self.0[2 + self.user_len()..] }
    }

    /// The number of sessions.
    pub(super) fn len(&self) -> usize {
        self.sessions().count()
    }

    /// A copy holding only the sessions for which `keep` holds (`None` if none is left);
    /// `self` unchanged when every session stays.
    pub(super) fn filtered(&self, mut keep: impl FnMut(View<'_>) -> bool) -> Filtered {
        let mut total = 0;
        let kept: Vec<Part<'_>> = self
            .sessions()
            .inspect(|_| total += 1)
            .filter(|v| keep(*v))
            .map(Part::Packed)
            .collect();
        let dropped = total - kept.len();
        if dropped == 0 {
            return Filtered::Unchanged;
        }
        Filtered::Changed { record: Record::build(self.user(), kept.into_iter()), dropped }
    }

    /// Bytes allocated for this record.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.0.len()
    }
}

/// What [`Record::filtered`] made.
pub(super) enum Filtered {
    /// Every session stays.
    Unchanged,
    /// Some went: the new record (`None`: none left) and how many were dropped.
    Changed { record: Option<Record>, dropped: usize },
}

/// Iterator over a record's packed sessions.
#[derive(Clone)]
pub(super) struct Sessions<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Sessions<'a> {
    type Item = View<'a>;

    fn next(&mut self) -> Option<View<'a>> {
        if self.rest.len() < SESSION_FIXED {
            return None;
        }
        let len = (SESSION_FIXED + usize::from(self.rest[SESSION_FIXED - 1])).min(self.rest.len());
        let (bytes, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some(View { bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(conn: u64, device: &str) -> Session {
        Session {
            conn,
            gateway: 513,
            device: device.into(),
            platform: 4,
            login_ms: 1_700_000_000_123,
            generation: 77,
        }
    }

    #[test]
    fn round_trips_sessions_in_order() {
        let a = session(1, "phone-1");
        let b = session(u64::MAX, "");
        let r = Record::build(b"user-42", [Part::New(&a), Part::New(&b)].into_iter()).unwrap();
        assert_eq!(r.user(), b"user-42");
        assert_eq!(r.len(), 2);
        let got: Vec<Session> = r.sessions().map(|v| v.session()).collect();
        assert_eq!(got, vec![a.clone(), b]);
        let kept = match r.filtered(|v| v.conn() == 1) {
            Filtered::Changed { record, dropped: 1 } => record.unwrap(),
            _ => panic!("one session dropped"),
        };
        assert_eq!(kept.sessions().map(|v| v.session()).collect::<Vec<_>>(), vec![a]);
        assert!(matches!(kept.filtered(|_| true), Filtered::Unchanged));
        assert!(matches!(kept.filtered(|_| false), Filtered::Changed { record: None, .. }));
    }

    #[test]
    fn a_typical_session_fits_one_64_byte_chunk() {
        // 12-byte user id and 8-byte device id, as in the benchmark: 50 bytes, inside the
        // 56 usable bytes of glibc's 64-byte chunk.
        let r = Record::one("user-0012345", &session(9, "dev-1234")).unwrap();
        assert_eq!(r.bytes(), 2 + 12 + SESSION_FIXED + 8);
        assert!(r.bytes() <= 56);
    }

    #[test]
    fn overlong_device_is_clipped_at_a_char_boundary() {
        let long = "é".repeat(200); // 400 bytes
        let r = Record::one("u", &session(1, &long)).unwrap();
        let s = r.sessions().next().unwrap().session();
        assert_eq!(s.device.len(), 254);
        assert!(long.starts_with(&*s.device));
        assert!(Record::build(b"u", std::iter::empty()).is_none());
    }
}
