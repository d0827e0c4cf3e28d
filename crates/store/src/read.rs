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
    Ok(KeyValue {
        key: key.to_vec(),
        create_revision: v.create,
        mod_revision: v.rev.main,
        version: v.version,
        value,
        lease: v.lease,
    })
}

impl View<'_> {
    /// Checks that `revision` (0 or less meaning "the view's own") is
    /// readable, and returns the revision to read at.
    pub fn check_revision(&self, revision: i64) -> Result<i64, StoreError> {
        if revision <= 0 {
            return Ok(self.rev);
        }
        if revision > self.rev {
            return Err(StoreError::FutureRevision);
        }
        if revision < self.compact_rev {
            return Err(StoreError::Compacted);
        }
        Ok(revision)
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

    /// Answers a Range request with etcd's semantics.
    ///
    /// The order of steps follows etcd so that corner cases agree: `count` is
    /// every key in the range at the revision; the min/max revision filters
    /// apply next; without an explicit sort order but with a non-key sort
    /// target the results are cut to the limit in key order *before* being
    /// sorted ascending by the target, exactly as etcd does.
    pub fn range(&self, r: &RangeRequest) -> Result<RangeResponse, StoreError> {
        let at = self.check_revision(r.revision)?;
        let range = KeyRange::new(&r.key, &r.range_end);
        let mut hits: Vec<(&[u8], &Version)> = self.index.range(&range, at).collect();
        let header = Some(ResponseHeader {
            revision: self.rev,
            ..Default::default()
        });
        let count = hits.len() as i64;
        if r.count_only {
            return Ok(RangeResponse {
                header,
                kvs: vec![],
                more: false,
                count,
            });
        }

        let filtered = r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        let order =
            SortOrder::try_from(r.sort_order).map_err(|_| StoreError::Invalid("sort order"))?;
        let target =
            SortTarget::try_from(r.sort_target).map_err(|_| StoreError::Invalid("sort target"))?;
        if r.limit > 0 && order == SortOrder::None && !filtered {
            // One more than asked for, so `more` can be told.
            hits.truncate(r.limit.saturating_add(1) as usize);
        }
        hits.retain(|(_, v)| {
            !(r.max_mod_revision != 0 && v.rev.main > r.max_mod_revision
                || r.min_mod_revision != 0 && v.rev.main < r.min_mod_revision
                || r.max_create_revision != 0 && v.create > r.max_create_revision
                || r.min_create_revision != 0 && v.create < r.min_create_revision)
        });

        let with_value = !r.keys_only || target == SortTarget::Value;
        let mut kvs = hits
            .into_iter()
            .map(|(k, v)| materialize(self, k, v, with_value))
            .collect::<Result<Vec<_>, _>>()?;

        let order = match (order, target) {
            (SortOrder::None, SortTarget::Key) => SortOrder::None,
            (SortOrder::None, _) => SortOrder::Ascend,
            (o, _) => o,
        };
        if order != SortOrder::None {
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
        Ok(RangeResponse {
            header,
            kvs,
            more,
            count,
        })
    }

    /// Evaluates one txn compare with etcd's rules: a compare over a range
    /// holds only if it holds for every key in it; a missing key compares as a
    /// zero `KeyValue`, except that a VALUE compare on a missing key fails.
    pub fn compare(&self, c: &Compare) -> Result<bool, StoreError> {
        use compare::{CompareResult, CompareTarget, TargetUnion};
        let target =
            CompareTarget::try_from(c.target).map_err(|_| StoreError::Invalid("compare target"))?;
        let result =
            CompareResult::try_from(c.result).map_err(|_| StoreError::Invalid("compare result"))?;
        let range = KeyRange::new(&c.key, &c.range_end);
        let hits: Vec<(&[u8], &Version)> = self.index.range(&range, self.rev).collect();
        if hits.is_empty() && target == CompareTarget::Value {
            return Ok(false);
        }

        let holds = |ord: Ordering| match result {
            CompareResult::Equal => ord == Ordering::Equal,
            CompareResult::NotEqual => ord != Ordering::Equal,
            CompareResult::Greater => ord == Ordering::Greater,
            CompareResult::Less => ord == Ordering::Less,
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
