use roster_proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmType, CompactionRequest, LeaseGrantRequest,
    PutRequest, RangeRequest,
};
use roster_proto::roster::{command::Kind, Command};

use super::*;

fn command(kind: Kind) -> Command {
    Command { kind: Some(kind) }
}

fn put(key: &str, value: &str, lease: i64) -> Command {
    command(Kind::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        lease,
        ..Default::default()
    }))
}

/// A store with history, a compaction, a lease with a key on it, some of it
/// checkpointed and some only applied.
fn store_with_history(dir: &Path) -> Store {
    let store = Store::open(&dir.join("db")).unwrap();
    let mut cmds = vec![command(Kind::LeaseGrant(LeaseGrantRequest {
        ttl: 60,
        id: 9,
    }))];
    for i in 0..300 {
        cmds.push(put(&format!("k{:03}", i % 50), &format!("v{i}"), 0));
    }
    cmds.push(put("leased", "x", 9));
    cmds.push(command(Kind::Alarm(AlarmRequest {
        action: AlarmAction::Activate as i32,
        member_id: 5,
        alarm: AlarmType::Corrupt as i32,
    })));
    cmds.push(command(Kind::Compact(CompactionRequest {
        revision: 200,
        physical: false,
    })));
    let (first, rest) = cmds.split_at(150);
    let number = |from: u64, c: &[Command]| -> Vec<(u64, Command)> {
        c.iter().cloned().zip(from..).map(|(c, i)| (i, c)).collect()
    };
    store.apply_logged(&number(1, first)).unwrap();
    store.checkpoint().unwrap();
    store.apply_logged(&number(151, rest)).unwrap();
    store
}

fn all_keys(store: &Store, revision: i64) -> Vec<(Vec<u8>, Vec<u8>, i64, i64)> {
    let r = store
        .range(&RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision,
            ..Default::default()
        })
        .unwrap();
    r.kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value, kv.mod_revision, kv.lease))
        .collect()
}

fn save_to(store: &Store, path: &Path) {
    let mut f = File::create(path).unwrap();
    save(store, &mut f).unwrap();
}

#[test]
fn a_restored_store_has_the_same_keys_history_and_leases() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_history(dir.path());
    let file = dir.path().join("snap");
    save_to(&store, &file);

    let target = dir.path().join("restored.redb");
    let restored = restore(&file, &target).unwrap();
    assert_eq!(restored.revision, store.revision());
    assert_eq!(restored.applied_index, store.applied_index());
    assert_eq!(restored.leases, 1);
    let again = Store::open(&target).unwrap();
    assert_eq!(again.revision(), store.revision());
    assert_eq!(again.compact_revision(), 200);
    assert_eq!(again.applied_index(), store.applied_index());
    for rev in [0, 200, 250] {
        assert_eq!(all_keys(&again, rev), all_keys(&store, rev), "at {rev}");
    }
    assert_eq!(again.leases(), store.leases());
    assert_eq!(again.alarms(AlarmType::None as i32).len(), 1);
    assert_eq!(again.alarms(0), store.alarms(0));
    assert!(
        again
            .range(&RangeRequest {
                key: b"k001".to_vec(),
                revision: 100,
                ..Default::default()
            })
            .is_err(),
        "history below the compaction stays compacted"
    );
}

#[test]
fn small_pieces_make_the_same_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_history(dir.path());
    let whole = {
        let mut w = store.snapshot().unwrap();
        let mut out = Vec::new();
        while w.fill(&mut out, usize::MAX).unwrap() {}
        out
    };
    assert_eq!(whole.len() as u64 % ALIGN, 0, "padded for etcdctl");
    let mut w = store.snapshot().unwrap();
    let mut pieces = Vec::new();
    let mut buf = Vec::new();
    while w.fill(&mut buf, 100).unwrap() {
        assert!(buf.len() < 100 + 200, "a piece is about the size asked");
        pieces.extend_from_slice(&buf);
        buf.clear();
    }
    assert_eq!(pieces, whole);
}

/// Whatever is wrong with the file, restore refuses it and leaves no
/// database behind.
#[test]
fn damaged_or_truncated_snapshots_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_history(dir.path());
    let file = dir.path().join("snap");
    save_to(&store, &file);
    let good = std::fs::read(&file).unwrap();
    let target = dir.path().join("out.redb");
    let bad = dir.path().join("bad");
    let step = (good.len() / 97).max(1);
    let mut cases: Vec<Vec<u8>> = Vec::new();
    for at in (0..good.len()).step_by(step).chain([good.len() - 1]) {
        let mut flipped = good.clone();
        flipped[at] ^= 0x40;
        cases.push(flipped);
        cases.push(good[..at].to_vec());
    }
    let mut longer = good.clone();
    longer.push(0);
    cases.push(longer);
    // Another 512 zeros before the hash, with the hash made to match.
    let body = good.len() - HASH_LEN;
    let mut padded = good[..body].to_vec();
    padded.resize(body + 512, 0);
    let hash = Sha256::digest(&padded);
    padded.extend_from_slice(&hash);
    cases.push(padded);
    for case in cases {
        std::fs::write(&bad, &case).unwrap();
        let err = restore(&bad, &target).expect_err("a damaged snapshot restored");
        assert!(
            matches!(err, SnapshotError::Invalid { .. }),
            "{} bytes: {err}",
            case.len()
        );
        assert!(!target.exists(), "a refused restore left a database");
        assert!(!target.with_extension("restoring").exists());
    }
    restore(&file, &target).unwrap();
    let err = restore(&file, &target).expect_err("restored over a database");
    assert!(matches!(err, SnapshotError::Exists { .. }), "{err}");
}
