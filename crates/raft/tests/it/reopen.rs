//! What a [`LogStore`] holds survives closing it: the suite checks one
//! store's answers, these check a reopened store gives the same ones.

use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, EntryPayload, LogId, RaftLogReader, Vote};
use roster_raft::types::{Batch, RaftEntry};
use roster_raft::LogStore;

fn id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn command(term: u64, index: u64) -> RaftEntry {
    RaftEntry {
        log_id: id(term, index),
        payload: EntryPayload::Normal(Batch {
            commands: vec![format!("k{index}=v").into_bytes()],
        }),
    }
}

async fn ids(store: &mut LogStore) -> Vec<u64> {
    let entries = store.try_get_log_entries(0..).await.expect("reads");
    entries.iter().map(|e| e.log_id.index).collect()
}

fn reopen(dir: &Path) -> LogStore {
    LogStore::open(dir).expect("the store reopens")
}

/// The store in `dir`, opened, with entries 0, 1 and 2 of term 1 appended.
async fn with_three_entries(dir: &Path) -> LogStore {
    let mut s = reopen(dir);
    s.blocking_append((0..3).map(|i| command(1, i)))
        .await
        .unwrap();
    s
}

#[tokio::test]
async fn vote_entries_committed_and_purge_survive_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    {
        let mut s = reopen(dir);
        s.save_vote(&Vote::new(3, 1)).await.unwrap();
        s.blocking_append((0..10).map(|i| command(1 + i / 5, i)))
            .await
            .unwrap();
        s.truncate(id(2, 8)).await.unwrap();
        s.blocking_append([command(3, 8)]).await.unwrap();
        s.save_committed(Some(id(3, 8))).await.unwrap();
        s.purge(id(1, 3)).await.unwrap();
    }
    let mut s = reopen(dir);
    assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
    assert_eq!(s.read_committed().await.unwrap(), Some(id(3, 8)));
    let state = s.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(id(1, 3)));
    assert_eq!(state.last_log_id, Some(id(3, 8)));
    assert_eq!(ids(&mut s).await, vec![4, 5, 6, 7, 8]);
    let e = s.try_get_log_entries(8..9).await.unwrap();
    assert_eq!(
        format!("{:?}", e[0].payload),
        format!("{:?}", command(3, 8).payload)
    );
}

#[tokio::test]
async fn committed_is_clamped_to_the_last_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = with_three_entries(tmp.path()).await;
    s.save_committed(Some(id(1, 9))).await.unwrap();
    assert_eq!(s.read_committed().await.unwrap(), Some(id(1, 2)));
}

#[tokio::test]
async fn a_purge_past_the_last_entry_starts_the_log_over() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    {
        let mut s = with_three_entries(dir).await;
        // A snapshot from a leader far ahead covered up to entry 20.
        s.purge(id(2, 20)).await.unwrap();
        s.blocking_append([command(2, 21)]).await.unwrap();
    }
    let mut s = reopen(dir);
    let state = s.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(id(2, 20)));
    assert_eq!(state.last_log_id, Some(id(2, 21)));
    assert_eq!(ids(&mut s).await, vec![21]);
    // Only the current log directory is left.
    let dirs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("log-"))
        .collect();
    assert_eq!(dirs, vec!["log-1".to_string()]);
}

#[tokio::test]
async fn an_append_that_leaves_a_hole_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = with_three_entries(tmp.path()).await;
    assert!(s.blocking_append([command(1, 5)]).await.is_err());
}

#[tokio::test]
async fn leftovers_of_an_interrupted_write_are_deleted_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    drop(with_three_entries(dir).await);
    // A restart that crashed before its state write, and a state write
    // that crashed before its rename.
    std::fs::create_dir(dir.join("log-1")).unwrap();
    std::fs::write(dir.join("log-1/junk"), b"x").unwrap();
    std::fs::write(dir.join("raft-state.json.tmp"), b"{").unwrap();
    let mut s = reopen(dir);
    assert_eq!(ids(&mut s).await, vec![0, 1, 2]);
    assert!(!dir.join("log-1").exists());
    assert!(!dir.join("raft-state.json.tmp").exists());
}
