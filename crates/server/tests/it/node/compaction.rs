//! Compaction on a running node: what a compaction drops is deleted from
//! storage in batches beside the writes, and a physical compaction is
//! answered only once storage holds none of it.

use std::time::Duration;

use roster_proto::etcdserverpb::{CompactionRequest, PutRequest, RequestOp, TxnRequest};
use roster_server::{Config, Node};
use roster_store::{CommandKind, CommandResponse, SWEEP_BATCH};

/// Distinct keys, each written this many times: enough dropped versions
/// for several sweep batches.
const KEYS: usize = 100;
const VERSIONS: usize = 2 * SWEEP_BATCH / KEYS + 2;

/// Writes every key once per txn, `VERSIONS` times; returns the revision.
async fn write_versions(node: &Node) -> i64 {
    let mut rev = 0;
    for round in 0..VERSIONS {
        let success = (0..KEYS)
            .map(|k| RequestOp {
                request: Some(roster_proto::etcdserverpb::request_op::Request::RequestPut(
                    PutRequest {
                        key: format!("k{k:03}").into_bytes(),
                        value: round.to_string().into_bytes(),
                        ..Default::default()
                    },
                )),
            })
            .collect();
        let txn = TxnRequest {
            success,
            ..Default::default()
        };
        match node.propose(CommandKind::Txn(txn)).await.unwrap() {
            CommandResponse::Txn(r) => rev = r.header.unwrap().revision,
            other => panic!("unexpected {other:?}"),
        }
    }
    rev
}

async fn compact(node: &Node, revision: i64, physical: bool) {
    let c = CompactionRequest { revision, physical };
    match node.propose(CommandKind::Compact(c)).await.unwrap() {
        CommandResponse::Compact(_) => {}
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_physical_compaction_is_answered_once_its_records_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(Config::new(dir.path())).unwrap();
    let rev = write_versions(&node).await;
    assert!(node.store.record_count().unwrap() >= (KEYS * VERSIONS) as u64);
    tokio::time::timeout(Duration::from_secs(30), compact(&node, rev, true))
        .await
        .expect("a physical compaction answered within 30 s");
    // Every version but each key's last was dropped, in more than two
    // sweep batches, and all of them are gone by the answer.
    assert_eq!(node.store.record_count().unwrap(), KEYS as u64);
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_is_answered_at_once_and_swept_beside_writes() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(Config::new(dir.path())).unwrap();
    let rev = write_versions(&node).await;
    compact(&node, rev, false).await;
    // Writes go on while the sweep runs.
    let put = PutRequest {
        key: b"k000".to_vec(),
        value: b"after".to_vec(),
        ..Default::default()
    };
    node.propose(CommandKind::Put(put)).await.unwrap();
    // The sweep has no event to wait for: poll, up to 10 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let records = node.store.record_count().unwrap();
        // The last version of each key, and the put after the compaction.
        if records == KEYS as u64 + 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{records} records 10 s after the compaction"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.stop();
}
