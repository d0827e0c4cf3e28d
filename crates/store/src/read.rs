//! Evaluating reads — ranges and compares — against a view of the store.
//!
//! A [`View`] is the key index seen at one revision plus a source of stored
//! records. The same code serves plain reads (index at the published revision,
//! records from a redb read transaction) and reads inside a write transaction
//! (index at the in-flight revision, records from the write transaction), so a
//! txn that puts a key and then ranges over it sees its own write, as in etcd.

use std::cmp::Ordering;

use roster_proto::etcdserverpb::{
    compare, range_request::SortOrder, range_request::SortTarget, Compare, RangeRequest,
    RangeResponse, ResponseHeader,
};
use roster_proto::mvccpb::KeyValue;

use crate::backend::Records;
use crate::error::StoreError;
use crate::index::{KeyIndex, KeyRange, Version};

/// The store as one reader sees it.
pub struct View<'a> {
    /// The key index (it may hold newer versions; they are ignored).
    pub index: &'a KeyIndex,
    /// The revision this view reads at by default.
    pub rev: i64,
    /// Reads below this revision are refused as compacted.
    pub compact_rev: i64,
    /// Where values come from.
    pub records: &'a dyn Records,
}

/// Builds the `KeyValue` a client sees, reading the value from storage
/// unless the caller only needs keys.
fn materialize(
    view: &View<'_>,
    key: &[u8],
    v: &Version,
    with_value: bool,
) -> Result<KeyValue, StoreError> {
    let value = if with_value {
        view.records.record(v.rev)?.value
    } else {
        Vec::new()
    };
    Ok(key_value(key, v, value))
}

/// The `KeyValue` of version `v` of `key`, with `value`.
pub(crate) fn key_value(key: &[u8], v: &Version, value: Vec<u8>) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        create_revision: v.create,
        mod_revision: v.rev.main,
        version: v.version,
        value,
        lease: v.lease,
    }
}

/// Checks that `revision` (0 or less meaning `rev`, the reader's own) is
/// readable in a store at `rev` compacted to `compact_rev`, and returns the
/// revision to read at.
pub(crate) fn check_revision(rev: i64, compact_rev: i64, revision: i64) -> Result<i64, StoreError> {
    if revision <= 0 {
        return Ok(rev);
    }
    if revision > rev {
        return Err(StoreError::FutureRevision);
    }
    if revision < compact_rev {
        return Err(StoreError::Compacted);
    }
    Ok(revision)
}

/// How a Range sorts its results, with etcd 3.4's reading of values outside
/// the enums: a sort order it does not know sorts nothing (etcd's sort
/// switch has no case for it), so the results stay in key order whatever
/// the target. A target it does not know, with an order it knows (NONE with
/// a target other than KEY means ASCEND), is refused: etcd 3.4 has no
/// answer for it (it sorts with no comparator and the process dies), and
/// etcd 3.5 refuses it with "invalid sort option".
pub fn sort_of(r: &RangeRequest) -> Result<(SortOrder, SortTarget), StoreError> {
    let Ok(order) = SortOrder::try_from(r.sort_order) else {
        return Ok((SortOrder::None, SortTarget::Key));
    };
    let target =
        SortTarget::try_from(r.sort_target).map_err(|_| StoreError::Invalid("sort target"))?;
    Ok((order, target))
}

/// A Range request's rules, applied one hit at a time in key order, so that
/// a reader may walk the index in pieces (see `store::scan`).
///
/// The order of steps follows etcd so that corner cases agree: `count` is
/// every key in the range at the revision; the min/max revision filters
/// apply next; without an explicit sort order but with a non-key sort
/// target the results are cut to the limit in key order *before* being
/// sorted ascending by the target, exactly as etcd does.
pub(crate) struct RangeRules<'r> {
    r: &'r RangeRequest,
    /// The revision read at.
    pub at: i64,
    order: SortOrder,
    target: SortTarget,
    filtered: bool,
    /// Hits kept at most, when they are cut in key order.
    cut: Option<usize>,
    /// Whether kept hits need their values.
    pub with_value: bool,
}

impl<'r> RangeRules<'r> {
    /// The rules of `r`, read at `at`.
    pub fn new(r: &'r RangeRequest, at: i64) -> Result<Self, StoreError> {
        // A count reads no values and sorts nothing: its sort fields are
        // not looked at.
        let (order, target) = if r.count_only {
            (SortOrder::None, SortTarget::Key)
        } else {
            sort_of(r)?
        };
        let filtered = r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        // One more than asked for, so `more` can be told.
        let cut = (r.limit > 0 && order == SortOrder::None && !filtered)
            .then(|| r.limit.saturating_add(1) as usize);
        Ok(RangeRules {
            r,
            at,
            order,
            target,
            filtered,
            cut,
            with_value: !r.count_only && (!r.keys_only || target == SortTarget::Value),
        })
    }

    /// Whether the hit `v` is kept, `kept` hits having been kept before it.
    pub fn keeps(&self, v: &Version, kept: usize) -> bool {
        let r = self.r;
        if r.count_only || self.cut.is_some_and(|cut| kept >= cut) {
            return false;
        }
        !(self.filtered
            && (r.max_mod_revision != 0 && v.rev.main > r.max_mod_revision
                || r.min_mod_revision != 0 && v.rev.main < r.min_mod_revision
                || r.max_create_revision != 0 && v.create > r.max_create_revision
                || r.min_create_revision != 0 && v.create < r.min_create_revision))
    }

    /// The response: `count` hits in all, `kvs` the kept ones in key
    /// order, read in a store at `rev`.
    pub fn respond(&self, rev: i64, count: i64, mut kvs: Vec<KeyValue>) -> RangeResponse {
        let r = self.r;
        let header = Some(ResponseHeader {
            revision: rev,
            ..Default::default()
        });
        let order = match (self.order, self.target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (o, _) => o,
        };
        if order != SortOrder::None {
            let target = self.target;
            let by = |a: &KeyValue, b: &KeyValue| -> Ordering {
                match target {
                    SortTarget::Key => a.key.cmp(&b.key),
                    SortTarget::Version => a.version.cmp(&b.version),
                    SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                    SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                    SortTarget::Value => a.value.cmp(&b.value),
                }
            };
            // Stable sorts: ties stay in key order, as etcd's sort does for
            // the small result sets where its order is observable.
            match order {
                SortOrder::Descend => kvs.sort_by(|a, b| by(b, a)),
                _ => kvs.sort_by(by),
            }
        }
        let mut more = false;
        if r.limit > 0 && kvs.len() as i64 > r.limit {
            kvs.truncate(r.limit as usize);
            more = true;
        }
        if r.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        RangeResponse {
            header,
            kvs,
            more,
            count,
        }
    }
}

impl View<'_> {
    /// Checks that `revision` (0 or less meaning "the view's own") is
    /// readable, and returns the revision to read at.
    pub fn check_revision(&self, revision: i64) -> Result<i64, StoreError> {
        check_revision(self.rev, self.compact_rev, revision)
    }

    /// The live `KeyValue` of `key` at the view's revision.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        self.index
            .get(key, self.rev)
            .map(|v| materialize(self, key, v, true))
            .transpose()
    }

    /// Every live `KeyValue` in `range` at the view's revision, in key order.
    pub fn get_range(&self, range: &KeyRange) -> Result<Vec<KeyValue>, StoreError> {
        self.index
            .range(range, self.rev)
            .map(|(k, v)| materialize(self, k, v, true))
            .collect()
    }

    /// Answers a Range request with etcd's semantics (see `RangeRules`),
    /// in one walk of the index.
    pub fn range(&self, r: &RangeRequest) -> Result<RangeResponse, StoreError> {
        let rules = RangeRules::new(r, self.check_revision(r.revision)?)?;
        let range = KeyRange::new(&r.key, &r.range_end);
        let mut count = 0;
        let mut kvs = Vec::new();
        for (k, v) in self.index.range(&range, rules.at) {
            count += 1;
            if rules.keeps(v, kvs.len()) {
                kvs.push(materialize(self, k, v, rules.with_value)?);
            }
        }
        Ok(rules.respond(self.rev, count, kvs))
    }

    /// Evaluates one txn compare with etcd's rules: a compare over a range
    /// holds only if it holds for every key in it; a missing key compares as a
    /// zero `KeyValue`, except that a VALUE compare on a missing key fails.
    ///
    /// Values outside the enums are read as etcd 3.4 reads them, refusing
    /// neither: a target it does not know compares every key as equal to
    /// the operand, and a result it does not know always holds.
    pub fn compare(&self, c: &Compare) -> Result<bool, StoreError> {
        use compare::{CompareResult, CompareTarget, TargetUnion};
        let target = CompareTarget::try_from(c.target).ok();
        let result = CompareResult::try_from(c.result).ok();
        let range = KeyRange::new(&c.key, &c.range_end);
        let hits: Vec<(&[u8], &Version)> = self.index.range(&range, self.rev).collect();
        if hits.is_empty() && target == Some(CompareTarget::Value) {
            return Ok(false);
        }

        let holds = |ord: Ordering| match result {
            Some(CompareResult::Equal) => ord == Ordering::Equal,
            Some(CompareResult::NotEqual) => ord != Ordering::Equal,
            Some(CompareResult::Greater) => ord == Ordering::Greater,
            Some(CompareResult::Less) => ord == Ordering::Less,
            None => true,
        };
        // The operand only counts when its kind matches the target; otherwise
        // it reads as zero (or empty), as in etcd.
        let int_operand = |want: CompareTarget| -> i64 {
            match (&c.target_union, want) {
                (Some(TargetUnion::Version(x)), CompareTarget::Version)
                | (Some(TargetUnion::CreateRevision(x)), CompareTarget::Create)
                | (Some(TargetUnion::ModRevision(x)), CompareTarget::Mod)
                | (Some(TargetUnion::Lease(x)), CompareTarget::Lease) => *x,
                _ => 0,
            }
        };
        let check = |v: Option<&Version>, key: &[u8]| -> Result<bool, StoreError> {
            let Some(target) = target else {
                return Ok(holds(Ordering::Equal));
            };
            let ord = match target {
                CompareTarget::Value => {
                    let want: &[u8] = match &c.target_union {
                        Some(TargetUnion::Value(x)) => x,
                        _ => &[],
                    };
                    let kv = match v {
                        Some(v) => materialize(self, key, v, true)?,
                        None => KeyValue::default(),
                    };
                    kv.value.as_slice().cmp(want)
                }
                CompareTarget::Version => v.map_or(0, |v| v.version).cmp(&int_operand(target)),
                CompareTarget::Create => v.map_or(0, |v| v.create).cmp(&int_operand(target)),
                CompareTarget::Mod => v.map_or(0, |v| v.rev.main).cmp(&int_operand(target)),
                CompareTarget::Lease => v.map_or(0, |v| v.lease).cmp(&int_operand(target)),
            };
            Ok(holds(ord))
        };
        if hits.is_empty() {
            return check(None, &c.key);
        }
        for (k, v) in hits {
            if !check(Some(v), k)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
