//! Group commit: concurrent writers share fsyncs, and every one of them is
//! answered with its own, distinct revision.

use std::collections::BTreeSet;

use roster_proto::etcdserverpb::PutRequest;
use roster_server::{Config, Node};
use roster_store::{CommandKind, CommandResponse};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_share_batches() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(Config::new(dir.path())).unwrap();
    const WRITERS: usize = 200;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..WRITERS {
        let node = node.clone();
        tasks.spawn(async move {
            let put = PutRequest {
                key: format!("k{i}").into_bytes(),
                value: b"v".to_vec(),
                ..Default::default()
            };
            match node.propose(CommandKind::Put(put)).await.unwrap() {
                CommandResponse::Put(r) => r.header.unwrap().revision,
                other => panic!("unexpected {other:?}"),
            }
        });
    }
    let mut revisions = BTreeSet::new();
    while let Some(rev) = tasks.join_next().await {
        assert!(
            revisions.insert(rev.unwrap()),
            "a revision was handed out twice"
        );
    }
    // Revisions 2..=201: one per put, no gap.
    assert_eq!(revisions.first(), Some(&2));
    assert_eq!(revisions.last(), Some(&(WRITERS as i64 + 1)));
    let batches = node.durable_commits();
    eprintln!("{WRITERS} concurrent puts took {batches} commits");
    assert!(
        batches < WRITERS as u64 / 2,
        "{WRITERS} concurrent puts took {batches} commits: writes are not being batched"
    );
    node.stop();
}

/// After a write, silence: the writer checkpoints the store without
/// waiting for the next write, so a crash now would replay nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_writer_checkpoints_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(Config::new(dir.path())).unwrap();
    let before = node.store.batches_committed();
    let put = PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    node.propose(CommandKind::Put(put)).await.unwrap();
    // Checkpoints are the store's only durable commits now; one is due
    // 100 ms after the write.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while node.store.batches_committed() == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint within 5 s of the last write"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    node.stop();
}
