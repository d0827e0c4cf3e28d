//! Power of two choices with EWMA latency, after go-zero's `p2c` balancer.
//!
//! Each pick draws two distinct instances at random and sends the call to
//! the less loaded one, where
//!
//! ```text
//! load = sqrt(lag + 1) × (inflight + 1)
//! ```
//!
//! `lag` is the instance's moving average of call latency in milliseconds
//! and `inflight` the number of its picks whose outcome has not been
//! reported yet. Comparing two random instances, rather than scanning all
//! of them for the least loaded, is what keeps many independent clients
//! from all stampeding onto the same momentarily best instance, while still
//! steering nearly all traffic away from a slow one. The square root keeps
//! latency from drowning out concurrency: an instance 100× slower looks
//! 10× more loaded, which a few queued calls on a fast one can outweigh.
//!
//! The average decays with time, not with the number of samples: when a
//! call finishes `Δt` after the previous one on the same instance, the old
//! average keeps the weight `w = exp(-Δt / 10 s)` and the new sample gets
//! `1 - w`, so a busy instance's average follows the last several seconds
//! and an idle one's is replaced by its next sample. The first sample is
//! taken as is.
//!
//! A failure counts as a latency sample of at least [`FAILURE_LATENCY`]
//! (1 s): an instance that refuses connections answers fastest of all and
//! would otherwise soak up traffic it cannot serve. Failures also lower a
//! success rate, averaged the same way and starting at 100%; as in go-zero,
//! while either drawn instance's rate is at or below 50% the pair is
//! redrawn, up to three draws in all. A pick dropped without a report is a
//! failure (see [`Pick`]).
//!
//! Left to itself, that rule would never again try an instance that once
//! looked slow, and so never notice that it recovered. Hence the forced
//! pick: if the more loaded of the two has not been picked for more than
//! [`FORCE_PICK`] (1 s), it gets this call instead, as a probe. A slow
//! instance therefore still sees about one call per second per client.
//! A newly seen instance counts as just picked; it has no latency yet, so
//! it wins on load anyway until its first calls report.
//!
//! State is kept per instance id and forgotten once the id leaves the list.
//! A pick's guard holds its instance's state, so a call finishing after the
//! instance left updates state nobody reads any more, harmlessly.
//!
//! Time comes from a [`Clock`] and randomness from a seedable generator, so
//! tests can drive the balancer through minutes of simulated traffic
//! without sleeping.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use super::{Balancer, Clock, Dice, Outcome, Pick, SystemClock};
use crate::Instance;

/// The time constant of the latency and success averages.
pub const DECAY: Duration = Duration::from_secs(10);

/// How long the more loaded candidate may go unpicked before it is picked
/// anyway, to probe it.
pub const FORCE_PICK: Duration = Duration::from_secs(1);

/// The latency sample a failed call counts as, unless it took longer.
pub const FAILURE_LATENCY: Duration = Duration::from_secs(1);

/// A success rate at or below this marks an instance unhealthy.
const HEALTHY_SUCCESS: f64 = 0.5;

/// How many times to draw a pair looking for two healthy instances.
const DRAWS: usize = 3;

/// Picks the less loaded of two random instances, by EWMA latency and calls
/// in flight (go-zero's p2c).
pub struct P2c {
    nodes: RwLock<HashMap<String, Arc<Node>>>,
    clock: Arc<dyn Clock>,
    /// The origin of the nanosecond timestamps kept in atomics.
    epoch: Instant,
    dice: Dice,
}

/// What the balancer knows about one instance.
struct Node {
    inflight: AtomicU64,
    /// When the instance was last picked, in nanoseconds since the epoch.
    last_pick: AtomicU64,
    stats: Mutex<Stats>,
}

/// The moving averages, updated as calls finish.
struct Stats {
    lag_ms: f64,
    success: f64,
    last_done: Option<Instant>,
}

impl P2c {
    /// A balancer on the system clock and the thread-local generator.
    pub fn new() -> P2c {
        P2c::with_clock_and_dice(Arc::new(SystemClock), Dice::Thread)
    }

    /// The same balancer reading time from `clock`, for simulated time.
    /// Call it before the first pick.
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> P2c {
        P2c::with_clock_and_dice(clock, self.dice)
    }

    /// The same balancer drawing from a generator seeded with `seed`, so
    /// that its choices are reproducible. Call it before the first pick.
    pub fn with_seed(self, seed: u64) -> P2c {
        P2c::with_clock_and_dice(self.clock, Dice::seeded(seed))
    }

    fn with_clock_and_dice(clock: Arc<dyn Clock>, dice: Dice) -> P2c {
        P2c {
            nodes: RwLock::new(HashMap::new()),
            epoch: clock.now(),
            clock,
            dice,
        }
    }

    fn ticks(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(since).unwrap_or(u64::MAX)
    }

    /// The state of `instances[at]`, created on first sight.
    fn node(&self, instances: &[Instance], at: usize, now: Instant) -> (usize, Arc<Node>) {
        let id = instances[at].id.as_str();
        if let Some(node) = self.nodes.read().get(id) {
            return (at, node.clone());
        }
        let mut nodes = self.nodes.write();
        let node = nodes
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(Node::new(self.ticks(now))))
            .clone();
        // More entries than instances means some id has left; this only
        // runs when a new id shows up, so stale entries never outnumber the
        // live ones.
        if nodes.len() > instances.len() {
            let live: HashSet<&str> = instances.iter().map(|i| i.id.as_str()).collect();
            nodes.retain(|id, _| live.contains(id.as_str()));
        }
        (at, node)
    }

    /// Two distinct random candidates, redrawn (a bounded number of times)
    /// while either is unhealthy; `instances` has at least three entries.
    fn draw(&self, instances: &[Instance], now: Instant) -> [(usize, Arc<Node>); 2] {
        let n = instances.len();
        let mut draws = 0;
        loop {
            let a = self.dice.below(n);
            let mut b = self.dice.below(n - 1);
            if b >= a {
                b += 1;
            }
            let pair = [self.node(instances, a, now), self.node(instances, b, now)];
            draws += 1;
            if draws == DRAWS || pair.iter().all(|(_, node)| node.healthy()) {
                return pair;
            }
        }
    }

    /// Picks the less loaded candidate, or the other one if it is overdue
    /// for a probe, and arms the guard that reports back to it.
    fn choose(&self, instances: &[Instance], now: Instant, pair: [(usize, Arc<Node>); 2]) -> Pick {
        let [mut best, mut other] = pair;
        if best.1.load() > other.1.load() {
            std::mem::swap(&mut best, &mut other);
        }
        let t = self.ticks(now);
        let last = other.1.last_pick.load(Ordering::Relaxed);
        // The exchange makes sure concurrent picks send only one probe.
        let forced = t.saturating_sub(last) > FORCE_PICK.as_nanos() as u64
            && other
                .1
                .last_pick
                .compare_exchange(last, t, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        let (at, node) = if forced {
            other
        } else {
            best.1.last_pick.store(t, Ordering::Relaxed);
            best
        };
        self.start(&instances[at], node, now)
    }

    fn start(&self, instance: &Instance, node: Arc<Node>, now: Instant) -> Pick {
        node.inflight.fetch_add(1, Ordering::Relaxed);
        let clock = self.clock.clone();
        Pick::with_feedback(instance.clone(), move |outcome| {
            node.finish(now, clock.now(), outcome)
        })
    }

    /// Calls in flight, latency average (ms) and success rate of `id`.
    #[cfg(test)]
    fn stats(&self, id: &str) -> Option<(u64, f64, f64)> {
        let nodes = self.nodes.read();
        let node = nodes.get(id)?;
        let stats = node.stats.lock();
        Some((
            node.inflight.load(Ordering::Relaxed),
            stats.lag_ms,
            stats.success,
        ))
    }
}

impl Default for P2c {
    fn default() -> Self {
        P2c::new()
    }
}

impl fmt::Debug for P2c {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("P2c")
            .field("instances_seen", &self.nodes.read().len())
            .field("dice", &self.dice)
            .finish_non_exhaustive()
    }
}

impl Balancer for P2c {
    fn pick(&self, instances: &[Instance], _key: Option<&[u8]>) -> Option<Pick> {
        let now = self.clock.now();
        match instances.len() {
            0 => None,
            1 => {
                let (at, node) = self.node(instances, 0, now);
                node.last_pick.store(self.ticks(now), Ordering::Relaxed);
                Some(self.start(&instances[at], node, now))
            }
            2 => {
                let pair = [self.node(instances, 0, now), self.node(instances, 1, now)];
                Some(self.choose(instances, now, pair))
            }
            _ => {
                let pair = self.draw(instances, now);
                Some(self.choose(instances, now, pair))
            }
        }
    }
}

impl Node {
    fn new(picked_at: u64) -> Node {
        Node {
            inflight: AtomicU64::new(0),
            last_pick: AtomicU64::new(picked_at),
            stats: Mutex::new(Stats {
                lag_ms: 0.0,
                success: 1.0,
                last_done: None,
            }),
        }
    }

    fn load(&self) -> f64 {
        let lag = self.stats.lock().lag_ms;
        let inflight = self.inflight.load(Ordering::Relaxed) as f64;
        (lag + 1.0).sqrt() * (inflight + 1.0)
    }

    fn healthy(&self) -> bool {
        self.stats.lock().success > HEALTHY_SUCCESS
    }

    /// Records the outcome of a call picked at `started` and ending `now`.
    fn finish(&self, started: Instant, now: Instant, outcome: Outcome) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
        let rtt_ms = now.saturating_duration_since(started).as_secs_f64() * 1e3;
        let (sample_ms, ok) = match outcome {
            Outcome::Success => (rtt_ms, 1.0),
            Outcome::Failure => (rtt_ms.max(FAILURE_LATENCY.as_secs_f64() * 1e3), 0.0),
        };
        let mut stats = self.stats.lock();
        let w = match stats.last_done {
            Some(last) => {
                let dt = now.saturating_duration_since(last);
                (-dt.as_secs_f64() / DECAY.as_secs_f64()).exp()
            }
            None => 0.0,
        };
        // Concurrent calls may report out of order; time never runs back.
        stats.last_done = Some(stats.last_done.map_or(now, |last| last.max(now)));
        stats.lag_ms = stats.lag_ms * w + sample_ms * (1.0 - w);
        stats.success = stats.success * w + ok * (1.0 - w);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::testing::{instances, ManualClock};
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn p2c(clock: &Arc<ManualClock>) -> P2c {
        P2c::new().with_clock(clock.clone()).with_seed(42)
    }

    /// Runs `calls` calls one after another, each taking `latency(id)` of
    /// simulated time and reporting `ok(id)`; returns how often each id was
    /// picked.
    fn run(
        b: &P2c,
        clock: &ManualClock,
        list: &[Instance],
        calls: usize,
        latency: impl Fn(&str) -> Duration,
        ok: impl Fn(&str) -> bool,
    ) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for _ in 0..calls {
            let pick = b.pick(list, None).unwrap();
            let id = pick.instance().id.clone();
            clock.advance(latency(&id));
            if ok(&id) {
                pick.success();
            } else {
                pick.failure();
            }
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
    }

    #[test]
    fn slow_instance_gets_few_picks_but_is_still_probed() {
        let clock = ManualClock::new();
        let b = p2c(&clock);
        let list = instances(&["a", "b", "slow"]);
        let latency = |id: &str| if id == "slow" { 200 * MS } else { 5 * MS };

        let warmup = run(&b, &clock, &list, 1_000, latency, |_| true);
        assert!(warmup.contains_key("slow"), "never tried: {warmup:?}");
        let lag = b.stats("slow").unwrap().1;
        assert!((lag - 200.0).abs() < 1.0, "lag {lag}");

        // A fair share would be 333 of 1,000; the slow one only gets the
        // forced probes, about one per second of the ~5 s simulated here.
        let start = clock.now();
        let counts = run(&b, &clock, &list, 1_000, latency, |_| true);
        let slow = counts.get("slow").copied().unwrap_or(0);
        let elapsed = clock.now() - start;
        assert!(slow < 100, "slow got {slow} of 1000: {counts:?}");
        assert!(slow >= 1, "slow never probed in {elapsed:?}: {counts:?}");
        assert!(
            slow as u64 <= elapsed.as_secs() + 2,
            "{slow} probes in {elapsed:?}"
        );
    }

    #[test]
    fn forced_pick_after_one_second_unpicked() {
        // With two instances both are always the candidates, so the rule
        // shows exactly: the slow one is skipped until it has gone unpicked
        // for more than 1 s, then picked once.
        let clock = ManualClock::new();
        let b = p2c(&clock);
        let list = instances(&["fast", "slow"]);
        let latency = |id: &str| if id == "slow" { 200 * MS } else { 5 * MS };
        run(&b, &clock, &list, 500, latency, |_| true);

        let mut last_slow: Option<Instant> = None;
        let mut probes = 0;
        for _ in 0..2_000 {
            let now = clock.now();
            let pick = b.pick(&list, None).unwrap();
            let id = pick.instance().id.clone();
            if id == "slow" {
                if let Some(last) = last_slow {
                    assert!(now - last > FORCE_PICK, "probed after {:?}", now - last);
                    probes += 1;
                }
                last_slow = Some(now);
            } else if let Some(last) = last_slow {
                // The slow one was eligible for a probe and did not get it.
                assert!(now - last <= FORCE_PICK, "probe overdue: {:?}", now - last);
            }
            clock.advance(latency(&id));
            pick.success();
        }
        assert!(probes >= 5, "{probes} probes");
    }

    #[test]
    fn inflight_calls_count_as_load() {
        let clock = ManualClock::new();
        let b = p2c(&clock);
        let list = instances(&["a", "b"]);

        // Equal loads: the first candidate wins; holding its call makes the
        // other one lighter, and so on.
        let p1 = b.pick(&list, None).unwrap();
        let p2 = b.pick(&list, None).unwrap();
        let p3 = b.pick(&list, None).unwrap();
        let ids = [p1.instance(), p2.instance(), p3.instance()].map(|i| i.id.clone());
        assert_eq!(ids, ["a", "b", "a"]);
        assert_eq!(b.stats("a").unwrap().0, 2);
        assert_eq!(b.stats("b").unwrap().0, 1);

        clock.advance(5 * MS);
        p1.success();
        p3.success();
        drop(p2);
        assert_eq!(b.stats("a").unwrap().0, 0);
        assert_eq!(b.stats("b").unwrap().0, 0);
    }

    #[test]
    fn failures_and_dropped_picks_count_as_slow() {
        let clock = ManualClock::new();
        let b = p2c(&clock);
        let list = instances(&["a", "b"]);

        let pick = b.pick(&list, None).unwrap();
        assert_eq!(pick.instance().id, "a");
        clock.advance(2 * MS);
        drop(pick);
        let (inflight, lag, success) = b.stats("a").unwrap();
        assert_eq!(inflight, 0);
        assert_eq!(lag, 1_000.0);
        assert_eq!(success, 0.0);

        // An instance failing fast (1 ms) loses to one succeeding in 5 ms.
        let counts = run(
            &b,
            &clock,
            &instances(&["a", "b", "c"]),
            1_000,
            |id| if id == "a" { MS } else { 5 * MS },
            |id| id != "a",
        );
        let a = counts.get("a").copied().unwrap_or(0);
        assert!(a < 100, "failing instance got {a} of 1000: {counts:?}");
    }

    #[test]
    fn ewma_decays_with_time() {
        let clock = ManualClock::new();
        let b = p2c(&clock);
        let list = instances(&["only"]);
        let call = |took: Duration| {
            let pick = b.pick(&list, None).unwrap();
            clock.advance(took);
            pick.success();
        };
        call(100 * MS);
        assert_eq!(b.stats("only").unwrap().1, 100.0);

        // 10 s later a sample of 0 ms carries weight 1 - e^-1.
        clock.advance(Duration::from_secs(10));
        call(Duration::ZERO);
        let lag = b.stats("only").unwrap().1;
        let expected = 100.0 * (-1.0f64).exp();
        assert!((lag - expected).abs() < 1e-9, "{lag} vs {expected}");
    }

    #[test]
    fn forgets_instances_that_left() {
        let clock = ManualClock::new();
        let b = p2c(&clock);
        assert!(b.pick(&[], None).is_none());
        run(
            &b,
            &clock,
            &instances(&["a", "b", "c"]),
            100,
            |_| MS,
            |_| true,
        );
        let counts = run(&b, &clock, &instances(&["c", "d"]), 100, |_| MS, |_| true);
        assert_eq!(counts.len(), 2);
        let mut seen: Vec<String> = b.nodes.read().keys().cloned().collect();
        seen.sort();
        assert_eq!(seen, ["c", "d"]);
    }
}
