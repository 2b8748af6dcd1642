//! The one hash every placement decision uses: FNV-1a over length-prefixed parts, finished
//! with the MurmurHash3 64-bit mixer.
//!
//! It is defined here, byte for byte, rather than taken from `std::hash`, because every
//! scheduler instance (and every release) must place a user on the same ring point and the
//! same gray-release bucket: std does not promise its `Hash` output is stable across
//! platforms or compiler versions. `tests::golden` pins the values; changing them moves
//! users between gateways and canary buckets, so it is a compatibility decision.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Hash a sequence of byte strings; `["ab", "c"]` and `["a", "bc"]` hash differently.
pub fn hash_parts(parts: &[&[u8]]) -> u64 {
    let mut h = FNV_OFFSET;
    for part in parts {
        for b in (part.len() as u32).to_le_bytes().iter().chain(part.iter()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(FNV_PRIME);
        }
    }
    fmix64(h)
}

/// The MurmurHash3 finaliser: spreads every input bit over the whole output.
pub fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Placement is a compatibility contract: these values must never change (they were
    /// computed independently, from the definition above, before the code ran).
    #[test]
    fn golden() {
        let pinned: [(&[&[u8]], u64); 4] = [
            (&[], 0xefd0_1f60_ba99_2926),
            (&[b"uid", b"alice"], 0x640d_b7df_1a87_1aec),
            (&[b"vnode", b"gw-1", &[0, 0, 0, 0]], 0x36ce_2671_fedc_093e),
            (&[b"bucket", b"canary", b"bob"], 0xdbe5_5264_b45d_ffe8),
        ];
        for (parts, want) in pinned {
            assert_eq!(hash_parts(parts), want, "hash of {parts:?}");
        }
    }

    #[test]
    fn parts_are_delimited() {
        assert_ne!(hash_parts(&[b"ab", b"c"]), hash_parts(&[b"a", b"bc"]));
        assert_ne!(hash_parts(&[b"a"]), hash_parts(&[b"a", b""]));
    }

    #[test]
    fn spreads_sequential_keys_evenly() {
        let mut buckets = [0u32; 16];
        for i in 0..16_000u32 {
            let s = format!("user-{i}");
            buckets[(hash_parts(&[s.as_bytes()]) % 16) as usize] += 1;
        }
        for b in buckets {
            assert!((800..1200).contains(&b), "bucket count {b} far from 1000: {buckets:?}");
        }
    }
}
