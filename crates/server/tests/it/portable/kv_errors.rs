//! Every KV error a client can cause, end to end: a real server driven by
//! the third-party `etcd-client` crate.
//!
//! Each refusal is checked three ways: the gRPC code, the exact message
//! (etcd clients match on the text, so it is etcd's word for word), and that
//! the store did not change: same revision, same pairs. Each test ends by
//! reading once more, to show the server survived what it was sent.
//!
//! Like `kv.rs`, these tests run unchanged against the real etcd 3.4 too
//! (`scripts/test.sh`).

use roster_testkit::{Server, Setting};

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn,
    TxnOp,
};
use roster_testkit::etcd_api::{connect, grpc};

const INVALID_ARGUMENT: &str = "InvalidArgument";
const OUT_OF_RANGE: &str = "OutOfRange";
const NOT_FOUND: &str = "NotFound";

const EMPTY_KEY: &str = "etcdserver: key is not provided";
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
const TOO_LARGE: &str = "etcdserver: request is too large";
const VALUE_PROVIDED: &str = "etcdserver: value is provided";
const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
const KEY_NOT_FOUND: &str = "etcdserver: key not found";
const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";

/// One stored pair, every field a client can see.
type Pair = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);

/// All a client can observe of the store: its revision and every live pair.
async fn snapshot(c: &mut Client) -> (i64, Vec<Pair>) {
    let all = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("get all keys");
    let pairs = all
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect();
    (all.header().expect("header").revision(), pairs)
}

/// Sends `$call` (a future using `$c`), asserts it fails with `$code` and
/// `$msg`, and that the store is exactly as it was before.
macro_rules! refused {
    ($c:ident, $call:expr, $code:expr, $msg:expr) => {{
        let before = snapshot(&mut $c).await;
        let got = grpc($call.await);
        assert_eq!(
            got,
            ($code.to_string(), $msg.to_string()),
            "{}",
            stringify!($call)
        );
        let after = snapshot(&mut $c).await;
        assert_eq!(after, before, "{} changed the store", stringify!($call));
    }};
}

/// Checks the server still serves reads and writes, and that the store is
/// at `rev` until the write.
async fn still_serving(c: &mut Client, rev: i64) {
    let got = c.get("k", None).await.expect("get after the errors");
    assert_eq!(got.header().unwrap().revision(), rev);
    let put = c
        .put("after", "errors", None)
        .await
        .expect("put after the errors");
    assert_eq!(put.header().unwrap().revision(), rev + 1);
}

#[tokio::test]
async fn empty_keys_are_refused_everywhere() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    c.put("k", "v", None).await.unwrap(); // rev 2

    refused!(c, c.get("", None), INVALID_ARGUMENT, EMPTY_KEY);
    refused!(
        c,
        c.get("", Some(GetOptions::new().with_range("z"))),
        INVALID_ARGUMENT,
        EMPTY_KEY
    );
    refused!(c, c.put("", "v", None), INVALID_ARGUMENT, EMPTY_KEY);
    refused!(c, c.delete("", None), INVALID_ARGUMENT, EMPTY_KEY);
    refused!(
        c,
        c.delete("", Some(DeleteOptions::new().with_range("z"))),
        INVALID_ARGUMENT,
        EMPTY_KEY
    );

    // In a txn: a compare, whichever branch would be taken, and every op.
    let cmp = Compare::value("", CompareOp::Equal, "v");
    let read_txn = Txn::new()
        .when([cmp.clone()])
        .and_then([TxnOp::get("k", None)]);
    refused!(c, c.txn(read_txn), INVALID_ARGUMENT, EMPTY_KEY);
    let write_txn = Txn::new()
        .when([Compare::version("k", CompareOp::Equal, 1), cmp])
        .and_then([TxnOp::put("k", "new", None)]);
    refused!(c, c.txn(write_txn), INVALID_ARGUMENT, EMPTY_KEY);
    let ops = [
        TxnOp::put("", "v", None),
        TxnOp::get("", None),
        TxnOp::delete("", None),
    ];
    for op in ops {
        // The empty key sits in the branch that would not be taken.
        let txn = Txn::new()
            .when([Compare::value("k", CompareOp::Equal, "v")])
            .and_then([TxnOp::put("k", "new", None)])
            .or_else([op]);
        refused!(c, c.txn(txn), INVALID_ARGUMENT, EMPTY_KEY);
    }
    let nested = Txn::new()
        .when([Compare::version("", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("x", "1", None)]);
    let txn = Txn::new().and_then([TxnOp::put("k", "new", None), TxnOp::txn(nested)]);
    refused!(c, c.txn(txn), INVALID_ARGUMENT, EMPTY_KEY);

    still_serving(&mut c, 2).await;
}

#[tokio::test]
async fn compacted_and_future_revisions_are_refused() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    for v in ["v1", "v2", "v3", "v4"] {
        c.put("k", v, None).await.unwrap(); // revs 2-5
    }
    c.compact(3, None).await.unwrap();

    let at = |rev| Some(GetOptions::new().with_revision(rev));
    for rev in [1, 2] {
        refused!(c, c.get("k", at(rev)), OUT_OF_RANGE, COMPACTED);
    }
    for rev in [3, 2, 1] {
        refused!(c, c.compact(rev, None), OUT_OF_RANGE, COMPACTED);
    }
    let physical = Some(CompactionOptions::new().with_physical());
    refused!(c, c.compact(3, physical.clone()), OUT_OF_RANGE, COMPACTED);

    for rev in [6, 100] {
        refused!(c, c.get("k", at(rev)), OUT_OF_RANGE, FUTURE_REV);
        refused!(c, c.compact(rev, None), OUT_OF_RANGE, FUTURE_REV);
    }
    refused!(c, c.compact(6, physical), OUT_OF_RANGE, FUTURE_REV);

    // A txn reading at such a revision fails as a whole, writes included.
    for (rev, msg) in [(2, COMPACTED), (6, FUTURE_REV)] {
        let read = Txn::new().and_then([TxnOp::get("k", at(rev))]);
        refused!(c, c.txn(read), OUT_OF_RANGE, msg);
        let write =
            Txn::new().and_then([TxnOp::put("k", "written", None), TxnOp::get("k", at(rev))]);
        refused!(c, c.txn(write), OUT_OF_RANGE, msg);
    }

    // The edges are readable.
    for rev in [3, 5] {
        let got = c.get("k", at(rev)).await.unwrap();
        assert_eq!(got.kvs()[0].mod_revision(), rev);
    }
    still_serving(&mut c, 5).await;
}

/// Nothing has been compacted on a fresh store, so compacting to revision 0
/// is not "at or below the compacted revision": etcd accepts it.
#[tokio::test]
async fn compacting_to_revision_zero_on_a_fresh_store_is_accepted() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;

    let resp = c.compact(0, None).await.unwrap();
    assert_eq!(resp.header().unwrap().revision(), 1);
    let resp = c.compact(1, None).await.unwrap();
    assert_eq!(resp.header().unwrap().revision(), 1);
    refused!(c, c.compact(1, None), OUT_OF_RANGE, COMPACTED);
    refused!(c, c.compact(0, None), OUT_OF_RANGE, COMPACTED);

    let put = c.put("k", "v", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), 2);
    still_serving(&mut c, 2).await;
}

/// `n` puts of distinct keys.
fn puts(n: usize) -> Vec<TxnOp> {
    (0..n)
        .map(|i| TxnOp::put(format!("op/{i:03}"), "v", None))
        .collect()
}

/// `n` compares that all hold.
fn compares(n: usize) -> Vec<Compare> {
    (0..n)
        .map(|i| Compare::version(format!("op/{i:03}"), CompareOp::Equal, 0))
        .collect()
}

#[tokio::test]
async fn txn_with_more_ops_than_max_txn_ops_is_refused() {
    let server = Server::start_with(&[Setting::MaxTxnOps(4)]);
    let mut c = connect(server.endpoint()).await;
    c.put("k", "v", None).await.unwrap(); // rev 2

    let cases = [
        Txn::new().and_then(puts(5)),
        Txn::new().or_else(puts(5)),
        Txn::new()
            .when([Compare::version("k", CompareOp::Equal, 0)])
            .or_else(puts(5)),
        Txn::new().when(compares(5)).and_then(puts(1)),
        // A nested txn gets what the outer one leaves of the budget: one op
        // here leaves three, and the nested txn has four.
        Txn::new().and_then([TxnOp::txn(Txn::new().and_then(puts(4)))]),
    ];
    for txn in cases {
        refused!(c, c.txn(txn), INVALID_ARGUMENT, TOO_MANY_OPS);
    }

    // Exactly at the limit is fine.
    let at_limit = Txn::new()
        .when(compares(4))
        .and_then(puts(4))
        .or_else(puts(4));
    let resp = c.txn(at_limit).await.unwrap();
    assert!(resp.succeeded());
    assert_eq!(resp.header().unwrap().revision(), 3);
    let nested = Txn::new().and_then([TxnOp::txn(Txn::new().and_then([TxnOp::get("k", None)]))]);
    assert!(c.txn(nested).await.unwrap().succeeded());

    still_serving(&mut c, 3).await;
}

#[tokio::test]
async fn txn_with_more_than_the_default_128_ops_is_refused() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    c.put("k", "v", None).await.unwrap(); // rev 2

    refused!(
        c,
        c.txn(Txn::new().and_then(puts(129))),
        INVALID_ARGUMENT,
        TOO_MANY_OPS
    );
    refused!(
        c,
        c.txn(Txn::new().when(compares(129))),
        INVALID_ARGUMENT,
        TOO_MANY_OPS
    );

    let resp = c.txn(Txn::new().and_then(puts(128))).await.unwrap();
    assert_eq!(resp.header().unwrap().revision(), 3);
    let count = GetOptions::new().with_prefix().with_count_only();
    assert_eq!(c.get("op/", Some(count)).await.unwrap().count(), 128);

    still_serving(&mut c, 3).await;
}

#[tokio::test]
async fn txn_writing_a_key_twice_is_refused() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    c.put("k", "v", None).await.unwrap(); // rev 2

    let range = |end: &str| Some(DeleteOptions::new().with_range(end));
    let cases = [
        vec![TxnOp::put("a", "1", None), TxnOp::put("a", "2", None)],
        vec![TxnOp::put("b", "1", None), TxnOp::delete("a", range("c"))],
        vec![TxnOp::delete("a", range("c")), TxnOp::put("b", "1", None)],
        vec![TxnOp::delete("k", None), TxnOp::put("k", "1", None)],
        vec![
            TxnOp::put("a", "1", None),
            TxnOp::txn(Txn::new().and_then([TxnOp::put("a", "2", None)])),
        ],
        vec![
            TxnOp::txn(Txn::new().or_else([TxnOp::delete("a", None)])),
            TxnOp::put("a", "1", None),
        ],
    ];
    for ops in cases {
        refused!(
            c,
            c.txn(Txn::new().and_then(ops.clone())),
            INVALID_ARGUMENT,
            DUPLICATE_KEY
        );
        // Also in the branch that would not be taken.
        let txn = Txn::new()
            .when([Compare::value("k", CompareOp::Equal, "v")])
            .or_else(ops);
        refused!(c, c.txn(txn), INVALID_ARGUMENT, DUPLICATE_KEY);
    }

    // Not duplicates: one key in both branches (only one runs), in both
    // branches of a nested txn, or deletes that overlap.
    let ok = Txn::new()
        .and_then([TxnOp::put("a", "1", None)])
        .or_else([TxnOp::put("a", "2", None)]);
    assert!(c.txn(ok).await.unwrap().succeeded()); // rev 3
    let nested = Txn::new()
        .when([Compare::value("a", CompareOp::Equal, "1")])
        .and_then([TxnOp::put("b", "1", None)])
        .or_else([TxnOp::put("b", "2", None)]);
    let ok = Txn::new().and_then([TxnOp::txn(nested)]);
    assert!(c.txn(ok).await.unwrap().succeeded()); // rev 4
    let ok = Txn::new().and_then([
        TxnOp::delete("a", range("c")),
        TxnOp::delete("b", range("d")),
    ]);
    let resp = c.txn(ok).await.unwrap(); // rev 5
    assert_eq!(resp.header().unwrap().revision(), 5);

    still_serving(&mut c, 5).await;
}

#[tokio::test]
async fn requests_above_max_request_bytes_are_refused() {
    const LIMIT: usize = 1024;
    let server = Server::start_with(&[Setting::MaxRequestBytes(LIMIT)]);
    let mut c = connect(server.endpoint()).await;
    c.put("k", "v", None).await.unwrap(); // rev 2

    let big = "x".repeat(2000);
    refused!(
        c,
        c.put("big", big.clone(), None),
        INVALID_ARGUMENT,
        TOO_LARGE
    );
    refused!(
        c,
        c.txn(Txn::new().and_then([TxnOp::put("big", big.clone(), None)])),
        INVALID_ARGUMENT,
        TOO_LARGE
    );

    refused!(c, c.delete(big.clone(), None), INVALID_ARGUMENT, TOO_LARGE);
    // A txn that may write is checked whole, even if the branch that would
    // run only reads.
    let may_write = Txn::new()
        .when([Compare::version("k", CompareOp::Equal, 99)])
        .and_then([TxnOp::put("z", "1", None)])
        .or_else([TxnOp::get(big.clone(), None)]);
    refused!(c, c.txn(may_write), INVALID_ARGUMENT, TOO_LARGE);

    // Far beyond the limit plus the 512 KiB gRPC allows on top, gRPC itself
    // refuses the message, before roster sees it.
    let huge = "x".repeat(LIMIT + 512 * 1024 + 4096);
    let before = snapshot(&mut c).await;
    let (code, _) = grpc(c.put("huge", huge, None).await);
    assert!(
        code == "ResourceExhausted" || code == OUT_OF_RANGE,
        "unexpected code {code}"
    );
    assert_eq!(snapshot(&mut c).await, before);

    // Just under the limit is fine.
    let fits = "x".repeat(LIMIT - 100);
    let put = c.put("fits", fits, None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), 3);

    still_serving(&mut c, 3).await;
}

/// etcd checks the size of what it proposes to the log; reads, read-only
/// txns included, are never proposed, so no size limit applies to them
/// beyond gRPC's own.
#[tokio::test]
async fn reads_are_not_held_to_max_request_bytes() {
    let server = Server::start_with(&[Setting::MaxRequestBytes(1024)]);
    let mut c = connect(server.endpoint()).await;
    c.put("k", "v", None).await.unwrap(); // rev 2

    let big = "x".repeat(2000);
    let got = c.get(big.clone(), None).await.unwrap();
    assert!(got.kvs().is_empty());
    let read_txn = Txn::new()
        .when([Compare::value("k", CompareOp::Equal, big.clone())])
        .and_then([TxnOp::get(big.clone(), None)])
        .or_else([TxnOp::get("k", None)]);
    let resp = c.txn(read_txn).await.unwrap();
    assert!(!resp.succeeded());
    assert_eq!(resp.header().unwrap().revision(), 2);

    still_serving(&mut c, 2).await;
}

#[tokio::test]
async fn conflicting_put_options_and_unknown_leases_are_refused() {
    let server = Server::start();
    let mut c = connect(server.endpoint()).await;
    c.put("k", "v", None).await.unwrap(); // rev 2

    let ignore_value = || Some(PutOptions::new().with_ignore_value());
    let ignore_lease = || Some(PutOptions::new().with_ignore_lease());
    refused!(
        c,
        c.put("k", "x", ignore_value()),
        INVALID_ARGUMENT,
        VALUE_PROVIDED
    );
    let opts = Some(PutOptions::new().with_ignore_lease().with_lease(5));
    refused!(c, c.put("k", "x", opts), INVALID_ARGUMENT, LEASE_PROVIDED);
    refused!(
        c,
        c.put("missing", "", ignore_value()),
        INVALID_ARGUMENT,
        KEY_NOT_FOUND
    );
    refused!(
        c,
        c.put("missing", "x", ignore_lease()),
        INVALID_ARGUMENT,
        KEY_NOT_FOUND
    );
    let leased = || Some(PutOptions::new().with_lease(99));
    refused!(c, c.put("k", "x", leased()), NOT_FOUND, LEASE_NOT_FOUND);
    refused!(c, c.put("new", "x", leased()), NOT_FOUND, LEASE_NOT_FOUND);

    // The same inside a txn: the whole txn is refused, including the ops
    // before the bad one.
    let cases = [
        (
            TxnOp::put("k", "x", ignore_value()),
            INVALID_ARGUMENT,
            VALUE_PROVIDED,
        ),
        (
            TxnOp::put(
                "k",
                "x",
                Some(PutOptions::new().with_ignore_lease().with_lease(5)),
            ),
            INVALID_ARGUMENT,
            LEASE_PROVIDED,
        ),
        (
            TxnOp::put("missing", "", ignore_value()),
            INVALID_ARGUMENT,
            KEY_NOT_FOUND,
        ),
        (
            TxnOp::put("missing", "x", ignore_lease()),
            INVALID_ARGUMENT,
            KEY_NOT_FOUND,
        ),
        (TxnOp::put("k", "x", leased()), NOT_FOUND, LEASE_NOT_FOUND),
    ];
    for (bad, code, msg) in cases {
        let txn = Txn::new().and_then([TxnOp::put("first", "1", None), bad]);
        refused!(c, c.txn(txn), code, msg);
    }

    still_serving(&mut c, 2).await;
}
