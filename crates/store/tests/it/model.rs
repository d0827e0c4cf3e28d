//! Model-based test of the store: random histories checked against a reference
//! model of etcd's MVCC semantics.
//!
//! Proptest draws sequences of steps over a small key space, so that writes
//! collide, ranges overlap and compares go both ways: batches of Put,
//! DeleteRange, Txn and Compact commands applied through
//! [`Store::apply_batch`] or kept pending by [`Store::apply_logged`] until a
//! checkpoint, plain and historical ranges, read-only txns, the events a
//! catching-up watcher reads, and restarts that drop the store and open its
//! file again. Every response, every
//! refusal and every watch event is compared with what the model predicts, and
//! after every step so are the store's revision, compacted revision, applied
//! log index and number of stored records (so a compaction that leaks or
//! over-deletes is caught too). Each case ends with a restart and a read of
//! the whole key space at every revision still readable, so persistence and
//! the index rebuild are checked against the full history.
//!
//! The model is deliberately naive and shares no code with the store: it keeps
//! one complete snapshot of the key space per revision and answers a read by
//! filtering that snapshot. Its rules are etcd's, taken from etcd's applier
//! rather than from our implementation: a write transaction that changes
//! something makes exactly one new revision, a txn decides every compare on
//! its path (nested ones included) before any op runs, a range counts before
//! it limits, and so on.
//! On the few points where the store differs from etcd, the model follows the
//! store so that the property stays exact, says so in a comment, and an
//! ignored test at the end of this file pins etcd's behaviour.
//!
//! Revisions in generated requests are drawn as *selectors* and turned into
//! real revisions only when the step runs (see [`resolve`]), because which
//! revisions are valid, compacted or in the future depends on the history so
//! far. Failure messages print the resolved request.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use proptest::collection::vec;
use proptest::prelude::*;
use roster_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use roster_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use roster_proto::etcdserverpb::request_op::Request;
use roster_proto::etcdserverpb::response_op::Response;
use roster_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp,
    TxnRequest, TxnResponse,
};
use roster_proto::mvccpb::{event::EventType, Event, KeyValue};
use roster_proto::roster::{command::Kind, Command};
use roster_store::index::KeyRange;
use roster_store::{CommandResponse, Store, StoreError};

// ---------------------------------------------------------------------------
// The reference model.

/// The key space at one revision.
type Snapshot = BTreeMap<Vec<u8>, KeyValue>;

/// The MVCC store as etcd defines it, spelled out as plainly as possible.
struct Model {
    /// `history[r]` is the key space at revision `r`. Index 0 is a filler so
    /// that indices are revisions; revision 1 is the empty store.
    history: Vec<Snapshot>,
    /// Reads below this revision are refused. The store starts at 0 where
    /// etcd starts at -1; the two differ only for a compaction at revision 0,
    /// which the generator never asks for.
    compacted: i64,
    /// The revision of every change ever made, one per watch event: like
    /// etcd's backend, the store keeps one record per change.
    changes: Vec<i64>,
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// etcd's key range encoding: an empty end is the single key, `"\0"` is every
/// key from `start` on, anything else is `[start, end)` (empty if inverted).
fn in_range(start: &[u8], end: &[u8], key: &[u8]) -> bool {
    match end {
        [] => key == start,
        [0] => key >= start,
        _ => key >= start && key < end,
    }
}

/// A Range answered from one snapshot, in the order etcd's applier does it.
fn range_of(snap: &Snapshot, r: &RangeRequest, header_rev: i64) -> RangeResponse {
    let mut kvs: Vec<KeyValue> = snap
        .values()
        .filter(|kv| in_range(&r.key, &r.range_end, &kv.key))
        .cloned()
        .collect();
    let count = kvs.len() as i64;
    if r.count_only {
        return RangeResponse {
            header: header(header_rev),
            kvs: Vec::new(),
            more: false,
            count,
        };
    }
    let order = SortOrder::try_from(r.sort_order).expect("generated sort order");
    let target = SortTarget::try_from(r.sort_target).expect("generated sort target");
    let filtered = r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    // etcd's quirk, modelled faithfully rather than avoided: it asks the index
    // for only limit+1 keys (in key order) whenever the request names no sort
    // order and no filter, even though a non-key target then sorts ascending.
    if r.limit > 0 && order == SortOrder::None && !filtered {
        kvs.truncate(r.limit as usize + 1);
    }
    kvs.retain(|kv| {
        (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
            && (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
            && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
            && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
    });
    let order = match (order, target) {
        (SortOrder::None, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, _) => SortOrder::Ascend,
        (o, _) => o,
    };
    let by = |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    // etcd's sort is not stable, so its order among ties is unspecified; the
    // store promises key order among ties (stable sorts from key order), and
    // that is what makes these answers comparable at all.
    match order {
        SortOrder::Ascend => kvs.sort_by(by),
        SortOrder::Descend => kvs.sort_by(|a, b| by(b, a)),
        SortOrder::None => {}
    }
    let mut more = false;
    if r.limit > 0 && kvs.len() > r.limit as usize {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        // Only now: a keys-only range sorted by value still sorts by value.
        kvs.iter_mut().for_each(|kv| kv.value.clear());
    }
    RangeResponse {
        header: header(header_rev),
        kvs,
        more,
        count,
    }
}

/// One txn compare, by etcd's rules: over a range it must hold for every key;
/// a missing key compares as an empty `KeyValue`, except that a VALUE compare
/// on no key at all fails; an operand of the wrong kind reads as zero.
fn holds(snap: &Snapshot, c: &Compare) -> bool {
    let target = CompareTarget::try_from(c.target).expect("generated compare target");
    let result = CompareResult::try_from(c.result).expect("generated compare result");
    let kvs: Vec<&KeyValue> = snap
        .values()
        .filter(|kv| in_range(&c.key, &c.range_end, &kv.key))
        .collect();
    if kvs.is_empty() && target == CompareTarget::Value {
        return false;
    }
    let check = |kv: &KeyValue| {
        let int = |x: i64, operand: Option<i64>| x.cmp(&operand.unwrap_or(0));
        let ord: Ordering = match (target, &c.target_union) {
            (CompareTarget::Value, Some(TargetUnion::Value(v))) => kv.value.cmp(v),
            (CompareTarget::Value, _) => kv.value.as_slice().cmp(&[]),
            (CompareTarget::Version, Some(TargetUnion::Version(x))) => int(kv.version, Some(*x)),
            (CompareTarget::Version, _) => int(kv.version, None),
            (CompareTarget::Create, Some(TargetUnion::CreateRevision(x))) => {
                int(kv.create_revision, Some(*x))
            }
            (CompareTarget::Create, _) => int(kv.create_revision, None),
            (CompareTarget::Mod, Some(TargetUnion::ModRevision(x))) => {
                int(kv.mod_revision, Some(*x))
            }
            (CompareTarget::Mod, _) => int(kv.mod_revision, None),
            (CompareTarget::Lease, Some(TargetUnion::Lease(x))) => int(kv.lease, Some(*x)),
            (CompareTarget::Lease, _) => int(kv.lease, None),
        };
        match result {
            CompareResult::Equal => ord == Ordering::Equal,
            CompareResult::NotEqual => ord != Ordering::Equal,
            CompareResult::Greater => ord == Ordering::Greater,
            CompareResult::Less => ord == Ordering::Less,
        }
    };
    if kvs.is_empty() {
        return check(&KeyValue::default());
    }
    kvs.into_iter().all(check)
}

/// The non-txn ops on the path a txn takes, in order. As in etcd's
/// `compareToPath`, every compare on the path is decided against the state
/// before the txn, whatever the ops before it will have changed.
fn chosen_ops<'t>(pre: &Snapshot, t: &'t TxnRequest, out: &mut Vec<&'t Request>) {
    let branch = if t.compare.iter().all(|c| holds(pre, c)) {
        &t.success
    } else {
        &t.failure
    };
    for op in branch {
        match op.request.as_ref().expect("generated ops are set") {
            Request::RequestTxn(inner) => chosen_ops(pre, inner, out),
            other => out.push(other),
        }
    }
}

/// Refuses a put the state before its transaction cannot take: etcd's
/// `checkPut`. No lease exists, so any non-zero lease is unknown.
fn check_put(pre: &Snapshot, p: &PutRequest) -> Result<(), StoreError> {
    if p.ignore_value && !pre.contains_key(&p.key) {
        return Err(StoreError::KeyNotFound);
    }
    if p.lease != 0 {
        return Err(StoreError::LeaseNotFound);
    }
    Ok(())
}

/// A write transaction against the model. Changes go to a copy of the
/// current key space, which becomes a new revision only if something changed.
struct Write<'m> {
    /// The model's history, for reads at older revisions.
    history: &'m [Snapshot],
    compacted: i64,
    state: Snapshot,
    events: Vec<Event>,
}

impl<'m> Write<'m> {
    fn begin(&self) -> i64 {
        self.history.len() as i64 - 1
    }

    /// The revision as seen from inside the transaction: its own changes
    /// count, as in etcd's `storeTxnWrite`.
    fn rev(&self) -> i64 {
        self.begin() + i64::from(!self.events.is_empty())
    }

    fn put(&mut self, p: &PutRequest) -> Result<PutResponse, StoreError> {
        let rev = self.begin() + 1;
        let prev = self.state.get(&p.key).cloned();
        let value = match (&prev, p.ignore_value) {
            (Some(kv), true) => kv.value.clone(),
            // Reachable only inside a txn that deleted the key before putting
            // it; the server's validation refuses that txn (etcd would
            // panic). The checks passed against the state before the txn,
            // so the store runs it whole and there is no old value to keep.
            (None, true) | (_, false) => p.value.clone(),
        };
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: prev.as_ref().map_or(rev, |kv| kv.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |kv| kv.version + 1),
            value,
            lease: 0,
        };
        self.state.insert(p.key.clone(), kv.clone());
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: None,
        });
        Ok(PutResponse {
            header: header(rev),
            prev_kv: prev.filter(|_| p.prev_kv),
        })
    }

    fn delete(&mut self, d: &DeleteRangeRequest) -> DeleteRangeResponse {
        let doomed: Vec<KeyValue> = self
            .state
            .values()
            .filter(|kv| in_range(&d.key, &d.range_end, &kv.key))
            .cloned()
            .collect();
        let rev = self.begin() + 1;
        for kv in &doomed {
            self.state.remove(&kv.key);
            self.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(KeyValue {
                    key: kv.key.clone(),
                    mod_revision: rev,
                    ..Default::default()
                }),
                prev_kv: None,
            });
        }
        DeleteRangeResponse {
            header: header(self.rev()),
            deleted: doomed.len() as i64,
            prev_kvs: if d.prev_kv { doomed } else { Vec::new() },
        }
    }

    /// A range inside the transaction: at revision 0 it sees the txn's own
    /// changes; at an older revision, history. Revisions were checked first.
    fn range(&self, r: &RangeRequest) -> RangeResponse {
        let snap = match r.revision {
            0 => &self.state,
            at => &self.history[at as usize],
        };
        range_of(snap, r, self.rev())
    }

    fn txn(&mut self, t: &TxnRequest) -> Result<TxnResponse, StoreError> {
        let history = self.history;
        let pre = history.last().expect("revision 1 exists");
        let mut ops = Vec::new();
        chosen_ops(pre, t, &mut ops);
        // etcd checks every put on the path first, then every range, which
        // matters when a txn has one faulty put and one faulty range.
        for op in &ops {
            if let Request::RequestPut(p) = op {
                check_put(pre, p)?;
            }
        }
        for op in ops {
            match op {
                Request::RequestRange(r) if r.revision > self.begin() => {
                    return Err(StoreError::FutureRevision)
                }
                Request::RequestRange(r) if r.revision > 0 && r.revision < self.compacted => {
                    return Err(StoreError::Compacted)
                }
                _ => {}
            }
        }
        let mut resp = self.run(pre, t)?;
        resp.header = header(self.rev());
        Ok(resp)
    }

    fn run(&mut self, pre: &Snapshot, t: &TxnRequest) -> Result<TxnResponse, StoreError> {
        let succeeded = t.compare.iter().all(|c| holds(pre, c));
        let branch = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::new();
        for op in branch {
            let response = match op.request.as_ref().expect("generated ops are set") {
                Request::RequestPut(p) => Response::ResponsePut(self.put(p)?),
                Request::RequestDeleteRange(d) => Response::ResponseDeleteRange(self.delete(d)),
                Request::RequestRange(r) => Response::ResponseRange(self.range(r)),
                Request::RequestTxn(inner) => Response::ResponseTxn(self.run(pre, inner)?),
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        // etcd gives a nested txn response an empty header.
        Ok(TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded,
            responses,
        })
    }
}

impl Model {
    fn new() -> Self {
        Model {
            history: vec![Snapshot::new(), Snapshot::new()],
            compacted: -1,
            changes: Vec::new(),
        }
    }

    fn rev(&self) -> i64 {
        self.history.len() as i64 - 1
    }

    /// Runs `f` as one write transaction; keeps its changes only if it was
    /// not refused, and makes a revision only if it changed something.
    fn write<T>(
        &mut self,
        f: impl FnOnce(&mut Write<'_>) -> Result<T, StoreError>,
    ) -> (Result<T, StoreError>, Vec<Event>) {
        let mut w = Write {
            history: &self.history,
            compacted: self.compacted,
            state: self.history.last().expect("revision 1 exists").clone(),
            events: Vec::new(),
        };
        let result = f(&mut w);
        let Write { state, events, .. } = w;
        match result {
            Ok(resp) => {
                if !events.is_empty() {
                    self.history.push(state);
                    let rev = self.rev();
                    self.changes.extend(events.iter().map(|_| rev));
                }
                (Ok(resp), events)
            }
            Err(e) => (Err(e), Vec::new()),
        }
    }

    /// Applies one command: its answer and its watch events.
    fn apply(&mut self, cmd: &Command) -> (Result<CommandResponse, StoreError>, Vec<Event>) {
        match cmd.kind.as_ref().expect("generated commands are set") {
            Kind::Put(p) => {
                // etcd checks a lone put's lease before its key, a put in a
                // txn the other way round (`check_put`).
                let pre = self.history.last().expect("revision 1 exists");
                if p.lease != 0 {
                    return (Err(StoreError::LeaseNotFound), Vec::new());
                }
                if let Err(e) = check_put(pre, p) {
                    return (Err(e), Vec::new());
                }
                let (r, ev) = self.write(|w| w.put(p));
                (r.map(CommandResponse::Put), ev)
            }
            Kind::DeleteRange(d) => {
                let (r, ev) = self.write(|w| Ok(w.delete(d)));
                (r.map(CommandResponse::DeleteRange), ev)
            }
            Kind::Txn(t) => {
                let (r, ev) = self.write(|w| w.txn(t));
                (r.map(CommandResponse::Txn), ev)
            }
            Kind::Compact(c) => {
                let r = if c.revision <= self.compacted {
                    Err(StoreError::Compacted)
                } else if c.revision > self.rev() {
                    Err(StoreError::FutureRevision)
                } else {
                    self.compacted = c.revision;
                    Ok(CommandResponse::Compact(CompactionResponse {
                        header: header(self.rev()),
                    }))
                };
                (r, Vec::new())
            }
            // Leases are exercised by the server's tests, not this model.
            other => unreachable!("the model generates no {other:?}"),
        }
    }

    /// How many records storage holds once the history below `at` has been
    /// cleaned up: every change after `at`, and each key's version live at
    /// `at`, which reads at `at` still need.
    fn records_after(&self, at: i64) -> u64 {
        let newer = self.changes.iter().filter(|&&rev| rev > at).count();
        let live = self.history[at as usize].len();
        (newer + live) as u64
    }

    /// A plain Range: at a past revision if asked, but the header always
    /// carries the current one.
    fn range(&self, r: &RangeRequest) -> Result<RangeResponse, StoreError> {
        let at = match r.revision {
            at if at <= 0 => self.rev(),
            at if at > self.rev() => return Err(StoreError::FutureRevision),
            at if at < self.compacted => return Err(StoreError::Compacted),
            at => at,
        };
        Ok(range_of(&self.history[at as usize], r, self.rev()))
    }
}

// ---------------------------------------------------------------------------
// Generating histories.

const KEYS: &[&str] = &["a", "a1", "b", "b/x", "c", "d", "e", "f"];
/// Few values, so VALUE compares and value sorts see ties.
const VALUES: &[&str] = &["", "0", "1", "2", "x", "xy"];
/// Range ends: every key, plus bounds that fall between or after them.
const ENDS: &[&str] = &["a", "a1", "b", "b/x", "b0", "c", "d", "f", "z"];

/// A revision selector, resolved by [`resolve`]: 0 (the current revision)
/// is kept, any other draw lands anywhere in the valid range and a bit past.
fn selector() -> impl Strategy<Value = i64> {
    prop_oneof![2 => Just(0i64), 3 => 1..1000i64]
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(KEYS).prop_map(|k| k.as_bytes().to_vec())
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(VALUES).prop_map(|v| v.as_bytes().to_vec())
}

fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    *end.last_mut().expect("keys are not empty") += 1;
    end
}

/// `(key, range_end)` in etcd's encoding, with weights for: a single key, a
/// span (possibly empty or inverted), a prefix, "from key", and everything.
/// Reads lean wide so they return something; deletes lean narrow so the key
/// space does not keep emptying.
fn key_range(w: [u32; 5]) -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let end = prop::sample::select(ENDS).prop_map(|e| e.as_bytes().to_vec());
    prop_oneof![
        w[0] => key().prop_map(|k| (k, Vec::new())),
        w[1] => (key(), end),
        w[2] => key().prop_map(|k| {
            let end = prefix_end(&k);
            (k, end)
        }),
        w[3] => key().prop_map(|k| (k, vec![0])),
        w[4] => Just((vec![0], vec![0])),
    ]
}

const WIDE: [u32; 5] = [2, 3, 2, 2, 2];
const NARROW: [u32; 5] = [8, 2, 2, 1, 1];

fn put_request() -> impl Strategy<Value = PutRequest> {
    let flag = prop::bool::weighted;
    (key(), value(), flag(0.3), flag(0.1), flag(0.05)).prop_map(
        |(key, value, prev_kv, ignore_value, lease)| PutRequest {
            key,
            // The server refuses a value together with ignore_value.
            value: if ignore_value { Vec::new() } else { value },
            lease: if lease { 7 } else { 0 },
            prev_kv,
            ignore_value,
            ignore_lease: false,
        },
    )
}

fn delete_request() -> impl Strategy<Value = DeleteRangeRequest> {
    (key_range(NARROW), any::<bool>()).prop_map(|((key, range_end), prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn range_request() -> impl Strategy<Value = RangeRequest> {
    let flag = prop::bool::weighted;
    let limit = prop_oneof![2 => Just(0i64), 3 => 1..5i64];
    let order = prop_oneof![
        4 => Just(SortOrder::None),
        1 => Just(SortOrder::Ascend),
        1 => Just(SortOrder::Descend),
    ];
    let target = prop_oneof![
        3 => Just(SortTarget::Key),
        1 => Just(SortTarget::Version),
        1 => Just(SortTarget::Create),
        1 => Just(SortTarget::Mod),
        1 => Just(SortTarget::Value),
    ];
    let filter = || prop_oneof![11 => Just(0i64), 1 => 1..1000i64];
    let filters = (filter(), filter(), filter(), filter());
    (
        key_range(WIDE),
        selector(),
        limit,
        order,
        target,
        flag(0.2),
        flag(0.1),
        filters,
    )
        .prop_map(
            |((key, range_end), revision, limit, order, target, keys_only, count_only, f)| {
                RangeRequest {
                    key,
                    range_end,
                    limit,
                    revision,
                    sort_order: order as i32,
                    sort_target: target as i32,
                    serializable: false,
                    keys_only,
                    count_only,
                    min_mod_revision: f.0,
                    max_mod_revision: f.1,
                    min_create_revision: f.2,
                    max_create_revision: f.3,
                }
            },
        )
}

fn compare() -> impl Strategy<Value = Compare> {
    let target = prop_oneof![
        3 => Just(CompareTarget::Value),
        3 => Just(CompareTarget::Version),
        2 => Just(CompareTarget::Create),
        2 => Just(CompareTarget::Mod),
        1 => Just(CompareTarget::Lease),
    ];
    let result = prop_oneof![
        Just(CompareResult::Equal),
        Just(CompareResult::NotEqual),
        Just(CompareResult::Greater),
        Just(CompareResult::Less),
    ];
    let shape = key_range(NARROW);
    (
        shape,
        target,
        result,
        value(),
        0..4i64,
        selector(),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |((key, range_end), target, result, value, small, rev, no_operand)| {
                let operand = match target {
                    CompareTarget::Value => TargetUnion::Value(value),
                    CompareTarget::Version => TargetUnion::Version(small),
                    CompareTarget::Create => TargetUnion::CreateRevision(rev),
                    CompareTarget::Mod => TargetUnion::ModRevision(rev),
                    CompareTarget::Lease => TargetUnion::Lease(small),
                };
                Compare {
                    result: result as i32,
                    target: target as i32,
                    key,
                    range_end,
                    target_union: (!no_operand).then_some(operand),
                }
            },
        )
}

fn op(request: Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

fn request_op(nested: bool) -> BoxedStrategy<RequestOp> {
    let put = put_request().prop_map(|p| op(Request::RequestPut(p)));
    let delete = delete_request().prop_map(|d| op(Request::RequestDeleteRange(d)));
    let range = range_request().prop_map(|r| op(Request::RequestRange(r)));
    if nested {
        let txn = txn_request(false).prop_map(|t| op(Request::RequestTxn(t)));
        prop_oneof![3 => put, 2 => delete, 2 => range, 1 => txn].boxed()
    } else {
        prop_oneof![3 => put, 2 => delete, 2 => range].boxed()
    }
}

fn txn_request(nested: bool) -> BoxedStrategy<TxnRequest> {
    let ops = vec(request_op(nested), 0..4);
    (vec(compare(), 0..3), ops.clone(), ops)
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        })
        .boxed()
}

/// Trims a generated txn to what the server would accept on the points the
/// store relies on: no key is put twice on one path, and `ignore_value` is
/// never used on a key the txn also deletes (see `Write::put`). A put and a
/// delete of the same key otherwise stay: the store runs them in order.
fn tidy(t: &mut TxnRequest) {
    fn deletes(t: &TxnRequest, out: &mut Vec<(Vec<u8>, Vec<u8>)>) {
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(Request::RequestDeleteRange(d)) => {
                    out.push((d.key.clone(), d.range_end.clone()))
                }
                Some(Request::RequestTxn(inner)) => deletes(inner, out),
                _ => {}
            }
        }
    }
    fn puts(ops: &mut Vec<RequestOp>, seen: &mut BTreeSet<Vec<u8>>, dels: &[(Vec<u8>, Vec<u8>)]) {
        ops.retain_mut(|op| match &mut op.request {
            Some(Request::RequestPut(p)) => {
                if dels.iter().any(|(k, e)| in_range(k, e, &p.key)) {
                    p.ignore_value = false;
                }
                seen.insert(p.key.clone())
            }
            Some(Request::RequestTxn(inner)) => {
                // The two branches exclude each other: each may put what the
                // other puts, but neither what the path before it put.
                let mut then = seen.clone();
                puts(&mut inner.success, &mut then, dels);
                let mut other = seen.clone();
                puts(&mut inner.failure, &mut other, dels);
                seen.extend(then);
                seen.extend(other);
                true
            }
            _ => true,
        });
    }
    let mut dels = Vec::new();
    deletes(t, &mut dels);
    puts(&mut t.success, &mut BTreeSet::new(), &dels);
    puts(&mut t.failure, &mut BTreeSet::new(), &dels);
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        5 => put_request().prop_map(Kind::Put),
        2 => delete_request().prop_map(Kind::DeleteRange),
        3 => txn_request(true).prop_map(|mut t| {
            tidy(&mut t);
            Kind::Txn(t)
        }),
        1 => (0..1000i64).prop_map(|revision| Kind::Compact(CompactionRequest {
            revision,
            ..Default::default()
        })),
    ]
    .prop_map(|kind| Command { kind: Some(kind) })
}

/// A txn whose every op is a range, served by `Store::txn_read`.
fn read_only_txn() -> impl Strategy<Value = TxnRequest> {
    let ranges = || {
        vec(
            range_request().prop_map(|r| op(Request::RequestRange(r))),
            0..3,
        )
    };
    (vec(compare(), 0..3), ranges(), ranges()).prop_map(|(compare, success, failure)| TxnRequest {
        compare,
        success,
        failure,
    })
}

#[derive(Debug, Clone)]
enum Step {
    /// Commands applied as one batch, then maybe the compaction cleanup.
    /// `logged` batches go through `apply_logged`: they stay pending, in
    /// memory, until a checkpoint.
    Batch {
        commands: Vec<Command>,
        finish: bool,
        logged: bool,
    },
    /// Write what is pending to storage.
    Checkpoint,
    /// Every event still in storage, as a watcher catching up reads them.
    Events,
    Range(RangeRequest),
    ReadTxn(TxnRequest),
    /// Drop the store (after a checkpoint, as a node stops) and open its
    /// file again.
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    let batch = prop_oneof![3 => vec(command(), 1..=1), 1 => vec(command(), 2..=4)];
    prop_oneof![
        8 => (batch, any::<bool>(), any::<bool>())
            .prop_map(|(commands, finish, logged)| Step::Batch { commands, finish, logged }),
        1 => Just(Step::Checkpoint),
        1 => Just(Step::Events),
        4 => range_request().prop_map(Step::Range),
        1 => read_only_txn().prop_map(Step::ReadTxn),
        1 => Just(Step::Reopen),
    ]
}

/// Turns the revision selectors in a generated command into revisions, given
/// the current revision `cur`: ranges read in `[0, cur + 2]` (0 meaning now,
/// the top two in the future), compactions aim at `[1, cur + 2]`, and
/// CREATE/MOD compares and min/max filters at `[0, cur + 1]` (0 being no
/// filter).
fn resolve(cmd: &Command, cur: i64) -> Command {
    let mut cmd = cmd.clone();
    match cmd.kind.as_mut() {
        Some(Kind::Compact(c)) => c.revision = 1 + c.revision % (cur + 2),
        Some(Kind::Txn(t)) => resolve_txn(t, cur),
        _ => {}
    }
    cmd
}

fn resolve_txn(t: &mut TxnRequest, cur: i64) {
    for c in &mut t.compare {
        if let Some(TargetUnion::CreateRevision(r) | TargetUnion::ModRevision(r)) =
            &mut c.target_union
        {
            *r %= cur + 2;
        }
    }
    for op in t.success.iter_mut().chain(t.failure.iter_mut()) {
        match &mut op.request {
            Some(Request::RequestRange(r)) => resolve_range(r, cur),
            Some(Request::RequestTxn(inner)) => resolve_txn(inner, cur),
            _ => {}
        }
    }
}

fn resolve_range(r: &mut RangeRequest, cur: i64) {
    r.revision %= cur + 3;
    for filter in [
        &mut r.min_mod_revision,
        &mut r.max_mod_revision,
        &mut r.min_create_revision,
        &mut r.max_create_revision,
    ] {
        *filter %= cur + 2;
    }
}

// ---------------------------------------------------------------------------
// Running a history against the store and the model side by side.

/// Refusals compared by kind; `StoreError` has no `PartialEq`.
fn outcome<T>(r: Result<T, StoreError>) -> Result<T, String> {
    r.map_err(|e| format!("{e:?}"))
}

fn fail(what: &str, e: StoreError) -> TestCaseError {
    TestCaseError::fail(format!("{what}: {e}"))
}

struct Harness {
    /// Held so the directory outlives the store.
    _dir: tempfile::TempDir,
    path: PathBuf,
    /// `None` only for the moment of a restart.
    store: Option<Store>,
    model: Model,
    log_index: u64,
    /// The compacted revision as of the last cleanup of storage: records
    /// dropped by later compactions may still be on disk.
    cleaned: i64,
    /// Every event the model predicted, in order.
    events: Vec<Event>,
}

impl Harness {
    fn new() -> Result<Self, TestCaseError> {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let path = dir.path().join("store.redb");
        let store = Store::open(&path).map_err(|e| fail("open", e))?;
        Ok(Harness {
            _dir: dir,
            path,
            store: Some(store),
            model: Model::new(),
            log_index: 0,
            cleaned: 0,
            events: Vec::new(),
        })
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("store is open between steps")
    }

    fn step(&mut self, step: &Step) -> Result<(), TestCaseError> {
        match step {
            Step::Batch {
                commands,
                finish,
                logged,
            } => {
                let mut batch = Vec::new();
                let mut expected = Vec::new();
                // Later commands in a batch see the earlier ones, so each is
                // resolved against the model as it stands just before it.
                for cmd in commands {
                    let cmd = resolve(cmd, self.model.rev());
                    let (response, events) = self.model.apply(&cmd);
                    self.log_index += 1;
                    batch.push((self.log_index, cmd));
                    expected.push((outcome(response), events));
                }
                let applied = if *logged {
                    self.store().apply_logged(&batch)
                } else {
                    self.store().apply_batch(&batch)
                }
                .map_err(|e| fail("apply", e))?;
                prop_assert_eq!(applied.len(), batch.len());
                for ((cmd, (response, events)), got) in batch.iter().zip(expected).zip(applied) {
                    prop_assert_eq!(outcome(got.response), response, "response to {:?}", cmd);
                    prop_assert_eq!(&got.events, &events, "events of {:?}", cmd);
                    self.events.extend(events);
                }
                if *finish {
                    self.store()
                        .finish_compaction()
                        .map_err(|e| fail("finish_compaction", e))?;
                    self.cleaned = self.model.compacted.max(0);
                }
            }
            Step::Range(r) => {
                let mut r = r.clone();
                resolve_range(&mut r, self.model.rev());
                let got = outcome(self.store().range(&r));
                prop_assert_eq!(got, outcome(self.model.range(&r)), "range {:?}", r);
            }
            Step::ReadTxn(t) => {
                let mut t = t.clone();
                resolve_txn(&mut t, self.model.rev());
                let got = outcome(self.store().txn_read(&t).map(CommandResponse::Txn));
                let cmd = Command {
                    kind: Some(Kind::Txn(t)),
                };
                let (want, events) = self.model.apply(&cmd);
                prop_assert!(events.is_empty(), "a read-only txn wrote: {:?}", cmd);
                prop_assert_eq!(got, outcome(want), "read-only {:?}", cmd);
            }
            Step::Checkpoint => {
                let upto = self
                    .store()
                    .checkpoint()
                    .map_err(|e| fail("checkpoint", e))?;
                prop_assert_eq!(upto, self.log_index);
            }
            Step::Events => {
                // Above the compacted revision every record is kept.
                let from = (self.model.compacted + 1).max(1);
                let all = KeyRange::new(&[0], &[0]);
                let (got, last) = self
                    .store()
                    .events(from, &all, usize::MAX, usize::MAX)
                    .map_err(|e| fail("events", e))?;
                let want: Vec<&Event> = self
                    .events
                    .iter()
                    .filter(|e| e.kv.as_ref().is_some_and(|kv| kv.mod_revision >= from))
                    .collect();
                prop_assert_eq!(got.iter().collect::<Vec<_>>(), want, "events from {}", from);
                prop_assert_eq!(last, self.model.rev());
                // Read in small steps, by count and by bytes, the same
                // events come, each step ending at a whole revision.
                for (limit, max_bytes) in [(2, usize::MAX), (usize::MAX, 1), (3, 200)] {
                    let (mut paged, mut at) = (Vec::new(), from);
                    loop {
                        let (step, last) = self
                            .store()
                            .events(at, &all, limit, max_bytes)
                            .map_err(|e| fail("events in steps", e))?;
                        let inside = step.iter().all(|e| {
                            e.kv.as_ref()
                                .is_some_and(|kv| (at..=last).contains(&kv.mod_revision))
                        });
                        prop_assert!(inside, "a step went past its last revision");
                        paged.extend(step);
                        if last >= self.model.rev() {
                            break;
                        }
                        prop_assert!(last >= at, "a step made no progress");
                        at = last + 1;
                    }
                    prop_assert_eq!(&paged, &got, "events in steps of {:?}", (limit, max_bytes));
                }
            }
            Step::Reopen => {
                self.store()
                    .checkpoint()
                    .map_err(|e| fail("checkpoint", e))?;
                // Drop first: redb refuses a second handle on an open file.
                self.store = None;
                self.store = Some(Store::open(&self.path).map_err(|e| fail("reopen", e))?);
                // Opening redoes any cleanup a crash could have lost.
                self.cleaned = self.model.compacted.max(0);
                self.check_history()?;
            }
        }
        prop_assert_eq!(self.store().revision(), self.model.rev());
        prop_assert_eq!(self.store().compact_revision(), self.model.compacted);
        prop_assert_eq!(self.store().applied_index(), self.log_index);
        let records = self
            .store()
            .record_count()
            .map_err(|e| fail("record_count", e))?;
        prop_assert_eq!(
            records,
            self.model.records_after(self.cleaned),
            "stored records"
        );
        Ok(())
    }

    /// Reads the whole key space at every revision the store must still
    /// serve, and one past each end, which it must refuse.
    fn check_history(&self) -> Result<(), TestCaseError> {
        let first = self.model.compacted.max(1);
        for revision in (first - 1).max(1)..=self.model.rev() + 1 {
            let all = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                revision,
                ..Default::default()
            };
            let got = outcome(self.store().range(&all));
            prop_assert_eq!(
                got,
                outcome(self.model.range(&all)),
                "at revision {}",
                revision
            );
        }
        Ok(())
    }
}

fn run(steps: &[Step]) -> Result<(), TestCaseError> {
    let mut h = Harness::new()?;
    for step in steps {
        h.step(step)?;
    }
    // Every history ends with a restart, so all of it is checked from disk.
    h.step(&Step::Reopen)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        // Shrunk failures belong in a named regression test below, not in a
        // file that proptest would add next to this one.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_matches_model(steps in vec(step(), 1..60)) {
        run(&steps)?;
    }
}

// ---------------------------------------------------------------------------
// Corner cases where a naive store parts ways with etcd, pinned one by one.

fn fresh_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("store.redb")).expect("open");
    (dir, store)
}

fn apply_one(store: &Store, log_index: u64, kind: Kind) -> roster_store::Applied {
    let cmd = Command { kind: Some(kind) };
    let mut applied = store
        .apply_batch(&[(log_index, cmd)])
        .expect("storage works");
    applied.pop().expect("one answer per command")
}

fn put_a(value: &str) -> PutRequest {
    PutRequest {
        key: b"a".to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

#[test]
fn lone_put_checks_lease_before_key() {
    let (_dir, store) = fresh_store();
    let put = PutRequest {
        lease: 7,
        ignore_value: true,
        ..put_a("")
    };
    let applied = apply_one(&store, 1, Kind::Put(put));
    assert!(
        matches!(applied.response, Err(StoreError::LeaseNotFound)),
        "{:?}",
        applied.response
    );
}

#[test]
fn txn_checks_puts_before_ranges() {
    let (_dir, store) = fresh_store();
    // At revision 1: the range asks for the future, the put for the value
    // of a key that does not exist. etcd reports the put.
    let future = RangeRequest {
        key: b"a".to_vec(),
        revision: 2,
        ..Default::default()
    };
    let blind = PutRequest {
        ignore_value: true,
        ..put_a("")
    };
    let txn = TxnRequest {
        success: vec![
            op(Request::RequestRange(future)),
            op(Request::RequestPut(blind)),
        ],
        ..Default::default()
    };
    let applied = apply_one(&store, 1, Kind::Txn(txn));
    assert!(
        matches!(applied.response, Err(StoreError::KeyNotFound)),
        "{:?}",
        applied.response
    );
}

#[test]
fn txn_that_passed_its_checks_runs_whole() {
    let (_dir, store) = fresh_store();
    apply_one(&store, 1, Kind::Put(put_a("1")));
    // The put's check passes against the state before the txn, where "a"
    // exists; at run time, after the delete, "a" is missing. The server
    // refuses this txn (a put of a key the txn deletes), as etcd does, so the
    // store never sees it from a client; but the store must not fail half
    // way through a command, or a replayed log would leave partial changes.
    let txn = TxnRequest {
        success: vec![
            op(Request::RequestDeleteRange(DeleteRangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            })),
            op(Request::RequestPut(PutRequest {
                ignore_value: true,
                ..put_a("")
            })),
        ],
        ..Default::default()
    };
    let applied = apply_one(&store, 2, Kind::Txn(txn));
    assert!(applied.response.is_ok(), "{:?}", applied.response);
    let kinds: Vec<i32> = applied.events.iter().map(|e| e.r#type).collect();
    assert_eq!(kinds, vec![EventType::Delete as i32, EventType::Put as i32]);
    assert_eq!(store.revision(), 3, "one txn, one revision");
    let a = store
        .range(&RangeRequest {
            key: b"a".to_vec(),
            ..Default::default()
        })
        .expect("read");
    assert_eq!(a.kvs.len(), 1);
    assert_eq!((a.kvs[0].version, a.kvs[0].create_revision), (1, 3));
}

#[test]
fn nested_txn_response_has_a_header() {
    let (_dir, store) = fresh_store();
    let txn = TxnRequest {
        success: vec![op(Request::RequestTxn(TxnRequest::default()))],
        ..Default::default()
    };
    let applied = apply_one(&store, 1, Kind::Txn(txn));
    let Ok(CommandResponse::Txn(resp)) = applied.response else {
        panic!("{:?}", applied.response);
    };
    let Some(Response::ResponseTxn(nested)) = &resp.responses[0].response else {
        panic!("{resp:?}");
    };
    assert_eq!(nested.header, Some(ResponseHeader::default()));
}
