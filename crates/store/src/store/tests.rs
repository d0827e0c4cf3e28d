use roster_proto::etcdserverpb::{CompactionRequest, PutRequest};
use roster_proto::roster::{command::Kind, Command};

use super::*;

fn command(kind: Kind) -> Command {
    Command { kind: Some(kind) }
}

fn put(value: u8) -> Command {
    command(Kind::Put(PutRequest {
        key: b"a".to_vec(),
        value: vec![value],
        ..Default::default()
    }))
}

/// A sweep settles at most its budget: stored records are deleted from
/// redb, pending ones forgotten before any checkpoint writes them.
#[test]
fn sweeps_settle_their_budget_from_redb_and_from_pending() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db")).unwrap();
    let stored: Vec<_> = (1..=10).map(|i| (i, put(i as u8))).collect();
    store.apply_logged(&stored).unwrap();
    store.checkpoint().unwrap();
    let pending: Vec<_> = (11..=15).map(|i| (i, put(i as u8))).collect();
    store.apply_logged(&pending).unwrap();
    assert_eq!(store.pending_records(), 5);
    let compact = command(Kind::Compact(CompactionRequest {
        revision: store.revision(),
        physical: false,
    }));
    store.apply_logged(&[(16, compact)]).unwrap();
    // All but the last of the 15 versions: 10 stored, 4 pending.
    assert_eq!(store.record_count().unwrap(), 15);

    let mut steps = Vec::new();
    loop {
        let swept = store.sweep_compacted(4).unwrap();
        steps.push((swept, store.record_count().unwrap()));
        if swept.left == 0 {
            break;
        }
    }
    let s = |settled, left| Swept { settled, left };
    assert_eq!(
        steps,
        [(s(4, 10), 11), (s(4, 6), 7), (s(4, 2), 3), (s(2, 0), 1)]
    );
    assert_eq!(store.pending_records(), 1, "the pending garbage is gone");
    assert_eq!(store.sweep_compacted(4).unwrap(), Swept::default());
    // The checkpoint writes the last version alone.
    store.checkpoint().unwrap();
    assert_eq!(store.record_count().unwrap(), 1);
}
