//! The KV API end to end: a real server driven by the third-party
//! `etcd-client` crate, one feature per test.
//!
//! Every test starts its own server on a fresh data directory, so the store
//! begins at revision 1 and each write's revision can be counted by hand;
//! the comments next to the fixtures give them. The expected values are
//! etcd 3.4's: `scripts/test.sh` runs these tests, unchanged, against the
//! real etcd 3.4 too, so a failure here means Roster differs from etcd, not
//! merely from our idea of it.

use roster_server::Stopped;
use roster_testkit::Server;

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, PutOptions,
    ResponseHeader, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use roster_testkit::etcd_api::{code, connect, revision};

/// Puts each pair in order, one revision each.
async fn put_all(client: &mut Client, pairs: &[(&str, &str)]) {
    for (k, v) in pairs {
        client.put(*k, *v, None).await.expect("put");
    }
}

/// The keys of `kvs`, in the order returned.
fn keys(kvs: &[KeyValue]) -> Vec<&str> {
    kvs.iter()
        .map(|kv| kv.key_str().expect("utf-8 key"))
        .collect()
}

/// (key, value, create_revision, mod_revision, version) of one pair, so one
/// assertion shows all of it.
fn meta(kv: &KeyValue) -> (&str, &str, i64, i64, i64) {
    (
        kv.key_str().expect("utf-8 key"),
        kv.value_str().expect("utf-8 value"),
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
    )
}

/// The one pair stored under `key`, read at `rev` (0 = now), if any.
async fn get_at(client: &mut Client, key: &str, rev: i64) -> Option<KeyValue> {
    let opts = GetOptions::new().with_revision(rev);
    let resp = client.get(key, Some(opts)).await.expect("get");
    assert!(resp.kvs().len() <= 1);
    resp.kvs().first().cloned()
}

/// A fixture for range tests: six keys written at revisions 2 to 7.
const SIX: [(&str, &str); 6] = [
    ("a", "1"),   // rev 2
    ("b", "2"),   // rev 3
    ("c", "3"),   // rev 4
    ("p/1", "x"), // rev 5
    ("p/2", "y"), // rev 6
    ("q", "z"),   // rev 7
];

#[tokio::test]
async fn range_single_key_interval_prefix_from_key_and_all_keys() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    put_all(&mut c, &SIX).await;

    let one = c.get("b", None).await.unwrap();
    assert_eq!(
        one.kvs().iter().map(meta).collect::<Vec<_>>(),
        [("b", "2", 3, 3, 1)]
    );
    assert_eq!((one.count(), one.more()), (1, false));
    assert_eq!(one.header().unwrap().revision(), 7);

    let missing = c.get("zz", None).await.unwrap();
    assert!(missing.kvs().is_empty());
    assert_eq!((missing.count(), missing.more()), (0, false));

    let half_open = c
        .get("a", Some(GetOptions::new().with_range("c")))
        .await
        .unwrap();
    assert_eq!(keys(half_open.kvs()), ["a", "b"]);
    assert_eq!(half_open.count(), 2);

    let prefix = c
        .get("p/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(keys(prefix.kvs()), ["p/1", "p/2"]);
    assert_eq!(prefix.count(), 2);
    assert_eq!(prefix.kvs()[1].value(), b"y");

    let from = c
        .get("c", Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(keys(from.kvs()), ["c", "p/1", "p/2", "q"]);
    assert_eq!(from.count(), 4);

    // A range whose end is not after its start is empty.
    let backwards = GetOptions::new().with_range("a");
    let backwards = c.get("c", Some(backwards)).await.unwrap();
    assert!(backwards.kvs().is_empty());
    assert_eq!(backwards.count(), 0);

    let all = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(keys(all.kvs()), ["a", "b", "c", "p/1", "p/2", "q"]);
    assert_eq!(all.count(), 6);
    assert_eq!(
        all.kvs()
            .iter()
            .map(|kv| kv.mod_revision())
            .collect::<Vec<_>>(),
        [2, 3, 4, 5, 6, 7]
    );
}

#[tokio::test]
async fn range_limit_sets_more_and_count_is_the_whole_range() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    put_all(&mut c, &SIX).await;

    let all = || GetOptions::new().with_all_keys();
    let two = c.get("", Some(all().with_limit(2))).await.unwrap();
    assert_eq!(keys(two.kvs()), ["a", "b"]);
    assert_eq!((two.more(), two.count()), (true, 6));

    let five = c.get("", Some(all().with_limit(5))).await.unwrap();
    assert_eq!(keys(five.kvs()), ["a", "b", "c", "p/1", "p/2"]);
    assert_eq!((five.more(), five.count()), (true, 6));

    let exact = c.get("", Some(all().with_limit(6))).await.unwrap();
    assert_eq!(exact.kvs().len(), 6);
    assert_eq!((exact.more(), exact.count()), (false, 6));

    let above = c.get("", Some(all().with_limit(100))).await.unwrap();
    assert_eq!(above.kvs().len(), 6);
    assert_eq!((above.more(), above.count()), (false, 6));

    let prefix = GetOptions::new().with_prefix().with_limit(1);
    let prefix = c.get("p/", Some(prefix)).await.unwrap();
    assert_eq!(keys(prefix.kvs()), ["p/1"]);
    assert_eq!((prefix.more(), prefix.count()), (true, 2));
}

#[tokio::test]
async fn range_at_a_historical_revision_sees_old_values_and_deleted_keys() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    put_all(&mut c, &[("a", "1"), ("a", "2"), ("b", "1")]).await; // revs 2, 3, 4
    c.delete("a", None).await.unwrap(); // rev 5
    c.put("b", "2", None).await.unwrap(); // rev 6

    let at = |rev| GetOptions::new().with_all_keys().with_revision(rev);
    let r1 = c.get("", Some(at(1))).await.unwrap();
    assert!(r1.kvs().is_empty());
    assert_eq!(r1.count(), 0);
    // The header carries the current revision, not the one read at.
    assert_eq!(r1.header().unwrap().revision(), 6);

    let r2 = c.get("", Some(at(2))).await.unwrap();
    assert_eq!(
        r2.kvs().iter().map(meta).collect::<Vec<_>>(),
        [("a", "1", 2, 2, 1)]
    );

    let r3 = c.get("", Some(at(3))).await.unwrap();
    assert_eq!(
        r3.kvs().iter().map(meta).collect::<Vec<_>>(),
        [("a", "2", 2, 3, 2)]
    );

    let r4 = c.get("", Some(at(4))).await.unwrap();
    assert_eq!(
        r4.kvs().iter().map(meta).collect::<Vec<_>>(),
        [("a", "2", 2, 3, 2), ("b", "1", 4, 4, 1)]
    );
    assert_eq!(r4.count(), 2);
    let r4_limited = c.get("", Some(at(4).with_limit(1))).await.unwrap();
    assert_eq!(keys(r4_limited.kvs()), ["a"]);
    assert_eq!((r4_limited.count(), r4_limited.more()), (2, true));

    let r5 = c.get("", Some(at(5))).await.unwrap();
    assert_eq!(
        r5.kvs().iter().map(meta).collect::<Vec<_>>(),
        [("b", "1", 4, 4, 1)]
    );

    assert_eq!(get_at(&mut c, "a", 4).await.map(|kv| kv.version()), Some(2));
    assert!(get_at(&mut c, "a", 5).await.is_none());
    assert!(get_at(&mut c, "a", 0).await.is_none());
    let b = get_at(&mut c, "b", 6).await.unwrap();
    assert_eq!(meta(&b), ("b", "2", 4, 6, 2));
}

#[tokio::test]
async fn range_sorts_by_every_target_both_ways() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    // Chosen so that every target orders the three keys differently:
    //   s/a: create 3, mod 6, version 3, value "a"
    //   s/b: create 5, mod 5, version 1, value "z"
    //   s/c: create 2, mod 7, version 2, value "m"
    put_all(
        &mut c,
        &[
            ("s/c", "m"), // rev 2
            ("s/a", "a"), // rev 3
            ("s/a", "a"), // rev 4
            ("s/b", "z"), // rev 5
            ("s/a", "a"), // rev 6
            ("s/c", "m"), // rev 7
        ],
    )
    .await;

    let cases = [
        (SortTarget::Key, SortOrder::Ascend, ["s/a", "s/b", "s/c"]),
        (SortTarget::Key, SortOrder::Descend, ["s/c", "s/b", "s/a"]),
        (
            SortTarget::Version,
            SortOrder::Ascend,
            ["s/b", "s/c", "s/a"],
        ),
        (
            SortTarget::Version,
            SortOrder::Descend,
            ["s/a", "s/c", "s/b"],
        ),
        (SortTarget::Create, SortOrder::Ascend, ["s/c", "s/a", "s/b"]),
        (
            SortTarget::Create,
            SortOrder::Descend,
            ["s/b", "s/a", "s/c"],
        ),
        (SortTarget::Mod, SortOrder::Ascend, ["s/b", "s/a", "s/c"]),
        (SortTarget::Mod, SortOrder::Descend, ["s/c", "s/a", "s/b"]),
        (SortTarget::Value, SortOrder::Ascend, ["s/a", "s/c", "s/b"]),
        (SortTarget::Value, SortOrder::Descend, ["s/b", "s/c", "s/a"]),
    ];
    for (target, order, want) in cases {
        let opts = GetOptions::new().with_prefix().with_sort(target, order);
        let resp = c.get("s/", Some(opts)).await.unwrap();
        assert_eq!(keys(resp.kvs()), want, "sort by {target:?} {order:?}");
        assert_eq!((resp.count(), resp.more()), (3, false));
    }

    // The limit applies after sorting.
    let opts = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Mod, SortOrder::Descend)
        .with_limit(2);
    let resp = c.get("s/", Some(opts)).await.unwrap();
    assert_eq!(keys(resp.kvs()), ["s/c", "s/a"]);
    assert_eq!((resp.count(), resp.more()), (3, true));

    // A target without an order sorts ascending...
    let opts = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::None);
    let resp = c.get("s/", Some(opts.clone())).await.unwrap();
    assert_eq!(keys(resp.kvs()), ["s/c", "s/a", "s/b"]);
    // ...but etcd cuts to the limit in key order first (s/a, s/b, one
    // more to tell `more`) and only then sorts what is left.
    let resp = c.get("s/", Some(opts.with_limit(1))).await.unwrap();
    assert_eq!(keys(resp.kvs()), ["s/a"]);
    assert_eq!((resp.count(), resp.more()), (3, true));

    // Sorting by value works without returning the values.
    let opts = GetOptions::new()
        .with_prefix()
        .with_keys_only()
        .with_sort(SortTarget::Value, SortOrder::Descend);
    let resp = c.get("s/", Some(opts)).await.unwrap();
    assert_eq!(keys(resp.kvs()), ["s/b", "s/c", "s/a"]);
    assert!(resp.kvs().iter().all(|kv| kv.value().is_empty()));
}

#[tokio::test]
async fn range_serializable_keys_only_and_count_only() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    put_all(&mut c, &SIX).await;

    let ser = c
        .get("b", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(
        ser.kvs().iter().map(meta).collect::<Vec<_>>(),
        [("b", "2", 3, 3, 1)]
    );
    assert_eq!(ser.header().unwrap().revision(), 7);
    let ser_all = GetOptions::new().with_all_keys().with_serializable();
    let ser_all = c.get("", Some(ser_all)).await.unwrap();
    assert_eq!(keys(ser_all.kvs()), ["a", "b", "c", "p/1", "p/2", "q"]);

    let keys_only = GetOptions::new().with_all_keys().with_keys_only();
    let keys_only = c.get("", Some(keys_only)).await.unwrap();
    assert_eq!(keys(keys_only.kvs()), ["a", "b", "c", "p/1", "p/2", "q"]);
    assert!(keys_only.kvs().iter().all(|kv| kv.value().is_empty()));
    // Only the value is left out.
    assert_eq!(
        keys_only.kvs().iter().map(meta).nth(1),
        Some(("b", "", 3, 3, 1))
    );
    assert_eq!(keys_only.count(), 6);

    let count_only = GetOptions::new().with_all_keys().with_count_only();
    let count_only = c.get("", Some(count_only)).await.unwrap();
    assert!(count_only.kvs().is_empty());
    assert_eq!((count_only.count(), count_only.more()), (6, false));
    let prefix_count = GetOptions::new().with_prefix().with_count_only();
    let prefix_count = c.get("p/", Some(prefix_count)).await.unwrap();
    assert!(prefix_count.kvs().is_empty());
    assert_eq!(prefix_count.count(), 2);
    // A limit does not cut the count, nor set `more`.
    let limited = GetOptions::new()
        .with_all_keys()
        .with_count_only()
        .with_limit(1);
    let limited = c.get("", Some(limited)).await.unwrap();
    assert!(limited.kvs().is_empty());
    assert_eq!((limited.count(), limited.more()), (6, false));
}

#[tokio::test]
async fn range_filters_on_mod_and_create_revisions() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    // s/a: create 3, mod 6; s/b: create 5, mod 5; s/c: create 2, mod 7.
    put_all(
        &mut c,
        &[
            ("s/c", "m"),
            ("s/a", "a"),
            ("s/a", "a"),
            ("s/b", "z"),
            ("s/a", "a"),
            ("s/c", "m"),
        ],
    )
    .await;

    let p = || GetOptions::new().with_prefix();
    let cases = [
        (p().with_min_mod_revision(6), vec!["s/a", "s/c"]),
        (p().with_max_mod_revision(5), vec!["s/b"]),
        (
            p().with_min_mod_revision(6).with_max_mod_revision(6),
            vec!["s/a"],
        ),
        (p().with_min_create_revision(3), vec!["s/a", "s/b"]),
        (p().with_max_create_revision(3), vec!["s/a", "s/c"]),
        (
            p().with_min_create_revision(4).with_max_create_revision(5),
            vec!["s/b"],
        ),
        (
            p().with_min_mod_revision(6).with_max_create_revision(2),
            vec!["s/c"],
        ),
        (p().with_min_mod_revision(8), vec![]),
    ];
    for (opts, want) in cases {
        let what = format!("{opts:?}");
        let resp = c.get("s/", Some(opts)).await.unwrap();
        assert_eq!(keys(resp.kvs()), want, "{what}");
        // `count` ignores the filters: it is the whole range.
        assert_eq!(resp.count(), 3, "{what}");
    }

    // The limit applies to what the filters kept.
    let opts = p().with_min_mod_revision(6).with_limit(1);
    let resp = c.get("s/", Some(opts)).await.unwrap();
    assert_eq!(keys(resp.kvs()), ["s/a"]);
    assert_eq!((resp.count(), resp.more()), (3, true));
}

#[tokio::test]
async fn put_bumps_the_revision_keeps_create_revision_and_returns_prev_kv() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;

    let first = c.put("k1", "v1", None).await.unwrap();
    assert_eq!(first.header().unwrap().revision(), 2);
    assert!(first.prev_key().is_none());
    let k1 = get_at(&mut c, "k1", 0).await.unwrap();
    assert_eq!(meta(&k1), ("k1", "v1", 2, 2, 1));
    assert_eq!(k1.lease(), 0);

    let second = c.put("k1", "v2", None).await.unwrap();
    assert_eq!(second.header().unwrap().revision(), 3);
    // prev_kv only when asked for.
    assert!(second.prev_key().is_none());
    assert_eq!(
        meta(&get_at(&mut c, "k1", 0).await.unwrap()),
        ("k1", "v2", 2, 3, 2)
    );

    let other = c.put("k2", "x", None).await.unwrap();
    assert_eq!(other.header().unwrap().revision(), 4);
    assert_eq!(
        meta(&get_at(&mut c, "k2", 0).await.unwrap()),
        ("k2", "x", 4, 4, 1)
    );

    let with_prev = PutOptions::new().with_prev_key();
    let third = c.put("k1", "v3", Some(with_prev.clone())).await.unwrap();
    assert_eq!(third.header().unwrap().revision(), 5);
    assert_eq!(meta(third.prev_key().unwrap()), ("k1", "v2", 2, 3, 2));
    assert_eq!(
        meta(&get_at(&mut c, "k1", 0).await.unwrap()),
        ("k1", "v3", 2, 5, 3)
    );

    let fresh = c.put("k3", "new", Some(with_prev.clone())).await.unwrap();
    assert_eq!(fresh.header().unwrap().revision(), 6);
    assert!(fresh.prev_key().is_none());

    // An empty value is a value; a deleted key has no previous pair.
    c.put("k3", "", None).await.unwrap(); // rev 7
    assert_eq!(
        meta(&get_at(&mut c, "k3", 0).await.unwrap()),
        ("k3", "", 6, 7, 2)
    );
    c.delete("k3", None).await.unwrap(); // rev 8
    let reborn = c.put("k3", "again", Some(with_prev)).await.unwrap();
    assert_eq!(reborn.header().unwrap().revision(), 9);
    assert!(reborn.prev_key().is_none());

    // Ten more puts, ten more revisions.
    for i in 0..10 {
        let r = c.put("k4", format!("{i}"), None).await.unwrap();
        assert_eq!(r.header().unwrap().revision(), 10 + i);
    }
    assert_eq!(
        meta(&get_at(&mut c, "k4", 0).await.unwrap()),
        ("k4", "9", 10, 19, 10)
    );
}

#[tokio::test]
async fn put_ignore_value_and_ignore_lease_keep_what_is_stored() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    c.put("k", "kept", None).await.unwrap(); // rev 2

    let opts = PutOptions::new().with_ignore_value().with_prev_key();
    let r = c.put("k", "", Some(opts)).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 3);
    assert_eq!(meta(r.prev_key().unwrap()), ("k", "kept", 2, 2, 1));
    assert_eq!(
        meta(&get_at(&mut c, "k", 0).await.unwrap()),
        ("k", "kept", 2, 3, 2)
    );

    let opts = PutOptions::new().with_ignore_lease();
    let r = c.put("k", "changed", Some(opts)).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 4);
    let k = get_at(&mut c, "k", 0).await.unwrap();
    assert_eq!(meta(&k), ("k", "changed", 2, 4, 3));
    assert_eq!(k.lease(), 0);

    let opts = PutOptions::new().with_ignore_value().with_ignore_lease();
    let r = c.put("k", "", Some(opts)).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 5);
    assert_eq!(
        meta(&get_at(&mut c, "k", 0).await.unwrap()),
        ("k", "changed", 2, 5, 4)
    );

    // Leases are not implemented yet, so every lease id is unknown.
    let err = c
        .put("k", "leased", Some(PutOptions::new().with_lease(0x1234)))
        .await
        .unwrap_err();
    assert_eq!(
        code(err),
        (
            "NotFound".into(),
            "etcdserver: requested lease not found".into()
        )
    );
    assert_eq!(revision(&mut c).await, 5);
    assert_eq!(
        meta(&get_at(&mut c, "k", 0).await.unwrap()),
        ("k", "changed", 2, 5, 4)
    );
}

#[tokio::test]
async fn delete_single_range_and_prefix_with_prev_kvs() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    put_all(&mut c, &SIX).await; // a=2 b=3 c=4 p/1=5 p/2=6 q=7

    let one = c.delete("a", None).await.unwrap();
    assert_eq!(one.deleted(), 1);
    assert!(one.prev_kvs().is_empty());
    assert_eq!(one.header().unwrap().revision(), 8);

    let opts = DeleteOptions::new().with_range("p/2").with_prev_key();
    let range = c.delete("b", Some(opts)).await.unwrap();
    assert_eq!(range.deleted(), 3);
    assert_eq!(
        range.prev_kvs().iter().map(meta).collect::<Vec<_>>(),
        [
            ("b", "2", 3, 3, 1),
            ("c", "3", 4, 4, 1),
            ("p/1", "x", 5, 5, 1)
        ]
    );
    // Deleting three keys is one revision.
    assert_eq!(range.header().unwrap().revision(), 9);

    let opts = DeleteOptions::new().with_prefix().with_prev_key();
    let prefix = c.delete("p/", Some(opts)).await.unwrap();
    assert_eq!(prefix.deleted(), 1);
    assert_eq!(
        prefix.prev_kvs().iter().map(meta).collect::<Vec<_>>(),
        [("p/2", "y", 6, 6, 1)]
    );
    assert_eq!(prefix.header().unwrap().revision(), 10);

    let all = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(keys(all.kvs()), ["q"]);
    assert_eq!(all.header().unwrap().revision(), 10);

    // History shows each delete at its own single revision.
    let count_at = |rev| {
        GetOptions::new()
            .with_all_keys()
            .with_count_only()
            .with_revision(rev)
    };
    let mut counts = Vec::new();
    for rev in 7..=10 {
        counts.push(c.get("", Some(count_at(rev))).await.unwrap().count());
    }
    assert_eq!(counts, [6, 5, 2, 1]);

    put_all(&mut c, &[("r", "1"), ("s", "1")]).await; // revs 11, 12
    let opts = DeleteOptions::new().with_from_key().with_prev_key();
    let from = c.delete("r", Some(opts)).await.unwrap();
    assert_eq!(from.deleted(), 2);
    assert_eq!(keys(from.prev_kvs()), ["r", "s"]);
    assert_eq!(from.header().unwrap().revision(), 13);

    let opts = DeleteOptions::new().with_all_keys().with_prev_key();
    let rest = c.delete("", Some(opts)).await.unwrap();
    assert_eq!(rest.deleted(), 1);
    assert_eq!(keys(rest.prev_kvs()), ["q"]);
    assert_eq!(rest.header().unwrap().revision(), 14);
    let none = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!((none.kvs().len(), none.count()), (0, 0));
}

#[tokio::test]
async fn deleting_nothing_keeps_the_revision_and_a_recreated_key_starts_over() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    put_all(&mut c, &[("a", "1"), ("a", "2"), ("b", "1")]).await; // revs 2-4
    let del = c.delete("a", None).await.unwrap();
    assert_eq!((del.deleted(), del.header().unwrap().revision()), (1, 5));

    let again = c
        .delete("a", Some(DeleteOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(again.deleted(), 0);
    assert!(again.prev_kvs().is_empty());
    assert_eq!(again.header().unwrap().revision(), 5);
    let none = c
        .delete("x/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!((none.deleted(), none.header().unwrap().revision()), (0, 5));
    let none = c
        .delete("c", Some(DeleteOptions::new().with_range("z")))
        .await
        .unwrap();
    assert_eq!((none.deleted(), none.header().unwrap().revision()), (0, 5));
    assert_eq!(revision(&mut c).await, 5);

    let put = c.put("a", "3", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), 6);
    assert_eq!(
        meta(&get_at(&mut c, "a", 0).await.unwrap()),
        ("a", "3", 6, 6, 1)
    );
    // The earlier life of the key is still in history.
    assert_eq!(
        meta(&get_at(&mut c, "a", 4).await.unwrap()),
        ("a", "2", 2, 3, 2)
    );
}

/// Runs a read-only txn guarded by `compares` and says which branch ran.
async fn holds(c: &mut Client, compares: Vec<Compare>) -> bool {
    let txn = Txn::new()
        .when(compares)
        .and_then([TxnOp::get("k", None)])
        .or_else([]);
    let resp = c.txn(txn).await.expect("txn");
    // Only the chosen branch's ops answer.
    assert_eq!(resp.op_responses().len(), usize::from(resp.succeeded()));
    resp.succeeded()
}

#[tokio::test]
async fn txn_compares_every_target_with_every_operator() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    // k: value "v", create 2, mod 3, version 2, lease 0.
    put_all(&mut c, &[("k", "v"), ("k", "v")]).await;

    use CompareOp::{Equal, Greater, Less, NotEqual};
    let cases = [
        (Compare::value("k", Equal, "v"), true),
        (Compare::value("k", Equal, "w"), false),
        (Compare::value("k", NotEqual, "w"), true),
        (Compare::value("k", NotEqual, "v"), false),
        (Compare::value("k", Greater, "u"), true),
        (Compare::value("k", Greater, "v"), false),
        (Compare::value("k", Less, "w"), true),
        (Compare::value("k", Less, "v"), false),
        (Compare::version("k", Equal, 2), true),
        (Compare::version("k", Equal, 1), false),
        (Compare::version("k", NotEqual, 1), true),
        (Compare::version("k", Greater, 1), true),
        (Compare::version("k", Greater, 2), false),
        (Compare::version("k", Less, 3), true),
        (Compare::version("k", Less, 2), false),
        (Compare::create_revision("k", Equal, 2), true),
        (Compare::create_revision("k", NotEqual, 2), false),
        (Compare::create_revision("k", Greater, 1), true),
        (Compare::create_revision("k", Less, 2), false),
        (Compare::mod_revision("k", Equal, 3), true),
        (Compare::mod_revision("k", NotEqual, 3), false),
        (Compare::mod_revision("k", Greater, 2), true),
        (Compare::mod_revision("k", Greater, 3), false),
        (Compare::mod_revision("k", Less, 4), true),
        (Compare::lease("k", Equal, 0), true),
        (Compare::lease("k", NotEqual, 0), false),
        (Compare::lease("k", Greater, 0), false),
        (Compare::lease("k", Less, 1), true),
        // A missing key compares as all zeroes, except that a VALUE compare
        // on it always fails.
        (Compare::version("nope", Equal, 0), true),
        (Compare::create_revision("nope", Equal, 0), true),
        (Compare::mod_revision("nope", Less, 1), true),
        (Compare::lease("nope", Equal, 0), true),
        (Compare::value("nope", Equal, ""), false),
        (Compare::value("nope", NotEqual, "x"), false),
    ];
    for (cmp, want) in cases {
        let what = format!("{cmp:?}");
        assert_eq!(holds(&mut c, vec![cmp]).await, want, "{what}");
    }

    // Several compares must all hold.
    let both = vec![
        Compare::value("k", Equal, "v"),
        Compare::version("k", Equal, 2),
    ];
    assert!(holds(&mut c, both).await);
    let one_fails = vec![
        Compare::value("k", Equal, "v"),
        Compare::version("k", Equal, 1),
    ];
    assert!(!holds(&mut c, one_fails).await);

    // None of this wrote anything.
    assert_eq!(revision(&mut c).await, 3);
}

#[tokio::test]
async fn txn_compare_over_a_range_must_hold_for_every_key() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    put_all(
        &mut c,
        &[("r/1", "x"), ("r/2", "x"), ("r/2", "x"), ("s", "y")],
    )
    .await; // r/1: mod 2 ver 1; r/2: mod 4 ver 2; s: mod 5

    use CompareOp::{Equal, Greater, Less, NotEqual};
    let cases = [
        (Compare::value("r/", Equal, "x").with_range("r0"), true),
        (Compare::value("r/", Equal, "x").with_range("t"), false),
        (Compare::value("r/", NotEqual, "y").with_range("r0"), true),
        (Compare::value("r/", NotEqual, "y").with_range("t"), false),
        (
            Compare::mod_revision("r/", Greater, 1).with_range("r0"),
            true,
        ),
        (
            Compare::mod_revision("r/", Greater, 2).with_range("r0"),
            false,
        ),
        (Compare::mod_revision("r/", Less, 5).with_range("r0"), true),
        (Compare::mod_revision("r/", Less, 5).with_range("t"), false),
        (Compare::version("r/", Equal, 1).with_range("r0"), false),
        (Compare::version("r/", Greater, 0).with_range("t"), true),
        (
            Compare::create_revision("r/", Less, 4).with_range("r0"),
            true,
        ),
        (Compare::lease("a", Equal, 0).with_range("z"), true),
        (Compare::value("r/", Equal, "x").with_prefix(), true),
        // From a key to the end of the keyspace.
        (Compare::version("r/2", Equal, 2).with_range("\0"), false),
        (Compare::version("r/2", Greater, 0).with_range("\0"), true),
        (
            Compare::mod_revision("r/2", Greater, 3).with_range("\0"),
            true,
        ),
        // An empty range compares like a missing key.
        (Compare::version("x", Equal, 0).with_range("y"), true),
        (Compare::value("x", Equal, "").with_range("y"), false),
    ];
    for (cmp, want) in cases {
        let what = format!("{cmp:?}");
        assert_eq!(holds(&mut c, vec![cmp]).await, want, "{what}");
    }
    assert_eq!(revision(&mut c).await, 5);
}

#[tokio::test]
async fn txn_success_branch_runs_every_op_kind_at_one_revision() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    put_all(&mut c, &[("k", "v"), ("old", "o")]).await; // revs 2, 3

    let nested = Txn::new()
        // Compares are all decided before the first op runs, so this one
        // does not see the outer txn's put of "a".
        .when([Compare::version("a", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("n", "yes", None), TxnOp::get("a", None)])
        .or_else([TxnOp::put("n", "no", None)]);
    let txn = Txn::new()
        .when([
            Compare::value("k", CompareOp::Equal, "v"),
            Compare::version("k", CompareOp::Equal, 1),
        ])
        .and_then([
            TxnOp::put("a", "1", None),
            TxnOp::get("a", None),
            TxnOp::put("b", "2", Some(PutOptions::new().with_prev_key())),
            TxnOp::get("a", Some(GetOptions::new().with_range("c"))),
            TxnOp::delete("old", Some(DeleteOptions::new().with_prev_key())),
            TxnOp::txn(nested),
        ])
        .or_else([TxnOp::put("f", "failed", None)]);
    let resp = c.txn(txn).await.unwrap();
    assert!(resp.succeeded());
    assert_eq!(resp.header().unwrap().revision(), 4);

    let ops = resp.op_responses();
    assert_eq!(ops.len(), 6);
    let TxnOpResponse::Put(put_a) = &ops[0] else {
        panic!("op 0: {:?}", ops[0])
    };
    assert_eq!(put_a.header().unwrap().revision(), 4);
    let TxnOpResponse::Get(get_a) = &ops[1] else {
        panic!("op 1: {:?}", ops[1])
    };
    // Later ops see the earlier ops' writes.
    assert_eq!(
        get_a.kvs().iter().map(meta).collect::<Vec<_>>(),
        [("a", "1", 4, 4, 1)]
    );
    let TxnOpResponse::Put(put_b) = &ops[2] else {
        panic!("op 2: {:?}", ops[2])
    };
    assert!(put_b.prev_key().is_none());
    let TxnOpResponse::Get(range) = &ops[3] else {
        panic!("op 3: {:?}", ops[3])
    };
    assert_eq!(
        range.kvs().iter().map(meta).collect::<Vec<_>>(),
        [("a", "1", 4, 4, 1), ("b", "2", 4, 4, 1)]
    );
    assert_eq!(range.count(), 2);
    let TxnOpResponse::Delete(del) = &ops[4] else {
        panic!("op 4: {:?}", ops[4])
    };
    assert_eq!(del.deleted(), 1);
    assert_eq!(
        del.prev_kvs().iter().map(meta).collect::<Vec<_>>(),
        [("old", "o", 3, 3, 1)]
    );
    let TxnOpResponse::Txn(inner) = &ops[5] else {
        panic!("op 5: {:?}", ops[5])
    };
    assert!(inner.succeeded());
    let inner_ops = inner.op_responses();
    assert_eq!(inner_ops.len(), 2);
    assert!(matches!(inner_ops[0], TxnOpResponse::Put(_)));
    let TxnOpResponse::Get(inner_get) = &inner_ops[1] else {
        panic!("nested op 1: {:?}", inner_ops[1])
    };
    assert_eq!(keys(inner_get.kvs()), ["a"]);

    // Every write of the txn carries the same single revision.
    let all = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(
        all.kvs().iter().map(meta).collect::<Vec<_>>(),
        [
            ("a", "1", 4, 4, 1),
            ("b", "2", 4, 4, 1),
            ("k", "v", 2, 2, 1),
            ("n", "yes", 4, 4, 1),
        ]
    );
    assert_eq!(all.header().unwrap().revision(), 4);
    assert!(get_at(&mut c, "old", 3).await.is_some());
    assert!(get_at(&mut c, "a", 3).await.is_none());
}

#[tokio::test]
async fn txn_failure_branch_runs_its_ops() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    put_all(&mut c, &[("k", "v"), ("m", "1")]).await; // revs 2, 3

    let nested = Txn::new()
        // Decided against the state before the txn: "k" still holds "v".
        .when([Compare::value("k", CompareOp::Equal, "v")])
        .and_then([TxnOp::get("k", None), TxnOp::put("n", "then", None)])
        .or_else([TxnOp::put("n", "else", None)]);
    let txn = Txn::new()
        .when([Compare::value("k", CompareOp::Equal, "nope")])
        .and_then([TxnOp::put("s", "success", None)])
        .or_else([
            TxnOp::put("f", "1", None),
            TxnOp::get("f", None),
            TxnOp::delete("k", None),
            TxnOp::put("m", "2", Some(PutOptions::new().with_prev_key())),
            TxnOp::txn(nested),
        ]);
    let resp = c.txn(txn).await.unwrap();
    assert!(!resp.succeeded());
    assert_eq!(resp.header().unwrap().revision(), 4);

    let ops = resp.op_responses();
    assert_eq!(ops.len(), 5);
    let TxnOpResponse::Get(get_f) = &ops[1] else {
        panic!("op 1: {:?}", ops[1])
    };
    assert_eq!(
        get_f.kvs().iter().map(meta).collect::<Vec<_>>(),
        [("f", "1", 4, 4, 1)]
    );
    let TxnOpResponse::Delete(del) = &ops[2] else {
        panic!("op 2: {:?}", ops[2])
    };
    assert_eq!(del.deleted(), 1);
    let TxnOpResponse::Put(put_m) = &ops[3] else {
        panic!("op 3: {:?}", ops[3])
    };
    assert_eq!(meta(put_m.prev_key().unwrap()), ("m", "1", 3, 3, 1));
    let TxnOpResponse::Txn(inner) = &ops[4] else {
        panic!("op 4: {:?}", ops[4])
    };
    assert!(inner.succeeded());
    let inner_ops = inner.op_responses();
    let TxnOpResponse::Get(inner_get) = &inner_ops[0] else {
        panic!("nested op 0: {:?}", inner_ops[0])
    };
    // ...but its ops run after the delete before them.
    assert!(inner_get.kvs().is_empty());

    let all = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    assert_eq!(
        all.kvs().iter().map(meta).collect::<Vec<_>>(),
        [
            ("f", "1", 4, 4, 1),
            ("m", "2", 3, 4, 2),
            ("n", "then", 4, 4, 1)
        ]
    );
    assert_eq!(revision(&mut c).await, 4);
}

#[tokio::test]
async fn txn_whose_chosen_branch_only_reads_keeps_the_revision() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    c.put("k", "v", None).await.unwrap(); // rev 2

    // The other branch would write, but it is not taken.
    let txn = Txn::new()
        .when([Compare::value("k", CompareOp::Equal, "other")])
        .and_then([TxnOp::put("k", "x", None)])
        .or_else([TxnOp::get("k", None)]);
    let resp = c.txn(txn).await.unwrap();
    assert!(!resp.succeeded());
    assert_eq!(resp.header().unwrap().revision(), 2);
    let TxnOpResponse::Get(get) = &resp.op_responses()[0] else {
        panic!("{:?}", resp.op_responses())
    };
    assert_eq!(
        get.kvs().iter().map(meta).collect::<Vec<_>>(),
        [("k", "v", 2, 2, 1)]
    );

    let txn = Txn::new()
        .when([Compare::version("k", CompareOp::Equal, 1)])
        .and_then([TxnOp::get("k", None)])
        .or_else([TxnOp::delete("k", None)]);
    let resp = c.txn(txn).await.unwrap();
    assert!(resp.succeeded());
    assert_eq!(resp.header().unwrap().revision(), 2);

    // A branch whose only write deletes nothing changes nothing either.
    let txn = Txn::new().and_then([TxnOp::delete("missing", None)]);
    let resp = c.txn(txn).await.unwrap();
    assert!(resp.succeeded());
    assert_eq!(resp.header().unwrap().revision(), 2);

    // Nor does an empty txn.
    let resp = c.txn(Txn::new()).await.unwrap();
    assert!(resp.succeeded());
    assert!(resp.op_responses().is_empty());
    assert_eq!(resp.header().unwrap().revision(), 2);

    assert_eq!(revision(&mut c).await, 2);
    assert_eq!(
        meta(&get_at(&mut c, "k", 0).await.unwrap()),
        ("k", "v", 2, 2, 1)
    );
}

/// The compaction test, with or without waiting for physical removal.
async fn compaction(physical: bool) {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    put_all(&mut c, &[("k", "v1"), ("k", "v2"), ("k", "v3"), ("o", "1")]).await; // revs 2-5
    c.delete("o", None).await.unwrap(); // rev 6

    let opts = physical.then(|| CompactionOptions::new().with_physical());
    let resp = c.compact(4, opts).await.unwrap();
    assert_eq!(resp.header().unwrap().revision(), 6);

    const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
    for rev in [1, 2, 3] {
        let err = c
            .get("k", Some(GetOptions::new().with_revision(rev)))
            .await
            .unwrap_err();
        assert_eq!(
            code(err),
            ("OutOfRange".into(), COMPACTED.into()),
            "rev {rev}"
        );
    }
    // From the compaction revision on, history is intact.
    assert_eq!(
        meta(&get_at(&mut c, "k", 4).await.unwrap()),
        ("k", "v3", 2, 4, 3)
    );
    assert_eq!(
        meta(&get_at(&mut c, "o", 5).await.unwrap()),
        ("o", "1", 5, 5, 1)
    );
    assert!(get_at(&mut c, "o", 6).await.is_none());
    assert_eq!(
        meta(&get_at(&mut c, "k", 0).await.unwrap()),
        ("k", "v3", 2, 4, 3)
    );
    let count = GetOptions::new()
        .with_all_keys()
        .with_count_only()
        .with_revision(5);
    assert_eq!(c.get("", Some(count)).await.unwrap().count(), 2);

    // Writing goes on from where it was.
    let put = c.put("k", "v4", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), 7);
    assert_eq!(
        meta(&get_at(&mut c, "k", 0).await.unwrap()),
        ("k", "v4", 2, 7, 4)
    );

    // Compacting further up works too, and moves the floor.
    c.compact(7, None).await.unwrap();
    let err = c
        .get("k", Some(GetOptions::new().with_revision(6)))
        .await
        .unwrap_err();
    assert_eq!(code(err), ("OutOfRange".into(), COMPACTED.into()));
    assert_eq!(
        meta(&get_at(&mut c, "k", 7).await.unwrap()),
        ("k", "v4", 2, 7, 4)
    );
}

#[tokio::test]
async fn compaction_hides_history_below_its_revision() {
    compaction(false).await;
}

#[tokio::test]
async fn physical_compaction_hides_history_below_its_revision() {
    compaction(true).await;
}

#[tokio::test]
async fn response_headers_name_one_cluster_member_and_the_store_revision() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;

    let mut headers: Vec<(&str, ResponseHeader)> = Vec::new();
    let put = c.put("a", "1", None).await.unwrap(); // rev 2
    headers.push(("put", put.header().unwrap().clone()));
    let put = c.put("b", "1", None).await.unwrap(); // rev 3
    headers.push(("put", put.header().unwrap().clone()));
    let get = c.get("a", None).await.unwrap();
    headers.push(("get", get.header().unwrap().clone()));
    let del = c.delete("b", None).await.unwrap(); // rev 4
    headers.push(("delete", del.header().unwrap().clone()));
    let del = c.delete("b", None).await.unwrap();
    headers.push(("delete nothing", del.header().unwrap().clone()));
    let txn = c
        .txn(Txn::new().and_then([TxnOp::put("c", "1", None)]))
        .await
        .unwrap(); // rev 5
    headers.push(("txn", txn.header().unwrap().clone()));
    let txn = c
        .txn(Txn::new().and_then([TxnOp::get("c", None)]))
        .await
        .unwrap();
    headers.push(("read txn", txn.header().unwrap().clone()));
    let compact = c.compact(3, None).await.unwrap();
    headers.push(("compact", compact.header().unwrap().clone()));
    let status = c.status().await.unwrap();
    headers.push(("status", status.header().unwrap().clone()));
    let members = c.member_list().await.unwrap();
    headers.push(("member list", members.header().unwrap().clone()));

    let first = &headers[0].1;
    assert_ne!(first.cluster_id(), 0);
    assert_ne!(first.member_id(), 0);
    assert!(first.raft_term() >= 1);
    for (what, h) in &headers {
        assert_eq!(h.cluster_id(), first.cluster_id(), "{what}");
        assert_eq!(h.member_id(), first.member_id(), "{what}");
        assert_eq!(h.raft_term(), first.raft_term(), "{what}");
    }
    let revisions: Vec<(&str, i64)> = headers.iter().map(|(w, h)| (*w, h.revision())).collect();
    assert_eq!(
        revisions,
        [
            ("put", 2),
            ("put", 3),
            ("get", 3),
            ("delete", 4),
            ("delete nothing", 4),
            ("txn", 5),
            ("read txn", 5),
            ("compact", 5),
            ("status", 5),
            // etcd's Cluster service fills in no revision at all.
            ("member list", 0),
        ]
    );
}

#[tokio::test]
async fn status_and_member_list_describe_the_single_member() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    c.put("k", "v", None).await.unwrap();

    let status = c.status().await.unwrap();
    let member_id = status.header().unwrap().member_id();
    assert_ne!(member_id, 0);
    assert_eq!(status.leader(), member_id);
    assert!(!status.version().is_empty());
    assert!(status.db_size() > 0);
    assert!(status.raft_term() >= 1);
    assert!(status.raft_index() >= 1);
    assert!(status.errors().is_empty());
    assert!(!status.is_learner());

    let list = c.member_list().await.unwrap();
    let members = list.members();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].id(), member_id);
    assert_eq!(members[0].name(), "default");
    assert!(!members[0].is_learner());
    assert_eq!(members[0].client_urls(), [server.url()]);
    assert_eq!(
        list.header().unwrap().cluster_id(),
        status.header().unwrap().cluster_id()
    );
}

#[tokio::test]
async fn data_and_revision_survive_a_restart() {
    let mut server = Server::start();
    let (ids, before) = {
        let mut c = connect(server.endpoint()).await;
        put_all(&mut c, &[("a", "1"), ("a", "2"), ("b", "1"), ("c", "1")]).await; // revs 2-5
        c.delete("b", None).await.unwrap(); // rev 6
        c.txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("e", "1", None)]))
            .await
            .unwrap(); // rev 7
        c.compact(3, None).await.unwrap();
        let all = c
            .get("", Some(GetOptions::new().with_all_keys()))
            .await
            .unwrap();
        let h = all.header().unwrap();
        assert_eq!(h.revision(), 7);
        let ids = (h.cluster_id(), h.member_id());
        let before: Vec<(String, String, i64, i64, i64)> = all
            .kvs()
            .iter()
            .map(meta)
            .map(|(k, v, cr, mr, ver)| (k.to_string(), v.to_string(), cr, mr, ver))
            .collect();
        (ids, before)
    };
    match &mut server {
        // Roster's own promise: a graceful stop ends cleanly.
        Server::Roster(node) => {
            assert_eq!(node.terminate(), Stopped::Requested);
            node.restart();
        }
        Server::Etcd(etcd) => etcd.restart(),
    }

    let mut c = connect(server.endpoint()).await;
    let all = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .unwrap();
    let h = all.header().unwrap();
    assert_eq!(h.revision(), 7);
    assert_eq!((h.cluster_id(), h.member_id()), ids);
    let after: Vec<(String, String, i64, i64, i64)> = all
        .kvs()
        .iter()
        .map(meta)
        .map(|(k, v, cr, mr, ver)| (k.to_string(), v.to_string(), cr, mr, ver))
        .collect();
    assert_eq!(after, before);
    assert_eq!(
        after.iter().map(|kv| kv.0.as_str()).collect::<Vec<_>>(),
        ["a", "c", "d", "e"]
    );

    // History and the compaction floor survive too.
    assert_eq!(
        meta(&get_at(&mut c, "b", 5).await.unwrap()),
        ("b", "1", 4, 4, 1)
    );
    assert_eq!(
        meta(&get_at(&mut c, "a", 3).await.unwrap()),
        ("a", "2", 2, 3, 2)
    );
    let err = c
        .get("a", Some(GetOptions::new().with_revision(2)))
        .await
        .unwrap_err();
    assert_eq!(
        code(err),
        (
            "OutOfRange".into(),
            "etcdserver: mvcc: required revision has been compacted".into()
        )
    );

    let put = c.put("a", "3", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), 8);
    assert_eq!(
        meta(&get_at(&mut c, "a", 0).await.unwrap()),
        ("a", "3", 2, 8, 3)
    );
}

/// Keys in the long-range test: the server walks a range 1024 keys at a
/// time, so this takes two pieces and part of a third.
const MANY: usize = 2100;

fn many_key(i: usize) -> String {
    format!("many/{i:04}")
}

#[tokio::test]
async fn ranges_and_read_only_txns_in_pieces_are_one_revision_while_writes_go_on() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    // Loaded 100 keys a txn: revisions 2 to 22.
    for chunk in (0..MANY).collect::<Vec<_>>().chunks(100) {
        let puts: Vec<TxnOp> = chunk
            .iter()
            .map(|&i| TxnOp::put(many_key(i), "old", None))
            .collect();
        c.txn(Txn::new().and_then(puts)).await.unwrap();
    }
    let loaded = revision(&mut c).await;
    assert_eq!(loaded, 22);

    // A writer overwrites the keys from the last one down, one revision
    // each: key i gets "new" at revision loaded + MANY - i.
    let mut w = connect(server.endpoint()).await;
    let writer = tokio::spawn(async move {
        for i in (0..MANY).rev() {
            w.put(many_key(i), "new", None).await.unwrap();
        }
    });
    let prefix = || Some(GetOptions::new().with_prefix());
    let mut reads = 0;
    // Reads that came while the writer wrote: ranges, then txns.
    let mut seen_between = [0, 0];
    // A txn that only reads is read in pieces too, every range of it at
    // the txn's revision: the whole span, a key the writer reaches half
    // way, the span again.
    let both = Txn::new().and_then(vec![
        TxnOp::get("many/", prefix()),
        TxnOp::get(many_key(MANY / 2), None),
        TxnOp::get("many/", prefix()),
    ]);
    while !writer.is_finished() || reads < 2 {
        let (rev, gets) = if reads % 2 == 0 {
            let resp = c.get("many/", prefix()).await.unwrap();
            (resp.header().unwrap().revision(), vec![resp])
        } else {
            let resp = c.txn(both.clone()).await.unwrap();
            let gets = resp.op_responses().into_iter().map(|op| match op {
                TxnOpResponse::Get(get) => get,
                other => panic!("not a get: {other:?}"),
            });
            (resp.header().unwrap().revision(), gets.collect())
        };
        let written = (rev - loaded) as usize;
        // Exactly the writes up to the header's revision.
        let want = |i: usize| if i >= MANY - written { "new" } else { "old" };
        let whole = gets.iter().step_by(2);
        for resp in whole {
            assert_eq!((resp.count(), resp.kvs().len()), (MANY as i64, MANY));
            for (i, kv) in resp.kvs().iter().enumerate() {
                assert_eq!(kv.key_str().unwrap(), many_key(i));
                assert_eq!(
                    kv.value_str().unwrap(),
                    want(i),
                    "key {i} at revision {rev}"
                );
                assert!(kv.mod_revision() <= rev);
            }
        }
        if let Some(half) = gets.get(1) {
            assert_eq!(half.kvs()[0].value_str().unwrap(), want(MANY / 2));
        }
        if 0 < written && written < MANY {
            seen_between[reads % 2] += 1;
        }
        reads += 1;
    }
    writer.await.unwrap();
    assert!(
        seen_between.iter().all(|&n| n > 0),
        "reads while the writer wrote (ranges, txns): {seen_between:?}"
    );

    // Limits and counts over the whole span.
    let limited = c
        .get("many/", prefix().map(|o| o.with_limit(1500)))
        .await
        .unwrap();
    assert_eq!(limited.kvs().len(), 1500);
    assert_eq!((limited.more(), limited.count()), (true, MANY as i64));
    assert_eq!(limited.kvs()[1499].key_str().unwrap(), many_key(1499));
    let counted = c
        .get("many/", prefix().map(|o| o.with_count_only()))
        .await
        .unwrap();
    assert_eq!((counted.count(), counted.kvs().len()), (MANY as i64, 0));
    // Read at the revision the load finished: every value the old one.
    let then = c
        .get("many/", prefix().map(|o| o.with_revision(loaded)))
        .await
        .unwrap();
    assert_eq!(then.kvs().len(), MANY);
    assert!(then.kvs().iter().all(|kv| kv.value() == b"old"));
}
