//! `roster gateway` under steady traffic while its service's membership
//! changes, everything a real process: the registry (`roster serve`), the
//! backends (`roster echo`, which register themselves) and the gateway.
//!
//! These are the promises a gateway on a service registry exists to keep:
//! traffic spreads over the instances; an instance that registers gets
//! traffic at once (here: within a second of registering); an instance that
//! leaves gracefully costs no request, not even a POST; one that is killed
//! with `kill -9` costs no idempotent request either (calls that fail on it,
//! in flight or new, are retried on another instance) and is ejected long
//! before its lease runs out.
//!
//! Each test drives a [`Load`] — a few loops of requests, each on its own
//! keep-alive connection to the gateway — across the event and counts
//! every answer and every failure. The waits are for events: a process's
//! ready line, a state of the gateway's admin `/routes`, a number of
//! answers; each is bounded. Figures (time to first traffic, requests
//! made) are printed; run with `--nocapture` to see them.
//!
//! The other gateway tests: error answers and streaming in
//! `gateway_errors.rs`; headers, routing, upgrades, health checks, reloads
//! and metrics in `gateway_features.rs`.

use std::time::{Duration, Instant};

use crate::procs::{get, instances_of, sample, Echo, Gateway, Load, Tally};
use crate::roster::Roster;
use hyper::StatusCode;
use roster_testkit::WAIT;
use tokio::time::timeout;

/// Concurrent loops of the steady load.
const WORKERS: usize = 4;

/// Each loop's pause between requests: a few hundred requests a second in
/// all, steady traffic that leaves the two shared CI cores room for the
/// processes under test.
const PAUSE: Duration = Duration::from_millis(5);

/// A GET that the echo answers after 20 ms: with the load's four loops,
/// at any moment a request or more is in flight on each instance, so the
/// instance stopped or killed has requests to finish or to lose.
const SLOW: &str = "/sleep/20";

/// Starts instances `ids` of `service`, concurrently.
async fn echoes(roster: &Roster, service: &str, ids: &[&str], extra: &[&str]) -> Vec<Echo> {
    let starts: Vec<_> = ids
        .iter()
        .map(|id| {
            let (registry, service, id) =
                (roster.endpoint.clone(), service.to_string(), id.to_string());
            let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            tokio::spawn(async move {
                let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
                Echo::start_with(&registry, &service, &id, &extra).await
            })
        })
        .collect();
    let mut all = Vec::new();
    for s in starts {
        all.push(s.await.expect("echo started"));
    }
    all
}

/// `ids`, all in rotation, as [`Gateway::until_instances`] takes them.
fn live<'a>(ids: &[&'a str]) -> Vec<(&'a str, bool)> {
    ids.iter().map(|&i| (i, false)).collect()
}

/// Asserts that the load saw no failure.
fn assert_no_failure(tally: &Tally) {
    assert!(
        tally.failures.is_empty(),
        "{} of {} requests failed: {:#?}",
        tally.failures.len(),
        tally.requests(),
        tally.failures
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_across_instances() {
    let roster = Roster::start();
    let ids = ["w1", "w2", "w3"];
    let _echoes = echoes(&roster, "web", &ids, &["--ttl", "2"]).await;
    // Two gateways on the same instances: the default balancer, p2c, as a
    // user gets it, and round robin, whose spread is exact.
    let p2c = Gateway::start(&roster.endpoint, &["--route", "/=web"]).await;
    let rr = Gateway::start(
        &roster.endpoint,
        &["--route", "/=web", "--balancer", "round_robin"],
    )
    .await;
    for gw in [&p2c, &rr] {
        gw.until_instances("/", &live(&ids)).await;
    }

    let load = Load::start(p2c.addr, "/spread", WORKERS, PAUSE);
    load.more(600).await;
    let tally = load.stop().await;
    assert_no_failure(&tally);
    println!(
        "p2c: {} requests: {:?}",
        tally.requests(),
        tally.by_instance
    );
    // A third each would be even; p2c follows each instance's latency,
    // which on shared cores differs by chance between identical
    // instances (splits like 17/35/48% happen), so the bound is loose:
    // every instance gets a real share.
    for id in ids {
        let share = tally.by_instance.get(id).copied().unwrap_or(0) as f64 / tally.ok as f64;
        assert!(
            share >= 0.1,
            "{id} got {share:.2} of {:?}",
            tally.by_instance
        );
    }

    let load = Load::start(rr.addr, "/spread", WORKERS, PAUSE);
    load.more(600).await;
    let tally = load.stop().await;
    assert_no_failure(&tally);
    println!(
        "round robin: {} requests: {:?}",
        tally.requests(),
        tally.by_instance
    );
    let (least, most) = (
        tally.by_instance.values().min().copied().unwrap_or(0),
        tally.by_instance.values().max().copied().unwrap_or(0),
    );
    assert_eq!(tally.by_instance.len(), 3, "{:?}", tally.by_instance);
    assert!(most - least <= 1, "round robin: {:?}", tally.by_instance);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_receives_traffic_within_a_second() {
    let roster = Roster::start();
    let _echoes = echoes(&roster, "web", &["w1", "w2"], &["--ttl", "2"]).await;
    let gw = Gateway::start(&roster.endpoint, &["--route", "/=web"]).await;
    gw.until_instances("/", &live(&["w1", "w2"])).await;
    let load = Load::start(gw.addr, "/joining", WORKERS, PAUSE);
    load.more(100).await;

    // The echo prints its ready line right after its registration is
    // written: what happens from there is the registry's watch, the
    // gateway's discovery and the balancer's first pick, under load. The
    // line is read by a thread of this test that may be scheduled after
    // the first answer has already arrived (the figure is then 0), so the
    // bound is asserted on the time since the process was *started*,
    // which also counts its start-up and registration: stricter than the
    // promise, which runs from registering.
    let w3 = Echo::start(&roster.endpoint, "web", "w3").await;
    let seen = load
        .until(WAIT, "answered by w3", |t| t.first.contains_key("w3"))
        .await;
    let first = seen.first["w3"];
    let (since_ready, since_start) = (
        first.saturating_duration_since(w3.ready_at),
        first - w3.started_at,
    );
    println!(
        "w3 first answered {since_ready:?} after its ready line was read, \
         {since_start:?} after its process was started"
    );
    assert!(
        since_start < Duration::from_secs(1),
        "w3 first answered {since_start:?} after it was started"
    );

    // It stays in rotation rather than answering one lucky request. Not
    // with a third of the traffic, though: p2c judges an instance by its
    // latency average, which starts from its first calls (a fresh
    // connection, a cold process) and decays over seconds, so a new
    // instance of identical speed gets a few percent at first (2 to 8 of
    // the next 400 requests here), and at least the probe p2c forces on
    // an instance passed over for a second.
    let again = seen.by_instance["w3"] + 2;
    load.until(Duration::from_secs(3), "answered by w3 twice more", |t| {
        t.by_instance["w3"] >= again
    })
    .await;
    let tally = load.stop().await;
    assert_no_failure(&tally);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_deregistration_fails_no_request() {
    let roster = Roster::start();
    // On SIGTERM an echo deregisters and then keeps serving for the drain
    // delay before it closes its port and its idle connections. The
    // gateway hears of the deregistration through the registry's watch, a
    // few milliseconds later; until then it may still send requests to
    // that instance, on new connections or on pooled keep-alive ones. A
    // GET caught by the closing would be retried elsewhere, but the load
    // here is POSTs, which may not be retried: one sent into that window
    // would fail with a 502. On loopback the window is so short that runs
    // without the delay have not hit it, but it exists, and the test
    // should check the procedure that closes it rather than a race won.
    // A real rolling restart does the same: a Kubernetes preStop sleep,
    // or a service that leaves its load balancer before it stops
    // listening. 500 ms is ample for a watch on loopback.
    let ids = ["w1", "w2", "w3"];
    let mut echoes = echoes(
        &roster,
        "web",
        &ids,
        &["--ttl", "2", "--drain-delay-ms", "500"],
    )
    .await;
    let gw = Gateway::start(&roster.endpoint, &["--route", "/=web"]).await;
    gw.until_instances("/", &live(&ids)).await;
    let load = Load::start_posts(gw.addr, SLOW, WORKERS, PAUSE);
    let before = load
        .until(WAIT, "w3 serving", |t| t.by_instance.get("w3") >= Some(&20))
        .await;

    let mut w3 = echoes.pop().expect("w3");
    w3.proc.terminate();
    gw.until_instances("/", &live(&["w1", "w2"])).await;
    let status = w3.proc.exited().await;
    assert!(status.success(), "w3 exited with {status:?}");
    let exited = Instant::now();
    load.more(200).await;
    let tally = load.stop().await;

    println!(
        "graceful stop of w3: {} requests, {} failed; before: {:?}, in all: {:?}",
        tally.requests(),
        tally.failures.len(),
        before.by_instance,
        tally.by_instance
    );
    assert_no_failure(&tally);
    for id in ["w1", "w2"] {
        assert!(tally.last[id] > exited, "{id} kept serving after w3 left");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_fails_no_get_and_is_ejected() {
    let roster = Roster::start();
    let ids = ["w1", "w2", "w3"];
    let mut echoes = echoes(&roster, "web", &ids, &["--ttl", "2"]).await;
    let gw = Gateway::start(&roster.endpoint, &["--route", "/=web"]).await;
    gw.until_instances("/", &live(&ids)).await;
    let load = Load::start(gw.addr, SLOW, WORKERS, PAUSE);
    load.until(WAIT, "w3 serving", |t| t.by_instance.get("w3") >= Some(&20))
        .await;

    // Besides the load, requests sure to be in flight on w3 when it dies:
    // nine slow GETs, which p2c spreads by calls in flight, about three to
    // each instance. The load has at most WORKERS requests in flight, so
    // a gauge above that by nine means all nine have reached the gateway,
    // which sends them on at once.
    let slow: Vec<_> = (0..9)
        .map(|i| {
            let addr = gw.addr;
            tokio::spawn(async move { get(addr, &format!("/sleep/1500?slow={i}")).await })
        })
        .collect();
    gw.until_sample("roster_gateway_requests_in_flight", |n| {
        n >= (9 + WORKERS) as f64
    })
    .await;

    let mut w3 = echoes.pop().expect("w3");
    let w3_addr = w3.addr.to_string();
    w3.proc.kill9();
    let killed = Instant::now();
    // The record stays until the 2 s lease expires; well before that,
    // failed calls take the instance out of rotation (three in a row, by
    // default), and each failed GET is retried on another instance.
    gw.until_route("/", "w3 ejected", |r| {
        instances_of(r).contains(&("w3".to_string(), true))
    })
    .await;
    let ejected = killed.elapsed();
    gw.until_instances("/", &live(&["w1", "w2"])).await;
    let expired = killed.elapsed();
    load.more(100).await;
    let tally = load.stop().await;
    for (i, s) in slow.into_iter().enumerate() {
        let answer = timeout(WAIT, s)
            .await
            .expect("slow GET answered")
            .expect("task");
        assert_eq!(answer.status, StatusCode::OK, "slow GET {i}: {answer:?}");
        assert_ne!(answer.instance(), "w3");
    }

    let metrics = gw.metrics().await;
    let errors = |kind: &str| {
        sample(
            &metrics,
            &format!(
                "roster_gateway_upstream_errors_total{{route=\"/\",instance=\"{w3_addr}\",kind=\"{kind}\"}}"
            ),
        )
    };
    // `protocol`: requests in flight when it died, and requests sent on
    // pooled connections it had left; `connect`: refused connections.
    let (broken, refused) = (errors("protocol"), errors("connect"));
    println!(
        "kill -9 of w3: ejected after {ejected:?}, gone from the registry after {expired:?}; \
         {} requests, {} failed; calls to w3 that failed and were retried: \
         {broken} broken, {refused} refused",
        tally.requests(),
        tally.failures.len()
    );
    assert_no_failure(&tally);
    let ejections =
        format!("roster_gateway_ejections_total{{service=\"web\",instance=\"{w3_addr}\"}}");
    assert_eq!(sample(&metrics, &ejections), 1.0, "{metrics}");
    assert!(broken >= 1.0, "no call broke in flight:\n{metrics}");
    assert!(broken + refused >= 3.0, "failed calls to w3:\n{metrics}");
}
