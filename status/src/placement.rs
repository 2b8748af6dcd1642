//! Placement: which status nodes own a user.
//!
//! A consistent hash ring with virtual nodes (the `consistent_hash_ring` crate, whose types
//! stay inside this module) and node weights. Every member, client and node, on every
//! platform and compiler version, must compute the same owners, so nothing here goes through
//! `std`'s `Hash` of a string or a native-endian integer:
//!
//! - a user's key is [`key_hash`]: xxh3-64 (seed 0) of the user id's UTF-8 bytes;
//! - the ring hashes keys and vnode positions with [`StableHasher`], xxh3-64 over explicit
//!   little-endian bytes; a node enters the ring as its `u16` id;
//! - a node of weight `w` gets `vnodes × w` virtual nodes;
//! - the owners of a key are the first `replicas` distinct nodes of the crate's replica
//!   walk; the first is the primary.
//!
//! `tests/placement_golden.rs` checks 1,000 keys against a checked-in table: if it fails,
//! placement changed, and a mixed-version cluster would disagree on owners.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};

use consistent_hash_ring::{Ring, RingBuilder};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The default number of virtual nodes per unit of weight (the crate's default of 10 leaves
/// the busiest node with 1.3–1.6× its share; 160 keeps it near 1.1×).
pub const DEFAULT_VNODES: u16 = 160;

/// The default replication factor: every write reaches this many distinct nodes.
pub const DEFAULT_REPLICAS: u8 = 2;

/// A status node's id, unique in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u16);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A member of the ring: who, where, how heavy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The node's id.
    pub id: NodeId,
    /// Its data (binary protocol) address, `host:port`.
    pub addr: String,
    /// Its weight: it owns about `weight / Σ weights` of the keys (default 1, at least 1).
    #[serde(default = "default_weight")]
    pub weight: u16,
}

fn default_weight() -> u16 {
    1
}

/// The placement key of a user: xxh3-64 of its bytes. Part of the compatibility contract.
pub fn key_hash(user: &str) -> u64 {
    xxh3_64(user.as_bytes())
}

/// A [`Hasher`] whose output is fixed across platforms and compiler versions: each write is
/// xxh3-64 of its bytes (integers as little-endian), seeded with the state so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct StableHasher {
    state: u64,
}

impl Hasher for StableHasher {
    fn finish(&self) -> u64 {
        self.state
    }

    fn write(&mut self, bytes: &[u8]) {
        self.state = xxh3_64_with_seed(bytes, self.state);
    }

    fn write_u8(&mut self, i: u8) {
        self.write(&[i]);
    }

    fn write_u16(&mut self, i: u16) {
        self.write(&i.to_le_bytes());
    }

    fn write_u32(&mut self, i: u32) {
        self.write(&i.to_le_bytes());
    }

    fn write_u64(&mut self, i: u64) {
        self.write(&i.to_le_bytes());
    }

    fn write_usize(&mut self, i: usize) {
        self.write(&(i as u64).to_le_bytes());
    }
}

/// Builds [`StableHasher`]s.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildStableHasher;

impl BuildHasher for BuildStableHasher {
    type Hasher = StableHasher;

    fn build_hasher(&self) -> StableHasher {
        StableHasher::default()
    }
}

/// How a node enters the crate's ring: its id as a little-endian `u16`, nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RingNode(NodeId);

impl Hash for RingNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u16(self.0.0);
    }
}

/// The owners of one key, primary first (at most [`Placement::replicas`] nodes).
pub type Owners = Vec<NodeId>;

/// A placement: members, vnodes, replication factor, and the ring built from them.
#[derive(Clone)]
pub struct Placement {
    members: Vec<Member>,
    vnodes: u16,
    replicas: u8,
    ring: Ring<RingNode, BuildStableHasher>,
}

impl fmt::Debug for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Placement")
            .field("members", &self.members)
            .field("vnodes", &self.vnodes)
            .field("replicas", &self.replicas)
            .finish()
    }
}

impl Placement {
    /// A placement of `members` with `vnodes` virtual nodes per unit of weight and
    /// `replicas` owners per key (capped at the member count). Members are sorted by id, so
    /// the order given does not matter.
    pub fn new(members: &[Member], vnodes: u16, replicas: u8) -> Placement {
        let mut members = members.to_vec();
        members.sort_by_key(|m| m.id);
        members.dedup_by_key(|m| m.id);
        let ring = RingBuilder::new(BuildStableHasher)
            .weighted_nodes_iter(members.iter().map(|m| {
                (RingNode(m.id), usize::from(vnodes.max(1)) * usize::from(m.weight.max(1)))
            }))
            .build();
        Placement { members, vnodes, replicas, ring }
    }

    /// The members, sorted by id.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The member with id `id`.
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Whether `id` is a member.
    pub fn contains(&self, id: NodeId) -> bool {
        self.member(id).is_some()
    }

    /// Virtual nodes per unit of weight.
    pub fn vnodes(&self) -> u16 {
        self.vnodes
    }

    /// The replication factor asked for (a key has fewer owners when there are fewer nodes).
    pub fn replicas(&self) -> u8 {
        self.replicas
    }

    /// The owners of `user`, primary first; empty only for an empty ring.
    pub fn owners(&self, user: &str) -> Owners {
        self.owners_of_hash(key_hash(user))
    }

    /// The owners of a key hash, primary first.
    pub fn owners_of_hash(&self, hash: u64) -> Owners {
        self.ring.replicas(hash).take(usize::from(self.replicas.max(1))).map(|n| n.0).collect()
    }

    /// The primary owner of `user`.
    pub fn primary(&self, user: &str) -> Option<NodeId> {
        self.ring.try_get(key_hash(user)).map(|n| n.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: u16) -> Vec<Member> {
        (1..=n)
            .map(|i| Member { id: NodeId(i), addr: format!("127.0.0.1:{i}"), weight: 1 })
            .collect()
    }

    #[test]
    fn owners_are_distinct_and_primary_first() {
        let p = Placement::new(&members(5), DEFAULT_VNODES, 3);
        for i in 0..2000 {
            let user = format!("user-{i}");
            let owners = p.owners(&user);
            assert_eq!(owners.len(), 3);
            let mut sorted = owners.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 3, "{user}: {owners:?}");
            assert_eq!(Some(owners[0]), p.primary(&user));
        }
    }

    #[test]
    fn member_order_does_not_change_placement() {
        let mut m = members(4);
        let a = Placement::new(&m, DEFAULT_VNODES, 2);
        m.reverse();
        let b = Placement::new(&m, DEFAULT_VNODES, 2);
        for i in 0..500 {
            let u = format!("u{i}");
            assert_eq!(a.owners(&u), b.owners(&u));
        }
    }

    #[test]
    fn load_is_balanced_with_default_vnodes() {
        let p = Placement::new(&members(5), DEFAULT_VNODES, 1);
        let mut counts = [0u32; 6];
        let n = 100_000;
        for i in 0..n {
            counts[usize::from(p.owners(&format!("user-{i}"))[0].0)] += 1;
        }
        let mean = f64::from(n) / 5.0;
        let max = counts[1..].iter().copied().max().unwrap_or(0);
        assert!(f64::from(max) / mean < 1.25, "max/mean {} ({counts:?})", f64::from(max) / mean);
    }

    #[test]
    fn weights_scale_the_share() {
        let mut m = members(2);
        m[1].weight = 3;
        let p = Placement::new(&m, DEFAULT_VNODES, 1);
        let heavy = (0..40_000).filter(|i| p.owners(&format!("k{i}"))[0] == NodeId(2)).count();
        let share = heavy as f64 / 40_000.0;
        assert!((0.68..0.82).contains(&share), "weight-3 node share {share}");
    }

    #[test]
    fn adding_a_node_moves_about_its_share_and_only_to_it() {
        let before = Placement::new(&members(4), DEFAULT_VNODES, 1);
        let after = Placement::new(&members(5), DEFAULT_VNODES, 1);
        let n = 50_000;
        let mut moved = 0;
        for i in 0..n {
            let u = format!("user-{i}");
            let (a, b) = (before.owners(&u)[0], after.owners(&u)[0]);
            if a != b {
                assert_eq!(b, NodeId(5), "{u} moved between old nodes");
                moved += 1;
            }
        }
        let frac = f64::from(moved) / f64::from(n);
        assert!((0.15..0.25).contains(&frac), "moved fraction {frac}");
    }

    #[test]
    fn stable_hasher_is_little_endian_xxh3() {
        let mut h = StableHasher::default();
        h.write_u64(0x0102_0304_0506_0708);
        assert_eq!(h.finish(), xxh3_64_with_seed(&[8, 7, 6, 5, 4, 3, 2, 1], 0));
        assert_eq!(key_hash("alice"), xxh3_64(b"alice"));
    }
}
