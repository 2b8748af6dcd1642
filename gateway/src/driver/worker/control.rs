//! The loop's command queues: internal messages from the node (adoptions, webhook answers,
//! displaced logins, sweeps, shutdown) and the API's commands, a budget at a time.

use std::sync::Arc;
use std::sync::mpsc::TryRecvError;

use super::Worker;
use super::push::ActiveSweep;
use crate::driver::Stream;
use crate::driver::commands::{COMMAND_BUDGET, Command, Internal};
use crate::driver::conn::Carrier;
use crate::rooms::user_hash;
use crate::session::Close;
use crate::upstream::{UpstreamOutcome, UpstreamResult};

impl<T: Carrier> Worker<T> {
    // ----- commands ---------------------------------------------------------------------

    /// Handle queued commands, internal ones first, at most [`COMMAND_BUDGET`] this turn.
    pub(super) fn drain_commands(&mut self) {
        let mut budget = COMMAND_BUDGET;
        while budget > 0 {
            match self.queues.internal.try_recv() {
                Ok(msg) => self.on_internal(msg),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
            budget -= 1;
        }
        while budget > 0 {
            match self.queues.control.try_recv() {
                Ok(cmd) => self.on_command(cmd),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
            budget -= 1;
        }
        self.commands_pending = budget == 0;
    }

    fn on_internal(&mut self, msg: Internal<Stream>) {
        match msg {
            Internal::Adopt(stream, peer, refusal) => match T::from_accepted(stream) {
                Some(transport) => self.adopt(transport, peer, refusal),
                // Not a loop the acceptor feeds: give the socket back to the counts.
                None => self.forget_arrival(),
            },
            Internal::Upstream(result) => self.on_upstream_result(result),
            Internal::Displaced(id) => self.displace(id),
            Internal::RoomVerdict(v) => self.on_room_verdict(v),
            Internal::Redirect(mut sweep) => {
                if sweep.count.is_none() && sweep.over_ms > 0 {
                    // Paced over time: by the connections held now (an upper bound on the
                    // established ones, so the pace errs on the fast side).
                    sweep.count = Some(self.conns.len() as u64);
                }
                self.sweeps.push_back(ActiveSweep {
                    sweep,
                    started_ms: self.now.ms(),
                    done: 0,
                    cursor: 0,
                });
            }
            Internal::Shutdown => self.begin_shutdown(),
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Push { msg, targets, reply } => {
                self.start_push(Arc::from([msg]), targets, reply)
            }
            Command::PushMany { msgs, targets, reply } => self.start_push(msgs, targets, reply),
            Command::Join { room, conns, reply } => {
                let _ = reply.send(self.join_conns(&room, conns));
            }
            Command::Leave { room, conns, reply } => {
                let mut left = Vec::new();
                for id in conns {
                    let Some(key) = self.find(id) else { continue };
                    let before = self.rooms.rooms_of(key as u32);
                    if usize::from(self.leave_room(key, &room)) < before {
                        self.node.metrics.room_leaves.inc();
                        left.push(id);
                    }
                }
                let _ = reply.send(left);
            }
            Command::RoomUsers { room, reply } => {
                let mut hashes = Vec::new();
                if let Some(no) = self.node.rooms.find(&room) {
                    hashes.reserve(self.rooms.len(no));
                    for slot in self.rooms.members(no) {
                        if let Some(user) =
                            self.conns.get(slot as usize).and_then(|c| c.user.as_ref())
                        {
                            hashes.push(user_hash(user));
                        }
                    }
                }
                let _ = reply.send(hashes);
            }
            Command::Kick { conn, code, reason } => {
                if let Some(key) = self.find(conn) {
                    self.node.metrics.kicks_admin.inc();
                    self.call(key, |c, ctx| c.session.close(ctx, Close::Kick(code, reason)));
                }
            }
        }
    }

    fn on_upstream_result(&mut self, result: UpstreamResult) {
        let Some(key) = self.find(result.conn) else { return };
        let outcome = match result.outcome {
            UpstreamOutcome::Reply { status, payload } => Ok((status, payload)),
            UpstreamOutcome::Failed(code) => Err(code),
        };
        self.call(key, |c, ctx| c.session.handle_upstream_result(ctx, result.request_id, outcome));
    }
}
