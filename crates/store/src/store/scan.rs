//! Long ranges, read a piece at a time.
//!
//! A reader holds the state lock in shared mode while it reads, and the
//! writer needs it alone to apply a batch and to publish one. A range read
//! in one go holds it, and the server's worker thread, until every value
//! is read. For a whole key space (a discovery client listing every
//! instance, `etcdctl get --prefix /`) that takes long, and the writes
//! beside it wait for all of it (measured: `docs/decisions.md`, entry 14).
//!
//! So a range over a span is a [`RangeScan`], which walks the index
//! [`SCAN_CHUNK`] keys per [`RangeScan::step`], and the server lets other
//! tasks run between steps. Under the lock a piece opens a redb read
//! transaction, walks its keys at the read's revision, builds their
//! `KeyValue`s and copies the values still held in memory (pending, or
//! frozen for a checkpoint). It then lets go of the lock and reads the
//! other values from its transaction. A record never changes once
//! written, and a transaction opened under the lock holds every record
//! that memory did not hold at that moment (a checkpoint forgets its
//! records only after redb has committed them), so each piece finds the
//! values of the versions it saw.
//!
//! Between pieces, batches are applied and published. Their versions are
//! newer than the read's revision, so the walk passes over them. Only a
//! compaction changes what is visible at an old revision. If one passes
//! the read's revision between pieces, the range is read again in one go
//! under the lock, as a single key always is: at the revision it asked
//! for (then refused as compacted) or at the newest.
//!
//! A txn that only reads walks its ranges the same way ([`txn`]).

use std::ops::Bound;
use std::sync::atomic::Ordering;

use parking_lot::RwLockReadGuard;
use redb::{ReadTransaction, ReadableDatabase};
use roster_proto::etcdserverpb::{RangeRequest, RangeResponse};
use roster_proto::mvccpb::KeyValue;

use super::{Frozen, State, Store};
use crate::backend::{decode, Records, KV};
use crate::error::StoreError;
use crate::index::{KeyRange, Revision};
use crate::pending::held;
use crate::read::{check_revision, key_value, RangeRules};

/// Index entries a range walks per hold of the state lock: a short piece
/// of work, with the values read after (`docs/decisions.md`, entry 14).
pub(super) const SCAN_CHUNK: usize = 1024;

impl Store {
    /// Answers a Range request with etcd's semantics, in one call.
    pub fn range(&self, r: &RangeRequest) -> Result<RangeResponse, StoreError> {
        let mut scan = self.range_scan(r)?;
        to_the_end(|| scan.step())
    }

    /// Starts answering a Range request a piece at a time.
    pub fn range_scan<'a>(&'a self, r: &'a RangeRequest) -> Result<RangeScan<'a>, StoreError> {
        if r.range_end.is_empty() {
            // One key: one look under the lock.
            return Ok(RangeScan {
                store: self,
                r,
                walk: None,
            });
        }
        let st = self.state.read();
        let rev = self.published.load(Ordering::Acquire);
        Ok(RangeScan {
            store: self,
            r,
            walk: Some(Walk::new(r, rev, st.compact_rev)?),
        })
    }
}

/// A Range request being answered a piece at a time: see the module
/// comment.
pub struct RangeScan<'a> {
    store: &'a Store,
    r: &'a RangeRequest,
    /// None for a single key, once a compaction passed the walk, or once
    /// it is answered.
    walk: Option<Walk<'a>>,
}

impl RangeScan<'_> {
    /// Answers the next piece: the response once it is whole.
    pub fn step(&mut self) -> Result<Option<RangeResponse>, StoreError> {
        if let Some(walk) = &mut self.walk {
            match walk.step(self.store)? {
                Step::Walked(None) => return Ok(None),
                Step::Walked(Some(response)) => {
                    self.walk = None;
                    return Ok(Some(response));
                }
                Step::Overtaken => self.walk = None,
            }
        }
        self.store.with_view(|v| v.range(self.r)).map(Some)
    }
}

/// Runs `step` until it answers, piece after piece.
fn to_the_end<T>(mut step: impl FnMut() -> Result<Option<T>, StoreError>) -> Result<T, StoreError> {
    loop {
        if let Some(answer) = step()? {
            return Ok(answer);
        }
    }
}

/// What one piece of a walk came to.
enum Step<T> {
    /// The piece was read: the response, if it was the last.
    Walked(Option<T>),
    /// A compaction passed the walk's revision: what it saw may be gone
    /// from the index, and the request is to be read again in one go.
    Overtaken,
}

/// Where a walk over the keys of one Range request stands.
struct Walk<'a> {
    rules: RangeRules<'a>,
    /// The published revision when the walk began, for the header.
    rev: i64,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    /// The last key walked, when there may be more.
    after: Option<Vec<u8>>,
    count: i64,
    kvs: Vec<KeyValue>,
    /// Kept hits of the last piece whose values are in storage.
    stored: Vec<(usize, Revision)>,
}

impl<'a> Walk<'a> {
    /// A walk of `r` in a store published at `rev` and compacted to
    /// `compact_rev`; refused as a one-walk read of `r` would be.
    fn new(r: &'a RangeRequest, rev: i64, compact_rev: i64) -> Result<Self, StoreError> {
        let (start, end) = match KeyRange::new(&r.key, &r.range_end) {
            KeyRange::Span(start, end) => (start, end),
            // One key: the span from it to the key just after it.
            KeyRange::Single(key) => {
                let mut end = key.clone();
                end.push(0);
                (key, Some(end))
            }
        };
        Ok(Walk {
            rules: RangeRules::new(r, check_revision(rev, compact_rev, r.revision)?)?,
            rev,
            start,
            end,
            after: None,
            count: 0,
            kvs: Vec::new(),
            stored: Vec::new(),
        })
    }

    /// Walks and reads the next piece.
    fn step(&mut self, store: &Store) -> Result<Step<RangeResponse>, StoreError> {
        let Some(tx) = self.walk_piece(store)? else {
            return Ok(Step::Overtaken);
        };
        self.read_stored(&tx)?;
        Ok(Step::Walked(self.answer()))
    }

    /// The response, once the walk has reached the end of the span.
    fn answer(&mut self) -> Option<RangeResponse> {
        if self.after.is_some() {
            return None;
        }
        let kvs = std::mem::take(&mut self.kvs);
        Some(self.rules.respond(self.rev, self.count, kvs))
    }

    /// Walks the next piece under the lock, and returns the transaction
    /// its stored values are to be read from; `None` when a compaction
    /// passed the walk's revision.
    fn walk_piece(&mut self, store: &Store) -> Result<Option<ReadTransaction>, StoreError> {
        let st = store.state.read();
        if st.compact_rev > self.rules.at {
            return Ok(None);
        }
        // Opened under the lock: it holds what memory does not.
        let tx = store.db.read_recursive().begin_read()?;
        self.piece(&st, store.scan_chunk)?;
        Ok(Some(tx))
    }

    /// Reads from `tx` the values of the last piece that memory did not
    /// hold, with no lock held.
    fn read_stored(&mut self, tx: &ReadTransaction) -> Result<(), StoreError> {
        if self.stored.is_empty() {
            return Ok(());
        }
        let table = tx.open_table(KV)?;
        for (i, rev) in self.stored.drain(..) {
            self.kvs[i].value = table.record(rev)?.value;
        }
        Ok(())
    }

    /// Walks up to `chunk` index entries after the last one walked.
    fn piece(&mut self, st: &RwLockReadGuard<'_, State>, chunk: usize) -> Result<(), StoreError> {
        let frozen = st.frozen.as_deref().map(Frozen::writes);
        let from = self
            .after
            .as_deref()
            .map_or(Bound::Included(self.start.as_slice()), Bound::Excluded);
        let mut walked = 0;
        let mut last: &[u8] = &[];
        for (key, v) in st
            .index
            .scan(from, self.end.as_deref(), self.rules.at)
            .take(chunk)
        {
            walked += 1;
            last = key;
            let Some(v) = v else { continue };
            self.count += 1;
            if !self.rules.keeps(v, self.kvs.len()) {
                continue;
            }
            let held = self
                .rules
                .with_value
                .then(|| held(&st.pending, frozen, v.rev));
            let value = match held {
                None => Vec::new(),
                Some(Some(bytes)) => decode(bytes)?.0.value,
                Some(None) => {
                    self.stored.push((self.kvs.len(), v.rev));
                    Vec::new()
                }
            };
            self.kvs.push(key_value(key, v, value));
        }
        self.after = (walked == chunk).then(|| last.to_vec());
        Ok(())
    }
}

mod txn;

pub use txn::TxnScan;

#[cfg(test)]
mod tests;
