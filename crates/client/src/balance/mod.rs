//! Load balancers: which instance of a service a call should go to.
//!
//! A [`Balancer`] is handed the current instance list on every call and
//! returns a [`Pick`]. The list is a snapshot owned by the caller (discovery
//! hands out `Arc<[Instance]>` snapshots and swaps them as the registry
//! changes), so a balancer never holds the list itself: instances may appear
//! and disappear between two picks, and whatever a balancer remembers about
//! an instance it keys by [`Instance::id`], never by position in the list,
//! and drops once the id is gone from the lists it is handed. (The sweep
//! runs when a new id shows up, so an instance that leaves and comes back
//! under the same id in between keeps what was known about it; for p2c its
//! forced probes correct that within seconds.) That keeps discovery and
//! balancing apart:
//! discovery knows nothing about balancing, and a balancer can be swapped or
//! shared across services without any wiring.
//!
//! The balancers, and when to use which:
//!
//! | name (config)     | type                          | picks                                                     |
//! |-------------------|-------------------------------|-----------------------------------------------------------|
//! | `round_robin`     | [`RoundRobin`]                | each instance in turn                                     |
//! | `random`          | [`Random`]                    | uniformly at random                                       |
//! | `weighted`        | [`SmoothWeightedRoundRobin`]  | in proportion to [`Instance::weight`], evenly interleaved |
//! | `p2c`             | [`P2c`]                       | the less loaded of two random instances (latency, inflight) |
//! | `consistent_hash` | [`ConsistentHash`]            | the same instance for the same request key                |
//!
//! [`by_name`] builds one from a config string. Each balancer's module
//! explains its algorithm and its tuning constants.
//!
//! A [`Pick`] carries the chosen instance and, for balancers that learn from
//! results (today only [`P2c`]), a guard that reports how the call went:
//! call [`Pick::success`] or [`Pick::failure`] when the call finishes. The
//! latency is measured from the pick to that report. **Dropping a pick
//! without reporting counts as a failure.** The success path is one explicit
//! line, while the ways a call can fail without anyone left to say so are
//! many: an early `?` return, a timeout or `select!` dropping the future, a
//! panic. Counting those as failures errs towards steering traffic away from
//! an instance whose calls get cancelled; the opposite rule would make an
//! instance whose every call times out look healthy. Picks of balancers that
//! do not learn carry no guard, and dropping them records nothing.
//!
//! Caveats: every balancer's state is local to one process, so many client
//! processes balance independently (a round-robin started at a random offset
//! keeps them from marching in step). Balancers assume ids are unique within
//! a list; duplicates do not panic but share their state.

pub mod consistent_hash;
pub mod p2c;
pub mod random;
pub mod round_robin;
pub mod weighted;

use std::fmt;
use std::time::Instant;

use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub use consistent_hash::ConsistentHash;
pub use p2c::P2c;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use weighted::SmoothWeightedRoundRobin;

use crate::Instance;

/// Chooses an instance for each call from a snapshot of the instance list.
pub trait Balancer: Send + Sync {
    /// Chooses one of `instances` for a call with the optional request `key`
    /// (used by key-aware balancers, ignored by the others); `None` only when
    /// the list is empty.
    fn pick(&self, instances: &[Instance], key: Option<&[u8]>) -> Option<Pick>;
}

/// The names [`by_name`] accepts, for error messages and config docs.
pub const NAMES: &[&str] = &[
    "round_robin",
    "random",
    "weighted",
    "p2c",
    "consistent_hash",
];

/// Builds a balancer from its config name (one of [`NAMES`]), or `None` for
/// an unknown name.
pub fn by_name(name: &str) -> Option<Box<dyn Balancer>> {
    Some(match name {
        "round_robin" => Box::new(RoundRobin::new()),
        "random" => Box::new(Random::new()),
        "weighted" => Box::new(SmoothWeightedRoundRobin::new()),
        "p2c" => Box::new(P2c::new()),
        "consistent_hash" => Box::new(ConsistentHash::new()),
        _ => return None,
    })
}

/// How a picked call ended, as reported to a learning balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The call got a usable answer.
    Success,
    /// The call failed, timed out, or was dropped without a report.
    Failure,
}

/// Receives the outcome of one picked call; called exactly once.
type Feedback = Box<dyn FnOnce(Outcome) + Send + Sync>;

/// The instance chosen for one call, plus the guard that reports the call's
/// outcome back to the balancer (dropping it unreported counts as a failure).
pub struct Pick {
    instance: Instance,
    feedback: Option<Feedback>,
}

impl Pick {
    /// A pick for a balancer that does not learn from outcomes.
    pub fn new(instance: Instance) -> Pick {
        Pick {
            instance,
            feedback: None,
        }
    }

    /// A pick whose outcome is passed to `feedback` once, on
    /// [`success`](Pick::success), [`failure`](Pick::failure) or drop.
    pub fn with_feedback(
        instance: Instance,
        feedback: impl FnOnce(Outcome) + Send + Sync + 'static,
    ) -> Pick {
        Pick {
            instance,
            feedback: Some(Box::new(feedback)),
        }
    }

    /// The chosen instance.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// Reports that the call succeeded.
    pub fn success(mut self) {
        self.finish(Outcome::Success);
    }

    /// Reports that the call failed.
    pub fn failure(mut self) {
        self.finish(Outcome::Failure);
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(feedback) = self.feedback.take() {
            feedback(outcome);
        }
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.finish(Outcome::Failure);
    }
}

impl fmt::Debug for Pick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pick")
            .field("instance", &self.instance)
            .field("pending_report", &self.feedback.is_some())
            .finish()
    }
}

/// A source of the current time, so that time-aware balancers can be driven
/// by a simulated clock in tests.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real clock, [`Instant::now`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Randomness for the balancers that need it: the thread-local generator in
/// production (no lock), a seeded one behind a lock for reproducible tests.
enum Dice {
    Thread,
    Seeded(Mutex<SmallRng>),
}

impl Dice {
    fn seeded(seed: u64) -> Dice {
        Dice::Seeded(Mutex::new(SmallRng::seed_from_u64(seed)))
    }

    /// A uniform index in `0..n`; `n` must be positive.
    fn below(&self, n: usize) -> usize {
        match self {
            Dice::Thread => rand::rng().random_range(0..n),
            Dice::Seeded(rng) => rng.lock().random_range(0..n),
        }
    }
}

impl fmt::Debug for Dice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dice::Thread => "Dice::Thread",
            Dice::Seeded(_) => "Dice::Seeded",
        })
    }
}

#[cfg(test)]
mod testing {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use parking_lot::Mutex;

    use super::Clock;
    use crate::Instance;

    /// A clock that moves only when told to.
    pub(crate) struct ManualClock {
        base: Instant,
        offset: Mutex<Duration>,
    }

    impl ManualClock {
        pub(crate) fn new() -> Arc<ManualClock> {
            Arc::new(ManualClock {
                base: Instant::now(),
                offset: Mutex::new(Duration::ZERO),
            })
        }

        pub(crate) fn advance(&self, by: Duration) {
            *self.offset.lock() += by;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            self.base + *self.offset.lock()
        }
    }

    /// Instances with the given ids, weight 1, at made-up addresses.
    pub(crate) fn instances(ids: &[&str]) -> Vec<Instance> {
        ids.iter()
            .enumerate()
            .map(|(n, id)| Instance::new(*id, format!("10.0.0.{n}:80")))
            .collect()
    }

    /// The ids of `n` consecutive picks.
    pub(crate) fn picks(b: &dyn super::Balancer, list: &[Instance], n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                b.pick(list, None)
                    .expect("non-empty list")
                    .instance()
                    .id
                    .clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::testing::instances;
    use super::*;

    #[test]
    fn by_name_knows_every_name_and_nothing_else() {
        let list = instances(&["a", "b"]);
        for name in NAMES {
            let b = by_name(name).unwrap_or_else(|| panic!("{name} unknown"));
            assert!(b.pick(&list, Some(b"k")).is_some(), "{name}");
            assert!(b.pick(&[], Some(b"k")).is_none(), "{name}");
        }
        assert!(by_name("least_conn").is_none());
        assert!(by_name("RoundRobin").is_none());
    }

    #[test]
    fn pick_reports_once_and_drop_counts_as_failure() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let pick = |seen: &Arc<Mutex<Vec<Outcome>>>| {
            let seen = seen.clone();
            Pick::with_feedback(Instance::new("a", "x:1"), move |o| seen.lock().push(o))
        };
        pick(&seen).success();
        pick(&seen).failure();
        drop(pick(&seen));
        assert_eq!(
            *seen.lock(),
            [Outcome::Success, Outcome::Failure, Outcome::Failure]
        );
    }

    #[test]
    fn picks_can_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Pick>();
        send_sync::<Box<dyn Balancer>>();
    }
}
