//! Rooms on the loop: a client's `JOIN` (its token's claim, else the join webhook), leaves,
//! server-side joins, and a room's members here as push targets.

use std::sync::Arc;

use holdfast_codec::Code;

use super::Worker;
use crate::driver::commands::RoomVerdict;
use crate::driver::conn::Carrier;
use crate::ids::ConnId;
use crate::rooms::{Refused, allowed, check_name};

impl<T: Carrier> Worker<T> {
    // ----- rooms ------------------------------------------------------------------------

    /// A client's `JOIN`: allowed by its token's `rooms` claim, or else asked of the join
    /// webhook (the answer comes back as [`Internal::RoomVerdict`]), or refused.
    ///
    /// [`Internal::RoomVerdict`]: crate::driver::commands::Internal::RoomVerdict
    pub(super) fn on_join(&mut self, key: usize, request_id: u32, room: String) {
        let node = Arc::clone(&self.node);
        let verdict = if let Err(why) = check_name(&room, node.cfg.rooms.name_max) {
            Err(Refused::new(Code::INVALID_ROOM, why))
        } else if allowed(self.rooms.claims(key as u32), &room) {
            self.join_room(key, &room)
        } else if let Some(hook) = &node.join_hook {
            let id = self.conn_id(key);
            let Some(conn) = self.conns.get(key) else { return };
            let user = conn.user.clone().unwrap_or_else(|| Arc::from(""));
            let device = conn.transport.device().cloned();
            if hook.ask(id, request_id, user, device, room) {
                return;
            }
            Err(Refused::new(Code::ROOM_CHECK_FAILED, "too many room checks in flight"))
        } else {
            Err(Refused::new(Code::ROOM_FORBIDDEN, "the token does not allow this room"))
        };
        self.answer_join(key, request_id, verdict);
    }

    /// Answer a `JOIN` and count the outcome.
    fn answer_join(&mut self, key: usize, request_id: u32, verdict: Result<u16, Refused>) {
        self.node.metrics.room_join(verdict.as_ref().err().map(|r| r.code)).inc();
        let verdict = verdict.map_err(|r| (r.code, r.message));
        self.with(key, |c, ctx| c.session.room_done(ctx, request_id, verdict));
    }

    pub(super) fn on_room_verdict(&mut self, v: RoomVerdict) {
        let Some(key) = self.find(v.conn) else { return };
        if !self.conns.get(key).is_some_and(|c| c.session.is_established()) {
            return;
        }
        let verdict = match v.verdict {
            Ok(true) => self.join_room(key, &v.room),
            Ok(false) => Err(Refused::new(Code::ROOM_FORBIDDEN, "the join webhook refused")),
            Err(why) => Err(Refused::new(Code::ROOM_CHECK_FAILED, why)),
        };
        self.answer_join(key, v.request_id, verdict);
        self.settle(key);
    }

    /// Put connection `key` in `room` (already checked and allowed): how many rooms it is
    /// in now, or why not (its own limit, the node's).
    pub(super) fn join_room(&mut self, key: usize, room: &str) -> Result<u16, Refused> {
        let slot = key as u32;
        let node = &self.node;
        if let Some(no) = node.rooms.find(room)
            && self.rooms.contains(slot, no)
        {
            return Ok(self.rooms.rooms_of(slot) as u16);
        }
        let max = node.cfg.rooms.max_per_conn;
        if self.rooms.rooms_of(slot) >= max {
            return Err(Refused::new(
                Code::TOO_MANY_ROOMS,
                format!("the connection is in its maximum of {max} rooms"),
            ));
        }
        let no = node.rooms.join(room)?;
        if !self.rooms.insert(slot, no) {
            node.rooms.leave(no);
        }
        Ok(self.rooms.rooms_of(slot) as u16)
    }

    /// Take connection `key` out of `room` (nothing if it was not in it): how many rooms it
    /// is in now.
    pub(super) fn leave_room(&mut self, key: usize, room: &str) -> u16 {
        let slot = key as u32;
        if let Some(no) = self.node.rooms.find(room)
            && self.rooms.remove(slot, no)
        {
            self.node.rooms.leave(no);
        }
        self.rooms.rooms_of(slot) as u16
    }

    /// Server-side joins of this loop's connections.
    pub(super) fn join_conns(
        &mut self,
        room: &str,
        conns: Vec<ConnId>,
    ) -> Vec<(ConnId, Option<String>)> {
        let mut out = Vec::with_capacity(conns.len());
        for id in conns {
            let established = self
                .find(id)
                .filter(|&k| self.conns.get(k).is_some_and(|c| c.session.is_established()));
            let result = match established {
                None => Some("closed".to_owned()),
                Some(key) => {
                    let joined = self.join_room(key, room);
                    let refused = joined.as_ref().err().map(|r| r.code);
                    self.node.metrics.room_join(refused).inc();
                    refused.map(|c| c.name().unwrap_or("refused").to_ascii_lowercase())
                }
            };
            out.push((id, result));
        }
        out
    }

    /// The members of `room` here, as connection ids (a snapshot).
    pub(super) fn room_targets(&self, room: &str) -> Vec<ConnId> {
        let Some(no) = self.node.rooms.find(room) else { return Vec::new() };
        self.rooms.members(no).map(|slot| self.conn_id(slot as usize)).collect()
    }
}
