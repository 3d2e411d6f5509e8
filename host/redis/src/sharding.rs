//! Consistent hashing of channels (and clients, nodes) onto Redis shards.
//!
//! Jump consistent hash (Lamping & Veach) over a stable 64-bit FNV-1a hash of the
//! key: going from N to N+1 shards moves about 1/(N+1) of the keys, and only to
//! the new shard.

/// Stable 64-bit FNV-1a hash over several parts (a `0xff` byte separates parts).
pub fn stable_hash(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            h ^= 0xff;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in part.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Jump consistent hash: the bucket in `0..buckets` for `key` (`buckets` ≥ 1).
pub fn jump_hash(mut key: u64, buckets: usize) -> usize {
    let buckets = buckets.max(1) as i64;
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let r = ((key >> 33) + 1) as f64;
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / r)) as i64;
    }
    b as usize
}

/// The shard of a channel.
pub fn channel_shard(tenant: &str, channel: &str, shards: usize) -> usize {
    jump_hash(stable_hash(&["ch", tenant, channel]), shards)
}

/// The shard holding a client's directory entry.
pub fn client_shard(tenant: &str, client: &str, shards: usize) -> usize {
    jump_hash(stable_hash(&["cl", tenant, client]), shards)
}

/// The shard holding a node's inbox stream.
pub fn node_shard(node: &str, shards: usize) -> usize {
    jump_hash(stable_hash(&["node", node]), shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channels(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("room:{i}")).collect()
    }

    #[test]
    fn spreads_evenly() {
        let names = channels(30_000);
        for shards in [2usize, 3, 5, 8] {
            let mut counts = vec![0usize; shards];
            for c in &names {
                counts[channel_shard("t", c, shards)] += 1;
            }
            let expected = names.len() / shards;
            for (i, n) in counts.iter().enumerate() {
                let dev = (*n as f64 - expected as f64).abs() / expected as f64;
                assert!(dev < 0.05, "shard {i} of {shards}: {n} vs {expected}");
            }
        }
    }

    #[test]
    fn adding_a_shard_moves_about_one_in_n() {
        let names = channels(30_000);
        for n in [1usize, 2, 3, 4, 7] {
            let mut moved = 0usize;
            for c in &names {
                let before = channel_shard("t", c, n);
                let after = channel_shard("t", c, n + 1);
                if before != after {
                    assert_eq!(after, n, "a key only moves to the new shard");
                    moved += 1;
                }
            }
            let frac = moved as f64 / names.len() as f64;
            let ideal = 1.0 / (n + 1) as f64;
            assert!(
                (frac - ideal).abs() < 0.02,
                "{n}->{}: moved {frac}, ideal {ideal}",
                n + 1
            );
        }
    }

    #[test]
    fn stable_and_in_range() {
        assert_eq!(jump_hash(12345, 1), 0);
        assert_eq!(stable_hash(&["a", "b"]), stable_hash(&["a", "b"]));
        assert_ne!(stable_hash(&["ab", ""]), stable_hash(&["a", "b"]));
        for k in 0..1000u64 {
            assert!(jump_hash(k.wrapping_mul(0x9e37_79b9_7f4a_7c15), 7) < 7);
        }
    }
}
