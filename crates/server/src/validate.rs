//! Request checks made before a request reaches the store, with etcd's rules.
//!
//! These run in the RPC layer, so a refused request never enters the log.
//! The store re-checks what it depends on (revisions, sort options, key
//! existence) because a replicated log must never rely on the sender.

use roster_proto::etcdserverpb::{
    request_op::Request, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use roster_store::index::KeyRange;

use crate::error::ServerError;

/// Checks a Range request.
pub fn range(r: &RangeRequest) -> Result<(), ServerError> {
    if r.key.is_empty() {
        return Err(ServerError::EmptyKey);
    }
    if roster_store::read::sort_of(r).is_err() {
        return Err(ServerError::InvalidSortOption);
    }
    Ok(())
}

/// Checks a Put request.
pub fn put(r: &PutRequest) -> Result<(), ServerError> {
    if r.key.is_empty() {
        return Err(ServerError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(ServerError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(ServerError::LeaseProvided);
    }
    Ok(())
}

/// Checks a DeleteRange request.
pub fn delete_range(r: &DeleteRangeRequest) -> Result<(), ServerError> {
    if r.key.is_empty() {
        return Err(ServerError::EmptyKey);
    }
    Ok(())
}

/// Checks a Txn: op counts (etcd counts the largest of compares, success ops
/// and failure ops, and nested txns share what is left of the budget), every
/// op, then the keys written for duplicates.
pub fn txn(t: &TxnRequest, max_ops: usize) -> Result<(), ServerError> {
    shape(t, max_ops)?;
    writes(&t.success)?;
    writes(&t.failure)?;
    Ok(())
}

fn shape(t: &TxnRequest, max_ops: usize) -> Result<(), ServerError> {
    let used = t.compare.len().max(t.success.len()).max(t.failure.len());
    if used > max_ops {
        return Err(ServerError::TooManyOps);
    }
    if t.compare.iter().any(|c| c.key.is_empty()) {
        return Err(ServerError::EmptyKey);
    }
    for op in t.success.iter().chain(&t.failure) {
        request_op(op, max_ops - used)?;
    }
    Ok(())
}

fn request_op(op: &RequestOp, max_ops: usize) -> Result<(), ServerError> {
    match &op.request {
        Some(Request::RequestRange(r)) => range(r),
        Some(Request::RequestPut(p)) => put(p),
        Some(Request::RequestDeleteRange(d)) => delete_range(d),
        Some(Request::RequestTxn(t)) => shape(t, max_ops),
        None => Err(ServerError::EmptyOp),
    }
}

/// What one list of ops (and the txns nested in it) writes.
struct Writes {
    puts: Vec<Vec<u8>>,
    dels: Vec<KeyRange>,
}

impl Writes {
    fn deleted(&self, key: &[u8]) -> bool {
        self.dels.iter().any(|d| d.contains(key))
    }
    fn put(&self, key: &[u8]) -> bool {
        self.puts.iter().any(|k| k.as_slice() == key)
    }
}

/// Refuses ops that would write one key twice in one transaction: two puts
/// of a key, or a put of a key that a delete on the same path also covers.
/// The two branches of a nested txn exclude each other, so a key put in both
/// is fine. Deletes may overlap each other.
fn writes(ops: &[RequestOp]) -> Result<Writes, ServerError> {
    let mut w = Writes {
        puts: Vec::new(),
        dels: Vec::new(),
    };
    for op in ops {
        if let Some(Request::RequestDeleteRange(d)) = &op.request {
            w.dels.push(KeyRange::new(&d.key, &d.range_end));
        }
    }
    let mut nested_dels = Vec::new();
    for op in ops {
        let Some(Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let then = writes(&t.success)?;
        let other = writes(&t.failure)?;
        let mut added = Vec::new();
        for k in &then.puts {
            if w.put(k) || w.deleted(k) {
                return Err(ServerError::DuplicateKey);
            }
            added.push(k.clone());
        }
        for k in &other.puts {
            if (w.put(k) && !then.put(k)) || w.deleted(k) {
                return Err(ServerError::DuplicateKey);
            }
            if !then.put(k) {
                added.push(k.clone());
            }
        }
        w.puts.extend(added);
        nested_dels.extend(then.dels);
        nested_dels.extend(other.dels);
    }
    w.dels.extend(nested_dels);
    for op in ops {
        let Some(Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if w.put(&p.key) || w.deleted(&p.key) {
            return Err(ServerError::DuplicateKey);
        }
        w.puts.push(p.key.clone());
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use roster_proto::etcdserverpb::Compare;

    fn put_op(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }
    fn del_op(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }
    fn txn_op(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }
    fn check(success: Vec<RequestOp>) -> Result<(), ServerError> {
        txn(
            &TxnRequest {
                compare: vec![],
                success,
                failure: vec![],
            },
            128,
        )
    }

    #[test]
    fn duplicate_writes_are_refused_as_etcd_does() {
        let dup = |r: Result<(), ServerError>| matches!(r, Err(ServerError::DuplicateKey));
        assert!(dup(check(vec![put_op("a"), put_op("a")])));
        assert!(dup(check(vec![put_op("b"), del_op("a", "c")])));
        assert!(check(vec![put_op("c"), del_op("a", "c")]).is_ok());
        assert!(check(vec![del_op("a", "c"), del_op("b", "d")]).is_ok());
        assert!(dup(check(vec![
            put_op("a"),
            txn_op(vec![put_op("a")], vec![])
        ])));
        assert!(check(vec![txn_op(vec![put_op("a")], vec![put_op("a")])]).is_ok());
        assert!(dup(check(vec![
            txn_op(vec![del_op("a", "")], vec![]),
            put_op("a")
        ])));
        assert!(check(vec![put_op("a"), txn_op(vec![put_op("b")], vec![])]).is_ok());
    }

    #[test]
    fn op_budget_counts_the_widest_list_and_nesting() {
        let ops = |n: usize| (0..n).map(|i| put_op(&format!("k{i}"))).collect::<Vec<_>>();
        let t = |n| TxnRequest {
            compare: vec![],
            success: ops(n),
            failure: vec![],
        };
        assert!(txn(&t(3), 3).is_ok());
        assert!(matches!(txn(&t(4), 3), Err(ServerError::TooManyOps)));
        let compares = TxnRequest {
            compare: vec![
                Compare {
                    key: b"x".to_vec(),
                    ..Default::default()
                };
                4
            ],
            success: vec![],
            failure: vec![],
        };
        assert!(matches!(txn(&compares, 3), Err(ServerError::TooManyOps)));
        let nested = TxnRequest {
            compare: vec![],
            success: vec![txn_op(ops(2), vec![])],
            failure: vec![],
        };
        assert!(matches!(txn(&nested, 2), Err(ServerError::TooManyOps)));
        assert!(txn(&nested, 3).is_ok());
    }

    #[test]
    fn only_a_sort_target_that_would_be_used_must_be_known() {
        let r = |sort_order, sort_target| RangeRequest {
            key: b"k".to_vec(),
            sort_order,
            sort_target,
            ..Default::default()
        };
        let refused = |r| matches!(range(&r), Err(ServerError::InvalidSortOption));
        // NONE with a target other than KEY sorts ascending: etcd 3.4 dies
        // on an unknown target there, etcd 3.5 refuses it.
        assert!(refused(r(0, 99)));
        assert!(refused(r(2, -1)));
        // An unknown order sorts nothing, so its target is never read.
        assert!(range(&r(99, 99)).is_ok());
        assert!(range(&r(99, 0)).is_ok());
    }

    #[test]
    fn empty_keys_and_empty_ops_are_refused() {
        let empty_compare = TxnRequest {
            compare: vec![Compare::default()],
            success: vec![],
            failure: vec![],
        };
        assert!(matches!(
            txn(&empty_compare, 128),
            Err(ServerError::EmptyKey)
        ));
        assert!(matches!(
            check(vec![RequestOp { request: None }]),
            Err(ServerError::EmptyOp)
        ));
        assert!(matches!(
            check(vec![put_op("")]),
            Err(ServerError::EmptyKey)
        ));
    }
}
