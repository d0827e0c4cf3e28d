//! roster-client against real servers: the registration / discovery cycle
//! and its fault handling, with the same test code run against Roster and
//! against the real etcd.

use crate::discovery::{ids, until};
use roster_client::{Change, Client, RegistrationEvent, Registry};
use roster_proto::etcdserverpb::{
    DeleteRangeRequest, LeaseRevokeRequest, PutRequest, RangeRequest,
};
use roster_testkit::{Etcd, Server, TestNode, WAIT};
use tokio::sync::broadcast;
use tokio::time::timeout;

fn registry(server: &Server) -> Registry {
    Registry::new(Client::connect([server.endpoint()]).expect("client"))
}

/// The next change, within [`WAIT`].
async fn next_change(rx: &mut broadcast::Receiver<Change>) -> Change {
    timeout(WAIT, rx.recv())
        .await
        .expect("a change in time")
        .expect("changes open")
}

/// The next registration event, within [`WAIT`].
async fn next_event(rx: &mut broadcast::Receiver<RegistrationEvent>) -> RegistrationEvent {
    timeout(WAIT, rx.recv())
        .await
        .expect("an event in time")
        .expect("events open")
}

async fn cycle(server: Server) {
    let registry = registry(&server);
    let a = registry
        .register("user.rpc", "10.0.0.1:8080")
        .id("a")
        .ttl(5)
        .weight(3)
        .zone("z1")
        .version("1.2.0")
        .metadata("proto", "grpc")
        .await
        .expect("register a");
    assert_eq!(a.key(), "/roster/services/user.rpc/a");

    let watcher = registry.discover("user.rpc").await.expect("discover");
    let found = watcher.instances();
    assert_eq!(ids(&found), ["a"]);
    assert_eq!(
        (found[0].addr.as_str(), found[0].weight),
        ("10.0.0.1:8080", 3)
    );
    assert_eq!(found[0].zone.as_deref(), Some("z1"));
    assert_eq!(
        found[0].metadata.get("proto").map(String::as_str),
        Some("grpc")
    );

    let mut changes = watcher.changes();
    let b = registry
        .register("user.rpc", "10.0.0.2:8080")
        .id("b")
        .ttl(5)
        .await
        .expect("register b");
    match next_change(&mut changes).await {
        Change::Added(i) => assert_eq!(i.id, "b"),
        other => panic!("expected b added, got {other:?}"),
    }
    assert_eq!(ids(&watcher.instances()), ["a", "b"]);

    a.deregister().await.expect("deregister a");
    match next_change(&mut changes).await {
        Change::Removed(i) => assert_eq!(i.id, "a"),
        other => panic!("expected a removed, got {other:?}"),
    }
    assert_eq!(ids(&watcher.instances()), ["b"]);

    // Dropping the handle revokes the lease too (best effort, but here the
    // registry is up, so it must happen).
    drop(b);
    match next_change(&mut changes).await {
        Change::Removed(i) => assert_eq!(i.id, "b"),
        other => panic!("expected b removed, got {other:?}"),
    }
    assert!(watcher.instances().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_discover_deregister_on_roster() {
    cycle(Server::Roster(TestNode::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_discover_deregister_on_etcd() {
    cycle(Server::Etcd(Etcd::start())).await;
}

/// Records written by other ecosystems are read, read-only.
async fn foreign_formats(server: Server) {
    let client = Client::connect([server.endpoint()]).expect("client");
    let put = |k: &str, v: &str| PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    };
    let mut kv = client.kv();
    kv.put(put(
        "etcd.svc/e1",
        r#"{"Addr":"10.1.0.1:80","Metadata":{"dc":"west"}}"#,
    ))
    .await
    .unwrap();
    kv.put(put("gozero.rpc/7587869813402412801", "10.2.0.1:9000"))
        .await
        .unwrap();
    kv.put(put("gozero.rpc/junk", "not an address"))
        .await
        .unwrap();

    let plain = Registry::new(client.clone()).with_prefix("");
    let etcd = plain.discover("etcd.svc").await.unwrap().instances();
    assert_eq!(
        (etcd[0].id.as_str(), etcd[0].addr.as_str()),
        ("e1", "10.1.0.1:80")
    );
    assert_eq!(etcd[0].metadata.get("dc").map(String::as_str), Some("west"));
    let gozero = plain.discover("gozero.rpc").await.unwrap().instances();
    assert_eq!(
        ids(&gozero),
        ["7587869813402412801"],
        "the junk value is skipped"
    );
    assert_eq!(gozero[0].addr, "10.2.0.1:9000");
}

#[tokio::test]
async fn foreign_formats_on_roster() {
    foreign_formats(Server::Roster(TestNode::start())).await;
}

#[tokio::test]
async fn foreign_formats_on_etcd() {
    foreign_formats(Server::Etcd(Etcd::start())).await;
}

/// The registry crashes and comes back; instances lose their lease or
/// their key; discovery keeps its list throughout and converges.
async fn faults(mut server: Server) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("roster_client=debug")
        .with_test_writer()
        .try_init();
    let registry = registry(&server);
    let a = registry
        .register("pay.rpc", "10.0.0.1:1")
        .id("a")
        .ttl(4)
        .await
        .expect("register a");
    let mut events = a.events();
    let watcher = registry.discover("pay.rpc").await.expect("discover");
    assert_eq!(ids(&watcher.instances()), ["a"]);

    // Crash and restart: the cached list survives the outage untouched,
    // and the registration keeps (or regains) its place.
    server.restart();
    assert_eq!(
        ids(&watcher.instances()),
        ["a"],
        "the cache must not empty during an outage"
    );
    let other = registry
        .register("pay.rpc", "10.0.0.2:2")
        .id("b")
        .ttl(4)
        .await
        .expect("register b");
    until(&watcher, "b appears after the restart", |i| {
        ids(i) == ["a", "b"]
    })
    .await;

    // The registry forgets a's lease (as after losing its data): a notices,
    // registers again under the same id, and discovery converges.
    let admin = Client::connect([server.endpoint()]).expect("client");
    admin
        .lease()
        .lease_revoke(LeaseRevokeRequest { id: a.lease_id() })
        .await
        .expect("revoke");
    loop {
        match next_event(&mut events).await {
            RegistrationEvent::Reregistered { lease } => {
                assert_eq!(lease, a.lease_id());
                break;
            }
            RegistrationEvent::Lost { .. } | RegistrationEvent::Restored => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
    until(&watcher, "a back after losing its lease", |i| {
        ids(i) == ["a", "b"]
    })
    .await;

    // Someone deletes a's record: it is written back.
    let key = a.key().as_bytes().to_vec();
    admin
        .kv()
        .delete_range(DeleteRangeRequest {
            key: key.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let event = next_event(&mut events).await;
    assert_eq!(event, RegistrationEvent::Restored);
    let got = admin
        .kv()
        .range(RangeRequest {
            key,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.kvs.len(), 1, "the record is back");
    assert_eq!(got.kvs[0].lease, a.lease_id());
    until(&watcher, "a listed after its key was restored", |i| {
        ids(i) == ["a", "b"]
    })
    .await;

    other.deregister().await.unwrap();
    until(&watcher, "b gone", |i| ids(i) == ["a"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_roster() {
    faults(Server::Roster(TestNode::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_etcd() {
    faults(Server::Etcd(Etcd::start())).await;
}
