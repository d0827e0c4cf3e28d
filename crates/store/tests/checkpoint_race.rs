//! Readers while writes are pending and checkpoints write them out: for a
//! moment after a checkpoint's commit a record is both pending and stored,
//! and readers must see it once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use roster_proto::etcdserverpb::{PutRequest, RangeRequest};
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
                let (events, last) = store.events(1, &all, usize::MAX).unwrap();
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
        .events(1, &KeyRange::new(&[0], &[0]), usize::MAX)
        .unwrap();
    assert_eq!(events.len(), 3000);
    assert_eq!(last, 3001);
}
