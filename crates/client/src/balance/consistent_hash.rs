//! Consistent hashing: the same request key goes to the same instance, and
//! a change in the instance set moves as few keys as possible.
//!
//! Each instance is placed on a ring of 64-bit hash values at
//! [`DEFAULT_REPLICAS`] points (virtual nodes), the hashes of `"<id>#0"`,
//! `"<id>#1"`, …. A key goes to the first point at or clockwise after the
//! hash of the key. When an instance leaves, only the keys that landed on
//! its points move (each to the next point along the ring, spread over the
//! remaining instances); every other key keeps its instance. With 160
//! points per instance the arcs even out well enough for each of 5
//! instances to hold roughly a fifth of the keys. Positions depend only on
//! ids, so every client process builds the same ring from the same set.
//!
//! The hash is FNV-1a over the bytes followed by murmur3's 64-bit finalizer.
//! It is implemented here rather than taken from std because std's hasher
//! may change between Rust releases, and clients built with different
//! compilers must agree on where a key goes. FNV-1a alone spreads keys that
//! differ in their last byte (like `id#1`, `id#2`) over a narrow band of
//! the ring; the finalizer mixes every input bit into every output bit.
//!
//! Weights are ignored: every instance gets the same number of points.
//! Requests without a key go round-robin, so that keyless traffic is still
//! spread evenly rather than all landing on one arbitrary instance.
//!
//! Building a ring costs `n × replicas` hashes and a sort, too much to do
//! on every pick, so the ring is cached together with the list of ids it
//! was built from, and rebuilt when a pick brings a different list
//! (comparing ids is O(n), as cheap as a pass over the list gets).

use std::fmt::Write as _;

use parking_lot::RwLock;

use super::{Balancer, Pick, RoundRobin};
use crate::Instance;

/// Virtual nodes per instance unless configured otherwise (as in ketama).
pub const DEFAULT_REPLICAS: usize = 160;

/// Sends each request key to the same instance, on a hash ring with virtual
/// nodes; requests without a key go round-robin.
#[derive(Debug)]
pub struct ConsistentHash {
    replicas: usize,
    ring: RwLock<Option<Ring>>,
    keyless: RoundRobin,
}

/// A ring built for one list of instances.
#[derive(Debug)]
struct Ring {
    /// The ids of the list the ring was built for, in list order.
    ids: Vec<String>,
    /// Points sorted by hash, each with the list position of its instance.
    points: Vec<(u64, usize)>,
}

impl ConsistentHash {
    /// A ring with [`DEFAULT_REPLICAS`] points per instance.
    pub fn new() -> ConsistentHash {
        ConsistentHash::with_replicas(DEFAULT_REPLICAS)
    }

    /// A ring with `replicas` points per instance (at least 1); more points
    /// spread keys more evenly and cost more memory and rebuild time.
    pub fn with_replicas(replicas: usize) -> ConsistentHash {
        ConsistentHash {
            replicas: replicas.max(1),
            ring: RwLock::new(None),
            keyless: RoundRobin::new(),
        }
    }

    /// The list position of the instance that `key` maps to; `instances`
    /// must not be empty.
    fn locate(&self, instances: &[Instance], key: &[u8]) -> usize {
        let h = hash64(key);
        {
            let ring = self.ring.read();
            if let Some(ring) = ring.as_ref().filter(|r| r.built_for(instances)) {
                return ring.locate(h);
            }
        }
        let ring = Ring::build(instances, self.replicas);
        let at = ring.locate(h);
        *self.ring.write() = Some(ring);
        at
    }
}

impl Default for ConsistentHash {
    fn default() -> Self {
        ConsistentHash::new()
    }
}

impl Balancer for ConsistentHash {
    fn pick(&self, instances: &[Instance], key: Option<&[u8]>) -> Option<Pick> {
        if instances.is_empty() {
            return None;
        }
        let at = match key {
            Some(key) => self.locate(instances, key),
            None => self.keyless.next_index(instances.len()),
        };
        Some(Pick::new(instances[at].clone()))
    }
}

impl Ring {
    fn build(instances: &[Instance], replicas: usize) -> Ring {
        let mut points = Vec::with_capacity(instances.len() * replicas);
        let mut label = String::new();
        for (at, instance) in instances.iter().enumerate() {
            for n in 0..replicas {
                label.clear();
                let _ = write!(label, "{}#{n}", instance.id);
                points.push((hash64(label.as_bytes()), at));
            }
        }
        // Break (astronomically rare) hash ties by id, so that the ring does
        // not depend on the order of the list.
        points.sort_unstable_by(|a, b| (a.0, &instances[a.1].id).cmp(&(b.0, &instances[b.1].id)));
        Ring {
            ids: instances.iter().map(|i| i.id.clone()).collect(),
            points,
        }
    }

    fn built_for(&self, instances: &[Instance]) -> bool {
        self.ids.len() == instances.len() && self.ids.iter().zip(instances).all(|(a, b)| *a == b.id)
    }

    /// The list position owning the first point at or after `h`, wrapping.
    fn locate(&self, h: u64) -> usize {
        let i = self.points.partition_point(|p| p.0 < h);
        self.points[i % self.points.len()].1
    }
}

/// A stable 64-bit hash: FNV-1a, then murmur3's finalizer for avalanche.
fn hash64(bytes: &[u8]) -> u64 {
    fmix64(fnv1a64(bytes))
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET_BASIS, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME))
}

fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::testing::{instances, picks};
    use super::*;

    fn owner(ch: &ConsistentHash, list: &[Instance], key: &str) -> String {
        ch.pick(list, Some(key.as_bytes()))
            .unwrap()
            .instance()
            .id
            .clone()
    }

    fn keys() -> impl Iterator<Item = String> {
        (0..10_000).map(|n| format!("user-{n}"))
    }

    #[test]
    fn hash_is_pinned() {
        // Published FNV-1a test vectors.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        // fmix64 is a bijection that fixes 0.
        assert_eq!(fmix64(0), 0);
        // The ring's positions must never change between releases: clients
        // of different versions have to agree on where a key lives.
        // (Cross-checked against an independent Python implementation.)
        assert_eq!(hash64(b"i0#0"), 0x1a9d_eff7_1fc5_a537);
    }

    #[test]
    fn same_key_same_instance_in_any_list_order() {
        let list = instances(&["i0", "i1", "i2", "i3", "i4"]);
        let ch = ConsistentHash::new();
        let first: Vec<String> = keys().map(|k| owner(&ch, &list, &k)).collect();
        let again: Vec<String> = keys().map(|k| owner(&ch, &list, &k)).collect();
        assert_eq!(first, again);

        let mut reversed = list.clone();
        reversed.reverse();
        let other = ConsistentHash::new();
        let shuffled: Vec<String> = keys().map(|k| owner(&other, &reversed, &k)).collect();
        assert_eq!(first, shuffled);
    }

    #[test]
    fn keys_spread_between_ten_and_thirty_percent() {
        let list = instances(&["i0", "i1", "i2", "i3", "i4"]);
        let ch = ConsistentHash::new();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for k in keys() {
            *counts.entry(owner(&ch, &list, &k)).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 5);
        for (id, n) in &counts {
            assert!((1_000..=3_000).contains(n), "{id}: {n} of 10000");
        }
    }

    #[test]
    fn only_keys_of_a_leaving_instance_move() {
        let five = instances(&["i0", "i1", "i2", "i3", "i4"]);
        let four: Vec<Instance> = five.iter().filter(|i| i.id != "i2").cloned().collect();
        let ch = ConsistentHash::new();
        let before: Vec<String> = keys().map(|k| owner(&ch, &five, &k)).collect();
        let after: Vec<String> = keys().map(|k| owner(&ch, &four, &k)).collect();

        let mut moved_to: HashMap<&str, usize> = HashMap::new();
        for (b, a) in before.iter().zip(&after) {
            if b == "i2" {
                *moved_to.entry(a.as_str()).or_insert(0) += 1;
            } else {
                assert_eq!(a, b, "a key of {b} moved");
            }
        }
        // The orphaned keys spread over the survivors instead of all landing
        // on one neighbour.
        assert_eq!(moved_to.len(), 4, "{moved_to:?}");

        // And when it comes back, every key goes home.
        let back: Vec<String> = keys().map(|k| owner(&ch, &five, &k)).collect();
        assert_eq!(before, back);
    }

    #[test]
    fn keyless_requests_go_round_robin() {
        let list = instances(&["a", "b", "c"]);
        let ch = ConsistentHash::with_replicas(0);
        let got = picks(&ch, &list, 6);
        assert_eq!(got[..3], got[3..]);
        let mut lap = got[..3].to_vec();
        lap.sort();
        assert_eq!(lap, ["a", "b", "c"]);
        assert!(ch.pick(&[], Some(b"k")).is_none());
        // One point per instance still maps every key somewhere.
        assert!(ch.pick(&list, Some(b"k")).is_some());
    }
}
