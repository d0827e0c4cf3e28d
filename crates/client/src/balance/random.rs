//! Random: uniformly at random.
//!
//! Stateless apart from the random generator, and therefore indifferent to
//! the list changing between picks. Over many picks it spreads as evenly as
//! round-robin; over a few it does not, which is also its virtue: many
//! clients with no shared state never fall into step. Weights are ignored;
//! use [`SmoothWeightedRoundRobin`](super::SmoothWeightedRoundRobin) for
//! those.
//!
//! By default it draws from the thread-local generator, which needs no lock;
//! [`Random::with_seed`] makes it reproducible for tests.

use super::{Balancer, Dice, Pick};
use crate::Instance;

/// Picks an instance uniformly at random.
#[derive(Debug)]
pub struct Random {
    dice: Dice,
}

impl Random {
    /// A random balancer on the thread-local generator.
    pub fn new() -> Random {
        Random { dice: Dice::Thread }
    }

    /// The same balancer drawing from a generator seeded with `seed`, so
    /// that its sequence of picks is reproducible.
    pub fn with_seed(self, seed: u64) -> Random {
        Random {
            dice: Dice::seeded(seed),
        }
    }
}

impl Default for Random {
    fn default() -> Self {
        Random::new()
    }
}

impl Balancer for Random {
    fn pick(&self, instances: &[Instance], _key: Option<&[u8]>) -> Option<Pick> {
        if instances.is_empty() {
            return None;
        }
        let i = self.dice.below(instances.len());
        Some(Pick::new(instances[i].clone()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::testing::{instances, picks};
    use super::*;

    #[test]
    fn spreads_evenly_within_ten_percent() {
        // 10,000 picks over 4 instances: 2,500 expected each, σ ≈ 43, so the
        // ±10% bound (±250) is about six standard deviations wide.
        let list = instances(&["a", "b", "c", "d"]);
        let random = Random::new().with_seed(7);
        let mut counts = HashMap::new();
        for id in picks(&random, &list, 10_000) {
            *counts.entry(id).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 4);
        for (id, n) in &counts {
            assert!((2_250..=2_750).contains(n), "{id}: {n} of 10000");
        }
    }

    #[test]
    fn same_seed_same_picks_and_copes_with_changes() {
        let list = instances(&["a", "b", "c"]);
        let one = picks(&Random::new().with_seed(1), &list, 50);
        assert_eq!(one, picks(&Random::new().with_seed(1), &list, 50));

        let random = Random::new().with_seed(1);
        assert!(random.pick(&[], None).is_none());
        let only = instances(&["z"]);
        assert_eq!(picks(&random, &only, 3), ["z", "z", "z"]);
    }
}
