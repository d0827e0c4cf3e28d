//! Conveniences over the third-party `etcd-client` crate, which the
//! compatibility tests drive servers with: a client always talks to etcd
//! as a real application would, so the same helpers serve Roster and etcd.

use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, Event, EventType, LeaseTimeToLiveOptions, PutOptions, WatchOptions,
    WatchStream,
};
use tokio::task::JoinHandle;
use tokio::time::sleep;

use crate::wait::{within, WAIT};

/// Connects an etcd client to `endpoint` (`127.0.0.1:PORT`). The timeout
/// bounds each unary call and the opening of each stream, not a stream's
/// later messages.
pub async fn connect(endpoint: &str) -> Client {
    let opts = ConnectOptions::new().with_timeout(WAIT);
    Client::connect([format!("http://{endpoint}")], Some(opts))
        .await
        .unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"))
}

/// The gRPC code name and message of a call that must have failed.
pub fn grpc<T: std::fmt::Debug>(result: Result<T, etcd_client::Error>) -> (String, String) {
    match result {
        Err(etcd_client::Error::GRpcStatus(s)) => {
            (format!("{:?}", s.code()), s.message().to_string())
        }
        other => panic!("expected a gRPC error status, got {other:?}"),
    }
}

/// The gRPC code name and message of an error.
pub fn code(err: etcd_client::Error) -> (String, String) {
    grpc::<()>(Err(err))
}

/// The store's current revision, from a read's response header.
pub async fn revision(c: &mut Client) -> i64 {
    let r = c.get("\0", None).await.expect("get");
    r.header().expect("header").revision()
}

/// Grants a lease with a server-chosen id and returns the id.
pub async fn grant(c: &mut Client, ttl: i64) -> i64 {
    let r = c.lease_grant(ttl, None).await.expect("grant");
    assert_eq!(r.ttl(), ttl, "granted TTL");
    r.id()
}

/// Puts `key` attached to `lease`; returns the put's revision.
pub async fn put_with(c: &mut Client, key: &str, value: &str, lease: i64) -> i64 {
    let opts = PutOptions::new().with_lease(lease);
    let r = c.put(key, value, Some(opts)).await.expect("put");
    r.header().expect("header").revision()
}

/// The lease `key` is attached to (0 = none), or `None` if it is absent.
pub async fn lease_of(c: &mut Client, key: &str) -> Option<i64> {
    let r = c.get(key, None).await.expect("get");
    r.kvs().first().map(|kv| kv.lease())
}

/// The keys attached to `lease`, sorted (etcd lists them in map order).
pub async fn keys_of(c: &mut Client, lease: i64) -> Vec<String> {
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
pub async fn lease_ids(c: &mut Client) -> Vec<i64> {
    let r = c.leases().await.expect("leases");
    let mut ids: Vec<i64> = r.leases().iter().map(|l| l.id()).collect();
    ids.sort();
    ids
}

/// Opens a watch and waits until the server confirms it, so that no event
/// after this point can be missed.
pub async fn watch(c: &mut Client, key: &str, opts: Option<WatchOptions>) -> WatchStream {
    let mut w = c.watch(key, opts).await.expect("watch");
    let created = within("watch created", w.message())
        .await
        .expect("watch response")
        .expect("watch stream open");
    assert!(created.created(), "first watch response: {created:?}");
    w
}

/// The next `n` events on `w`.
pub async fn events(w: &mut WatchStream, n: usize) -> Vec<Event> {
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
pub fn brief(e: &Event) -> (EventType, String, i64) {
    let kv = e.kv().expect("event kv");
    let key = kv.key_str().expect("utf-8 key").to_string();
    (e.event_type(), key, kv.mod_revision())
}

/// Keeps `lease` alive from a background task: one keepalive every
/// `every` (pacing, not waiting for an event). The task panics if the
/// server stops renewing, so a test checks [`JoinHandle::is_finished`]
/// before it aborts it.
pub fn keep_alive_in_background(c: &Client, lease: i64, every: Duration) -> JoinHandle<()> {
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
