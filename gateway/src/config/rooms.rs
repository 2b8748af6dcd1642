//! `[rooms]`: group membership and push to a room.

use serde::{Deserialize, Serialize};

/// What happens to pushes to a room above its rate (`rooms.push_rate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RoomOverflow {
    /// Hold them and deliver everything held as one write of consecutive `PUSH` frames per
    /// member when the rate allows again (as goim merges a live room's messages); past
    /// `rooms.hold_max` held pushes, the oldest is dropped and counted.
    #[default]
    Merge,
    /// Refuse them: the API answers `429` with `Retry-After`.
    Reject,
}

/// `[rooms]`: group membership and push to a room (`docs/API.md` § Rooms).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsConfig {
    /// The longest room name accepted, in bytes (default 128, at most 255).
    pub name_max: usize,
    /// Rooms one connection may be in (default 64); one more is refused with
    /// `TOO_MANY_ROOMS` (702).
    pub max_per_conn: usize,
    /// Memberships the node holds across all its connections (default 4,000,000); one more
    /// is refused with `ROOMS_FULL` (704). Each costs about 20-30 B.
    pub max_memberships: u64,
    /// Webhook asked whether a client may `JOIN` a room its token's `rooms` claim does not
    /// allow, an `http://` URL (default none: such a join is refused with
    /// `ROOM_FORBIDDEN`).
    pub join_webhook_url: Option<String>,
    /// Time allowed for one join webhook call, in ms (default 2,000); then the client gets
    /// `ROOM_CHECK_FAILED` (705).
    pub join_webhook_timeout_ms: u64,
    /// Pushes per second to one room through this gateway's API, 0 = no limit (default 0).
    pub push_rate: u32,
    /// Pushes to one room taken at once above the rate (default 20).
    pub push_burst: u32,
    /// What happens to pushes above the rate (default `merge`).
    pub overflow: RoomOverflow,
    /// With `overflow = "merge"`: pushes held per room at most; beyond, the oldest is
    /// dropped (default 1,000).
    pub hold_max: usize,
    /// Every this many ms, the members of each room get its online counts as a `PUSH` with
    /// topic `$room.count` (default 0 = never; at least 1,000 when on).
    pub count_interval_ms: u64,
    /// With a shared presence backend: how often changed member counts are written to the
    /// store, in ms (default 50). A membership reaches pushes through other gateways
    /// within this plus the presence batch delay.
    pub share_flush_ms: u64,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            name_max: 128,
            max_per_conn: 64,
            max_memberships: 4_000_000,
            join_webhook_url: None,
            join_webhook_timeout_ms: 2_000,
            push_rate: 0,
            push_burst: 20,
            overflow: RoomOverflow::Merge,
            hold_max: 1_000,
            count_interval_ms: 0,
            share_flush_ms: 50,
        }
    }
}
