//! Writes applied since the last checkpoint, held in memory until then.
//!
//! A batch whose durability is the write-ahead log's does not need redb's
//! copy-on-write either: a non-durable redb commit still copies and
//! checksums every page the batch touched and updates the allocator, a
//! cost every write would pay (measured: `docs/decisions.md`, entry 6).
//! So applied records and lease rows go into the maps here, and a
//! checkpoint writes all of them to redb in one durable commit.
//!
//! A checkpoint writes out a *frozen* generation: when it begins, the
//! pending maps are set aside, read-only, and new writes go into fresh
//! ones, so applying goes on while redb commits (see `store::checkpoint`).
//! A reader ([`Layered`]) looks from the top down and takes the first
//! record it finds:
//!
//! ```text
//! pending   batches applied since the last checkpoint began
//!    |
//! frozen    the generation a checkpoint is writing out, while one runs
//!    |
//! redb      everything a checkpoint has committed
//! ```
//!
//! Revisions rise from redb to the frozen maps to the fresh ones, except
//! for the moment between a checkpoint's commit and the dropping of its
//! frozen maps, when a record is in both redb and the frozen maps: a scan in
//! revision order takes redb's records only below the first one held here.

use std::collections::BTreeMap;
use std::ops::Range;

use roster_proto::mvccpb::KeyValue;

use crate::backend::{decode, Records};
use crate::error::StoreError;
use crate::index::Revision;

/// Records (revision → encoded record) and lease rows (id → encoded lease,
/// `None` for a revoked one) not yet in redb.
#[derive(Default)]
pub struct Pending {
    records: BTreeMap<u128, Vec<u8>>,
    leases: BTreeMap<i64, Option<Vec<u8>>>,
    /// What the records take: revision key and encoded record, summed.
    bytes: u64,
}

/// The bytes a record takes in storage: its revision key and its value.
pub fn record_bytes(record: &[u8]) -> u64 {
    16 + record.len() as u64
}

impl Pending {
    /// Number of pending records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The bytes the pending records take (see [`record_bytes`]).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The encoded record at `rev`, if it is pending.
    pub fn record(&self, rev: Revision) -> Option<&[u8]> {
        self.records.get(&rev.to_u128()).map(Vec::as_slice)
    }

    /// Pending records with revisions in `range`, in revision order.
    pub fn records_in(&self, range: Range<u128>) -> impl Iterator<Item = (u128, &[u8])> {
        self.records
            .range(range)
            .map(|(rev, rec)| (*rev, rec.as_slice()))
    }

    /// The lowest pending revision: redb's records from it on are copies.
    pub fn first_record(&self) -> Option<u128> {
        self.records.keys().next().copied()
    }

    /// Drops the record at `rev` (compacted); false if it was not pending.
    pub fn remove_record(&mut self, rev: Revision) -> bool {
        match self.records.remove(&rev.to_u128()) {
            Some(old) => {
                self.bytes -= record_bytes(&old);
                true
            }
            None => false,
        }
    }

    /// The lease rows to write: `Some` to store, `None` to delete.
    pub fn lease_rows(&self) -> impl Iterator<Item = (i64, Option<&[u8]>)> {
        self.leases.iter().map(|(id, row)| (*id, row.as_deref()))
    }

    /// Records in revision order.
    pub fn records(&self) -> impl Iterator<Item = (u128, &[u8])> {
        self.records.iter().map(|(rev, rec)| (*rev, rec.as_slice()))
    }

    /// The writing half, for one batch: new records go into `self`, reads
    /// of older ones fall through to `frozen`, then to `stored`.
    pub fn writer<'a, T>(
        &'a mut self,
        frozen: Option<&'a Pending>,
        stored: &'a T,
    ) -> PendingWriter<'a, T> {
        PendingWriter {
            pending: self,
            frozen,
            stored,
        }
    }
}

/// The encoded record at `rev` if memory holds it: pending, or frozen for
/// a checkpoint. Otherwise it is in redb.
pub fn held<'a>(
    pending: &'a Pending,
    frozen: Option<&'a Pending>,
    rev: Revision,
) -> Option<&'a [u8]> {
    pending.record(rev).or_else(|| frozen?.record(rev))
}

/// Pending records over the frozen ones over redb's, for readers.
pub struct Layered<'a, T> {
    /// Checked first.
    pub pending: &'a Pending,
    /// Then these, while a checkpoint writes them out.
    pub frozen: Option<&'a Pending>,
    /// Then this.
    pub stored: &'a T,
}

impl<T: Records> Records for Layered<'_, T> {
    fn record(&self, rev: Revision) -> Result<KeyValue, StoreError> {
        match held(self.pending, self.frozen, rev) {
            Some(bytes) => Ok(decode(bytes)?.0),
            None => self.stored.record(rev),
        }
    }
}

/// Pending writes of a batch being applied, over the frozen and redb's
/// records.
pub struct PendingWriter<'a, T> {
    pending: &'a mut Pending,
    frozen: Option<&'a Pending>,
    stored: &'a T,
}

impl<T> PendingWriter<'_, T> {
    /// Stores the encoded record at `rev`.
    pub fn insert_record(&mut self, rev: Revision, record: Vec<u8>) {
        self.pending.bytes += record_bytes(&record);
        if let Some(old) = self.pending.records.insert(rev.to_u128(), record) {
            self.pending.bytes -= record_bytes(&old);
        }
    }

    /// Stores the encoded lease `id`.
    pub fn insert_lease(&mut self, id: i64, row: Vec<u8>) {
        self.pending.leases.insert(id, Some(row));
    }

    /// Deletes the lease `id`.
    pub fn remove_lease(&mut self, id: i64) {
        self.pending.leases.insert(id, None);
    }
}

impl<T: Records> Records for PendingWriter<'_, T> {
    fn record(&self, rev: Revision) -> Result<KeyValue, StoreError> {
        Layered {
            pending: self.pending,
            frozen: self.frozen,
            stored: self.stored,
        }
        .record(rev)
    }
}
