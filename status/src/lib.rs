//! The presence (status) cluster (arrives with its own issue): who is online on which gateway,
//! on a consistent-hash ring with virtual nodes and replicas, or on Redis behind the same trait.
