//! Smooth weighted round-robin, as nginx does it.
//!
//! Every instance carries a *current* weight, starting at zero. On each
//! pick every instance's current weight grows by its configured weight
//! ([`Instance::weight`]), the instance with the largest current weight is
//! chosen (the first in list order on a tie), and the chosen one's current
//! weight drops by the sum of all weights. Over one cycle of `total` picks
//! each instance is chosen exactly `weight` times, and the choices are
//! interleaved rather than bunched: weights 5, 1, 1 give `a a b a c a a`, not
//! `a a a a a b c`, so a heavy instance never takes a burst of consecutive
//! calls that its weight alone would not explain.
//!
//! Weight 0 takes an instance out of rotation (a way to drain it without
//! deregistering); if every instance has weight 0 they are all treated as
//! weight 1, since picking nothing would serve no one.
//!
//! The current weights live in a map keyed by instance id, behind a lock
//! held for one pass over the list. A new id starts at zero; an id that
//! leaves the list (or drops to weight 0) is forgotten. After such a change
//! the leftover current weights no longer sum to zero, so the first cycle
//! may be off by a pick or two; the shares stay exact in the long run. The
//! pass is O(n) in the instance count, which is what this algorithm costs.

use std::collections::{HashMap, HashSet};

use parking_lot::Mutex;

use super::{Balancer, Pick};
use crate::Instance;

/// Picks instances in proportion to their weights, evenly interleaved
/// (nginx's smooth weighted round-robin).
#[derive(Debug, Default)]
pub struct SmoothWeightedRoundRobin {
    current: Mutex<HashMap<String, i64>>,
}

impl SmoothWeightedRoundRobin {
    /// A balancer with no history.
    pub fn new() -> SmoothWeightedRoundRobin {
        SmoothWeightedRoundRobin::default()
    }
}

impl Balancer for SmoothWeightedRoundRobin {
    fn pick(&self, instances: &[Instance], _key: Option<&[u8]>) -> Option<Pick> {
        let all_zero = instances.iter().all(|i| i.weight == 0);
        let weight = |i: &Instance| if all_zero { 1 } else { i64::from(i.weight) };

        let mut current = self.current.lock();
        let mut total = 0;
        let mut in_rotation = 0;
        let mut best: Option<(usize, i64)> = None;
        for (n, instance) in instances.iter().enumerate() {
            let w = weight(instance);
            if w == 0 {
                continue;
            }
            // Look up by &str first so that only a new id allocates.
            let now = match current.get_mut(instance.id.as_str()) {
                Some(c) => {
                    *c += w;
                    *c
                }
                None => {
                    current.insert(instance.id.clone(), w);
                    w
                }
            };
            total += w;
            in_rotation += 1;
            if best.is_none_or(|(_, b)| now > b) {
                best = Some((n, now));
            }
        }
        let (chosen, _) = best?;
        if let Some(c) = current.get_mut(instances[chosen].id.as_str()) {
            *c -= total;
        }

        // More entries than instances in rotation means some id has left.
        if current.len() > in_rotation {
            let live: HashSet<&str> = instances
                .iter()
                .filter(|i| weight(i) > 0)
                .map(|i| i.id.as_str())
                .collect();
            current.retain(|id, _| live.contains(id.as_str()));
        }
        Some(Pick::new(instances[chosen].clone()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::testing::{instances, picks};
    use super::*;

    fn weighted(spec: &[(&str, u32)]) -> Vec<Instance> {
        let ids: Vec<&str> = spec.iter().map(|(id, _)| *id).collect();
        instances(&ids)
            .into_iter()
            .zip(spec)
            .map(|(i, (_, w))| Instance { weight: *w, ..i })
            .collect()
    }

    fn counts(ids: &[String]) -> HashMap<&str, usize> {
        let mut counts = HashMap::new();
        for id in ids {
            *counts.entry(id.as_str()).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn nginx_sequence_for_five_one_one() {
        let list = weighted(&[("a", 5), ("b", 1), ("c", 1)]);
        let swrr = SmoothWeightedRoundRobin::new();
        let cycle = ["a", "a", "b", "a", "c", "a", "a"];
        // 1,000 cycles of total weight 7: the same 7-pick cycle every time.
        let got = picks(&swrr, &list, 7_000);
        for c in got.chunks(7) {
            assert_eq!(c, cycle);
        }
    }

    #[test]
    fn shares_are_exact_per_cycle() {
        let spec = [("a", 3), ("b", 2), ("c", 7), ("d", 1), ("e", 0)];
        let list = weighted(&spec);
        let total: usize = spec.iter().map(|(_, w)| *w as usize).sum();
        let swrr = SmoothWeightedRoundRobin::new();
        let got = picks(&swrr, &list, 1_000 * total);
        // Exact not only over all picks but within every single cycle.
        for cycle in got.chunks(total) {
            let counts = counts(cycle);
            for (id, w) in spec {
                assert_eq!(counts.get(id).copied().unwrap_or(0), w as usize, "{id}");
            }
        }
    }

    #[test]
    fn all_zero_weights_mean_equal_weights() {
        let list = weighted(&[("a", 0), ("b", 0), ("c", 0)]);
        let swrr = SmoothWeightedRoundRobin::new();
        assert_eq!(picks(&swrr, &list, 6), ["a", "b", "c", "a", "b", "c"]);
        assert!(swrr.pick(&[], None).is_none());
    }

    #[test]
    fn follows_the_list_as_it_changes() {
        let swrr = SmoothWeightedRoundRobin::new();
        let before = weighted(&[("a", 2), ("b", 1), ("c", 1)]);
        picks(&swrr, &before, 5);

        // "c" leaves, "d" arrives; "b" is drained with weight 0.
        let after = weighted(&[("a", 2), ("b", 0), ("d", 3)]);
        let got = picks(&swrr, &after, 5_000);
        let counts = counts(&got);
        assert_eq!(counts.get("b"), None);
        assert_eq!(counts.get("c"), None);
        // Leftover current weights may shift the first cycle by a pick.
        assert!(counts["a"].abs_diff(2_000) <= 5, "{counts:?}");
        assert!(counts["d"].abs_diff(3_000) <= 5, "{counts:?}");
        // Forgotten ids do not linger.
        assert_eq!(swrr.current.lock().len(), 2);
    }
}
