//! Group commit: concurrent writers share fsyncs, and every one of them is
//! answered with its own, distinct revision.

use std::collections::BTreeSet;

use roster_proto::etcdserverpb::{PutRequest, RangeRequest};
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

async fn put(node: &Node, key: String) -> i64 {
    let put = PutRequest {
        key: key.into_bytes(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    match node.propose(CommandKind::Put(put)).await.unwrap() {
        CommandResponse::Put(r) => r.header.unwrap().revision,
        other => panic!("unexpected {other:?}"),
    }
}

/// A lone writer commits on its own thread, concurrent ones queue for the
/// writer thread; mixed, every write gets the next revision, the one it
/// was answered with is the one stored, and all of it survives a restart.
async fn lone_and_concurrent_writers() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(Config::new(dir.path())).unwrap();
    let mut answered = Vec::new();
    for i in 0..20 {
        answered.push((format!("lone-{i}"), put(&node, format!("lone-{i}")).await));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let node = node.clone();
        tasks.spawn(async move {
            // Every tenth task writes a few in a row, so lone and batched
            // commits interleave.
            let mut out = Vec::new();
            for j in 0..if i % 10 == 0 { 5 } else { 1 } {
                let key = format!("many-{i}-{j}");
                out.push((key.clone(), put(&node, key).await));
            }
            out
        });
    }
    while let Some(out) = tasks.join_next().await {
        answered.extend(out.unwrap());
    }
    let revisions: BTreeSet<i64> = answered.iter().map(|(_, r)| *r).collect();
    assert_eq!(
        revisions.len(),
        answered.len(),
        "a revision was handed out twice"
    );
    assert_eq!(revisions.first(), Some(&2));
    assert_eq!(revisions.last(), Some(&(answered.len() as i64 + 1)));
    node.stop();
    drop(node);

    let node = Node::open(Config::new(dir.path())).unwrap();
    for (key, rev) in &answered {
        let range = RangeRequest {
            key: key.clone().into_bytes(),
            ..Default::default()
        };
        let got = node.store.range(&range).unwrap();
        assert_eq!(
            got.kvs.first().map(|kv| kv.mod_revision),
            Some(*rev),
            "{key} after restart"
        );
    }
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_and_concurrent_writers_on_a_multi_thread_runtime() {
    lone_and_concurrent_writers().await;
}

/// A current-thread runtime cannot spare its thread for a sync: every
/// proposal goes through the writer thread.
#[tokio::test(flavor = "current_thread")]
async fn lone_and_concurrent_writers_on_a_current_thread_runtime() {
    lone_and_concurrent_writers().await;
}
