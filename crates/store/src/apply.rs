//! The write commands: Put, DeleteRange, Txn and Compact.
//!
//! A [`WriteTxn`] is one write transaction of the MVCC model: every change it
//! makes gets the main revision `begin_rev + 1` and the next sub-revision, and
//! the store's revision moves on only if it changed something. So a delete
//! that matched nothing, or a txn whose chosen branch only reads, leaves the
//! revision alone.
//!
//! Every check that can refuse a command runs before its first change: a
//! refused command changes nothing. A txn is evaluated as etcd does: all
//! compares along the chosen path, nested txns included, are decided against
//! the state before the txn; then the ops on that path are checked; then they
//! run in order, each seeing the changes of the ops before it.

use roster_proto::etcdserverpb::{
    request_op, response_op, CompactionRequest, CompactionResponse, DeleteRangeRequest,
    DeleteRangeResponse, LeaseCheckpointRequest, LeaseCheckpointResponse, LeaseGrantRequest,
    LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse, PutRequest, PutResponse,
    RangeRequest, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use roster_proto::mvccpb::{event::EventType, Event, KeyValue};

use crate::backend::{encode, LazyKv, Records};
use crate::error::StoreError;
use crate::index::{KeyIndex, KeyRange, Revision, Version};
use crate::lease::{Lease, LeaseTable};
use crate::pending::PendingWriter;
use crate::read::View;

/// One write transaction in progress.
pub struct WriteTxn<'a> {
    index: &'a mut KeyIndex,
    /// New records and lease rows; older records are read through it.
    table: PendingWriter<'a, LazyKv<'a>>,
    leases: &'a mut LeaseTable,
    begin_rev: i64,
    compact_rev: i64,
    sub: i64,
    events: Vec<Event>,
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

impl<'a> WriteTxn<'a> {
    /// Starts a write transaction on top of revision `begin_rev`.
    pub fn new(
        index: &'a mut KeyIndex,
        table: PendingWriter<'a, LazyKv<'a>>,
        leases: &'a mut LeaseTable,
        begin_rev: i64,
        compact_rev: i64,
    ) -> Self {
        WriteTxn {
            index,
            table,
            leases,
            begin_rev,
            compact_rev,
            sub: 0,
            events: Vec::new(),
        }
    }

    /// True once this transaction has changed something.
    fn changed(&self) -> bool {
        self.sub > 0
    }

    /// The revision reads inside this transaction see: its own changes count.
    pub fn rev(&self) -> i64 {
        self.begin_rev + i64::from(self.changed())
    }

    /// The changes made, as watch events, in the order they were made.
    pub fn into_events(self) -> Vec<Event> {
        self.events
    }

    fn view(&self) -> View<'_> {
        View {
            index: self.index,
            rev: self.rev(),
            compact_rev: self.compact_rev,
            records: &self.table as &dyn Records,
        }
    }

    fn next_rev(&mut self) -> Revision {
        let rev = Revision {
            main: self.begin_rev + 1,
            sub: self.sub,
        };
        self.sub += 1;
        rev
    }

    /// Refuses a put that needs an existing key when there is none.
    fn check_put_key(&self, p: &PutRequest) -> Result<(), StoreError> {
        if (p.ignore_value || p.ignore_lease) && self.index.get(&p.key, self.rev()).is_none() {
            return Err(StoreError::KeyNotFound);
        }
        Ok(())
    }

    /// Refuses a put naming a lease that does not exist.
    fn check_put_lease(&self, p: &PutRequest) -> Result<(), StoreError> {
        if p.lease != 0 && !self.leases.contains(p.lease) {
            return Err(StoreError::LeaseNotFound);
        }
        Ok(())
    }

    /// Refuses a put inside a txn that could not be applied; etcd checks
    /// the key before the lease there.
    fn check_put(&self, p: &PutRequest) -> Result<(), StoreError> {
        self.check_put_key(p)?;
        self.check_put_lease(p)
    }

    /// Applies a Put on its own; etcd checks the lease before the key here.
    pub fn put(&mut self, p: &PutRequest) -> Result<PutResponse, StoreError> {
        self.check_put_lease(p)?;
        self.check_put_key(p)?;
        self.put_checked(p)
    }

    /// Applies a Put whose checks have passed. It cannot be refused any
    /// more: only a storage failure stops it.
    fn put_checked(&mut self, p: &PutRequest) -> Result<PutResponse, StoreError> {
        let at = self.rev();
        // The previous value is read only when asked for; reading can fail,
        // so it is read before the index changes.
        let prev_kv = match (p.prev_kv || p.ignore_value)
            .then(|| self.index.get(&p.key, at).copied())
            .flatten()
        {
            Some(v) => Some(self.table.record(v.rev)?),
            None => None,
        };
        let rev = self.next_rev();
        let (prev, version) = self.index.push_next(&p.key, at, |prev| Version {
            rev,
            create: prev.map_or(rev.main, |v| v.create),
            version: prev.map_or(1, |v| v.version + 1),
            lease: match prev {
                Some(v) if p.ignore_lease => v.lease,
                _ => p.lease,
            },
            tombstone: false,
        });
        let value = match (&prev_kv, p.ignore_value) {
            (Some(kv), true) => kv.value.clone(),
            _ => p.value.clone(),
        };
        let lease = version.lease;
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: version.create,
            mod_revision: rev.main,
            version: version.version,
            value,
            lease,
        };
        self.table.insert_record(rev, encode(&kv, false));
        self.leases
            .reattach(&p.key, prev.map_or(0, |v| v.lease), lease);
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: None,
        });
        Ok(PutResponse {
            header: header(rev.main),
            prev_kv: if p.prev_kv { prev_kv } else { None },
        })
    }

    /// Applies a DeleteRange; deleting nothing is not a change.
    pub fn delete_range(
        &mut self,
        d: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, StoreError> {
        let range = KeyRange::new(&d.key, &d.range_end);
        let doomed: Vec<(Vec<u8>, Version)> = self
            .index
            .range(&range, self.rev())
            .map(|(k, v)| (k.to_vec(), *v))
            .collect();
        let mut prev_kvs = Vec::new();
        if d.prev_kv {
            let view = self.view();
            for (k, _) in &doomed {
                prev_kvs.extend(view.get(k)?);
            }
        }
        for (key, v) in &doomed {
            self.delete_key(key, v.lease)?;
        }
        Ok(DeleteRangeResponse {
            header: header(self.rev()),
            deleted: doomed.len() as i64,
            prev_kvs,
        })
    }

    /// Writes a tombstone for a live key and detaches it from its lease.
    fn delete_key(&mut self, key: &[u8], lease: i64) -> Result<(), StoreError> {
        let rev = self.next_rev();
        let kv = KeyValue {
            key: key.to_vec(),
            mod_revision: rev.main,
            ..Default::default()
        };
        self.table.insert_record(rev, encode(&kv, true));
        self.index.push(
            key,
            Version {
                rev,
                create: 0,
                version: 0,
                lease: 0,
                tombstone: true,
            },
        );
        self.leases.reattach(key, lease, 0);
        self.events.push(Event {
            r#type: EventType::Delete as i32,
            kv: Some(kv),
            prev_kv: None,
        });
        Ok(())
    }

    /// Applies a LeaseGrant. The id and the TTL arrive final: the proposer
    /// chose the id and applied the TTL bounds, so replicas agree.
    pub fn lease_grant(&mut self, g: &LeaseGrantRequest) -> Result<LeaseGrantResponse, StoreError> {
        if g.id == 0 {
            return Err(StoreError::Invalid("lease id 0"));
        }
        if self.leases.contains(g.id) {
            return Err(StoreError::LeaseExists);
        }
        let lease = Lease {
            ttl: g.ttl,
            remaining: -1,
            keys: Default::default(),
        };
        self.table.insert_lease(g.id, lease.encode().to_vec());
        self.leases.insert(g.id, lease);
        Ok(LeaseGrantResponse {
            header: header(self.rev()),
            id: g.id,
            ttl: g.ttl,
            error: String::new(),
        })
    }

    /// Applies a LeaseRevoke: every attached key is deleted, all at one
    /// revision, then the lease is gone.
    pub fn lease_revoke(
        &mut self,
        r: &LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse, StoreError> {
        let lease = self.leases.remove(r.id).ok_or(StoreError::LeaseNotFound)?;
        self.table.remove_lease(r.id);
        for key in &lease.keys {
            self.delete_key(key, 0)?;
        }
        Ok(LeaseRevokeResponse {
            header: header(self.rev()),
        })
    }

    /// Applies a LeaseCheckpoint: records remaining TTLs; leases that are
    /// gone by now are skipped.
    pub fn lease_checkpoint(
        &mut self,
        c: &LeaseCheckpointRequest,
    ) -> Result<LeaseCheckpointResponse, StoreError> {
        for cp in &c.checkpoints {
            if let Some(l) = self.leases.checkpoint(cp.id, cp.remaining_ttl) {
                let row = l.encode().to_vec();
                self.table.insert_lease(cp.id, row);
            }
        }
        Ok(LeaseCheckpointResponse {
            header: header(self.rev()),
        })
    }

    /// Applies a Txn: decide the path, check it, then run it.
    pub fn txn(&mut self, t: &TxnRequest) -> Result<TxnResponse, StoreError> {
        let view = self.view();
        let mut path = Vec::new();
        decide_path(&view, t, &mut path)?;
        // etcd checks every put on the path before any range.
        check_path(&view, t, &path, &mut 0, Check::Puts(&|p| self.check_put(p)))?;
        check_path(&view, t, &path, &mut 0, Check::Ranges)?;
        let mut at = 0;
        let mut resp = self.run(t, &path, &mut at)?;
        resp.header = header(self.rev());
        Ok(resp)
    }

    fn run(
        &mut self,
        t: &TxnRequest,
        path: &[bool],
        at: &mut usize,
    ) -> Result<TxnResponse, StoreError> {
        let succeeded = path[*at];
        *at += 1;
        let ops = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(request_op::Request::RequestTxn(inner)) => Some(
                    response_op::Response::ResponseTxn(self.run(inner, path, at)?),
                ),
                _ => self.run_leaf(op)?,
            };
            responses.push(ResponseOp { response });
        }
        // etcd gives nested txn responses an empty header; the top-level
        // one is filled in by the caller.
        Ok(TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded,
            responses,
        })
    }

    /// Runs a txn op that is not a txn. Apart from [`Self::run`], which
    /// recurses once per nested txn, so that its frame stays small (an
    /// unoptimized build gives every arm's temporaries their own slots).
    #[inline(never)]
    fn run_leaf(&mut self, op: &RequestOp) -> Result<Option<response_op::Response>, StoreError> {
        use request_op::Request as Rq;
        use response_op::Response as Rs;
        Ok(match &op.request {
            Some(Rq::RequestRange(r)) => Some(Rs::ResponseRange(self.view().range(r)?)),
            Some(Rq::RequestPut(p)) => Some(Rs::ResponsePut(self.put_checked(p)?)),
            Some(Rq::RequestDeleteRange(d)) => Some(Rs::ResponseDeleteRange(self.delete_range(d)?)),
            Some(Rq::RequestTxn(_)) | None => None,
        })
    }

    /// Applies a Compact: records the new compacted revision. Reads below
    /// it are refused once the batch is published; the history it passed
    /// is dropped from the index and from storage after that (see `Store`).
    pub fn compact(&mut self, c: &CompactionRequest) -> Result<CompactionResponse, StoreError> {
        if c.revision <= self.compact_rev {
            return Err(StoreError::Compacted);
        }
        if c.revision > self.begin_rev {
            return Err(StoreError::FutureRevision);
        }
        self.compact_rev = c.revision;
        Ok(CompactionResponse {
            header: header(self.begin_rev),
        })
    }

    /// The compacted revision after this transaction.
    pub fn compact_rev(&self) -> i64 {
        self.compact_rev
    }
}

/// True when every op in both branches is a plain range: such a txn cannot
/// write, whatever its compares decide, and is served as a read.
pub fn is_read_only(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| matches!(op.request, Some(request_op::Request::RequestRange(_))))
}

/// Evaluates a read-only txn (see [`is_read_only`]) against a view.
pub fn read_txn(view: &View<'_>, t: &TxnRequest) -> Result<TxnResponse, StoreError> {
    let (succeeded, ops) = read_txn_branch(view, t)?;
    read_txn_ops(view, succeeded, ops)
}

/// Answers the ranges `ops` of a read-only txn's branch, decided as
/// `succeeded`, in one walk each.
pub(crate) fn read_txn_ops(
    view: &View<'_>,
    succeeded: bool,
    ops: &[RequestOp],
) -> Result<TxnResponse, StoreError> {
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        if let Some(request_op::Request::RequestRange(r)) = &op.request {
            let response = Some(response_op::Response::ResponseRange(view.range(r)?));
            responses.push(ResponseOp { response });
        }
    }
    Ok(TxnResponse {
        header: Some(ResponseHeader {
            revision: view.rev,
            ..Default::default()
        }),
        succeeded,
        responses,
    })
}

/// Decides a read-only txn's compares and checks its ranges: whether it
/// succeeded, and the ops of the branch it takes.
pub(crate) fn read_txn_branch<'t>(
    view: &View<'_>,
    t: &'t TxnRequest,
) -> Result<(bool, &'t [RequestOp]), StoreError> {
    let mut path = Vec::new();
    decide_path(view, t, &mut path)?;
    check_path(view, t, &path, &mut 0, Check::Ranges)?;
    Ok((path[0], if path[0] { &t.success } else { &t.failure }))
}

/// Decides every compare along the chosen path, depth first, before any op
/// runs: `path[i]` is whether the i-th txn on the path succeeded.
fn decide_path(view: &View<'_>, t: &TxnRequest, path: &mut Vec<bool>) -> Result<(), StoreError> {
    let mut ok = true;
    for c in &t.compare {
        if !view.compare(c)? {
            ok = false;
            break;
        }
    }
    path.push(ok);
    for op in if ok { &t.success } else { &t.failure } {
        if let Some(request_op::Request::RequestTxn(inner)) = &op.request {
            decide_path(view, inner, path)?;
        }
    }
    Ok(())
}

/// Which ops a pass of [`check_path`] checks.
#[derive(Clone, Copy)]
enum Check<'f> {
    /// Puts, with the given check.
    Puts(&'f dyn Fn(&PutRequest) -> Result<(), StoreError>),
    /// Ranges: revision and sort options.
    Ranges,
}

/// Checks ops of one kind on the chosen path against the state before the
/// txn.
fn check_path(
    view: &View<'_>,
    t: &TxnRequest,
    path: &[bool],
    at: &mut usize,
    check: Check<'_>,
) -> Result<(), StoreError> {
    let ok = path[*at];
    *at += 1;
    for op in if ok { &t.success } else { &t.failure } {
        match (&op.request, &check) {
            (Some(request_op::Request::RequestRange(r)), Check::Ranges) => check_range(view, r)?,
            (Some(request_op::Request::RequestPut(p)), Check::Puts(f)) => f(p)?,
            (Some(request_op::Request::RequestTxn(inner)), _) => {
                check_path(view, inner, path, at, check)?
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_range(view: &View<'_>, r: &RangeRequest) -> Result<(), StoreError> {
    crate::read::sort_of(r)?;
    view.check_revision(r.revision).map(|_| ())
}
