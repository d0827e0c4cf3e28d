//! Roster's own bound on txn nesting, which etcd does not have: whatever
//! `--max-txn-ops` allows, txns nest at most 512 deep below the request's
//! own (`txn_decode::MAX_DEPTH`), since every stage that reads a txn
//! recurses once per level. Deeper is refused with etcd's "too many
//! operations", and the node serves on. (The portable test `nesting`
//! holds what etcd does.)

use roster_testkit::{Server, TestNode};

use crate::portable::nesting::{get, nested, txn, TOO_MANY_OPS};
use crate::portable::wire::Conn;

/// `roster_server::txn_decode::MAX_DEPTH`.
const MAX_DEPTH: usize = 512;

#[tokio::test]
async fn nesting_is_bounded_whatever_the_op_budget() {
    // Roster only, whatever ROSTER_TEST_AGAINST_ETCD says.
    let node = TestNode::builder().config(|c| c.max_txn_ops = 1_000_000);
    let mut node = Server::Roster(node.start());
    let mut conn = Conn::open(&node).await;
    let end = txn(&mut conn, &nested(MAX_DEPTH, "deepest")).await;
    assert_eq!(end.code, 0, "{end:?}");
    for depth in [MAX_DEPTH + 1, 100_000] {
        let end = txn(&mut conn, &nested(depth, "too-deep")).await;
        assert_eq!(
            (end.code, end.message.as_str()),
            (3, TOO_MANY_OPS),
            "{depth}"
        );
    }
    assert_eq!(get(&mut conn, "too-deep").await, None);
    // Replayed from the log, as deep as it was accepted.
    node.restart();
    let mut conn = Conn::open(&node).await;
    assert_eq!(get(&mut conn, "deepest").await, Some(MAX_DEPTH.to_string()));
}
