//! roster-client's balancers over a live discovery handle, against Roster
//! and against the real etcd.
//!
//! The balancers' unit tests check the algorithms on fixed, hand-made
//! lists. These check the path a caller takes: instances registered in a
//! real registry, a [`Discovery`] following them, and every pick made from
//! a fresh [`Discovery::instances`] snapshot. So the list a balancer sees is
//! the one the registry reported, with the weights the records carry, and
//! when the registry changes the test waits for discovery to say so (never
//! sleeps) and checks that the picks follow.
//!
//! - Weights: smooth weighted round-robin over weights 1, 2, 5 gives
//!   exactly 1, 2 and 5 of every 8 picks; round-robin and random ignore
//!   weights and spread evenly (exactly, and within ±10%); re-registering
//!   an instance with a new weight shows up as an update and the weighted
//!   picks follow it exactly.
//! - p2c: one instance's calls take 40× longer and its share of picks
//!   drops far below a third (while random, in the same simulation, keeps
//!   giving it a third); once it is fast again its share climbs back.
//! - Consistent hash: when an instance leaves, only its keys move; when
//!   one joins, keys move only to it.
//!
//! p2c learns from how long calls take. Rather than make real calls and
//! time them, which would tie the assertions to the machine's speed, the
//! test drives it with a simulated clock (the balancer's [`Clock`] seam):
//! a call "takes" its latency because the clock is moved forward before
//! the pick's guard reports it. Tokio's paused time would not do here: the
//! registry is a real process, and a paused runtime auto-advances its clock
//! whenever it waits on that process, firing the client's timeouts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::discovery::{ids, until};
use roster_client::balance::{
    Balancer, Clock, ConsistentHash, P2c, Pick, Random, RoundRobin, SmoothWeightedRoundRobin,
};
use roster_client::{Change, Client, Discovery, Instance, Registration, Registry};
use roster_proto::etcdserverpb::RangeRequest;
use roster_testkit::{Etcd, Server, TestNode, WAIT};
use tokio::time::timeout;

fn registry(server: &Server) -> Registry {
    Registry::new(Client::connect([server.endpoint()]).expect("client"))
}

/// Registers instance `id` of `service` with `weight`, at a made-up address.
async fn register(registry: &Registry, service: &str, id: &str, weight: u32) -> Registration {
    registry
        .register(service, &format!("{id}.example:80"))
        .id(id)
        .weight(weight)
        .ttl(10)
        .await
        .unwrap_or_else(|e| panic!("register {id}: {e}"))
}

/// `(id, weight)` of each instance, in list order.
fn weights(instances: &[Instance]) -> Vec<(&str, u32)> {
    instances
        .iter()
        .map(|i| (i.id.as_str(), i.weight))
        .collect()
}

/// The ids chosen by `n` keyless picks, each from a fresh snapshot.
fn picks(balancer: &dyn Balancer, d: &Discovery, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let pick = balancer.pick(&d.instances(), None).expect("instances");
            pick.instance().id.clone()
        })
        .collect()
}

/// How often each id occurs.
fn tally<'a>(ids: impl IntoIterator<Item = &'a String>) -> BTreeMap<&'a str, usize> {
    let mut counts = BTreeMap::new();
    for id in ids {
        *counts.entry(id.as_str()).or_insert(0) += 1;
    }
    counts
}

async fn weighted_distribution(server: Server) {
    let registry = registry(&server);
    let d = registry.discover("weights.rpc").await.expect("discover");
    let _a = register(&registry, "weights.rpc", "a", 1).await;
    let _b = register(&registry, "weights.rpc", "b", 2).await;
    let c = register(&registry, "weights.rpc", "c", 5).await;
    until(&d, "a, b and c listed with their weights", |i| {
        weights(i) == [("a", 1), ("b", 2), ("c", 5)]
    })
    .await;

    // Smooth weighted round-robin is exact per cycle: every run of 8 picks
    // holds a once, b twice and c five times. Tolerance: none.
    let swrr = SmoothWeightedRoundRobin::new();
    let got = picks(&swrr, &d, 8 * 100);
    for cycle in got.chunks(8) {
        assert_eq!(
            tally(cycle),
            BTreeMap::from([("a", 1), ("b", 2), ("c", 5)]),
            "{cycle:?}"
        );
    }

    // Round-robin ignores weights and, over a list that does not change,
    // is exact: 3,000 picks, 1,000 each.
    let got = picks(&RoundRobin::new(), &d, 3_000);
    assert_eq!(
        tally(&got),
        BTreeMap::from([("a", 1_000), ("b", 1_000), ("c", 1_000)])
    );

    // Random ignores weights too. 9,000 picks, 3,000 expected each with
    // σ = √(9000·⅓·⅔) ≈ 45; the ±10% band (±300) is over six σ wide, so a
    // correct balancer fails it about once in a billion runs.
    let got = picks(&Random::new(), &d, 9_000);
    let counts = tally(&got);
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (id, n) in &counts {
        assert!((2_700..=3_300).contains(n), "random: {id} got {n} of 9000");
    }

    // c registers again under the same id with weight 1, as a restarted
    // process with new settings would: the record is replaced in place,
    // which discovery reports as an update, not a removal and an addition.
    let mut changes = d.changes();
    let c1 = register(&registry, "weights.rpc", "c", 1).await;
    let change = timeout(WAIT, changes.recv())
        .await
        .expect("a change in time")
        .expect("changes open");
    match change {
        Change::Updated { old, new } => {
            assert_eq!((old.id.as_str(), old.weight), ("c", 5));
            assert_eq!((new.id.as_str(), new.weight), ("c", 1));
        }
        other => panic!("expected c updated, got {other:?}"),
    }
    assert_eq!(weights(&d.instances()), [("a", 1), ("b", 2), ("c", 1)]);
    // The old registration's lease no longer holds the record, so
    // deregistering it leaves the new one in place.
    c.deregister().await.expect("deregister the old c");
    let record = registry
        .client()
        .kv()
        .range(RangeRequest {
            key: c1.key().as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(record.kvs.len(), 1, "the new record survives");
    assert_eq!(record.kvs[0].lease, c1.lease_id());

    // The same balancer follows the new weights 1, 2, 1, again exactly per
    // cycle: the 800 picks above were whole cycles, which leave every
    // instance's current weight back at zero, so nothing carries over.
    let got = picks(&swrr, &d, 4 * 100);
    for cycle in got.chunks(4) {
        assert_eq!(
            tally(cycle),
            BTreeMap::from([("a", 1), ("b", 2), ("c", 1)]),
            "{cycle:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_distribution_on_roster() {
    weighted_distribution(Server::Roster(TestNode::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_distribution_on_etcd() {
    weighted_distribution(Server::Etcd(Etcd::start())).await;
}

/// A clock that moves only when the simulation moves it.
struct SimClock {
    base: Instant,
    nanos: AtomicU64,
}

impl SimClock {
    fn new() -> Arc<SimClock> {
        Arc::new(SimClock {
            base: Instant::now(),
            nanos: AtomicU64::new(0),
        })
    }

    /// Moves the clock to `at`, if that is later than now.
    fn advance_to(&self, at: Instant) {
        let nanos = at.saturating_duration_since(self.base).as_nanos() as u64;
        self.nanos.fetch_max(nanos, Ordering::Relaxed);
    }
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

/// Calls kept in flight at once by the simulated callers.
const CONCURRENCY: usize = 4;

/// Simulates callers that keep [`CONCURRENCY`] calls in flight for `span`
/// of simulated time: each call is picked from a fresh snapshot of `d`,
/// takes `latency(id)`, and succeeds. Returns how many calls each instance
/// was picked for.
fn simulate(
    balancer: &dyn Balancer,
    clock: &SimClock,
    d: &Discovery,
    span: Duration,
    latency: impl Fn(&str) -> Duration,
) -> BTreeMap<String, usize> {
    let end = clock.now() + span;
    let mut counts = BTreeMap::new();
    let mut inflight: Vec<(Instant, Pick)> = Vec::with_capacity(CONCURRENCY);
    while clock.now() < end {
        while inflight.len() < CONCURRENCY {
            let pick = balancer.pick(&d.instances(), None).expect("instances");
            let id = pick.instance().id.clone();
            inflight.push((clock.now() + latency(&id), pick));
            *counts.entry(id).or_insert(0) += 1;
        }
        // The call due first finishes: time jumps to its end, then its
        // guard reports, so p2c measures exactly the simulated latency.
        let first = (0..inflight.len())
            .min_by_key(|&n| inflight[n].0)
            .expect("calls in flight");
        let (done, pick) = inflight.swap_remove(first);
        clock.advance_to(done);
        pick.success();
    }
    inflight.sort_by_key(|(done, _)| *done);
    for (done, pick) in inflight {
        clock.advance_to(done);
        pick.success();
    }
    counts
}

/// `id`'s share of all picks in `counts`.
fn share(counts: &BTreeMap<String, usize>, id: &str) -> f64 {
    let total: usize = counts.values().sum();
    counts.get(id).copied().unwrap_or(0) as f64 / total as f64
}

async fn p2c_avoids_a_slow_instance(server: Server) {
    let registry = registry(&server);
    let d = registry.discover("p2c.rpc").await.expect("discover");
    let _regs = [
        register(&registry, "p2c.rpc", "a", 1).await,
        register(&registry, "p2c.rpc", "b", 1).await,
        register(&registry, "p2c.rpc", "c", 1).await,
    ];
    until(&d, "a, b and c listed", |i| ids(i) == ["a", "b", "c"]).await;

    let clock = SimClock::new();
    let p2c = P2c::new().with_clock(clock.clone()).with_seed(7);
    let fast = |_: &str| Duration::from_millis(5);
    let c_slow = |id: &str| Duration::from_millis(if id == "c" { 200 } else { 5 });
    let s = Duration::from_secs(1);

    // All equally fast: an even spread, each within ±10 points of a third.
    let even = simulate(&p2c, &clock, &d, 5 * s, fast);
    for id in ["a", "b", "c"] {
        let got = share(&even, id);
        assert!((0.23..=0.43).contains(&got), "{id}: {got:.3} {even:?}");
    }

    // c turns 40× slower. After 5 s to notice, its share of the next 10 s
    // of calls is under 5%, far below a third. The control run shows that
    // this is p2c's doing, not the simulation's: random, fed the same
    // latencies for 60 s (about 3,400 picks, so σ ≈ 0.8 points), still
    // gives c a third of the picks, ±5 points.
    simulate(&p2c, &clock, &d, 5 * s, c_slow);
    let slow = simulate(&p2c, &clock, &d, 10 * s, c_slow);
    let got = share(&slow, "c");
    assert!(got < 0.05, "c while slow: {got:.4} {slow:?}");
    // Not zero, though: p2c keeps probing it about once a second.
    assert!(
        slow.get("c").copied().unwrap_or(0) >= 5,
        "c never probed: {slow:?}"
    );
    let control = simulate(&Random::new(), &SimClock::new(), &d, 60 * s, c_slow);
    let got = share(&control, "c");
    assert!((0.28..=0.38).contains(&got), "random control: c {got:.3}");

    // c is fast again. Its latency average forgets the slow calls with a
    // 10 s time constant, and while it looks slower than its rivals it
    // wins only when they have more calls in flight, so recovery takes a
    // while: after 60 s of simulated time its share is back to at least a
    // fifth (a third would be even).
    simulate(&p2c, &clock, &d, 60 * s, fast);
    let recovered = simulate(&p2c, &clock, &d, 10 * s, fast);
    let got = share(&recovered, "c");
    assert!(got >= 0.20, "c after recovering: {got:.3} {recovered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_avoids_a_slow_instance_on_roster() {
    p2c_avoids_a_slow_instance(Server::Roster(TestNode::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_avoids_a_slow_instance_on_etcd() {
    p2c_avoids_a_slow_instance(Server::Etcd(Etcd::start())).await;
}

/// The instance each key maps to, picking from one snapshot of `d`.
fn owners(ch: &ConsistentHash, d: &Discovery, keys: &[String]) -> Vec<String> {
    let snapshot = d.instances();
    keys.iter()
        .map(|k| {
            let pick = ch.pick(&snapshot, Some(k.as_bytes())).expect("instances");
            pick.instance().id.clone()
        })
        .collect()
}

async fn consistent_hash_moves_few_keys(server: Server) {
    let registry = registry(&server);
    let d = registry.discover("hash.rpc").await.expect("discover");
    let mut regs = BTreeMap::new();
    for id in ["i0", "i1", "i2", "i3"] {
        regs.insert(id, register(&registry, "hash.rpc", id, 1).await);
    }
    until(&d, "four instances listed", |i| {
        ids(i) == ["i0", "i1", "i2", "i3"]
    })
    .await;

    let keys: Vec<String> = (0..1_000).map(|n| format!("user-{n}")).collect();
    let ch = ConsistentHash::new();
    let before = owners(&ch, &d, &keys);
    let counts = tally(&before);
    // 250 expected each; 160 points per instance keep every share within
    // 10% to 40%.
    assert_eq!(counts.len(), 4, "{counts:?}");
    for (id, n) in &counts {
        assert!((100..=400).contains(n), "{id} holds {n} of 1000 keys");
    }

    // i2 leaves. Every key that was elsewhere stays where it was; every
    // key of i2 moves, spread over all three survivors rather than dumped
    // on one neighbour (positions depend only on ids and keys, so this
    // holds the same on every run).
    regs.remove("i2")
        .expect("i2")
        .deregister()
        .await
        .expect("deregister i2");
    until(&d, "i2 gone", |i| ids(i) == ["i0", "i1", "i3"]).await;
    let after = owners(&ch, &d, &keys);
    let mut moved_to = BTreeMap::new();
    for ((key, b), a) in keys.iter().zip(&before).zip(&after) {
        if b == "i2" {
            assert_ne!(a, "i2", "{key} still on i2");
            *moved_to.entry(a.as_str()).or_insert(0) += 1;
        } else {
            assert_eq!(a, b, "{key} moved from {b} to {a}, which did not leave");
        }
    }
    assert_eq!(moved_to.len(), 3, "i2's keys went to {moved_to:?}");

    // i4 joins. It only takes keys: a key either stays or moves to i4.
    let _i4 = register(&registry, "hash.rpc", "i4", 1).await;
    until(&d, "i4 listed", |i| ids(i) == ["i0", "i1", "i3", "i4"]).await;
    let joined = owners(&ch, &d, &keys);
    let mut taken = 0;
    for ((key, b), a) in keys.iter().zip(&after).zip(&joined) {
        if a != b {
            assert_eq!(a, "i4", "{key} moved from {b} to {a}, not to the newcomer");
            taken += 1;
        }
    }
    // About a quarter of the keys; 10% to 40% as above.
    assert!((100..=400).contains(&taken), "i4 took {taken} of 1000 keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_moves_few_keys_on_roster() {
    consistent_hash_moves_few_keys(Server::Roster(TestNode::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_moves_few_keys_on_etcd() {
    consistent_hash_moves_few_keys(Server::Etcd(Etcd::start())).await;
}
