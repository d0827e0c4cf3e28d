//! The Watch API end to end: a real server driven by the third-party
//! `etcd-client` crate, one feature per test.
//!
//! Every test starts its own server on a fresh data directory, so the store
//! begins at revision 1 and each write's revision can be counted by hand;
//! the comments next to the writes give them. The expected values are etcd
//! 3.4's, and `scripts/test.sh` runs these tests against the real etcd too
//! (the progress-notice interval reaches it as its own flag).
//!
//! etcd-client 0.21 is a thin client: a watch is one gRPC stream that it
//! neither multiplexes nor resumes, and it does not reassemble fragments.
//! So these tests see exactly what the server sends, response by response.
//!
//! Every wait is bounded by [`WAIT`]; a test that proves an absence does so
//! by a later event that must come first, never by sleeping.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use etcd_client::{
    Client, DeleteOptions, Event, EventType, PutOptions, Txn, TxnOp, WatchFilterType, WatchOptions,
    WatchResponse, WatchStream,
};
use roster_testkit::etcd_api::{connect, revision};
use roster_testkit::{Server, Setting, WAIT};
use tokio::time::timeout;

/// The next response on `s`, which must come within [`WAIT`].
async fn recv(s: &mut WatchStream) -> WatchResponse {
    timeout(WAIT, s.message())
        .await
        .expect("no watch response in time")
        .expect("watch stream failed")
        .expect("watch stream ended")
}

/// Opens a stream with one watcher and awaits its creation; returns the
/// stream, the watch id and the created response's header revision.
async fn open(c: &mut Client, key: &str, opts: WatchOptions) -> (WatchStream, i64, i64) {
    let mut s = c.watch(key, Some(opts)).await.expect("watch");
    let (id, rev) = created(&mut s).await;
    (s, id, rev)
}

/// Adds a watcher to an idle stream and awaits its creation; returns its id.
async fn add(s: &mut WatchStream, key: &str, opts: WatchOptions) -> i64 {
    s.watch(key, Some(opts)).await.expect("watch request");
    created(s).await.0
}

/// Awaits a created response; returns its watch id and header revision.
async fn created(s: &mut WatchStream) -> (i64, i64) {
    let r = recv(s).await;
    assert!(r.created() && !r.canceled(), "expected a creation: {r:?}");
    assert!(r.events().is_empty());
    (r.watch_id(), r.header().expect("header").revision())
}

/// One event as (type, key, value, create_revision, mod_revision, version,
/// lease): everything a watcher learns about a change.
type Ev = (&'static str, String, String, i64, i64, i64, i64);

fn ev(e: &Event) -> Ev {
    let kv = e.kv().expect("event without kv");
    let kind = match e.event_type() {
        EventType::Put => "PUT",
        EventType::Delete => "DELETE",
    };
    (
        kind,
        kv.key_str().expect("utf-8 key").to_string(),
        kv.value_str().expect("utf-8 value").to_string(),
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
        kv.lease(),
    )
}

/// A key-value pair as (key, value, create_revision, mod_revision, version).
type Pair = (String, String, i64, i64, i64);

/// An event's previous pair, if it carries one.
fn prev(e: &Event) -> Option<Pair> {
    e.prev_kv().map(|kv| {
        (
            kv.key_str().expect("utf-8 key").to_string(),
            kv.value_str().expect("utf-8 value").to_string(),
            kv.create_revision(),
            kv.mod_revision(),
            kv.version(),
        )
    })
}

/// A PUT event's expected fields, lease 0.
fn put(key: &str, value: &str, create: i64, rev: i64, version: i64) -> Ev {
    ("PUT", key.into(), value.into(), create, rev, version, 0)
}

/// A DELETE event's expected fields: etcd's tombstone carries only the key
/// and the deletion's revision.
fn del(key: &str, rev: i64) -> Ev {
    ("DELETE", key.into(), String::new(), 0, rev, 0, 0)
}

/// (type, key, mod_revision): enough to tell events apart.
fn short(e: &Event) -> (&'static str, String, i64) {
    let (kind, key, _, _, rev, _, _) = ev(e);
    (kind, key, rev)
}

/// Reads `s` until each watcher in `want` has had its number of events;
/// returns every response by watch id. Other watch ids fail the test.
async fn collect(s: &mut WatchStream, want: &[(i64, usize)]) -> BTreeMap<i64, Vec<WatchResponse>> {
    let mut got: BTreeMap<i64, Vec<WatchResponse>> = BTreeMap::new();
    let count = |got: &BTreeMap<i64, Vec<WatchResponse>>, id| {
        got.get(&id)
            .map_or(0, |rs| rs.iter().map(|r| r.events().len()).sum::<usize>())
    };
    while want.iter().any(|&(id, n)| count(&got, id) < n) {
        let r = recv(s).await;
        assert!(
            want.iter().any(|&(id, _)| id == r.watch_id()),
            "response for an unexpected watcher: {r:?}"
        );
        got.entry(r.watch_id()).or_default().push(r);
    }
    for &(id, n) in want {
        assert_eq!(
            count(&got, id),
            n,
            "watcher {id} got more events than expected"
        );
    }
    got
}

/// All events of `rs`, in order.
fn events(rs: &[WatchResponse]) -> Vec<Event> {
    rs.iter().flat_map(|r| r.events().to_vec()).collect()
}

/// Reads `s` until watcher `id` has had `n` events; returns them in order.
async fn events_of(s: &mut WatchStream, id: i64, n: usize) -> Vec<Event> {
    events(&collect(s, &[(id, n)]).await[&id])
}

/// True when `r` is a fragment that more of its revision's events follow.
/// etcd-client keeps the flag private, so it is read from the response's
/// `Debug` text, which names `fragment` before the (large) events; the
/// writer stops the formatting as soon as the events begin.
fn is_fragment(r: &WatchResponse) -> bool {
    struct Prefix(String);
    impl fmt::Write for Prefix {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.0.push_str(s);
            if self.0.contains("events: ") {
                Err(fmt::Error)
            } else {
                Ok(())
            }
        }
    }
    let mut text = Prefix(String::new());
    let _ = write!(text, "{r:?}");
    let flag = text
        .0
        .split("fragment: ")
        .nth(1)
        .expect("a WatchResponse's Debug text names its fragment flag");
    flag.starts_with("true")
}

#[tokio::test]
async fn single_key_events_carry_the_key_values_and_header_revisions() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let (mut s, id, rev) = open(&mut c, "a", WatchOptions::new()).await;
    assert_eq!((id, rev), (0, 1), "first watcher id and creation revision");

    let lease = c.lease_grant(60, None).await.expect("grant").id();
    c.put("a", "1", None).await.unwrap(); // rev 2
    c.put("b", "x", None).await.unwrap(); // rev 3, another key
    let leased = PutOptions::new().with_lease(lease);
    c.put("a", "2", Some(leased)).await.unwrap(); // rev 4
    c.delete("a", None).await.unwrap(); // rev 5
    c.put("a", "3", None).await.unwrap(); // rev 6, a new life of "a"

    let got = collect(&mut s, &[(id, 4)]).await.remove(&id).unwrap();
    // Live events come one revision to a response, whose header carries
    // that revision.
    let seen: Vec<(i64, Vec<Ev>)> = got
        .iter()
        .map(|r| {
            (
                r.header().unwrap().revision(),
                r.events().iter().map(ev).collect(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (2, vec![put("a", "1", 2, 2, 1)]),
            (4, vec![("PUT", "a".into(), "2".into(), 2, 4, 2, lease)]),
            (5, vec![del("a", 5)]),
            (6, vec![put("a", "3", 6, 6, 1)]),
        ]
    );
    assert!(got.iter().all(|r| !r.created() && !r.canceled()));
    assert!(
        got[0].events()[0].prev_kv().is_none(),
        "prev_kv not asked for"
    );
}

#[tokio::test]
async fn txns_deletes_and_lease_revocations_are_one_response_per_revision() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let (mut s, id, _) = open(&mut c, "", WatchOptions::new().with_all_keys()).await;

    let txn = Txn::new().and_then([
        TxnOp::put("b", "1", None),
        TxnOp::put("a", "1", None),
        TxnOp::put("c", "1", None),
    ]);
    c.txn(txn).await.unwrap(); // rev 2
    let range = DeleteOptions::new().with_range("c");
    c.delete("a", Some(range)).await.unwrap(); // rev 3: a and b
    let lease = c.lease_grant(60, None).await.unwrap().id();
    let leased = || Some(PutOptions::new().with_lease(lease));
    c.put("l/1", "x", leased()).await.unwrap(); // rev 4
    c.put("l/2", "y", leased()).await.unwrap(); // rev 5
    c.lease_revoke(lease).await.unwrap(); // rev 6: l/1 and l/2

    let got = collect(&mut s, &[(id, 9)]).await.remove(&id).unwrap();
    let seen: Vec<(i64, Vec<Ev>)> = got
        .iter()
        .map(|r| {
            (
                r.header().unwrap().revision(),
                r.events().iter().map(ev).collect(),
            )
        })
        .collect();
    let leased = |k: &str, v: &str, rev| ("PUT", k.into(), v.into(), rev, rev, 1, lease);
    assert_eq!(
        seen,
        [
            // A txn's events come in the order of its operations.
            (
                2,
                vec![
                    put("b", "1", 2, 2, 1),
                    put("a", "1", 2, 2, 1),
                    put("c", "1", 2, 2, 1),
                ]
            ),
            // A range delete's, in key order.
            (3, vec![del("a", 3), del("b", 3)]),
            (4, vec![leased("l/1", "x", 4)]),
            (5, vec![leased("l/2", "y", 5)]),
            (6, vec![del("l/1", 6), del("l/2", 6)]),
        ]
    );
}

#[tokio::test]
async fn range_prefix_from_key_and_all_keys_watchers_share_a_stream() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let (mut s, single, _) = open(&mut c, "b", WatchOptions::new()).await;
    let range = add(&mut s, "b", WatchOptions::new().with_range("d")).await;
    let prefix = add(&mut s, "p/", WatchOptions::new().with_prefix()).await;
    let from = add(&mut s, "c", WatchOptions::new().with_from_key()).await;
    let all = add(&mut s, "", WatchOptions::new().with_all_keys()).await;
    assert_eq!([single, range, prefix, from, all], [0, 1, 2, 3, 4]);

    for k in ["a", "b", "c", "d", "p/1", "p0", "q"] {
        c.put(k, "v", None).await.unwrap(); // revs 2 to 8
    }
    let txn = Txn::new().and_then([TxnOp::put("b", "w", None), TxnOp::put("p/2", "w", None)]);
    c.txn(txn).await.unwrap(); // rev 9
    let everything = DeleteOptions::new().with_range("z");
    c.delete("a", Some(everything)).await.unwrap(); // rev 10: all eight keys

    let want = [(single, 3), (range, 5), (prefix, 4), (from, 12), (all, 17)];
    let got = collect(&mut s, &want).await;
    let seen = |id: i64| -> Vec<(&'static str, String, i64)> {
        events(&got[&id]).iter().map(short).collect()
    };
    let p = |k: &str, rev| ("PUT", k.to_string(), rev);
    let d = |k: &str| ("DELETE", k.to_string(), 10);
    assert_eq!(seen(single), [p("b", 3), p("b", 9), d("b")]);
    assert_eq!(
        seen(range),
        [p("b", 3), p("c", 4), p("b", 9), d("b"), d("c")]
    );
    assert_eq!(seen(prefix), [p("p/1", 6), p("p/2", 9), d("p/1"), d("p/2")]);
    assert_eq!(
        seen(from),
        [
            p("c", 4),
            p("d", 5),
            p("p/1", 6),
            p("p0", 7),
            p("q", 8),
            p("p/2", 9),
            d("c"),
            d("d"),
            d("p/1"),
            d("p/2"),
            d("p0"),
            d("q"),
        ]
    );
    let mut expected_all = vec![p("a", 2), p("b", 3)];
    expected_all.extend_from_slice(&seen(from)[..5]);
    expected_all.extend([p("b", 9), p("p/2", 9), d("a"), d("b")]);
    expected_all.extend_from_slice(&seen(from)[6..]);
    assert_eq!(seen(all), expected_all);
}

#[tokio::test]
async fn start_revision_replays_history_then_continues_live() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    c.put("a", "1", None).await.unwrap(); // rev 2
    c.put("b", "1", None).await.unwrap(); // rev 3
    c.delete("a", None).await.unwrap(); // rev 4
    c.put("a", "2", None).await.unwrap(); // rev 5
    let txn = Txn::new().and_then([TxnOp::put("b", "2", None), TxnOp::put("c", "1", None)]);
    c.txn(txn).await.unwrap(); // rev 6
    let b_to_d = DeleteOptions::new().with_range("d");
    c.delete("b", Some(b_to_d)).await.unwrap(); // rev 7: b and c

    let from2 = WatchOptions::new().with_all_keys().with_start_revision(2);
    let (mut s, id, rev) = open(&mut c, "", from2).await;
    assert_eq!(rev, 7);
    // Two more on the same stream, asked for at once: their creations may
    // come between the first one's events, but each before its own.
    let a_from4 = WatchOptions::new().with_start_revision(4);
    s.watch("a", Some(a_from4)).await.unwrap();
    let bc_from6 = WatchOptions::new().with_range("d").with_start_revision(6);
    s.watch("b", Some(bc_from6)).await.unwrap();
    let (a_id, bc_id) = (1, 2);
    let got = collect(&mut s, &[(id, 8), (a_id, 2), (bc_id, 4)]).await;
    assert!(got[&a_id][0].created() && got[&bc_id][0].created());

    let seen = |id: i64| events(&got[&id]).iter().map(ev).collect::<Vec<_>>();
    let history = [
        put("a", "1", 2, 2, 1),
        put("b", "1", 3, 3, 1),
        del("a", 4),
        put("a", "2", 5, 5, 1),
        put("b", "2", 3, 6, 2),
        put("c", "1", 6, 6, 1),
        del("b", 7),
        del("c", 7),
    ];
    assert_eq!(seen(id), history);
    assert_eq!(seen(a_id), [history[2].clone(), history[3].clone()]);
    assert_eq!(seen(bc_id), history[4..]);
    // History comes with the revision the store had reached as header.
    for r in got.values().flatten() {
        assert_eq!(r.header().unwrap().revision(), 7, "{r:?}");
    }

    // After the replay the same watchers go on live, each event once.
    c.put("a", "3", None).await.unwrap(); // rev 8
    let got = collect(&mut s, &[(id, 1), (a_id, 1)]).await;
    for rs in got.values() {
        let seen: Vec<Ev> = events(rs).iter().map(ev).collect();
        assert_eq!(seen, [put("a", "3", 5, 8, 2)]);
    }
}

#[tokio::test]
async fn a_future_start_revision_waits_for_that_revision() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    c.put("a", "1", None).await.unwrap(); // rev 2
    let (mut s, id, _) = open(&mut c, "a", WatchOptions::new().with_start_revision(4)).await;
    let witness = add(&mut s, "a", WatchOptions::new()).await;
    c.put("a", "2", None).await.unwrap(); // rev 3: before the start
    c.put("a", "3", None).await.unwrap(); // rev 4
    let got = collect(&mut s, &[(id, 1), (witness, 2)]).await;
    assert_eq!(
        events(&got[&id]).iter().map(ev).collect::<Vec<_>>(),
        [put("a", "3", 2, 4, 3)]
    );
}

#[tokio::test]
async fn prev_kv_is_the_pair_before_each_put_and_delete() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    c.put("a", "1", None).await.unwrap(); // rev 2
    let (mut s, with, _) = open(&mut c, "a", WatchOptions::new().with_prev_key()).await;
    let without = add(&mut s, "a", WatchOptions::new()).await;
    c.put("a", "2", None).await.unwrap(); // rev 3
    c.delete("a", None).await.unwrap(); // rev 4
    c.put("a", "3", None).await.unwrap(); // rev 5: no previous pair

    let prevs = |evs: &[Event]| evs.iter().map(prev).collect::<Vec<_>>();
    let live = [
        Some(("a".to_string(), "1".to_string(), 2, 2, 1)),
        Some(("a".to_string(), "2".to_string(), 2, 3, 2)),
        None,
    ];
    let got = collect(&mut s, &[(with, 3), (without, 3)]).await;
    assert_eq!(prevs(&events(&got[&with])), live);
    assert_eq!(prevs(&events(&got[&without])), [None, None, None]);
    let kinds: Vec<_> = events(&got[&with]).iter().map(short).collect();
    assert_eq!(
        kinds,
        [
            ("PUT", "a".to_string(), 3),
            ("DELETE", "a".to_string(), 4),
            ("PUT", "a".to_string(), 5)
        ]
    );

    // Replayed history carries the same previous pairs.
    let replay = WatchOptions::new().with_prev_key().with_start_revision(2);
    let (mut s2, id, _) = open(&mut c, "a", replay).await;
    let evs = events_of(&mut s2, id, 4).await;
    let mut expected = vec![None];
    expected.extend(live);
    assert_eq!(prevs(&evs), expected);
}

#[tokio::test]
async fn noput_and_nodelete_filters_drop_those_events() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let all = || WatchOptions::new().with_all_keys();
    let (mut s, no_put, _) = open(&mut c, "", all().with_filters([WatchFilterType::NoPut])).await;
    let no_del = add(&mut s, "", all().with_filters([WatchFilterType::NoDelete])).await;
    c.put("a", "1", None).await.unwrap(); // rev 2
    c.delete("a", None).await.unwrap(); // rev 3
    c.put("b", "1", None).await.unwrap(); // rev 4
    c.delete("b", None).await.unwrap(); // rev 5

    let got = collect(&mut s, &[(no_put, 2), (no_del, 2)]).await;
    let seen = |id: i64| events(&got[&id]).iter().map(short).collect::<Vec<_>>();
    let e = |kind, key: &str, rev| (kind, key.to_string(), rev);
    assert_eq!(seen(no_put), [e("DELETE", "a", 3), e("DELETE", "b", 5)]);
    assert_eq!(seen(no_del), [e("PUT", "a", 2), e("PUT", "b", 4)]);

    // The filters hold for replayed history too.
    let replay = all()
        .with_start_revision(2)
        .with_filters([WatchFilterType::NoPut]);
    let (mut s2, id, _) = open(&mut c, "", replay).await;
    let replayed: Vec<_> = events_of(&mut s2, id, 2).await.iter().map(short).collect();
    assert_eq!(replayed, seen(no_put));
}

#[tokio::test]
async fn idle_watchers_that_ask_get_progress_notices_at_the_current_revision() {
    let server = Server::start_with(&[Setting::ProgressNotifyInterval(Duration::from_millis(300))]);
    let mut c = connect(server.endpoint()).await;
    let notify = WatchOptions::new().with_progress_notify();
    let (mut s, asks, _) = open(&mut c, "idle", notify).await;
    let quiet = add(&mut s, "idle2", WatchOptions::new()).await;
    c.put("other", "1", None).await.unwrap(); // rev 2
    c.put("other", "2", None).await.unwrap(); // rev 3

    // Notices may come before the puts land; wait for one that has seen
    // them. Only the watcher that asked ever gets one.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = tokio::time::timeout_at(deadline, recv(&mut s))
            .await
            .expect("no progress notice at revision 3");
        assert_eq!(r.watch_id(), asks, "{r:?} (the quiet watcher is {quiet})");
        assert!(
            r.events().is_empty() && !r.created() && !r.canceled(),
            "{r:?}"
        );
        if r.header().unwrap().revision() == 3 {
            break;
        }
    }
}

#[tokio::test]
async fn a_progress_request_is_answered_with_the_current_revision() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let (mut s, _, _) = open(&mut c, "a", WatchOptions::new()).await;
    c.put("b", "1", None).await.unwrap(); // rev 2
    c.put("b", "2", None).await.unwrap(); // rev 3
    s.request_progress().await.unwrap();
    let r = recv(&mut s).await;
    // A stream-wide answer: etcd's watch id -1.
    assert_eq!(r.watch_id(), -1, "{r:?}");
    assert_eq!(r.header().unwrap().revision(), 3);
    assert!(
        r.events().is_empty() && !r.created() && !r.canceled(),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_canceled_watcher_gets_no_more_events() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let (mut s, gone, _) = open(&mut c, "a", WatchOptions::new()).await;
    let witness = add(&mut s, "a", WatchOptions::new()).await;
    c.put("a", "1", None).await.unwrap(); // rev 2
    collect(&mut s, &[(gone, 1), (witness, 1)]).await;

    s.cancel(gone).await.unwrap();
    let r = recv(&mut s).await;
    assert_eq!((r.watch_id(), r.canceled()), (gone, true), "{r:?}");
    assert_eq!(r.header().unwrap().revision(), 2);
    assert!(r.events().is_empty());

    // The watcher left before this put; only the witness sees it (collect
    // fails on anything for another id).
    c.put("a", "2", None).await.unwrap(); // rev 3
    let got = collect(&mut s, &[(witness, 1)]).await;
    assert_eq!(events(&got[&witness])[0].kv().unwrap().mod_revision(), 3);
}

#[tokio::test]
async fn watch_ids_are_per_stream_counting_from_zero_or_chosen_by_the_client() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let (mut s, first, _) = open(&mut c, "a", WatchOptions::new()).await;
    let mut ids = vec![first];
    ids.push(add(&mut s, "a", WatchOptions::new()).await);
    ids.push(add(&mut s, "a", WatchOptions::new().with_watch_id(5)).await);
    ids.push(add(&mut s, "a", WatchOptions::new()).await);
    ids.push(add(&mut s, "a", WatchOptions::new().with_watch_id(3)).await);
    // Automatic ids skip the ones clients chose.
    ids.push(add(&mut s, "a", WatchOptions::new()).await);
    ids.push(add(&mut s, "a", WatchOptions::new()).await);
    assert_eq!(ids, [0, 1, 5, 2, 3, 4, 6]);

    // Each stream counts on its own.
    let (mut other, id, _) = open(&mut c, "a", WatchOptions::new()).await;
    assert_eq!(id, 0);

    // Every watcher's events carry its id.
    c.put("a", "1", None).await.unwrap(); // rev 2
    let want: Vec<(i64, usize)> = ids.iter().map(|&id| (id, 1)).collect();
    let got = collect(&mut s, &want).await;
    assert!(got
        .values()
        .flatten()
        .all(|r| r.header().unwrap().revision() == 2));
    collect(&mut other, &[(0, 1)]).await;

    // A canceled watcher's id is not handed out again: etcd's counter only
    // moves forward.
    other.cancel(0).await.unwrap();
    let r = recv(&mut other).await;
    assert!(r.canceled() && r.watch_id() == 0, "{r:?}");
    assert_eq!(add(&mut other, "a", WatchOptions::new()).await, 1);
}

#[tokio::test]
async fn a_duplicate_client_chosen_watch_id_is_refused() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let (mut s, id, _) = open(&mut c, "a", WatchOptions::new().with_watch_id(7)).await;
    assert_eq!(id, 7);

    s.watch("b", Some(WatchOptions::new().with_watch_id(7)))
        .await
        .unwrap();
    let r = recv(&mut s).await;
    // etcd answers with the invalid id -1, so that no client takes the
    // refusal for a cancellation of the watcher that holds the id.
    assert!(r.created() && r.canceled(), "{r:?}");
    assert_eq!(r.watch_id(), -1, "{r:?}");
    assert!(r.cancel_reason().contains("duplicate watch ID"), "{r:?}");

    // The first watcher is untouched, and "b" has no watcher.
    c.put("b", "1", None).await.unwrap(); // rev 2
    c.put("a", "1", None).await.unwrap(); // rev 3
    let seen: Vec<_> = events_of(&mut s, 7, 1).await.iter().map(short).collect();
    assert_eq!(seen, [("PUT", "a".to_string(), 3)]);
}

#[tokio::test]
async fn many_watchers_on_one_stream_each_get_their_own_events() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let key = |i: usize| format!("m/{i:02}");
    let (mut s, first, _) = open(&mut c, &key(0), WatchOptions::new()).await;
    let mut ids = vec![first];
    for i in 1..20 {
        ids.push(add(&mut s, &key(i), WatchOptions::new()).await);
    }
    let prefix = add(&mut s, "m/", WatchOptions::new().with_prefix()).await;

    for i in 0..20 {
        c.put(key(i), format!("v{i}"), None).await.unwrap(); // rev 2 + i
    }
    let all: Vec<TxnOp> = (0..20).map(|i| TxnOp::put(key(i), "t", None)).collect();
    c.txn(Txn::new().and_then(all)).await.unwrap(); // rev 22

    let mut want: Vec<(i64, usize)> = ids.iter().map(|&id| (id, 2)).collect();
    want.push((prefix, 40));
    let got = collect(&mut s, &want).await;
    for (i, id) in ids.iter().enumerate() {
        let seen: Vec<Ev> = events(&got[id]).iter().map(ev).collect();
        let rev = 2 + i as i64;
        assert_eq!(
            seen,
            [
                put(&key(i), &format!("v{i}"), rev, rev, 1),
                put(&key(i), "t", rev, 22, 2)
            ],
            "watcher {id}"
        );
    }
    let by_prefix = events(&got[&prefix]);
    assert_eq!(by_prefix.len(), 40);
    // The txn's events reach the prefix watcher in one response.
    assert_eq!(got[&prefix].last().unwrap().events().len(), 20);
}

/// Value size for the fragment test: 64 KiB.
const BIG: usize = 64 * 1024;

/// Reads one revision's worth of fragments for watcher `id`: responses up
/// to and including the first not marked as a fragment.
async fn reassemble(s: &mut WatchStream, id: i64) -> Vec<WatchResponse> {
    let mut parts = Vec::new();
    loop {
        let r = recv(s).await;
        assert_eq!(r.watch_id(), id, "{r:?}");
        let more = is_fragment(&r);
        parts.push(r);
        if !more {
            return parts;
        }
    }
}

#[tokio::test]
async fn fragment_splits_large_responses_and_every_event_arrives() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let key = |i: usize| format!("f/{i:02}");
    let n = 22; // 22 values of 64 KiB: a txn just under the 1.5 MiB limit.
    for i in 0..n {
        c.put(key(i), "a".repeat(BIG), None).await.unwrap(); // rev 2 + i
    }
    let opts = || WatchOptions::new().with_prefix().with_prev_key();
    let (mut split, split_id, _) = open(&mut c, "f/", opts().with_fragment()).await;
    let (mut whole, whole_id, _) = open(&mut c, "f/", opts()).await;

    // One revision whose events, with their previous values, are twice the
    // 1.5 MiB request limit.
    let ops: Vec<TxnOp> = (0..n)
        .map(|i| TxnOp::put(key(i), "b".repeat(BIG), None))
        .collect();
    let rev = c
        .txn(Txn::new().and_then(ops))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert_eq!(rev, 24);

    let parts = reassemble(&mut split, split_id).await;
    assert!(
        parts.len() >= 2,
        "{} response(s): not fragmented",
        parts.len()
    );
    for p in &parts {
        assert_eq!(p.header().unwrap().revision(), rev);
        let bytes: usize = p
            .events()
            .iter()
            .map(|e| e.kv().unwrap().value().len() + e.prev_kv().unwrap().value().len())
            .sum();
        // etcd's limit is the request limit plus 512 KiB for gRPC framing.
        assert!(bytes <= 2 << 20, "a fragment holds {bytes} bytes of values");
    }
    let check = |evs: Vec<Event>| {
        assert_eq!(evs.len(), n);
        for (i, e) in evs.iter().enumerate() {
            let kv = e.kv().unwrap();
            assert_eq!(kv.key_str().unwrap(), key(i));
            assert_eq!((kv.mod_revision(), kv.version()), (rev, 2));
            assert!(kv.value().iter().all(|&b| b == b'b') && kv.value().len() == BIG);
            let prev = e.prev_kv().unwrap();
            assert_eq!(prev.mod_revision(), 2 + i as i64);
            assert!(prev.value().iter().all(|&b| b == b'a') && prev.value().len() == BIG);
        }
    };
    check(events(&parts));

    // Without the option the same revision is one response.
    let r = recv(&mut whole).await;
    assert_eq!(r.watch_id(), whole_id);
    assert!(!is_fragment(&r));
    check(r.events().to_vec());

    // Replayed history is split as well: all 44 events, 2.75 MiB of values.
    let replay = WatchOptions::new()
        .with_prefix()
        .with_fragment()
        .with_start_revision(2);
    let (mut s, id, _) = open(&mut c, "f/", replay).await;
    let mut evs = Vec::new();
    let mut responses = 0;
    while evs.len() < 2 * n {
        let r = recv(&mut s).await;
        assert_eq!(r.watch_id(), id, "{r:?}");
        responses += 1;
        evs.extend(r.events().iter().map(short));
    }
    assert!(responses >= 2, "replay not fragmented");
    let mut expected: Vec<_> = (0..n).map(|i| ("PUT", key(i), 2 + i as i64)).collect();
    expected.extend((0..n).map(|i| ("PUT", key(i), rev)));
    assert_eq!(evs, expected);
}

#[tokio::test]
async fn a_start_revision_below_the_compaction_cancels_the_watcher() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    for v in 1..=5 {
        c.put("a", v.to_string(), None).await.unwrap(); // revs 2 to 6
    }
    c.compact(5, None).await.unwrap();

    let (mut s, id, _) = open(&mut c, "a", WatchOptions::new().with_start_revision(3)).await;
    let r = recv(&mut s).await;
    assert_eq!(r.watch_id(), id);
    assert!(r.canceled(), "{r:?}");
    assert_eq!(r.compact_revision(), 5, "{r:?}");
    assert!(r.events().is_empty());

    // The compaction revision itself is still there to watch from; and the
    // canceled watcher gets nothing more (collect fails on its id).
    let from5 = add(&mut s, "a", WatchOptions::new().with_start_revision(5)).await;
    c.put("a", "6", None).await.unwrap(); // rev 7
    let seen: Vec<_> = events_of(&mut s, from5, 3)
        .await
        .iter()
        .map(short)
        .collect();
    let p = |rev| ("PUT", "a".to_string(), rev);
    assert_eq!(seen, [p(5), p(6), p(7)]);
    assert_eq!(revision(&mut c).await, 7);
}

#[tokio::test]
async fn an_empty_key_range_is_refused() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    let mut s = c
        .watch("b", Some(WatchOptions::new().with_range("a")))
        .await
        .unwrap();
    let r = recv(&mut s).await;
    assert!(r.created() && r.canceled(), "{r:?}");
    assert_eq!(r.watch_id(), -1, "{r:?}");
    assert_eq!(r.cancel_reason(), "mvcc: watcher range is empty");

    // The stream goes on; the refused request took no id.
    assert_eq!(add(&mut s, "b", WatchOptions::new()).await, 0);
}
