//! Readers while writes are pending and checkpoints write them out: for a
//! moment after a checkpoint's commit a record is both pending and stored,
//! and readers must see it once. Checkpoints also run beside batches being
//! applied (see `store::checkpoint`), so a record can be pending, frozen
//! for a checkpoint, or stored.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use roster_proto::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest};
use roster_proto::roster::{command::Kind, Command};
use roster_store::index::KeyRange;
use roster_store::Store;

fn put(i: u64) -> Command {
    Command {
        kind: Some(Kind::Put(PutRequest {
            key: format!("k{}", i % 7).into_bytes(),
            value: i.to_string().into_bytes(),
            ..Default::default()
        })),
    }
}

#[test]
fn readers_see_each_record_once_across_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("db")).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let all = KeyRange::new(&[0], &[0]);
            let mut reads = 0u64;
            while !done.load(Ordering::Relaxed) {
                let (events, last) = store.events(1, &all, usize::MAX, usize::MAX).unwrap();
                let revs: Vec<i64> = events
                    .iter()
                    .map(|e| e.kv.as_ref().unwrap().mod_revision)
                    .collect();
                assert!(
                    revs.windows(2).all(|w| w[0] < w[1]),
                    "events out of order or repeated: {revs:?}"
                );
                assert_eq!(revs.last().copied().unwrap_or(last), last);
                // Every key's latest value is readable, pending or stored.
                let range = RangeRequest {
                    key: vec![0],
                    range_end: vec![0],
                    ..Default::default()
                };
                let kvs = store.range(&range).unwrap().kvs;
                assert!(kvs.len() <= 7);
                reads += 1;
            }
            reads
        })
    };
    for i in 1..=3000u64 {
        store.apply_logged(&[(i, put(i))]).unwrap();
        if i % 5 == 0 {
            store.checkpoint().unwrap();
        }
    }
    done.store(true, Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(reads > 0);
    let (events, last) = store
        .events(1, &KeyRange::new(&[0], &[0]), usize::MAX, usize::MAX)
        .unwrap();
    assert_eq!(events.len(), 3000);
    assert_eq!(last, 3001);
}

fn compact(revision: i64) -> Command {
    Command {
        kind: Some(Kind::Compact(CompactionRequest {
            revision,
            physical: false,
        })),
    }
}

fn everything() -> RangeRequest {
    RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    }
}

/// Put `i` writes key `k{i % 7}` with value `i` at revision `i + 1`.
fn check_put(kv: &roster_proto::mvccpb::KeyValue) {
    let i: i64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
    assert_eq!(kv.mod_revision, i + 1, "{kv:?}");
    assert_eq!(kv.key, format!("k{}", i % 7).into_bytes(), "{kv:?}");
}

#[test]
fn checkpoints_beside_applies_and_compactions_lose_nothing() {
    // At least this many puts, and as many more as it takes to overlap
    // this many checkpoints.
    const PUTS: i64 = 4000;
    const CHECKPOINTS: u64 = 30;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = Arc::new(Store::open(&path).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let checkpoints = Arc::new(AtomicU64::new(0));
    let checkpointer = {
        let (store, done, checkpoints) = (store.clone(), done.clone(), checkpoints.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                store.checkpoint().unwrap();
                // Records of a compaction that were frozen are stored now.
                store.finish_compaction().unwrap();
                checkpoints.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let all = KeyRange::new(&[0], &[0]);
            while !done.load(Ordering::Relaxed) {
                for kv in store.range(&everything()).unwrap().kvs {
                    check_put(&kv);
                }
                // Every revision above the compacted one, once and in order,
                // from wherever each record is held.
                let from = store.compact_revision() + 1;
                match store.events(from.max(1), &all, usize::MAX, usize::MAX) {
                    Ok((events, last)) => {
                        let revs: Vec<i64> = events
                            .iter()
                            .inspect(|e| check_put(e.kv.as_ref().unwrap()))
                            .map(|e| e.kv.as_ref().unwrap().mod_revision)
                            .collect();
                        let want: Vec<i64> = (from.max(2)..=last).collect();
                        assert_eq!(revs, want);
                    }
                    // A compaction between the two calls.
                    Err(roster_store::StoreError::Compacted) => {}
                    Err(e) => panic!("events: {e}"),
                }
            }
        })
    };
    let mut log_index = 0;
    let mut compacted = 1;
    let mut i = 0;
    while i < PUTS || checkpoints.load(Ordering::Relaxed) < CHECKPOINTS {
        i += 1;
        log_index += 1;
        store.apply_logged(&[(log_index, put(i as u64))]).unwrap();
        if i % 50 == 0 {
            log_index += 1;
            compacted = i - 2;
            store
                .apply_logged(&[(log_index, compact(compacted))])
                .unwrap();
            store.finish_compaction().unwrap();
        }
    }
    done.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    checkpointer.join().unwrap();
    store.checkpoint().unwrap();
    store.finish_compaction().unwrap();

    // Above the compacted revision every put's record, and below it each
    // key's last one.
    let last = i + 1;
    let records = (last - compacted) as u64 + 7;
    assert_eq!(store.record_count().unwrap(), records);
    let latest = store.range(&everything()).unwrap().kvs;
    assert_eq!(store.applied_index(), log_index);
    drop(store);

    // Opening redoes any cleanup a crash could have lost: nothing is left
    // for it, and nothing is missing.
    let store = Store::open(&path).unwrap();
    assert_eq!(store.record_count().unwrap(), records);
    assert_eq!(store.revision(), last);
    assert_eq!(store.applied_index(), log_index);
    assert_eq!(store.range(&everything()).unwrap().kvs, latest);
}
