use roster_proto::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest};
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
    // The first sweep also goes over the index's one key.
    let s = |pruned, settled, left| Swept {
        pruned,
        settled,
        left,
        pruning: false,
    };
    assert_eq!(
        steps,
        [
            (s(1, 4, 10), 11),
            (s(0, 4, 6), 7),
            (s(0, 4, 2), 3),
            (s(0, 2, 0), 1)
        ]
    );
    assert_eq!(store.pending_records(), 1, "the pending garbage is gone");
    assert_eq!(store.sweep_compacted(4).unwrap(), Swept::default());
    // The checkpoint writes the last version alone.
    store.checkpoint().unwrap();
    assert_eq!(store.record_count().unwrap(), 1);
}

fn put_key(key: u8, value: u8) -> Command {
    command(Kind::Put(PutRequest {
        key: vec![b'k', key],
        value: vec![value],
        ..Default::default()
    }))
}

fn compact_to(revision: i64) -> Command {
    command(Kind::Compact(CompactionRequest {
        revision,
        physical: false,
    }))
}

/// Keys with their values.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Every key with its value, read at `revision` (0: the newest).
fn all_at(store: &Store, revision: i64) -> Result<Pairs, StoreError> {
    let r = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        revision,
        ..Default::default()
    };
    let kvs = store.range(&r)?.kvs;
    Ok(kvs.into_iter().map(|kv| (kv.key, kv.value)).collect())
}

/// A compaction is refused to reads below it at once; the index drops what
/// it passed a piece at a time, writes and a newer compaction coming
/// between pieces, and reads at or above it see the same store throughout.
#[test]
fn the_index_drops_a_compactions_history_a_piece_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("db")).unwrap();
    store.prune_chunk = 3;
    let mut next = 0;
    let mut apply = |store: &Store, cmd: Command| {
        next += 1;
        let applied = store.apply_logged(&[(next, cmd)]).unwrap();
        assert!(applied[0].response.is_ok());
    };
    // Ten keys, three versions each.
    for round in 0..3 {
        for k in 0..10 {
            apply(&store, put_key(k, round));
        }
    }
    let at = store.revision();
    let before = all_at(&store, at).unwrap();
    apply(&store, compact_to(at));
    assert!(matches!(all_at(&store, at - 1), Err(StoreError::Compacted)));
    // Nothing dropped yet: 30 versions, 20 of them passed.
    assert_eq!(store.record_count().unwrap(), 30);

    let sweep = |store: &Store| store.sweep_compacted(usize::MAX).unwrap();
    let first = sweep(&store);
    assert_eq!((first.pruned, first.settled, first.pruning), (3, 6, true));
    assert_eq!(all_at(&store, at).unwrap(), before);
    // A write to a key gone over and one to a key still ahead.
    apply(&store, put_key(0, 9));
    apply(&store, put_key(9, 9));
    let second = sweep(&store);
    assert_eq!(
        (second.pruned, second.settled, second.pruning),
        (3, 6, true)
    );
    assert_eq!(all_at(&store, at).unwrap(), before);
    // A newer compaction keeps the cursor: keys 6 to 9 are pruned at the
    // new revision on this lap, then the pass goes round to key 5 again,
    // where key 0's older version goes too.
    let newer = store.revision();
    apply(&store, compact_to(newer));
    let mut steps = vec![];
    loop {
        let swept = sweep(&store);
        steps.push((swept.pruned, swept.settled, swept.pruning));
        if swept.done() {
            break;
        }
    }
    // Keys 6 to 8: two each; 9: its three older versions; 0 to 2: key
    // 0's older one; 3 to 5: nothing.
    assert_eq!(
        steps,
        [(3, 6, true), (1, 3, true), (3, 1, true), (3, 0, false)]
    );
    assert_eq!(store.record_count().unwrap(), 10);
    let mut now = before.clone();
    now[0].1 = vec![9];
    now[9].1 = vec![9];
    assert_eq!(all_at(&store, newer).unwrap(), now);
    assert_eq!(sweep(&store), Swept::default());

    // Compactions after every piece: the pass goes on round the keys, and
    // every key's history goes within a lap.
    for k in 0..10 {
        apply(&store, put_key(k, 7));
    }
    assert_eq!(store.record_count().unwrap(), 20);
    for _ in 0..4 {
        apply(&store, put_key(0, 8));
        apply(&store, compact_to(store.revision()));
        assert!(sweep(&store).pruning);
    }
    // Keys 1 to 9 hold one version each; key 0, pruned at the first
    // compaction, its value then and the three puts after.
    assert_eq!(store.record_count().unwrap(), 9 + 4);
    assert_eq!(all_at(&store, 0).unwrap()[9].1, vec![7]);
}

/// Below the compacted revision a key has no value, as a Range there is
/// refused, whether or not the index has dropped that history yet.
#[test]
fn no_value_below_the_compacted_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db")).unwrap();
    let applied = store
        .apply_logged(&[(1, put_key(1, 1)), (2, put_key(1, 2))])
        .unwrap();
    assert!(applied.iter().all(|a| a.response.is_ok()));
    let at = store.revision();
    let key = [b'k', 1];
    assert_eq!(store.kv_at(&key, at - 1).unwrap().unwrap().value, [1]);
    store.apply_logged(&[(3, compact_to(at))]).unwrap();
    // The pass over the index has not run: the old version is still there.
    assert!(store.state.read().pruning.is_some());
    assert_eq!(store.kv_at(&key, at - 1).unwrap(), None);
    assert_eq!(store.kv_at(&key, at).unwrap().unwrap().value, [2]);
    store.finish_compaction().unwrap();
    assert_eq!(store.kv_at(&key, at - 1).unwrap(), None);
}

/// The consensus mark survives a reopen exactly when the applied state it
/// describes does: with the checkpoint that wrote the batch, not before.
/// An entry with no commands still moves the applied index and the mark.
#[test]
fn the_mark_is_durable_with_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let store = Store::open(&path).unwrap();
    assert_eq!(store.mark(), None);
    store
        .apply_marked(1, &[(1, put(1)), (1, put(2))], b"one")
        .unwrap();
    store.checkpoint().unwrap();
    store.apply_marked(2, &[], b"two").unwrap();
    assert_eq!(store.applied_index(), 2);
    store.apply_marked(3, &[(3, put(3))], b"three").unwrap();
    assert_eq!(store.mark().as_deref(), Some(&b"three"[..]));
    drop(store);

    let store = Store::open(&path).unwrap();
    assert_eq!(store.mark().as_deref(), Some(&b"one"[..]));
    assert_eq!((store.applied_index(), store.revision()), (1, 3));
    store.apply_marked(2, &[], b"two").unwrap();
    store.checkpoint().unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.mark().as_deref(), Some(&b"two"[..]));
    assert_eq!(store.applied_index(), 2);

    // A snapshot does not carry the mark; an install records the one given.
    let file = dir.path().join("snap");
    crate::snapshot::save(&store, &mut std::fs::File::create(&file).unwrap()).unwrap();
    let other = Store::open(&dir.path().join("other")).unwrap();
    other.install_marked(&file, Some(b"installed")).unwrap();
    assert_eq!(other.mark().as_deref(), Some(&b"installed"[..]));
    assert_eq!(other.revision(), 3);
    drop(other);
    let other = Store::open(&dir.path().join("other")).unwrap();
    assert_eq!(other.mark().as_deref(), Some(&b"installed"[..]));
}
