//! Round-robin: each instance in turn.
//!
//! A single atomic counter, taken modulo the length of whatever list the
//! call brings, so a pick costs one atomic add and no lock. The counter is
//! about positions, not ids: when the list changes, the rotation carries on
//! over the new list from the same count, so every instance of the new list
//! is still visited once per `len` picks, but the first lap after a change
//! may visit one instance twice or skip one once. That is the price of not
//! keeping per-instance state, and it matters little for a balancer whose
//! point is long-run evenness.
//!
//! Each balancer starts at a random offset (as gRPC's round-robin does), so
//! that many clients started at the same moment do not all send their first
//! call to the first instance.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balancer, Pick};
use crate::Instance;

/// Picks each instance of the list in turn.
#[derive(Debug)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A round-robin that starts at a random position.
    pub fn new() -> RoundRobin {
        // 32 random bits are plenty for an offset taken modulo a list length.
        RoundRobin::starting_at(rand::random::<u32>() as usize)
    }

    /// A round-robin whose first pick is position `offset` modulo the list
    /// length, for reproducible runs.
    pub fn starting_at(offset: usize) -> RoundRobin {
        RoundRobin {
            next: AtomicUsize::new(offset),
        }
    }

    /// The position for the next pick in a list of `len > 0` instances.
    pub(super) fn next_index(&self, len: usize) -> usize {
        // Wrapping at usize::MAX costs one uneven step every 2^64 picks.
        self.next.fetch_add(1, Ordering::Relaxed) % len
    }
}

impl Default for RoundRobin {
    fn default() -> Self {
        RoundRobin::new()
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, instances: &[Instance], _key: Option<&[u8]>) -> Option<Pick> {
        if instances.is_empty() {
            return None;
        }
        let i = self.next_index(instances.len());
        Some(Pick::new(instances[i].clone()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::testing::{instances, picks};
    use super::*;

    #[test]
    fn cycles_through_all_in_list_order() {
        let list = instances(&["a", "b", "c", "d"]);
        let rr = RoundRobin::new();
        let got = picks(&rr, &list, 40);
        let pos = |id: &String| list.iter().position(|i| &i.id == id).unwrap();
        for pair in got.windows(2) {
            assert_eq!(pos(&pair[1]), (pos(&pair[0]) + 1) % list.len(), "{got:?}");
        }
        for lap in got.chunks(4) {
            assert_eq!(lap.iter().collect::<BTreeSet<_>>().len(), 4, "{lap:?}");
        }

        let rr = RoundRobin::starting_at(2);
        assert_eq!(picks(&rr, &list, 5), ["c", "d", "a", "b", "c"]);
    }

    #[test]
    fn follows_the_list_as_it_changes() {
        let rr = RoundRobin::starting_at(0);
        assert!(rr.pick(&[], None).is_none());

        let list = instances(&["a", "b", "c"]);
        assert_eq!(picks(&rr, &list, 2), ["a", "b"]);

        // "b" leaves: every remaining instance is still served each lap.
        let shrunk = instances(&["a", "c"]);
        for lap in picks(&rr, &shrunk, 10).chunks(2) {
            let lap: BTreeSet<&str> = lap.iter().map(String::as_str).collect();
            assert_eq!(lap, BTreeSet::from(["a", "c"]));
        }

        // "d" and "e" arrive: they get their turn at once.
        let grown = instances(&["a", "c", "d", "e"]);
        let lap = picks(&rr, &grown, 4);
        assert_eq!(lap.iter().collect::<BTreeSet<_>>().len(), 4, "{lap:?}");

        // A counter at usize::MAX wraps without panicking.
        let rr = RoundRobin::starting_at(usize::MAX);
        assert_eq!(picks(&rr, &list, 2).len(), 2);
    }
}
