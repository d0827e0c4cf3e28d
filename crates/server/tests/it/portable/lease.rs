//! The Lease API end to end: a real server driven by the third-party
//! `etcd-client` crate.
//!
//! Grant, revoke, keepalive, time-to-live and list, how puts attach keys to
//! leases, and expiry. Every test starts its own server on a fresh data
//! directory. What a `kill -9` does to leases needs the process: the `roster`
//! crate's `lease_crash` test.
//!
//! The expected values are etcd 3.4's, and `scripts/test.sh` runs these
//! tests against the real etcd too.
//!
//! Timing: the TTL tests start the server paused ([`Server::start_paused`])
//! and move its clock with [`Server::pass`], so a Roster run takes
//! milliseconds and its answers do not depend on the machine's speed; against
//! etcd, whose clock is real, `pass` sleeps. Every wait for an event (a watch
//! event, a keepalive answer) is bounded by [`roster_testkit::WAIT`].

use std::time::Duration;

use etcd_client::{EventType, GetOptions, LeaseGrantOptions, PutOptions, WatchOptions};
use roster_testkit::etcd_api::{
    brief, connect, events, grant, grpc, keys_of, lease_ids, lease_of, put_with, watch,
};
use roster_testkit::{within, Server};

const NOT_FOUND: &str = "NotFound";
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";

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
    let server = Server::start_paused();
    let mut c = connect(server.endpoint()).await;
    let lease = grant(&mut c, 2).await;
    put_with(&mut c, "ka", "v", lease).await;

    // etcd-client sends the first keepalive itself and fails on TTL 0.
    let (mut keeper, mut answers) = c.lease_keep_alive(lease).await.unwrap();
    assert_eq!(keeper.id(), lease);
    // Keep it alive for well over twice its TTL: eight rounds of 600 ms of
    // the server's time, each under a third of the TTL.
    for _ in 0..8 {
        server.pass(Duration::from_millis(600)).await;
        keeper.keep_alive().await.unwrap();
        let answer = within("keepalive answer", answers.message())
            .await
            .unwrap()
            .expect("stream open");
        assert_eq!((answer.id(), answer.ttl()), (lease, 2));
    }
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
    let server = Server::start_paused();
    let mut c = connect(server.endpoint()).await;
    let mut leases = Vec::new();
    for i in 0..5 {
        let lease = grant(&mut c, 2).await;
        put_with(&mut c, &format!("many/{i}"), "v", lease).await;
        leases.push(lease);
    }

    let mut stream = raw::KeepAliveStream::open(server.endpoint()).await;
    // Keep all five alive for well over twice their TTL, on the one
    // stream: eight rounds, 600 ms of the server's time apart.
    for _ in 0..8 {
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
        server.pass(Duration::from_millis(600)).await;
    }
    let all = c
        .get("many/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(all.kvs().len(), 5, "every lease was kept alive");
}

#[tokio::test]
async fn an_abandoned_lease_expires_and_a_watcher_sees_its_keys_deleted() {
    let server = Server::start_paused();
    let mut c = connect(server.endpoint()).await;
    let lease = grant(&mut c, 2).await;
    let rev = put_with(&mut c, "exp", "v", lease).await;
    let opts = WatchOptions::new().with_start_revision(rev + 1);
    let mut w = watch(&mut c, "exp", Some(opts)).await;

    // Just short of the deadline, 2 s after the grant, the key is there.
    server.pass(Duration::from_millis(1_900)).await;
    assert_eq!(lease_of(&mut c, "exp").await, Some(lease));
    // Past it, the next expiry check (every 100 ms; etcd: 500 ms) revokes
    // the lease with one write, seen by the watcher.
    server.pass(Duration::from_millis(600)).await;
    let deleted = events(&mut w, 1).await;
    let (kind, key, del_rev) = brief(&deleted[0]);
    assert_eq!((kind, key.as_str()), (EventType::Delete, "exp"));
    assert_eq!(del_rev, rev + 1);

    assert_eq!(lease_of(&mut c, "exp").await, None);
    let ttl = c.lease_time_to_live(lease, None).await.unwrap();
    assert_eq!(ttl.ttl(), -1);
    assert!(!lease_ids(&mut c).await.contains(&lease));
    // The lease is gone, so it can no longer be renewed.
    assert!(c.lease_keep_alive(lease).await.is_err());
}

/// One LeaseKeepAlive stream carrying any lease ids, on Roster's own
/// generated gRPC client (etcd-client ties each stream to one lease).
mod raw {
    use roster_proto::etcdserverpb::lease_client::LeaseClient;
    use roster_proto::etcdserverpb::{LeaseKeepAliveRequest, LeaseKeepAliveResponse};
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::{Response, Status, Streaming};

    type Opening = JoinHandle<Result<Response<Streaming<LeaseKeepAliveResponse>>, Status>>;

    pub struct KeepAliveStream {
        tx: mpsc::Sender<LeaseKeepAliveRequest>,
        opening: Option<Opening>,
        rx: Option<Streaming<LeaseKeepAliveResponse>>,
    }

    impl KeepAliveStream {
        /// Starts the call. etcd sends a stream's response headers only with
        /// its first answer, so the call is awaited on the first `recv`,
        /// after something has been sent.
        pub async fn open(endpoint: &str) -> KeepAliveStream {
            let mut client = LeaseClient::connect(format!("http://{endpoint}"))
                .await
                .expect("connect");
            let (tx, requests) = mpsc::channel(16);
            let opening = tokio::spawn(async move {
                client.lease_keep_alive(ReceiverStream::new(requests)).await
            });
            KeepAliveStream {
                tx,
                opening: Some(opening),
                rx: None,
            }
        }

        pub async fn send(&mut self, id: i64) {
            self.tx
                .send(LeaseKeepAliveRequest { id })
                .await
                .expect("send keepalive");
        }

        /// The next answer: (lease id, TTL).
        pub async fn recv(&mut self) -> (i64, i64) {
            if let Some(opening) = self.opening.take() {
                let opened = opening.await.expect("call task");
                self.rx = Some(opened.expect("open keepalive stream").into_inner());
            }
            let rx = self.rx.as_mut().expect("stream opened");
            let r = rx
                .message()
                .await
                .expect("keepalive stream")
                .expect("stream open");
            (r.id, r.ttl)
        }
    }
}
