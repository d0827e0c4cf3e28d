//! Read-only txns, read a piece at a time.
//!
//! A txn whose ops are all ranges is a read, and may be as long as a range:
//! `Txn().Then(OpGet(prefix, WithPrefix()))` lists a whole key space just as
//! a Range does. Its compares are decided in one look under the lock, at
//! the published revision, which is the txn's revision; then each range of
//! the branch taken is walked in pieces, one after the other, at the txn's
//! revision (or at the older one it asks for), as the one look would have
//! read it. When the branch reads only single keys there is nothing to
//! gain, and the txn is answered in that one look (measured:
//! `docs/decisions.md`, entry 15).
//!
//! If a compaction passes the revision a range is read at before that
//! range is walked to its end, the whole txn is read again in one go under
//! the lock, compares included: nothing of it has been answered yet, so it
//! may be decided afresh at the newest revision, or refused as compacted
//! if a range asks for a revision now gone. etcd holds its read lock over
//! a whole txn, so a compaction waits for the txn there; here the txn
//! gives way instead. Either way its answer is the store at one revision.

use roster_proto::etcdserverpb::{
    request_op, response_op, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};

use super::{to_the_end, Step, Walk};
use crate::apply::{read_txn, read_txn_branch, read_txn_ops};
use crate::error::StoreError;
use crate::store::Store;

impl Store {
    /// Answers a txn that only reads (see [`crate::apply::is_read_only`])
    /// without going through the write path, in one call.
    pub fn txn_read(&self, t: &TxnRequest) -> Result<TxnResponse, StoreError> {
        let mut scan = self.txn_scan(t)?;
        to_the_end(|| scan.step())
    }

    /// Starts answering a read-only txn a piece at a time; refused, as a
    /// read in one go would be, when a compare or a range is.
    pub fn txn_scan<'a>(&'a self, t: &'a TxnRequest) -> Result<TxnScan<'a>, StoreError> {
        self.with_view(|view| {
            let (succeeded, ops) = read_txn_branch(view, t)?;
            let ranges = ops.iter().filter_map(|op| match &op.request {
                Some(request_op::Request::RequestRange(r)) => Some(r),
                _ => None,
            });
            let mut scan = TxnScan {
                store: self,
                t,
                answered: None,
                plan: None,
            };
            if ranges.clone().all(|r| r.range_end.is_empty()) {
                scan.answered = Some(read_txn_ops(view, succeeded, ops)?);
                return Ok(scan);
            }
            let walks = ranges
                .map(|r| Walk::new(r, view.rev, view.compact_rev))
                .collect::<Result<Vec<_>, _>>()?;
            scan.plan = Some(Plan {
                rev: view.rev,
                succeeded,
                walks: walks.into_iter(),
                responses: Vec::with_capacity(ops.len()),
            });
            Ok(scan)
        })
    }
}

/// A read-only txn being answered a piece at a time: see the module
/// comment.
pub struct TxnScan<'a> {
    store: &'a Store,
    t: &'a TxnRequest,
    /// The answer, when the txn reads only single keys: read in one go
    /// as it began.
    answered: Option<TxnResponse>,
    /// The ranges to walk; None when the txn was answered as it began, or
    /// once a compaction passed it, and it is read again in one go.
    pub(super) plan: Option<Plan<'a>>,
}

/// The decided branch of a txn, with its ranges yet to walk.
pub(super) struct Plan<'a> {
    /// The published revision the compares were decided at.
    rev: i64,
    succeeded: bool,
    /// The ranges not yet answered, in the branch's order; the first may
    /// be part walked.
    pub(super) walks: std::vec::IntoIter<Walk<'a>>,
    pub(super) responses: Vec<ResponseOp>,
}

impl TxnScan<'_> {
    /// Answers the next piece: the response once it is whole.
    pub fn step(&mut self) -> Result<Option<TxnResponse>, StoreError> {
        if let Some(answer) = self.answered.take() {
            return Ok(Some(answer));
        }
        if let Some(plan) = &mut self.plan {
            match plan.step(self.store)? {
                Step::Walked(None) => return Ok(None),
                Step::Walked(Some(answer)) => {
                    self.plan = None;
                    return Ok(Some(answer));
                }
                Step::Overtaken => self.plan = None,
            }
        }
        self.store.with_view(|v| read_txn(v, self.t)).map(Some)
    }
}

impl Plan<'_> {
    /// Walks one piece of the first range not yet answered.
    fn step(&mut self, store: &Store) -> Result<Step<TxnResponse>, StoreError> {
        // Not empty: a plan has a span to walk, and is dropped once its
        // last range is answered.
        let walk = self.walks.as_mut_slice().first_mut().expect("a range");
        let range = match walk.step(store)? {
            Step::Walked(Some(range)) => range,
            Step::Walked(None) => return Ok(Step::Walked(None)),
            Step::Overtaken => return Ok(Step::Overtaken),
        };
        self.walks.next();
        self.responses.push(ResponseOp {
            response: Some(response_op::Response::ResponseRange(range)),
        });
        if self.walks.len() > 0 {
            return Ok(Step::Walked(None));
        }
        Ok(Step::Walked(Some(TxnResponse {
            header: Some(ResponseHeader {
                revision: self.rev,
                ..Default::default()
            }),
            succeeded: self.succeeded,
            responses: std::mem::take(&mut self.responses),
        })))
    }
}
