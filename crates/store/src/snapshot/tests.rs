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

/// `etcdctl -w json snapshot status` on `file`, if etcdctl is installed:
/// the revision and key count it reports.
fn etcdctl_status(file: &Path) -> Option<(i64, i64)> {
    let bin = ["/usr/bin/etcdctl", "/usr/local/bin/etcdctl"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let out = std::process::Command::new(bin)
        .env("ETCDCTL_API", "3")
        .args(["-w", "json", "snapshot", "status"])
        .arg(file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("etcdctl snapshot status: {text}");
    assert!(out.status.success(), "etcdctl snapshot status: {out:?}");
    let field = |name: &str| -> i64 {
        let at = text.find(&format!("\"{name}\":")).expect(name) + name.len() + 3;
        let digits: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().unwrap()
    };
    Some((field("revision"), field("totalKey")))
}

#[test]
fn etcdctl_reads_the_snapshot_as_a_bbolt_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_history(dir.path());
    let file = dir.path().join("snap");
    save_to(&store, &file);
    let len = std::fs::metadata(&file).unwrap().len();
    assert_eq!(len % PAGE_SIZE as u64, HASH_LEN as u64);
    if let Some((revision, keys)) = etcdctl_status(&file) {
        assert_eq!(revision, store.revision());
        // Records, leases, alarms, meta.
        let records = restore(&file, &dir.path().join("r.redb")).unwrap().records;
        assert_eq!(keys as u64, records + 1 + 1 + 3);
    }
}

/// Enough records for a key bucket of many leaves under two branch levels,
/// and values bigger than a page.
#[test]
fn a_big_store_makes_branch_and_overflow_pages_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db")).unwrap();
    let mut cmds: Vec<Command> = (0..20_000)
        .map(|i| put(&format!("/svc/{:05}", i % 7000), &format!("v{i}"), 0))
        .collect();
    cmds.push(put("/big/a", &"a".repeat(3 * PAGE_SIZE), 0));
    cmds.push(put("/big/b", &"b".repeat(PAGE_SIZE - 40), 0));
    cmds.push(put("/svc/00001", "after", 0));
    let numbered: Vec<(u64, Command)> = cmds.into_iter().zip(1..).map(|(c, i)| (i, c)).collect();
    store.apply_logged(&numbered).unwrap();

    let w = store.snapshot().unwrap();
    let key = &w.buckets[etcd::BUCKETS.iter().position(|b| *b == b"key").unwrap()];
    assert!(key.leaves.len() > 200, "{} leaves", key.leaves.len());
    assert!(key.branches.len() > 2, "two levels of branches");
    assert!(key.leaves.iter().any(|l| l.pages > 1), "an overflow page");
    drop(w);

    let file = dir.path().join("snap");
    save_to(&store, &file);
    if let Some((revision, _)) = etcdctl_status(&file) {
        assert_eq!(revision, store.revision());
    }
    let target = dir.path().join("restored.redb");
    let restored = restore(&file, &target).unwrap();
    assert_eq!(restored.records, 20_003);
    let again = Store::open(&target).unwrap();
    assert_eq!(again.revision(), store.revision());
    for rev in [0, 5000, 20_001] {
        assert_eq!(all_keys(&again, rev), all_keys(&store, rev), "at {rev}");
    }
}

/// A file whose hash was made to match after its pages were changed is
/// refused or restored, never a panic.
#[test]
fn changed_pages_with_a_matching_hash_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_history(dir.path());
    let file = dir.path().join("snap");
    save_to(&store, &file);
    let good = std::fs::read(&file).unwrap();
    let body = good.len() - HASH_LEN;
    let bad = dir.path().join("bad");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for case in 0..300 {
        let mut b = good[..body].to_vec();
        for _ in 0..(1 + case % 4) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Mostly headers and elements, where the structure is.
            let page = (seed >> 32) as usize % (body / PAGE_SIZE);
            let off = if case % 2 == 0 {
                seed as usize % 64
            } else {
                seed as usize % PAGE_SIZE
            };
            b[page * PAGE_SIZE + off] ^= 1 << (seed % 8);
        }
        let hash = Sha256::digest(&b);
        b.extend_from_slice(&hash);
        std::fs::write(&bad, &b).unwrap();
        let target = dir.path().join(format!("t{case}.redb"));
        if let Err(e) = restore(&bad, &target) {
            assert!(matches!(e, SnapshotError::Invalid { .. }), "{e}");
            assert!(!target.exists());
        }
    }
}
