//! The Lease API end to end: the real `roster` binary driven by the
//! third-party `etcd-client` crate.
//!
//! Grant, revoke, keepalive, time-to-live and list, how puts attach keys to
//! leases, expiry, and what a `kill -9` does to leases. Every test starts its
//! own server on a fresh data directory.
//!
//! The expected values are etcd 3.4's. Set `ROSTER_TEST_AGAINST_ETCD=1` to
//! run the same tests against the real etcd (`/usr/bin/etcd`) instead of
//! roster; all of them pass there except the restart test, which always runs
//! roster because it checks roster's own remaining-TTL rule (see the module
//! notes of `roster_server::lessor`; etcd 3.4 checkpoints only when an
//! experimental flag is set).
//!
//! Timing: every wait for an event (a watch event, a keepalive answer) is
//! bounded by [`WAIT`], and every unary call by the client's own timeout
//! ([`RPC_TIMEOUT`]). The only sleeps let a TTL run out, pace keepalives, or
//! give a checkpoint timer the time to fire; each says which.

mod common;

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

use common::{Roster, Server};
use etcd_client::{
    Client, ConnectOptions, Event, EventType, GetOptions, LeaseGrantOptions,
    LeaseTimeToLiveOptions, PutOptions, WatchOptions, WatchStream,
};
use tokio::time::{sleep, timeout};

/// The longest wait for an event the test expects to happen.
const WAIT: Duration = Duration::from_secs(10);
/// The longest a unary call (or the opening of a stream) may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

const NOT_FOUND: &str = "NotFound";
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";

/// Connects an etcd client to `endpoint`. The timeout covers each unary call
/// and the opening of each stream, not a stream's later messages.
async fn connect(endpoint: &str) -> Client {
    let opts = ConnectOptions::new().with_timeout(RPC_TIMEOUT);
    Client::connect([format!("http://{endpoint}")], Some(opts))
        .await
        .expect("connect")
}

/// Awaits `f` for at most [`WAIT`].
async fn within<F: Future>(what: &str, f: F) -> F::Output {
    timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
}

/// The gRPC code name and message of a failed call.
fn grpc<T: Debug>(result: Result<T, etcd_client::Error>) -> (String, String) {
    match result {
        Err(etcd_client::Error::GRpcStatus(s)) => {
            (format!("{:?}", s.code()), s.message().to_string())
        }
        other => panic!("expected a gRPC error status, got {other:?}"),
    }
}

/// Grants a lease with a server-chosen id and returns the id.
async fn grant(c: &mut Client, ttl: i64) -> i64 {
    let r = c.lease_grant(ttl, None).await.expect("grant");
    assert_eq!(r.ttl(), ttl, "granted TTL");
    r.id()
}

/// Puts `key` attached to `lease`; returns the put's revision.
async fn put_with(c: &mut Client, key: &str, value: &str, lease: i64) -> i64 {
    let opts = PutOptions::new().with_lease(lease);
    let r = c.put(key, value, Some(opts)).await.expect("put");
    r.header().expect("header").revision()
}

/// The lease `key` is attached to (0 = none), or `None` if it is absent.
async fn lease_of(c: &mut Client, key: &str) -> Option<i64> {
    let r = c.get(key, None).await.expect("get");
    r.kvs().first().map(|kv| kv.lease())
}

/// The keys attached to `lease`, sorted (etcd lists them in map order).
async fn keys_of(c: &mut Client, lease: i64) -> Vec<String> {
    let opts = LeaseTimeToLiveOptions::new().with_keys();
    let r = c.lease_time_to_live(lease, Some(opts)).await.expect("ttl");
    let mut keys: Vec<String> = r
        .keys()
        .iter()
        .map(|k| String::from_utf8(k.clone()).expect("utf-8 key"))
        .collect();
    keys.sort();
    keys
}

/// The ids of all leases, sorted.
async fn lease_ids(c: &mut Client) -> Vec<i64> {
    let r = c.leases().await.expect("leases");
    let mut ids: Vec<i64> = r.leases().iter().map(|l| l.id()).collect();
    ids.sort();
    ids
}

/// Opens a watch and waits until the server confirms it, so that no event
/// after this point can be missed.
async fn watch(c: &mut Client, key: &str, opts: Option<WatchOptions>) -> WatchStream {
    let mut w = c.watch(key, opts).await.expect("watch");
    let created = within("watch created", w.message())
        .await
        .expect("watch response")
        .expect("watch stream open");
    assert!(created.created(), "first watch response: {created:?}");
    w
}

/// The next `n` events on `w`.
async fn events(w: &mut WatchStream, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    while out.len() < n {
        let resp = within("watch events", w.message())
            .await
            .expect("watch response")
            .expect("watch stream open");
        out.extend(resp.events().iter().cloned());
    }
    assert_eq!(out.len(), n, "more events than expected: {out:?}");
    out
}

/// (type, key, mod_revision) of an event, for one-line assertions.
fn brief(e: &Event) -> (EventType, String, i64) {
    let kv = e.kv().expect("event kv");
    let key = kv.key_str().expect("utf-8 key").to_string();
    (e.event_type(), key, kv.mod_revision())
}

/// Keeps `lease` alive from a background task: one keepalive every
/// `every` (pacing, not waiting for an event). The task panics if the
/// server stops renewing, so a test checks [`JoinHandle::is_finished`]
/// before it aborts it.
fn keep_alive_in_background(
    c: &Client,
    lease: i64,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    let mut leases = c.lease_client();
    tokio::spawn(async move {
        let (mut keeper, mut answers) = leases.keep_alive(lease).await.expect("keepalive");
        loop {
            sleep(every).await;
            keeper.keep_alive().await.expect("send keepalive");
            let answer = within("keepalive answer", answers.message())
                .await
                .expect("keepalive stream")
                .expect("keepalive stream open");
            assert!(answer.ttl() > 0, "lease {lease:x} lost: {answer:?}");
        }
    })
}

#[tokio::test]
async fn grant_with_server_or_client_chosen_ids_and_ttl_bounds() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let before = c.get("k", None).await.unwrap().header().unwrap().revision();

    let assigned = c.lease_grant(30, None).await.unwrap();
    assert!(assigned.id() > 0, "server-assigned id {}", assigned.id());
    assert_eq!(assigned.ttl(), 30);
    // A lease is not a key: granting one does not move the revision.
    assert_eq!(assigned.header().unwrap().revision(), before);

    let chosen = LeaseGrantOptions::new().with_id(0x1234);
    let chosen = c.lease_grant(40, Some(chosen)).await.unwrap();
    assert_eq!((chosen.id(), chosen.ttl()), (0x1234, 40));

    let again = LeaseGrantOptions::new().with_id(0x1234);
    assert_eq!(
        grpc(c.lease_grant(50, Some(again)).await),
        (
            "FailedPrecondition".into(),
            "etcdserver: lease already exists".into()
        )
    );
    // The refused grant left the lease as it was.
    let ttl = c.lease_time_to_live(0x1234, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 40);

    // Below the minimum (2 s with etcd's default election timeout): raised.
    for asked in [1, 0] {
        let low = c.lease_grant(asked, None).await.unwrap();
        assert_eq!(low.ttl(), 2, "TTL {asked} is raised to the minimum");
        let ttl = c.lease_time_to_live(low.id(), None).await.unwrap();
        assert_eq!(ttl.granted_ttl(), 2);
    }

    let largest = c.lease_grant(9_000_000_000, None).await.unwrap();
    assert_eq!(largest.ttl(), 9_000_000_000);
    assert_eq!(
        grpc(c.lease_grant(9_000_000_001, None).await),
        (
            "OutOfRange".into(),
            "etcdserver: too large lease TTL".into()
        )
    );

    let mut expected = vec![assigned.id(), 0x1234, largest.id()];
    let listed = lease_ids(&mut c).await;
    expected.retain(|id| !listed.contains(id));
    assert!(
        expected.is_empty(),
        "not listed: {expected:x?} in {listed:x?}"
    );
    assert_eq!(listed.len(), 5, "{listed:x?}");
}

#[tokio::test]
async fn put_attaches_moves_and_keeps_leases() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let l1 = grant(&mut c, 30).await;
    let l2 = grant(&mut c, 30).await;

    put_with(&mut c, "a", "1", l1).await;
    put_with(&mut c, "b", "1", l1).await;
    assert_eq!(lease_of(&mut c, "a").await, Some(l1));
    assert_eq!(keys_of(&mut c, l1).await, ["a", "b"]);

    // A put with another lease moves the key over.
    put_with(&mut c, "a", "2", l2).await;
    assert_eq!(lease_of(&mut c, "a").await, Some(l2));
    assert_eq!(keys_of(&mut c, l1).await, ["b"]);
    assert_eq!(keys_of(&mut c, l2).await, ["a"]);

    // ignore_lease keeps the key's lease and changes only the value.
    let keep = PutOptions::new().with_ignore_lease();
    c.put("a", "3", Some(keep)).await.unwrap();
    let got = c.get("a", None).await.unwrap();
    assert_eq!(
        (got.kvs()[0].value(), got.kvs()[0].lease()),
        (&b"3"[..], l2)
    );
    assert_eq!(keys_of(&mut c, l2).await, ["a"]);

    // A plain put detaches the key.
    c.put("a", "4", None).await.unwrap();
    assert_eq!(lease_of(&mut c, "a").await, Some(0));
    assert!(keys_of(&mut c, l2).await.is_empty());

    // So revoking the lease it was moved away from leaves it alone.
    c.lease_revoke(l1).await.unwrap();
    assert_eq!(lease_of(&mut c, "a").await, Some(0));
    assert_eq!(lease_of(&mut c, "b").await, None);

    let before = c.get("c", None).await.unwrap().header().unwrap().revision();
    let missing = PutOptions::new().with_lease(0x7777);
    assert_eq!(
        grpc(c.put("c", "1", Some(missing)).await),
        (NOT_FOUND.into(), LEASE_NOT_FOUND.into())
    );
    let after = c.get("c", None).await.unwrap();
    assert!(after.kvs().is_empty());
    assert_eq!(after.header().unwrap().revision(), before);
}

#[tokio::test]
async fn revoke_deletes_every_attached_key_in_one_revision() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let lease = grant(&mut c, 30).await;
    for key in ["r/1", "r/2", "r/3"] {
        put_with(&mut c, key, "v", lease).await;
    }
    let before = c.put("r/plain", "v", None).await.unwrap();
    let before = before.header().unwrap().revision();
    let mut w = watch(&mut c, "r/", Some(WatchOptions::new().with_prefix())).await;

    let revoked = c.lease_revoke(lease).await.unwrap();
    let rev = revoked.header().unwrap().revision();
    assert_eq!(rev, before + 1, "the whole revoke is one revision");

    let mut seen: Vec<_> = events(&mut w, 3).await.iter().map(brief).collect();
    seen.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        seen,
        [
            (EventType::Delete, "r/1".to_string(), rev),
            (EventType::Delete, "r/2".to_string(), rev),
            (EventType::Delete, "r/3".to_string(), rev),
        ]
    );

    let left = c
        .get("r/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let left: Vec<_> = left.kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
    assert_eq!(left, ["r/plain"]);
    assert!(!lease_ids(&mut c).await.contains(&lease));

    // A lease without keys is revoked without a revision of its own.
    let empty = grant(&mut c, 30).await;
    let r = c.lease_revoke(empty).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), rev);

    for unknown in [lease, 0x4242] {
        assert_eq!(
            grpc(c.lease_revoke(unknown).await),
            (NOT_FOUND.into(), LEASE_NOT_FOUND.into())
        );
    }
}

#[tokio::test]
async fn time_to_live_and_leases() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let l1 = grant(&mut c, 30).await;
    let l2 = grant(&mut c, 100).await;
    put_with(&mut c, "t/1", "v", l1).await;
    put_with(&mut c, "t/2", "v", l1).await;

    let plain = c.lease_time_to_live(l1, None).await.unwrap();
    assert_eq!((plain.id(), plain.granted_ttl()), (l1, 30));
    assert!((1..=30).contains(&plain.ttl()), "remaining {}", plain.ttl());
    assert!(plain.keys().is_empty(), "keys only when asked for");
    assert_eq!(keys_of(&mut c, l1).await, ["t/1", "t/2"]);

    let other = c.lease_time_to_live(l2, None).await.unwrap();
    assert_eq!(other.granted_ttl(), 100);
    assert!(
        (31..=100).contains(&other.ttl()),
        "remaining {}",
        other.ttl()
    );
    assert!(keys_of(&mut c, l2).await.is_empty());

    // An unknown lease is not an error: TTL -1.
    let unknown = c.lease_time_to_live(0x5151, None).await.unwrap();
    assert_eq!((unknown.id(), unknown.ttl()), (0x5151, -1));

    let mut both = vec![l1, l2];
    both.sort();
    assert_eq!(lease_ids(&mut c).await, both);
    c.lease_revoke(l2).await.unwrap();
    assert_eq!(lease_ids(&mut c).await, [l1]);
    let gone = c.lease_time_to_live(l2, None).await.unwrap();
    assert_eq!(gone.ttl(), -1);
}

#[tokio::test]
async fn keepalive_renews_and_unknown_leases_get_ttl_zero() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let lease = grant(&mut c, 2).await;
    put_with(&mut c, "ka", "v", lease).await;

    // etcd-client sends the first keepalive itself and fails on TTL 0.
    let (mut keeper, mut answers) = c.lease_keep_alive(lease).await.unwrap();
    assert_eq!(keeper.id(), lease);
    let start = Instant::now();
    let mut renewals = 0;
    // Keep it alive for well over twice its TTL.
    while start.elapsed() < Duration::from_millis(4_500) {
        // Pacing: a keepalive every 600 ms, under a third of the TTL.
        sleep(Duration::from_millis(600)).await;
        keeper.keep_alive().await.unwrap();
        let answer = within("keepalive answer", answers.message())
            .await
            .unwrap()
            .expect("stream open");
        assert_eq!((answer.id(), answer.ttl()), (lease, 2));
        renewals += 1;
    }
    assert!(renewals >= 7);
    assert_eq!(lease_of(&mut c, "ka").await, Some(lease));
    let ttl = c.lease_time_to_live(lease, None).await.unwrap();
    assert!((1..=2).contains(&ttl.ttl()), "remaining {}", ttl.ttl());

    // An unknown lease is answered with TTL 0, which etcd-client turns
    // into an error; `one_keepalive_stream_renews_many_leases` sees the raw
    // answer.
    let unknown = c.lease_keep_alive(0x6161).await;
    assert!(
        matches!(unknown, Err(etcd_client::Error::LeaseKeepAliveError(_))),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn one_keepalive_stream_renews_many_leases() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let mut leases = Vec::new();
    for i in 0..5 {
        let lease = grant(&mut c, 2).await;
        put_with(&mut c, &format!("many/{i}"), "v", lease).await;
        leases.push(lease);
    }

    let mut stream = raw::KeepAliveStream::open(server.endpoint()).await;
    let start = Instant::now();
    let mut rounds = 0;
    // Keep all five alive for well over twice their TTL, on the one stream.
    while start.elapsed() < Duration::from_millis(4_500) {
        for &lease in &leases {
            stream.send(lease).await;
        }
        // An unknown lease, mid-stream: answered with TTL 0, stream open.
        stream.send(0x7171).await;
        let mut answers = Vec::new();
        for _ in 0..=leases.len() {
            answers.push(within("keepalive answer", stream.recv()).await);
        }
        answers.sort();
        let mut expected: Vec<_> = leases.iter().map(|&l| (l, 2)).collect();
        expected.push((0x7171, 0));
        expected.sort();
        assert_eq!(answers, expected);
        rounds += 1;
        // Pacing: a round every 600 ms, under a third of the TTL.
        sleep(Duration::from_millis(600)).await;
    }
    assert!(rounds >= 7);
    let all = c
        .get("many/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(all.kvs().len(), 5, "every lease was kept alive");
}

#[tokio::test]
async fn an_abandoned_lease_expires_and_a_watcher_sees_its_keys_deleted() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let start = Instant::now();
    let lease = grant(&mut c, 2).await;
    let rev = put_with(&mut c, "exp", "v", lease).await;
    let opts = WatchOptions::new().with_start_revision(rev + 1);
    let mut w = watch(&mut c, "exp", Some(opts)).await;

    let deleted = events(&mut w, 1).await;
    let elapsed = start.elapsed();
    let (kind, key, del_rev) = brief(&deleted[0]);
    assert_eq!((kind, key.as_str()), (EventType::Delete, "exp"));
    assert_eq!(del_rev, rev + 1);
    // The deadline is 2 s after the grant; the server checks for expired
    // leases every 100 ms (etcd: 500 ms) and revokes with one write.
    assert!(
        elapsed >= Duration::from_millis(1_500),
        "deleted after only {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(4),
        "deleted only after {elapsed:?}"
    );

    assert_eq!(lease_of(&mut c, "exp").await, None);
    let ttl = c.lease_time_to_live(lease, None).await.unwrap();
    assert_eq!(ttl.ttl(), -1);
    assert!(!lease_ids(&mut c).await.contains(&lease));
    // The lease is gone, so it can no longer be renewed.
    assert!(c.lease_keep_alive(lease).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn leases_survive_kill_9_with_their_checkpointed_remaining_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Roster::start_in(dir.path(), &[]);
    let mut c = connect(&server.endpoint).await;

    let long = grant(&mut c, 60).await;
    let granted = Instant::now();
    put_with(&mut c, "long/1", "v", long).await;
    put_with(&mut c, "long/2", "v", long).await;
    // `short` is kept alive until the crash and abandoned after it;
    // `kept` is kept alive on both sides of it.
    let short = grant(&mut c, 8).await;
    put_with(&mut c, "short/1", "v", short).await;
    let kept = grant(&mut c, 6).await;
    put_with(&mut c, "kept/1", "v", kept).await;
    let renew_short = keep_alive_in_background(&c, short, Duration::from_secs(1));
    let renew_kept = keep_alive_in_background(&c, kept, Duration::from_secs(1));

    // Checkpoints are timer-driven, every 5 s from the server's start, and
    // leave no trace a client can see, so the test waits for one. Any
    // closed 5 s window after the grant holds a tick, so by 11 s after it a
    // checkpoint taken at least 5 s after the grant has been written (with
    // a second to spare for its write): it recorded `long` with at most
    // 55 s left.
    sleep(Duration::from_secs(11).saturating_sub(granted.elapsed())).await;
    for renewer in [&renew_short, &renew_kept] {
        assert!(!renewer.is_finished(), "keepalive failed before the crash");
    }
    renew_short.abort();
    renew_kept.abort();
    server.kill();
    drop(c);

    let server = Roster::start_in(dir.path(), &[]);
    let restarted = Instant::now();
    let mut c = connect(&server.endpoint).await;
    // The live owner reconnects and renews at once.
    let renew_kept = keep_alive_in_background(&c, kept, Duration::from_secs(1));

    let mut all = vec![long, short, kept];
    all.sort();
    assert_eq!(lease_ids(&mut c).await, all);
    let keys = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    let rev = keys.header().unwrap().revision();
    let keys: Vec<_> = keys
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap(), kv.lease()))
        .collect();
    assert_eq!(
        keys,
        [
            ("kept/1", kept),
            ("long/1", long),
            ("long/2", long),
            ("short/1", short)
        ]
    );
    assert_eq!(keys_of(&mut c, long).await, ["long/1", "long/2"]);

    // Not reset to the full 60 s: the checkpointed remainder, and time did
    // not run while the server was down.
    let ttl = c.lease_time_to_live(long, None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 60);
    assert!(
        (40..=55).contains(&ttl.ttl()),
        "`long` restarted with {} s left",
        ttl.ttl()
    );

    // Nobody renews `short` any more: it expires, at most its TTL (plus
    // the expiry check and one write) after the restart.
    let opts = WatchOptions::new().with_start_revision(rev + 1);
    let mut w = watch(&mut c, "short/1", Some(opts)).await;
    let deleted = timeout(Duration::from_secs(15), events(&mut w, 1))
        .await
        .expect("`short` expires after the restart");
    assert_eq!(
        brief(&deleted[0]),
        (EventType::Delete, "short/1".to_string(), rev + 1)
    );
    assert!(
        restarted.elapsed() < Duration::from_secs(8 + 2),
        "`short` outlived its TTL: {:?}",
        restarted.elapsed()
    );
    assert_eq!(lease_of(&mut c, "short/1").await, None);

    // `kept` must be renewed past its own TTL after the restart.
    sleep(Duration::from_secs(7).saturating_sub(restarted.elapsed())).await;
    assert!(!renew_kept.is_finished(), "keepalive failed after restart");
    renew_kept.abort();
    assert_eq!(lease_of(&mut c, "kept/1").await, Some(kept));
    assert_eq!(lease_of(&mut c, "long/1").await, Some(long));
    let mut left = vec![long, kept];
    left.sort();
    assert_eq!(lease_ids(&mut c).await, left);
}

/// One LeaseKeepAlive stream carrying any lease ids, on Roster's own
/// generated gRPC client (etcd-client ties each stream to one lease).
mod raw {
    use roster_proto::etcdserverpb::lease_client::LeaseClient;
    use roster_proto::etcdserverpb::{LeaseKeepAliveRequest, LeaseKeepAliveResponse};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::Streaming;

    pub struct KeepAliveStream {
        tx: mpsc::Sender<LeaseKeepAliveRequest>,
        rx: Streaming<LeaseKeepAliveResponse>,
    }

    impl KeepAliveStream {
        pub async fn open(endpoint: &str) -> KeepAliveStream {
            let mut client = LeaseClient::connect(format!("http://{endpoint}"))
                .await
                .expect("connect");
            let (tx, requests) = mpsc::channel(16);
            let rx = client
                .lease_keep_alive(ReceiverStream::new(requests))
                .await
                .expect("open keepalive stream")
                .into_inner();
            KeepAliveStream { tx, rx }
        }

        pub async fn send(&mut self, id: i64) {
            self.tx
                .send(LeaseKeepAliveRequest { id })
                .await
                .expect("send keepalive");
        }

        /// The next answer: (lease id, TTL).
        pub async fn recv(&mut self) -> (i64, i64) {
            let r = self
                .rx
                .message()
                .await
                .expect("keepalive stream")
                .expect("stream open");
            (r.id, r.ttl)
        }
    }
}
