use std::cell::Cell;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use roster_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use roster_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use roster_proto::etcdserverpb::{
    request_op, response_op, CompactionRequest, Compare, DeleteRangeRequest, PutRequest, RequestOp,
    TxnRequest, TxnResponse,
};
use roster_proto::roster::{command::Kind, Command};

use super::*;
use crate::apply::read_txn;

/// Keys walked per piece in these tests: many pieces for a few keys.
const CHUNK: usize = 3;

fn key(i: u64) -> Vec<u8> {
    format!("k{i:02}").into_bytes()
}

fn put(k: u64, value: &str) -> Command {
    Command {
        kind: Some(Kind::Put(PutRequest {
            key: key(k),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

fn delete(k: u64) -> Command {
    Command {
        kind: Some(Kind::DeleteRange(DeleteRangeRequest {
            key: key(k),
            ..Default::default()
        })),
    }
}

fn compact(revision: i64) -> Command {
    Command {
        kind: Some(Kind::Compact(CompactionRequest {
            revision,
            physical: false,
        })),
    }
}

/// A store whose ranges walk [`CHUNK`] keys at a time, and its next log
/// index.
struct Fixture {
    store: Store,
    next: Cell<u64>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db")).unwrap();
        store.scan_chunk = CHUNK;
        Fixture {
            store,
            next: Cell::new(1),
            _dir: dir,
        }
    }

    /// A fixture with keys 0 to `keys - 1` put with the value "before".
    fn loaded(keys: u64) -> Fixture {
        let f = Fixture::new();
        for i in 0..keys {
            f.apply(put(i, "before"));
        }
        f
    }

    /// Between the pieces of a read of keys 0 to 19 at `at`: overwrites a
    /// key ahead of the walk, deletes one, adds one; the `first` time,
    /// compacts to `at` too, which keeps all the read sees.
    fn write_between(&self, at: i64, first: bool) {
        assert!(self.apply(put(19, "after")));
        assert!(self.apply(delete(18)));
        assert!(self.apply(put(25, "new")));
        if first {
            assert!(self.apply(compact(at)));
            self.store.finish_compaction().unwrap();
        }
    }

    /// Applies `cmd` as the next log entry; false if it was refused.
    fn apply(&self, cmd: Command) -> bool {
        let index = self.next.replace(self.next.get() + 1);
        let applied = self.store.apply_logged(&[(index, cmd)]).unwrap();
        applied[0].response.is_ok()
    }
}

fn span(start: &[u8], end: &[u8]) -> RangeRequest {
    RangeRequest {
        key: start.to_vec(),
        range_end: end.to_vec(),
        ..Default::default()
    }
}

/// Reads in pieces, insisting that the read is not started again, and
/// calls `between` after each piece but the last has let go of the lock,
/// before it reads its values from storage.
fn in_pieces(store: &Store, r: &RangeRequest, mut between: impl FnMut()) -> RangeResponse {
    let mut scan = store.range_scan(r).unwrap();
    let walk = scan.walk.as_mut().expect("a span");
    loop {
        let tx = walk
            .walk_piece(store)
            .unwrap()
            .expect("read without a restart");
        if walk.after.is_some() {
            between();
        }
        walk.read_stored(&tx).unwrap();
        if let Some(response) = walk.answer() {
            return response;
        }
    }
}

/// Every request shape the rules treat differently, over spans that cover
/// several pieces.
fn requests(old: i64) -> Vec<RangeRequest> {
    let all = span(&[0], &[0]);
    let with = |f: &dyn Fn(&mut RangeRequest)| {
        let mut r = all.clone();
        f(&mut r);
        r
    };
    vec![
        all.clone(),
        span(b"k1", b"k2"),
        span(b"k05", &[0]),
        span(b"k05", b"k05"),
        span(b"k30", b"k10"),
        with(&|r| r.revision = old),
        with(&|r| r.limit = 5),
        with(&|r| r.limit = 40),
        with(&|r| r.count_only = true),
        with(&|r| {
            r.count_only = true;
            r.revision = old;
        }),
        with(&|r| r.keys_only = true),
        with(&|r| {
            r.limit = 4;
            r.sort_order = SortOrder::Descend as i32;
            r.sort_target = SortTarget::Mod as i32;
        }),
        with(&|r| {
            r.limit = 3;
            r.sort_target = SortTarget::Value as i32;
        }),
        with(&|r| {
            r.keys_only = true;
            r.sort_order = SortOrder::Ascend as i32;
            r.sort_target = SortTarget::Value as i32;
        }),
        with(&|r| {
            r.limit = 2;
            r.min_mod_revision = old;
        }),
        with(&|r| r.max_create_revision = old),
        with(&|r| {
            r.revision = old;
            r.min_create_revision = 10;
            r.max_mod_revision = old - 2;
        }),
    ]
}

/// A read in pieces answers what one walk under the lock answers, whether
/// the values are in redb, frozen for a checkpoint, or pending.
#[test]
fn pieces_answer_as_one_walk() {
    let f = Fixture::new();
    for i in 0..30 {
        f.apply(put(i, &format!("first {i}")));
    }
    f.store.checkpoint().unwrap();
    let old = f.store.revision();
    for i in (0..30).step_by(3) {
        f.apply(put(i, &format!("second {}", 30 - i)));
    }
    for i in (1..30).step_by(7) {
        f.apply(delete(i));
    }
    // These go to redb's ...
    let one_generation = f.store.checkpointing.lock();
    let frozen = {
        let _writing = f.store.writing.lock();
        f.store.freeze()
    };
    // ... while these are pending.
    for i in (2..40).step_by(4) {
        f.apply(put(i, &format!("third {i}")));
    }
    let mut layouts = 0;
    for r in requests(old) {
        let one_walk = f.store.with_view(|v| v.range(&r)).unwrap();
        assert_eq!(in_pieces(&f.store, &r, || ()), one_walk, "{r:?}");
        assert_eq!(f.store.range(&r).unwrap(), one_walk, "{r:?}");
        layouts += 1;
    }
    txns_answer_as_one_read(&f.store, old);
    f.store.write_out(&frozen).unwrap();
    drop(one_generation);
    for r in requests(old) {
        let one_walk = f.store.with_view(|v| v.range(&r)).unwrap();
        assert_eq!(in_pieces(&f.store, &r, || ()), one_walk, "{r:?}");
    }
    txns_answer_as_one_read(&f.store, old);
    // The requests found something to tell apart.
    let all = f.store.range(&span(&[0], &[0])).unwrap();
    assert_eq!(all.count, 29);
    assert!(layouts > 10);
}

/// Writes between the pieces are not seen; the answer is the store at the
/// revision the read began at.
#[test]
fn writes_between_pieces_are_not_seen() {
    let f = Fixture::loaded(20);
    let at = f.store.revision();
    let r = span(&[0], &[0]);
    let mut pieces = 0;
    let read = in_pieces(&f.store, &r, || {
        f.write_between(at, pieces == 0);
        pieces += 1;
    });
    assert!(pieces >= 6, "{pieces} pieces");
    assert_eq!(read.header.unwrap().revision, at);
    assert_eq!(read.count, 20);
    assert!(read.kvs.iter().all(|kv| kv.value == b"before"));
    let at_rev = RangeRequest { revision: at, ..r };
    assert_eq!(f.store.range(&at_rev).unwrap().kvs, read.kvs);
}

/// A compaction past the read's revision between pieces starts the read
/// again, in one walk at the newest revision. The piece read before it
/// still finds its values, though the compaction removed them from redb.
#[test]
fn compaction_past_the_read_starts_it_again() {
    let f = Fixture::loaded(20);
    f.store.checkpoint().unwrap();
    let r = span(&[0], &[0]);
    let mut scan = f.store.range_scan(&r).unwrap();
    let walk = scan.walk.as_mut().expect("a span");
    let tx = walk.walk_piece(&f.store).unwrap().expect("a walk");
    // New versions of the first piece's keys, and a compaction that drops
    // the ones it saw, from the index and from redb.
    for i in 0..CHUNK as u64 {
        assert!(f.apply(put(i, "after")));
    }
    assert!(f.apply(compact(f.store.revision())));
    f.store.finish_compaction().unwrap();
    // The piece still reads its values, from its own snapshot.
    walk.read_stored(&tx).unwrap();
    assert!(walk.answer().is_none());
    let kvs = &walk.kvs;
    assert_eq!(kvs.len(), CHUNK);
    assert!(kvs.iter().all(|kv| kv.value == b"before"), "{kvs:?}");
    // The next step finds the compaction and reads again, at the newest.
    let again = scan.step().unwrap().expect("read in one walk");
    assert!(scan.walk.is_none());
    let store = &f.store;
    assert_eq!(again.header.unwrap().revision, store.revision());
    assert_eq!(again.kvs[0].value, b"after");
    assert_eq!(again.kvs[CHUNK].value, b"before");
    assert_eq!(again.count, 20);
    // Asked for a revision the compaction passed, the read is refused.
    let old = RangeRequest {
        revision: store.revision() - 1,
        ..r
    };
    assert!(matches!(store.range(&old), Err(StoreError::Compacted)));
}

/// Readers in pieces beside a writer, compactions and checkpoints: every
/// answer is the store exactly as it was at the answer's revision.
#[test]
fn pieces_beside_writes_compactions_and_checkpoints() {
    const KEYS: u64 = 20;
    const PUTS: u64 = 3000;
    let Fixture { store, _dir, .. } = Fixture::new();
    let store = Arc::new(store);
    let done = Arc::new(AtomicBool::new(false));
    let checkpointer = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                store.checkpoint().unwrap();
                store.finish_compaction().unwrap();
            }
        })
    };
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            let all = span(&[0], &[0]);
            let twice = txn(vec![], vec![get(&all), get(&span(b"k1", b"k2"))], vec![]);
            while !done.load(Ordering::Relaxed) {
                // A range, or one of the ranges of a txn, which must be at
                // the txn's revision.
                let (read, rev) = if reads % 2 == 0 {
                    let read = store.range(&all).unwrap();
                    let rev = read.header.unwrap().revision;
                    (read, rev)
                } else {
                    let answer = store.txn_read(&twice).unwrap();
                    let ranges = ranges(&answer);
                    let rev = answer.header.unwrap().revision;
                    (ranges[(reads / 2) % 2].clone(), rev)
                };
                assert_eq!(read.header.unwrap().revision, rev);
                let k1 = |k: &u64| reads % 4 != 3 || key(*k).starts_with(b"k1");
                let newest_put = rev as u64 - 1;
                let want: Vec<(Vec<u8>, u64)> = (0..KEYS)
                    .filter(k1)
                    .filter_map(|k| {
                        let last = (1..=newest_put).rev().find(|i| i % KEYS == k)?;
                        Some((key(k), last))
                    })
                    .collect();
                let got: Vec<(Vec<u8>, u64)> = read
                    .kvs
                    .iter()
                    .map(|kv| {
                        let i: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                        assert_eq!(kv.mod_revision as u64, i + 1, "{kv:?}");
                        (kv.key.clone(), i)
                    })
                    .collect();
                assert_eq!(got, want, "at revision {rev}");
                assert_eq!(read.count as usize, want.len());
                reads += 1;
            }
            reads
        })
    };
    // Put `i` (from 1) writes key `i % KEYS` with value `i` at revision
    // `i + 1`.
    let mut next = 1;
    for i in 1..=PUTS {
        store
            .apply_logged(&[(next, put(i % KEYS, &i.to_string()))])
            .unwrap();
        next += 1;
        if i % 50 == 0 {
            // Keeps the last 25 revisions: reads begun before often see
            // the compaction pass them.
            let c = store.revision() - 25;
            store.apply_logged(&[(next, compact(c))]).unwrap();
            next += 1;
            store.finish_compaction().unwrap();
        }
    }
    done.store(true, Ordering::Relaxed);
    checkpointer.join().unwrap();
    assert!(reader.join().unwrap() > 0);
}

fn get(r: &RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(r.clone())),
    }
}

fn txn(compare: Vec<Compare>, success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
    TxnRequest {
        compare,
        success,
        failure,
    }
}

/// Holds when `key(k)` was last written at `rev`.
fn modified_at(k: u64, rev: i64) -> Compare {
    Compare {
        key: key(k),
        target: CompareTarget::Mod as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::ModRevision(rev)),
        ..Default::default()
    }
}

/// The range answers of a read-only txn.
fn ranges(t: &TxnResponse) -> Vec<RangeResponse> {
    t.responses
        .iter()
        .map(|op| match &op.response {
            Some(response_op::Response::ResponseRange(r)) => r.clone(),
            other => panic!("not a range: {other:?}"),
        })
        .collect()
}

/// Reads `t` step by step, calling `between` after every step but the
/// last, and returns its answer and how many steps it took.
fn txn_in_pieces(store: &Store, t: &TxnRequest, mut between: impl FnMut()) -> (TxnResponse, usize) {
    let mut scan = store.txn_scan(t).unwrap();
    let mut steps = 1;
    loop {
        if let Some(answer) = scan.step().unwrap() {
            return (answer, steps);
        }
        between();
        steps += 1;
    }
}

/// Txns whose branch reads spans answer in many steps what one read under
/// the lock answers; txns that read only single keys, or nothing, answer
/// in one step.
fn txns_answer_as_one_read(store: &Store, old: i64) {
    let spans: Vec<RequestOp> = requests(old).iter().map(get).collect();
    let single = get(&RangeRequest {
        key: key(2),
        ..Default::default()
    });
    let holds = Compare {
        key: key(0),
        target: CompareTarget::Version as i32,
        result: CompareResult::Greater as i32,
        target_union: Some(TargetUnion::Version(0)),
        ..Default::default()
    };
    let fails = modified_at(0, 1);
    let mixed = vec![spans[1].clone(), single.clone(), spans[3].clone()];
    let in_pieces = [
        txn(vec![holds.clone()], spans.clone(), vec![single.clone()]),
        txn(vec![fails.clone()], vec![single.clone()], spans.clone()),
        txn(vec![], mixed.clone(), vec![]),
        txn(vec![holds.clone(), fails.clone()], vec![], mixed),
    ];
    let in_one = [
        txn(
            vec![holds.clone()],
            vec![single.clone(), single.clone()],
            spans.clone(),
        ),
        txn(vec![fails], spans, vec![]),
        txn(vec![holds], vec![], vec![]),
    ];
    for (t, many) in in_pieces
        .iter()
        .map(|t| (t, true))
        .chain(in_one.iter().map(|t| (t, false)))
    {
        let one_read = store.with_view(|v| read_txn(v, t)).unwrap();
        let (answer, steps) = txn_in_pieces(store, t, || ());
        assert_eq!(answer, one_read, "{t:?}");
        assert_eq!(steps > 1, many, "{steps} steps: {t:?}");
        assert_eq!(store.txn_read(t).unwrap(), one_read);
    }
}

/// Every range of a txn read in pieces is the store at the txn's revision,
/// though writes go on between the pieces.
#[test]
fn a_txn_in_pieces_reads_one_revision() {
    let f = Fixture::loaded(20);
    let at = f.store.revision();
    let all = span(&[0], &[0]);
    let one = RangeRequest {
        key: key(19),
        ..Default::default()
    };
    let t = txn(
        vec![modified_at(19, at)],
        vec![get(&all), get(&one), get(&all)],
        vec![],
    );
    let mut writes = 0;
    let (answer, steps) = txn_in_pieces(&f.store, &t, || {
        f.write_between(at, writes == 0);
        writes += 1;
    });
    assert!(steps >= 14, "{steps} steps");
    assert!(answer.succeeded);
    assert_eq!(answer.header.unwrap().revision, at);
    let ranges = ranges(&answer);
    assert_eq!(ranges.len(), 3);
    for r in &ranges {
        assert_eq!(r.header.unwrap().revision, at);
        assert!(r.kvs.iter().all(|kv| kv.value == b"before"), "{r:?}");
    }
    assert_eq!(ranges[0].count, 20);
    assert_eq!(ranges[1].kvs[0].key, key(19));
    assert_eq!(ranges[2], ranges[0]);
}

/// A compaction past a txn's revision while its range is walked reads the
/// whole txn again at the newest revision, compares included.
#[test]
fn compaction_past_a_txn_decides_it_again() {
    let f = Fixture::loaded(20);
    let first = f.store.revision() - 19;
    let all = span(&[0], &[0]);
    let keys = RangeRequest {
        keys_only: true,
        ..all.clone()
    };
    let t = txn(
        vec![modified_at(0, first)],
        vec![get(&all)],
        vec![get(&keys)],
    );
    let mut scan = f.store.txn_scan(&t).unwrap();
    assert!(scan.step().unwrap().is_none());
    assert!(f.apply(put(0, "after")));
    assert!(f.apply(compact(f.store.revision())));
    f.store.finish_compaction().unwrap();
    let again = scan.step().unwrap().expect("read in one go");
    assert!(scan.plan.is_none());
    assert!(!again.succeeded, "decided again: k00 was modified");
    assert_eq!(again.header.unwrap().revision, f.store.revision());
    let ranges = ranges(&again);
    assert_eq!(ranges[0].count, 20);
    assert!(ranges[0].kvs.iter().all(|kv| kv.value.is_empty()));
}

/// A compaction after a txn's first range is answered and before its next
/// one is walked is caught too; a range that asks for a revision the
/// compaction passed makes the txn's second reading refused, though the
/// compaction stays below the txn's own revision.
#[test]
fn compaction_between_a_txns_ranges_is_caught() {
    let f = Fixture::loaded(10);
    let old = f.store.revision();
    for i in 0..10 {
        f.apply(put(i, "after"));
    }
    let all = span(&[0], &[0]);
    let then = RangeRequest {
        revision: old,
        ..all.clone()
    };
    let t = txn(vec![], vec![get(&all), get(&then)], vec![]);
    let mut scan = f.store.txn_scan(&t).unwrap();
    while scan.plan.as_ref().unwrap().walks.len() == 2 {
        assert!(scan.step().unwrap().is_none());
    }
    assert_eq!(scan.plan.as_ref().unwrap().responses.len(), 1);
    assert!(f.apply(compact(old + 1)));
    f.store.finish_compaction().unwrap();
    assert!(old + 1 < f.store.revision());
    assert!(matches!(scan.step(), Err(StoreError::Compacted)));
    assert!(scan.plan.is_none());

    // Without the compaction, the same txn reads both revisions.
    let f = Fixture::loaded(10);
    let old = f.store.revision();
    for i in 0..10 {
        f.apply(put(i, "after"));
    }
    let (answer, steps) = txn_in_pieces(&f.store, &t, || ());
    assert!(steps > 2);
    let ranges = ranges(&answer);
    assert_eq!(ranges[1].header.unwrap().revision, f.store.revision());
    assert!(ranges[0].kvs.iter().all(|kv| kv.value == b"after"));
    assert!(ranges[1].kvs.iter().all(|kv| kv.value == b"before"));
    assert_eq!(old, then.revision);
}
