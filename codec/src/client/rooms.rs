//! Room membership (`docs/PROTOCOL.md` § Rooms): `JOIN` and `LEAVE` requests awaiting their
//! answer, the rooms the session is a member of, and rejoining them on every new connection.
//!
//! [`Session::join`] and [`Session::leave`] queue a request with the session's own request
//! id; `ROOM_OK` answers it ([`Event::RoomJoined`], [`Event::RoomLeft`]), a non-fatal
//! `ERROR` refuses it ([`Event::RoomRefused`]). The rooms a `ROOM_OK` confirmed joined are
//! remembered ([`Session::rooms`]) until a `LEAVE` is confirmed or a `JOIN` refused. With
//! [`Config::rejoin_rooms`](super::Config::rejoin_rooms) every later `AUTH_OK` queues a
//! `JOIN` for each of them at once, so membership survives reconnects and make-before-break
//! moves; during a move the retiring connection is kept until those rejoins are answered.
//!
//! Membership is per connection: a request still awaiting its answer when its connection
//! closes (or becomes the retiring connection of a move) is answered by nothing. It is
//! dropped; a room joined before stays remembered and is rejoined on the next connection.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::{Event, SendError, Session, SessionError, State};
use crate::frame::{HEADER_LEN, MAX_ROOM};
use crate::{Code, DEFAULT_MAX_FRAME, Frame, FrameType, RoomOk, RoomRequest};

/// Most [`Session::join`] and [`Session::leave`] requests awaiting their answer at once
/// (rejoins after a reconnect included).
pub const MAX_ROOM_REQUESTS_IN_FLIGHT: usize = 64;

/// Which of the two room requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// `JOIN`.
    Join,
    /// `LEAVE`.
    Leave,
}

/// A room request of the current connection awaiting its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pending {
    /// `JOIN` or `LEAVE`.
    op: Op,
    /// The room named.
    room: String,
    /// A `JOIN` the session sent itself after `AUTH_OK` for a remembered room.
    rejoin: bool,
}

/// The session's rooms: remembered memberships and the requests awaiting an answer.
#[derive(Debug)]
pub(super) struct Rooms {
    /// Rooms a `ROOM_OK` confirmed joined, kept across connections.
    joined: BTreeSet<String>,
    /// Requests of the current connection awaiting their answer, by request id.
    pending: BTreeMap<u32, Pending>,
    /// The request id of the next room request; never 0.
    pub(super) next_id: u32,
}

impl Rooms {
    /// No rooms, nothing pending.
    pub(super) fn new() -> Rooms {
        Rooms { joined: BTreeSet::new(), pending: BTreeMap::new(), next_id: 1 }
    }

    /// The connection is over (closed, or moved off): its requests are answered by nothing.
    /// Returns their ids.
    pub(super) fn drop_pending(&mut self) -> BTreeSet<u32> {
        std::mem::take(&mut self.pending).into_keys().collect()
    }

    /// A rejoin of the current connection still awaits its answer.
    pub(super) fn rejoining(&self) -> bool {
        self.pending.values().any(|p| p.rejoin)
    }

    /// Whether `request_id` is a room request awaiting its answer.
    pub(super) fn is_pending(&self, request_id: u32) -> bool {
        self.pending.contains_key(&request_id)
    }

    /// The next free request id: non-zero and not awaiting an answer.
    fn fresh_id(&self) -> u32 {
        let mut id = self.next_id.max(1);
        // At most `pending.len()` ids are taken, so this ends within that many steps.
        while self.pending.contains_key(&id) {
            id = id.wrapping_add(1).max(1);
        }
        id
    }

    /// Record a request sent with `request_id`, and move the id counter past it.
    fn sent(&mut self, request_id: u32, pending: Pending) {
        self.next_id = request_id.wrapping_add(1).max(1);
        self.pending.insert(request_id, pending);
    }
}

impl Session {
    /// Queue a `JOIN` of `room`; the id it returns comes back in [`Event::RoomJoined`] or
    /// [`Event::RoomRefused`].
    ///
    /// Only in [`State::Established`]; `room` is 1 to 255 bytes; at most
    /// [`MAX_ROOM_REQUESTS_IN_FLIGHT`] room requests may await their answer; the frame must
    /// fit the server's `AUTH_OK.max_frame`. A room already joined is joined again (the
    /// server answers `ROOM_OK` all the same). On error nothing is queued.
    pub fn join(&mut self, room: &str) -> Result<u32, SendError> {
        self.room_request(Op::Join, room)
    }

    /// Queue a `LEAVE` of `room`; the id it returns comes back in [`Event::RoomLeft`] or
    /// [`Event::RoomRefused`]. The same rules as [`Session::join`]; leaving a room not
    /// joined is answered `ROOM_OK` too.
    pub fn leave(&mut self, room: &str) -> Result<u32, SendError> {
        self.room_request(Op::Leave, room)
    }

    /// The rooms the session is a member of, in name order: confirmed by `ROOM_OK`, until a
    /// `LEAVE` is confirmed or a `JOIN` (a rejoin included) refused. Kept across connections.
    pub fn rooms(&self) -> impl Iterator<Item = &str> {
        self.rooms.joined.iter().map(String::as_str)
    }

    /// [`Session::join`] or [`Session::leave`].
    fn room_request(&mut self, op: Op, room: &str) -> Result<u32, SendError> {
        if self.state != State::Established {
            return Err(SendError::NotEstablished(self.state));
        }
        if room.is_empty() || room.len() > MAX_ROOM {
            return Err(SendError::RoomName(room.len()));
        }
        // Header, str8 room.
        let size = HEADER_LEN + 1 + room.len();
        let max = self.auth.as_ref().map_or(DEFAULT_MAX_FRAME, |a| a.max_frame);
        if size > max as usize {
            return Err(SendError::FrameTooLarge { size, max });
        }
        if self.rooms.pending.len() >= MAX_ROOM_REQUESTS_IN_FLIGHT {
            return Err(SendError::TooManyRoomRequests);
        }
        let request_id = self.rooms.fresh_id();
        let request = RoomRequest { request_id, room: room.to_owned() };
        let frame = match op {
            Op::Join => Frame::Join(request),
            Op::Leave => Frame::Leave(request),
        };
        self.queue(&frame, self.last_now)?;
        let pending = Pending { op, room: room.to_owned(), rejoin: false };
        self.rooms.sent(request_id, pending);
        Ok(request_id)
    }

    /// After `AUTH_OK`: with [`Config::rejoin_rooms`](super::Config::rejoin_rooms), queue a
    /// `JOIN` for every remembered room. A move's retiring connection is then kept until
    /// every rejoin is answered.
    pub(super) fn rejoin_rooms(&mut self, now: Instant) {
        if !self.config.rejoin_rooms {
            return;
        }
        let max = self.auth.as_ref().map_or(DEFAULT_MAX_FRAME, |a| a.max_frame);
        let rooms: Vec<String> = self.rooms.joined.iter().cloned().collect();
        for room in rooms {
            let size = HEADER_LEN + 1 + room.len();
            if size > max as usize {
                // Never in practice (at most 266 bytes); the room cannot be joined here.
                self.rooms.joined.remove(&room);
                let message = format!("JOIN of {size} bytes exceeds the server's max_frame {max}");
                let code = Code::INVALID_ROOM;
                self.events.push_back(Event::RoomRefused { request_id: 0, room, code, message });
                continue;
            }
            let request_id = self.rooms.fresh_id();
            let frame = Frame::Join(RoomRequest { request_id, room: room.clone() });
            if self.queue(&frame, now).is_ok() {
                self.rooms.sent(request_id, Pending { op: Op::Join, room, rejoin: true });
            }
        }
        if self.rooms.rejoining() {
            self.hold_retiring(true);
        }
    }

    /// `ROOM_OK`: the server took a `JOIN` or `LEAVE` awaiting its answer.
    pub(super) fn on_room_ok(&mut self, ok: RoomOk, now: Instant) -> Result<(), SessionError> {
        let RoomOk { request_id, rooms } = ok;
        let Some(Pending { op, room, .. }) = self.rooms.pending.remove(&request_id) else {
            // The server sends ROOM_OK only in answer to a JOIN or LEAVE.
            let kind = FrameType::RoomOk as u8;
            return Err(SessionError::UnexpectedFrame { kind, state: self.state });
        };
        match op {
            Op::Join => {
                self.rooms.joined.insert(room.clone());
                self.events.push_back(Event::RoomJoined { request_id, room, rooms });
            }
            Op::Leave => {
                self.rooms.joined.remove(&room);
                self.events.push_back(Event::RoomLeft { request_id, room, rooms });
            }
        }
        self.room_answered(now);
        Ok(())
    }

    /// A non-fatal `ERROR` naming room request `request_id`, which awaits its answer: a
    /// refused `JOIN` forgets the room; a refused `LEAVE` changes nothing.
    pub(super) fn on_room_refused(
        &mut self,
        request_id: u32,
        code: Code,
        message: String,
        now: Instant,
    ) {
        let Some(Pending { op, room, .. }) = self.rooms.pending.remove(&request_id) else {
            return;
        };
        if op == Op::Join {
            self.rooms.joined.remove(&room);
        }
        self.events.push_back(Event::RoomRefused { request_id, room, code, message });
        self.room_answered(now);
    }

    /// A room request was answered: once no rejoin awaits its answer, a retiring connection
    /// held for them may go.
    fn room_answered(&mut self, now: Instant) {
        if !self.rooms.rejoining() {
            self.hold_retiring(false);
            self.retiring_timeout(now);
        }
    }
}
