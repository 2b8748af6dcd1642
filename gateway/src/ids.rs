//! Connection ids: unique across the cluster, and telling which gateway, worker and slot own
//! a connection.
//!
//! A [`ConnId`] is the `u64` a client receives in `AUTH_OK.conn_id` (`docs/PROTOCOL.md`
//! § `AUTH_OK`). To clients it is opaque; the gateway lays it out, most significant first, as
//!
//! ```text
//!  63          48 47      40 39                       16 15           0
//! +--------------+----------+---------------------------+--------------+
//! | node (16)    | worker(8)| slot (24)                 | generation 16|
//! +--------------+----------+---------------------------+--------------+
//! ```
//!
//! - `node`: the gateway's node id, so any component can tell which gateway owns a connection;
//! - `worker`: the event loop the connection is pinned to for life;
//! - `slot`: the connection's index in that worker's slab (at most [`ConnId::MAX_SLOT`]);
//! - `generation`: bumped each time the slot is reused, so a stale id (a push or kick for a
//!   connection that has since closed) does not reach the slot's next occupant.
//!
//! In JSON (webhooks, the push API) a `ConnId` is written as a **decimal string**, because
//! JavaScript numbers lose precision above 2^53; on input both a string and a number are
//! accepted.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A connection's cluster-wide id: `node (16) | worker (8) | slot (24) | generation (16)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct ConnId(pub u64);

const GENERATION_BITS: u32 = 16;
const SLOT_BITS: u32 = 24;
const WORKER_BITS: u32 = 8;
const SLOT_SHIFT: u32 = GENERATION_BITS;
const WORKER_SHIFT: u32 = SLOT_SHIFT + SLOT_BITS;
const NODE_SHIFT: u32 = WORKER_SHIFT + WORKER_BITS;

impl ConnId {
    /// The largest slot a connection id can carry (2^24 − 1, about 16.7 million per worker).
    pub const MAX_SLOT: u32 = (1 << SLOT_BITS) - 1;

    /// Builds an id from its parts; `slot` is masked to 24 bits (a larger one is a bug,
    /// caught by a debug assertion).
    pub fn new(node: u16, worker: u8, slot: u32, generation: u16) -> ConnId {
        debug_assert!(slot <= Self::MAX_SLOT, "slot {slot} does not fit in 24 bits");
        ConnId(
            (u64::from(node) << NODE_SHIFT)
                | (u64::from(worker) << WORKER_SHIFT)
                | (u64::from(slot & Self::MAX_SLOT) << SLOT_SHIFT)
                | u64::from(generation),
        )
    }

    /// The node id of the gateway that owns the connection.
    pub fn node(self) -> u16 {
        (self.0 >> NODE_SHIFT) as u16
    }

    /// The event loop (worker) the connection is pinned to.
    pub fn worker(self) -> u8 {
        (self.0 >> WORKER_SHIFT) as u8
    }

    /// The connection's slot in its worker's slab.
    pub fn slot(self) -> u32 {
        (self.0 >> SLOT_SHIFT) as u32 & Self::MAX_SLOT
    }

    /// The slot's generation when the connection took it.
    pub fn generation(self) -> u16 {
        self.0 as u16
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Why a string is not a connection id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a connection id is a decimal u64")]
pub struct ParseConnIdError;

impl FromStr for ConnId {
    type Err = ParseConnIdError;

    /// Parses the decimal form written by [`Display`](fmt::Display).
    fn from_str(s: &str) -> Result<ConnId, ParseConnIdError> {
        s.parse::<u64>().map(ConnId).map_err(|_| ParseConnIdError)
    }
}

impl Serialize for ConnId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ConnId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ConnId, D::Error> {
        deserializer.deserialize_any(ConnIdVisitor)
    }
}

struct ConnIdVisitor;

impl Visitor<'_> for ConnIdVisitor {
    type Value = ConnId;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a connection id as a decimal string or a non-negative integer")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ConnId, E> {
        Ok(ConnId(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ConnId, E> {
        u64::try_from(v).map(ConnId).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ConnId, E> {
        v.parse().map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fields_are_laid_out_most_significant_first() {
        let id = ConnId::new(0x1234, 0x56, 0x789abc, 0xdef0);
        assert_eq!(id.0, 0x1234_5678_9abc_def0);
        assert_eq!(
            (id.node(), id.worker(), id.slot(), id.generation()),
            (0x1234, 0x56, 0x789abc, 0xdef0)
        );
    }

    #[test]
    fn extremes_round_trip() {
        let max = ConnId::new(u16::MAX, u8::MAX, ConnId::MAX_SLOT, u16::MAX);
        assert_eq!(max.0, u64::MAX);
        assert_eq!(ConnId::new(0, 0, 0, 0).0, 0);
    }

    #[test]
    fn json_is_a_decimal_string_and_accepts_numbers() {
        let id = ConnId(u64::MAX);
        let json = serde_json::to_string(&id).expect("serialize");
        assert_eq!(json, "\"18446744073709551615\"");
        assert_eq!(serde_json::from_str::<ConnId>(&json).expect("string"), id);
        assert_eq!(serde_json::from_str::<ConnId>("18446744073709551615").expect("number"), id);
        assert_eq!(serde_json::from_str::<ConnId>("7").expect("small number"), ConnId(7));
        assert!(serde_json::from_str::<ConnId>("-1").is_err());
        assert!(serde_json::from_str::<ConnId>("\"x1\"").is_err());
        assert!(serde_json::from_str::<ConnId>("1.5").is_err());
        assert!(serde_json::from_str::<ConnId>("\"18446744073709551616\"").is_err());
    }

    #[test]
    fn display_and_from_str_agree() {
        let id = ConnId::new(3, 1, 42, 9);
        assert_eq!(id.to_string().parse::<ConnId>(), Ok(id));
        assert_eq!("".parse::<ConnId>(), Err(ParseConnIdError));
    }

    proptest! {
        #[test]
        fn parts_round_trip(node: u16, worker: u8, slot in 0..=ConnId::MAX_SLOT, generation: u16) {
            let id = ConnId::new(node, worker, slot, generation);
            prop_assert_eq!(id.node(), node);
            prop_assert_eq!(id.worker(), worker);
            prop_assert_eq!(id.slot(), slot);
            prop_assert_eq!(id.generation(), generation);
        }

        #[test]
        fn every_u64_round_trips_through_parts_and_json(raw: u64) {
            let id = ConnId(raw);
            prop_assert_eq!(ConnId::new(id.node(), id.worker(), id.slot(), id.generation()), id);
            let json = serde_json::to_string(&id).expect("serialize");
            prop_assert_eq!(serde_json::from_str::<ConnId>(&json).expect("deserialize"), id);
            prop_assert_eq!(serde_json::from_str::<ConnId>(&raw.to_string()).expect("number"), id);
        }
    }
}
