//! roster-client when the network fails: the resumable watch, discovery
//! through a compaction that overtook it, and failover between endpoints.
//!
//! The faults are made with a cuttable TCP proxy ([`crate::proxy`])
//! between the client and the registry: the registry stays up and is
//! changed behind the client's back while the client is cut off, which is
//! what a partition looks like from the client. Every scenario runs on
//! Roster and on the real etcd with the same code.

use std::collections::BTreeSet;

use crate::discovery::{ids, until};
use crate::proxy::Proxy;
use roster_client::{Change, Client, Registry, WatchSpec, WatchUpdate, Watcher};
use roster_proto::etcdserverpb::{CompactionRequest, PutRequest};
use roster_proto::mvccpb::event::EventType;
use roster_testkit::{Etcd, Server, TestNode, WAIT};
use tokio::sync::broadcast;
use tokio::time::timeout;

async fn put(client: &Client, key: &str, value: &str) -> i64 {
    let req = PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    };
    let r = client.unary(client.kv().put(req)).await.expect("put");
    r.header.expect("header").revision
}

async fn compact_all(client: &Client, revision: i64) {
    let req = CompactionRequest {
        revision,
        physical: true,
    };
    client
        .unary(client.kv().compact(req))
        .await
        .expect("compact");
}

/// The next update of `w`, within [`WAIT`].
async fn next_update(w: &mut Watcher) -> Option<WatchUpdate> {
    timeout(WAIT, w.next())
        .await
        .expect("a watch update in time")
}

/// Collects `(type, key, value, revision)` of events until `n` arrived.
async fn events(w: &mut Watcher, n: usize) -> Vec<(i32, String, String, i64)> {
    let mut out = Vec::new();
    while out.len() < n {
        match next_update(w).await {
            Some(WatchUpdate::Events { events, .. }) => {
                for e in events {
                    let kv = e.kv.expect("kv");
                    out.push((
                        e.r#type,
                        String::from_utf8(kv.key).unwrap(),
                        String::from_utf8(kv.value).unwrap(),
                        kv.mod_revision,
                    ));
                }
            }
            other => panic!("expected events, got {other:?}"),
        }
    }
    out
}

/// A resumable watch carries on across a partition and across a registry
/// crash, delivering every event once, in order.
async fn watch_resumes(mut server: Server) {
    let admin = Client::connect([server.endpoint()]).unwrap();
    let proxy = Proxy::start(server.endpoint()).await;
    let client = Client::connect([proxy.endpoint()]).unwrap();
    let first = put(&admin, "w/0", "zero").await;
    let mut w = client.watch_resumable(WatchSpec::prefix("w/").from_revision(first));
    assert_eq!(events(&mut w, 1).await[0].1, "w/0");

    // Cut off, the registry moves on; healed, the watch delivers what it
    // missed and nothing twice.
    proxy.cut_and_wait().await;
    let r1 = put(&admin, "w/1", "one").await;
    let r2 = put(&admin, "w/2", "two").await;
    proxy.heal();
    let got = events(&mut w, 2).await;
    assert_eq!(
        got,
        [
            (EventType::Put as i32, "w/1".into(), "one".into(), r1),
            (EventType::Put as i32, "w/2".into(), "two".into(), r2),
        ]
    );

    // The registry crashes and comes back on the same data.
    server.restart();
    let admin = Client::connect([server.endpoint()]).unwrap();
    let r3 = put(&admin, "w/3", "three").await;
    let got = events(&mut w, 1).await;
    assert_eq!(
        got,
        [(EventType::Put as i32, "w/3".into(), "three".into(), r3)]
    );
    // Nothing else is pending: a put now is the very next event.
    let r4 = put(&admin, "w/1", "uno").await;
    assert_eq!(events(&mut w, 1).await[0].3, r4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_on_roster() {
    watch_resumes(Server::Roster(TestNode::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_on_etcd() {
    watch_resumes(Server::Etcd(Etcd::start())).await;
}

/// A resumable watch whose history is compacted while it is cut off says
/// so, once, and ends.
async fn watch_reports_compaction(server: Server) {
    let admin = Client::connect([server.endpoint()]).unwrap();
    let proxy = Proxy::start(server.endpoint()).await;
    let client = Client::connect([proxy.endpoint()]).unwrap();
    let first = put(&admin, "c/0", "zero").await;
    let mut w = client.watch_resumable(WatchSpec::key("c/0").from_revision(first));
    assert_eq!(events(&mut w, 1).await[0].3, first);

    proxy.cut_and_wait().await;
    put(&admin, "c/0", "one").await;
    let last = put(&admin, "c/0", "two").await;
    compact_all(&admin, last).await;
    proxy.heal();
    match next_update(&mut w).await {
        Some(WatchUpdate::Compacted { compact_revision }) => assert_eq!(compact_revision, last),
        other => panic!("expected the compaction, got {other:?}"),
    }
    assert_eq!(next_update(&mut w).await, None, "a compacted watch ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_compaction_on_roster() {
    watch_reports_compaction(Server::Roster(TestNode::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_compaction_on_etcd() {
    watch_reports_compaction(Server::Etcd(Etcd::start())).await;
}

/// The next `n` changes, as `(kind, id, addr)`; none may repeat.
async fn collect(
    rx: &mut broadcast::Receiver<Change>,
    n: usize,
) -> BTreeSet<(&'static str, String, String)> {
    let mut out = BTreeSet::new();
    while out.len() < n {
        let c = timeout(WAIT, rx.recv())
            .await
            .expect("a change in time")
            .expect("changes open");
        let row = match c {
            Change::Added(i) => ("added", i.id, i.addr),
            Change::Removed(i) => ("removed", i.id, i.addr),
            Change::Updated { new, .. } => ("updated", new.id, new.addr),
        };
        assert!(out.insert(row.clone()), "change {row:?} reported twice");
    }
    out
}

/// Discovery cut off while the service changes and the history of those
/// changes is compacted: it keeps its list meanwhile, then reloads and
/// reports every change exactly once.
async fn discovery_survives_compaction(server: Server) {
    let owner = Registry::new(Client::connect([server.endpoint()]).unwrap());
    let admin = owner.client().clone();
    let a = owner
        .register("inv.rpc", "10.0.0.1:1")
        .id("a")
        .ttl(30)
        .await
        .unwrap();
    let b = owner
        .register("inv.rpc", "10.0.0.2:2")
        .id("b")
        .ttl(30)
        .await
        .unwrap();

    let proxy = Proxy::start(server.endpoint()).await;
    let seer = Registry::new(Client::connect([proxy.endpoint()]).unwrap());
    let d = seer.discover("inv.rpc").await.unwrap();
    assert_eq!(ids(&d.instances()), ["a", "b"]);
    let mut changes = d.changes();

    proxy.cut_and_wait().await;
    // Behind its back: a leaves, b moves, c arrives; then the history of
    // all that is compacted away.
    a.deregister().await.unwrap();
    let b2 = owner
        .register("inv.rpc", "10.0.0.22:2")
        .id("b")
        .ttl(30)
        .await
        .unwrap();
    drop(b);
    let c = owner
        .register("inv.rpc", "10.0.0.3:3")
        .id("c")
        .ttl(30)
        .await
        .unwrap();
    let now = put(&admin, "unrelated", "x").await;
    compact_all(&admin, now).await;
    assert_eq!(
        ids(&d.instances()),
        ["a", "b"],
        "the cache holds while cut off"
    );

    proxy.heal();
    until(&d, "converged after the compaction", |i| {
        i.iter()
            .map(|i| (i.id.as_str(), i.addr.as_str()))
            .collect::<Vec<_>>()
            == [("b", "10.0.0.22:2"), ("c", "10.0.0.3:3")]
    })
    .await;
    let seen = collect(&mut changes, 3).await;
    let want: BTreeSet<_> = [
        ("added", "c".to_string(), "10.0.0.3:3".to_string()),
        ("removed", "a".to_string(), "10.0.0.1:1".to_string()),
        ("updated", "b".to_string(), "10.0.0.22:2".to_string()),
    ]
    .into();
    assert_eq!(seen, want);
    assert!(changes.try_recv().is_err(), "nothing more to report");

    // And it goes on following from the reload.
    c.deregister().await.unwrap();
    until(&d, "c gone", |i| ids(i) == ["b"]).await;
    drop(b2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_survives_compaction_on_roster() {
    discovery_survives_compaction(Server::Roster(TestNode::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_survives_compaction_on_etcd() {
    discovery_survives_compaction(Server::Etcd(Etcd::start())).await;
}

/// A client given two endpoints keeps working when either one dies: its
/// calls, its registration's keepalives and its discovery's watch move to
/// the other.
async fn endpoint_failover(server: Server) {
    let admin = Registry::new(Client::connect([server.endpoint()]).unwrap());
    let one = Proxy::start(server.endpoint()).await;
    let two = Proxy::start(server.endpoint()).await;
    let client = Client::connect([one.endpoint(), two.endpoint()]).unwrap();
    let registry = Registry::new(client.clone());
    let me = registry
        .register("fo.rpc", "10.0.0.9:9")
        .id("me")
        .ttl(3)
        .await
        .unwrap();
    let lease = me.lease_id();
    let mut events = me.events();
    let d = registry.discover("fo.rpc").await.unwrap();

    for dead in [&one, &two] {
        dead.cut_and_wait().await;
        // At most the one call that finds the endpoint dead fails (it
        // cannot be replayed safely: it may have reached the server); the
        // pin then moves and every later call succeeds.
        let mut failed = Vec::new();
        for i in 0..20 {
            let req = PutRequest {
                key: format!("fo/k{i}").into(),
                value: "v".into(),
                ..Default::default()
            };
            if let Err(e) = client.unary(client.kv().put(req)).await {
                failed.push((i, e.to_string()));
            }
        }
        assert!(
            failed.is_empty() || (failed.len() == 1 && failed[0].0 == 0),
            "calls failed after the first: {failed:?}"
        );
        // Discovery keeps following through the other endpoint.
        let other = admin
            .register("fo.rpc", "10.0.0.8:8")
            .id("other")
            .ttl(30)
            .await
            .unwrap();
        until(&d, "other seen via the live endpoint", |i| {
            ids(i) == ["me", "other"]
        })
        .await;
        other.deregister().await.unwrap();
        until(&d, "other gone", |i| ids(i) == ["me"]).await;
        dead.heal();
    }
    // Two cuts later, the registration still stands on its first lease:
    // keepalives found their way through whichever endpoint was up.
    assert_eq!(me.lease_id(), lease);
    assert!(events.try_recv().is_err(), "no loss was reported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_failover_on_roster() {
    endpoint_failover(Server::Roster(TestNode::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_failover_on_etcd() {
    endpoint_failover(Server::Etcd(Etcd::start())).await;
}
