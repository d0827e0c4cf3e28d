//! Locks (`v3lockpb.Lock`) and elections (`v3electionpb.Election`) end to
//! end: a real server driven by the third-party `etcd-client` crate's
//! `lock_client()` and `election_client()`.
//!
//! Both recipes hang an ownership key `name/<lease in hex>` on the
//! contender's lease; the oldest key holds the lock or leads. So the tests
//! check the keys as well as the answers, and that a lease running out
//! releases what it held. Every test starts its own server.
//!
//! The expected values are etcd 3.4's, and `scripts/test.sh` runs these
//! tests against the real etcd too.
//!
//! Timing: every wait for an event (a lock granted, a campaign won, an
//! observed change) is bounded by [`roster_testkit::WAIT`], and every unary
//! call by the client's own timeout (the same). A TTL runs out by moving the
//! server's paused clock ([`Server::pass`]; against etcd, a sleep). Real
//! sleeps only pace keepalives or contention, or give a call that must stay
//! blocked the time to show it does; each says which.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, LeaderKey, LockOptions, ObserveStream, ProclaimOptions, ResignOptions};
use roster_testkit::etcd_api::{connect, grant, grpc, keep_alive_in_background};
use roster_testkit::{joined, within, Server};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

/// How long a call that must stay blocked is watched before the test
/// believes it (a negative cannot be awaited).
const STILL_BLOCKED: Duration = Duration::from_millis(500);

const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";

/// Asserts that a spawned call is still blocked a while after it started.
async fn assert_blocked<T>(what: &str, task: &JoinHandle<T>) {
    // A negative cannot be awaited: give the call time to (wrongly) return.
    sleep(STILL_BLOCKED).await;
    assert!(!task.is_finished(), "{what} returned while it should wait");
}

/// Whether `key` exists.
async fn exists(c: &mut Client, key: &[u8]) -> bool {
    !c.get(key, None).await.expect("get").kvs().is_empty()
}

/// The ownership key etcd's recipes give `lease` under `name`.
fn owner_key(name: &str, lease: i64) -> Vec<u8> {
    format!("{name}/{lease:x}").into_bytes()
}

/// Takes the lock `name` with `lease` from a spawned task.
fn lock_in_background(c: &Client, name: &str, lease: i64) -> JoinHandle<Vec<u8>> {
    let mut locks = c.lock_client();
    let name = name.to_string();
    tokio::spawn(async move {
        let opts = LockOptions::new().with_lease(lease);
        let r = locks.lock(name, Some(opts)).await.expect("lock");
        r.key().to_vec()
    })
}

/// Campaigns for `name` with `lease` from a spawned task.
fn campaign_in_background(
    c: &Client,
    name: &str,
    value: &str,
    lease: i64,
) -> JoinHandle<LeaderKey> {
    let mut elections = c.election_client();
    let (name, value) = (name.to_string(), value.to_string());
    tokio::spawn(async move {
        let r = elections
            .campaign(name, value, lease)
            .await
            .expect("campaign");
        r.leader().expect("leader key").clone()
    })
}

/// The current leader's (key, value).
async fn leader(c: &mut Client, name: &str) -> (Vec<u8>, String) {
    let r = c.election_client().leader(name).await.expect("leader");
    let kv = r.kv().expect("leader kv");
    (kv.key().to_vec(), kv.value_str().unwrap().to_string())
}

/// The next (key, value) an observer is told of.
async fn next(observed: &mut ObserveStream) -> (Vec<u8>, String) {
    let r = within("observed leader", observed.message())
        .await
        .expect("observe")
        .expect("observe stream open");
    let kv = r.kv().expect("observed kv");
    (kv.key().to_vec(), kv.value_str().unwrap().to_string())
}

#[tokio::test]
async fn lock_returns_a_key_under_the_name_and_unlock_deletes_it() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let lease = grant(&mut c, 30).await;
    let mut locks = c.lock_client();

    let opts = LockOptions::new().with_lease(lease);
    let held = locks.lock("job", Some(opts)).await.unwrap();
    assert_eq!(held.key(), owner_key("job", lease));
    let kv = c.get(held.key(), None).await.unwrap();
    let kv = &kv.kvs()[0];
    assert_eq!(kv.lease(), lease, "the ownership key hangs on the lease");
    assert_eq!(
        held.header().unwrap().revision(),
        kv.create_revision(),
        "the lock was taken at the key's creation"
    );

    let unlocked = locks.unlock(held.key()).await.unwrap();
    assert_eq!(
        unlocked.header().unwrap().revision(),
        kv.create_revision() + 1
    );
    assert!(!exists(&mut c, held.key()).await);
    // The lease outlives the lock.
    let ttl = c.lease_time_to_live(lease, None).await.unwrap();
    assert!(ttl.ttl() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_lock_waits_until_the_first_is_unlocked() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let (la, lb) = (grant(&mut c, 30).await, grant(&mut c, 30).await);

    let opts = LockOptions::new().with_lease(la);
    let a = c.lock_client().lock("res", Some(opts)).await.unwrap();
    let b = lock_in_background(&c, "res", lb);
    assert_blocked("the second lock", &b).await;
    // It waits with its own key queued behind the holder's.
    assert!(exists(&mut c, &owner_key("res", lb)).await);

    c.lock_client().unlock(a.key()).await.unwrap();
    let b_key = joined("the second lock", b).await;
    assert_eq!(b_key, owner_key("res", lb));
    assert!(!exists(&mut c, a.key()).await);
    assert!(exists(&mut c, &b_key).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_contenders_never_hold_the_lock_together() {
    const ROUNDS: usize = 20;
    let server = Server::start();
    let c = connect(server.endpoint()).await;
    let inside = Arc::new(AtomicUsize::new(0));
    // (contender, entered?) in the order things happened.
    let log = Arc::new(Mutex::new(Vec::new()));

    let contenders: Vec<_> = (0..2)
        .map(|who| {
            let (mut c, inside, log) = (c.clone(), inside.clone(), log.clone());
            tokio::spawn(async move {
                let lease = grant(&mut c, 30).await;
                let mut locks = c.lock_client();
                for _ in 0..ROUNDS {
                    let opts = LockOptions::new().with_lease(lease);
                    let held = locks.lock("mutex", Some(opts)).await.expect("lock");
                    let others = inside.fetch_add(1, Ordering::SeqCst);
                    assert_eq!(others, 0, "contender {who} entered while another held");
                    log.lock().unwrap().push((who, true));
                    // Pacing: hold the lock a moment, so the other
                    // contender queues up behind it.
                    sleep(Duration::from_millis(5)).await;
                    log.lock().unwrap().push((who, false));
                    inside.fetch_sub(1, Ordering::SeqCst);
                    locks.unlock(held.key()).await.expect("unlock");
                }
            })
        })
        .collect();
    for task in contenders {
        timeout(Duration::from_secs(60), task)
            .await
            .expect("contenders finish")
            .expect("contender panicked");
    }

    let log = log.lock().unwrap();
    assert_eq!(log.len(), 4 * ROUNDS);
    for pair in log.chunks(2) {
        let (who, _) = pair[0];
        assert_eq!(pair, [(who, true), (who, false)], "overlap in {log:?}");
    }
    let handovers = log.windows(2).filter(|w| w[0].0 != w[1].0).count();
    assert!(handovers > 0, "the contenders never contended");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_whose_lease_expires_passes_to_the_next_waiter() {
    let server = Server::start_paused();
    let mut c = connect(server.endpoint()).await;
    // Nobody keeps `la` alive.
    let la = grant(&mut c, 2).await;
    let lb = grant(&mut c, 30).await;
    let opts = LockOptions::new().with_lease(la);
    let a = c.lock_client().lock("exp", Some(opts)).await.unwrap();

    let b = lock_in_background(&c, "exp", lb);
    assert_blocked("the lock while its holder's lease lives", &b).await;
    server.pass(Duration::from_millis(2_500)).await;
    let b_key = joined("the lock after the holder's lease expired", b).await;
    assert_eq!(b_key, owner_key("exp", lb));
    assert!(!exists(&mut c, a.key()).await);
    let ttl = c.lease_time_to_live(la, None).await.unwrap();
    assert_eq!(ttl.ttl(), -1, "the holder's lease expired");
}

#[tokio::test(flavor = "multi_thread")]
async fn locks_without_a_lease_still_exclude_each_other() {
    // etcd-client sends lease 0 when no lease is given; etcd's lock service
    // then grants each call a session lease of its own (60 s).
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let a = c.lock_client().lock("bare", None).await.unwrap();

    let mut locks = c.lock_client();
    let b =
        tokio::spawn(async move { locks.lock("bare", None).await.expect("lock").key().to_vec() });
    assert_blocked("a second lease-less lock", &b).await;

    // Each holder has a key of its own, on a lease of its own.
    let kv = c.get(a.key(), None).await.unwrap();
    assert_ne!(
        kv.kvs()[0].lease(),
        0,
        "lease of {:?}",
        kv.kvs()[0].key_str()
    );

    c.lock_client().unlock(a.key()).await.unwrap();
    let b_key = joined("the second lease-less lock", b).await;
    assert_ne!(b_key, a.key());
    assert!(exists(&mut c, &b_key).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_abandoned_lock_request_does_not_block_later_ones() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let (la, lb, lc) = (
        grant(&mut c, 30).await,
        grant(&mut c, 30).await,
        grant(&mut c, 30).await,
    );
    let opts = LockOptions::new().with_lease(la);
    let a = c.lock_client().lock("gone", Some(opts)).await.unwrap();

    // B gives up waiting: its call is dropped, which cancels the RPC.
    let opts = LockOptions::new().with_lease(lb);
    let mut locks = c.lock_client();
    let gave_up = timeout(STILL_BLOCKED, locks.lock("gone", Some(opts))).await;
    assert!(gave_up.is_err(), "B got the lock while A held it");

    // C must not queue behind B's abandoned key (its lease lives on).
    let c_lock = lock_in_background(&c, "gone", lc);
    c.lock_client().unlock(a.key()).await.unwrap();
    let c_key = joined("the lock after an abandoned request", c_lock).await;
    assert_eq!(c_key, owner_key("gone", lc));
    assert!(!exists(&mut c, &owner_key("gone", lb)).await);
}

#[tokio::test]
async fn campaign_leader_and_proclaim() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let lease = grant(&mut c, 30).await;
    let mut elections = c.election_client();

    let won = elections.campaign("vote", "a1", lease).await.unwrap();
    let me = won.leader().expect("leader key").clone();
    assert_eq!(me.name(), b"vote");
    assert_eq!(me.key(), owner_key("vote", lease));
    assert_eq!(me.lease(), lease);
    let kv = c.get(me.key(), None).await.unwrap();
    let kv = &kv.kvs()[0];
    assert_eq!(
        (kv.create_revision(), kv.lease(), kv.value()),
        (me.rev(), lease, &b"a1"[..])
    );
    assert_eq!(
        leader(&mut c, "vote").await,
        (me.key().to_vec(), "a1".into())
    );

    let opts = ProclaimOptions::new().with_leader(me.clone());
    elections.proclaim("a2", Some(opts)).await.unwrap();
    assert_eq!(
        leader(&mut c, "vote").await,
        (me.key().to_vec(), "a2".into())
    );
    // Proclaiming rewrites the value only: same key, creation and lease.
    let kv = c.get(me.key(), None).await.unwrap();
    let kv = &kv.kvs()[0];
    assert_eq!((kv.create_revision(), kv.lease()), (me.rev(), lease));

    // A leader key that names another creation of the key is stale.
    let stale = me.clone().with_rev(me.rev() - 1);
    let opts = ProclaimOptions::new().with_leader(stale);
    assert_eq!(
        grpc(elections.proclaim("x", Some(opts)).await),
        ("Unknown".into(), NOT_LEADER.into())
    );
    assert_eq!(leader(&mut c, "vote").await.1, "a2");
}

#[tokio::test(flavor = "multi_thread")]
async fn observe_proclaim_and_resign_hand_over_to_the_waiting_campaigner() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let (la, lb) = (grant(&mut c, 30).await, grant(&mut c, 30).await);
    let mut elections = c.election_client();

    let a = elections.campaign("vote", "a1", la).await.unwrap();
    let a = a.leader().expect("leader key").clone();
    let mut observed = elections.observe("vote").await.unwrap();
    assert_eq!(next(&mut observed).await, (a.key().to_vec(), "a1".into()));

    let b = campaign_in_background(&c, "vote", "b1", lb);
    assert_blocked("the second campaign", &b).await;
    assert_eq!(leader(&mut c, "vote").await.1, "a1");

    let opts = ProclaimOptions::new().with_leader(a.clone());
    elections.proclaim("a2", Some(opts)).await.unwrap();
    assert_eq!(next(&mut observed).await, (a.key().to_vec(), "a2".into()));
    assert!(!b.is_finished(), "proclaim does not hand over leadership");

    let opts = ResignOptions::new().with_leader(a.clone());
    elections.resign(Some(opts)).await.unwrap();
    let b = joined("the second campaign", b).await;
    assert_eq!(b.key(), owner_key("vote", lb));
    assert!(b.rev() > a.rev());
    assert!(!exists(&mut c, a.key()).await);
    assert_eq!(
        leader(&mut c, "vote").await,
        (b.key().to_vec(), "b1".into())
    );
    assert_eq!(next(&mut observed).await, (b.key().to_vec(), "b1".into()));

    // The resigned leader's key is stale now.
    let opts = ProclaimOptions::new().with_leader(a.clone());
    assert_eq!(
        grpc(elections.proclaim("a3", Some(opts)).await),
        ("Unknown".into(), NOT_LEADER.into())
    );
    assert_eq!(leader(&mut c, "vote").await.1, "b1");

    let opts = ProclaimOptions::new().with_leader(b.clone());
    elections.proclaim("b2", Some(opts)).await.unwrap();
    assert_eq!(next(&mut observed).await, (b.key().to_vec(), "b2".into()));
}

#[tokio::test(flavor = "multi_thread")]
async fn leadership_passes_when_the_leaders_lease_expires() {
    let server = Server::start_paused();
    let mut c = connect(server.endpoint()).await;
    // Nobody keeps `la` alive; `lb` is kept alive throughout.
    let la = grant(&mut c, 2).await;
    let lb = grant(&mut c, 3).await;
    let renew_b = keep_alive_in_background(&c, lb, Duration::from_secs(1));

    let a = c.election_client().campaign("vote", "a", la).await.unwrap();
    let a = a.leader().expect("leader key").clone();
    let b = campaign_in_background(&c, "vote", "b", lb);
    assert_blocked("the campaign while the leader's lease lives", &b).await;
    // Past `la`'s deadline, short of `lb`'s.
    server.pass(Duration::from_millis(2_500)).await;
    let b = joined("leadership after the leader's lease expired", b).await;
    assert_eq!(b.key(), owner_key("vote", lb));
    assert!(!exists(&mut c, a.key()).await);
    assert_eq!(leader(&mut c, "vote").await, (b.key().to_vec(), "b".into()));
    assert!(!renew_b.is_finished(), "keepalive of the new leader failed");
    renew_b.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn campaigns_without_a_lease_still_elect_one_leader() {
    // As with locks, etcd's election service grants a campaign that names
    // no lease a session lease of its own (60 s).
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let a = c.election_client().campaign("bare", "a", 0).await.unwrap();
    let a = a.leader().expect("leader key").clone();

    let b = campaign_in_background(&c, "bare", "b", 0);
    assert_blocked("a second lease-less campaign", &b).await;
    assert_eq!(leader(&mut c, "bare").await, (a.key().to_vec(), "a".into()));
    assert_ne!(a.lease(), 0, "the leader key names the session lease");

    let opts = ResignOptions::new().with_leader(a.clone());
    c.election_client().resign(Some(opts)).await.unwrap();
    let b = joined("the second lease-less campaign", b).await;
    assert_ne!(b.key(), a.key());
    assert_eq!(leader(&mut c, "bare").await, (b.key().to_vec(), "b".into()));
}

#[tokio::test]
async fn leader_of_an_election_without_candidates_fails() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let mut elections = c.election_client();
    assert_eq!(
        grpc(elections.leader("nobody").await),
        ("Unknown".into(), NO_LEADER.into())
    );

    // Nor after the only candidate resigns.
    let lease = grant(&mut c, 30).await;
    let won = elections.campaign("nobody", "v", lease).await.unwrap();
    let opts = ResignOptions::new().with_leader(won.leader().unwrap().clone());
    elections.resign(Some(opts)).await.unwrap();
    assert_eq!(
        grpc(elections.leader("nobody").await),
        ("Unknown".into(), NO_LEADER.into())
    );
}
