//! Checkpoints beside commits.
//!
//! A checkpoint puts the writes applied since the last one into redb in one
//! durable commit, so the log before them can go. That commit writes every
//! page the writes touched and syncs the file, mostly waiting on the disk.
//! A checkpoint that held the `writing` lock all along would make every
//! commit arriving meanwhile wait too, and under load that adds up to a
//! real share of the time (measured: `docs/decisions.md`, entry 8).
//!
//! So a checkpoint holds `writing` only to set the pending writes aside,
//! as a *frozen* generation with where the store stood at that moment, and
//! gives new writes fresh maps. It then writes the frozen generation to
//! redb with no lock held: batches go on being applied on top, and readers
//! find the frozen records between the fresh ones and redb's. Once redb has
//! committed, the frozen generation is dropped under the state lock, and
//! until then a record can be in both places, which readers allow for.
//!
//! One generation goes to redb at a time (the `checkpointing` lock), so the
//! stored revision and applied index only move forward. A compaction
//! cleanup ([`Store::finish_compaction`]) that finds its records frozen
//! leaves them for a call after the checkpoint, when they are in redb.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use redb::Durability;

use super::{Store, NEVER_COMPACTED};
use crate::backend::{
    ALARMS, KV, META, META_APPLIED_INDEX, META_BYTES, META_COMPACT_REV, META_CURRENT_REV, META_MARK,
};
use crate::error::StoreError;
use crate::lease::LEASES;
use crate::pending::{record_bytes, Pending};

/// Writes set aside for a checkpoint, and where the store stood then.
pub(super) struct Frozen {
    writes: Pending,
    applied_rev: i64,
    compact_rev: i64,
    applied_index: u64,
    /// Consensus's mark for `applied_index`, if one was ever set.
    mark: Option<Arc<[u8]>>,
    /// Every raised alarm, when they changed since the last checkpoint.
    alarms: Option<std::collections::BTreeSet<(u64, i32)>>,
}

impl Frozen {
    /// The records and lease rows being written out.
    pub(super) fn writes(&self) -> &Pending {
        &self.writes
    }
}

impl Store {
    /// Makes everything applied so far durable in storage, and returns the
    /// log index it now holds: log entries up to it are no longer needed.
    /// Batches may be applied meanwhile; they are not included.
    pub fn checkpoint(&self) -> Result<u64, StoreError> {
        let _one_generation = self.checkpointing.lock();
        let frozen = {
            let _writing = self.writing.lock();
            self.freeze()
        };
        self.write_out(&frozen)
    }

    /// [`Store::checkpoint`] for a caller that holds `checkpointing` and
    /// `writing`: a durable batch.
    pub(super) fn write_out_pending(&self) -> Result<u64, StoreError> {
        let frozen = self.freeze();
        self.write_out(&frozen)
    }

    /// Sets the pending writes aside for a checkpoint. The caller holds
    /// `checkpointing` and `writing`. A generation left frozen by a failed
    /// write is returned again, to be retried first.
    pub(super) fn freeze(&self) -> Arc<Frozen> {
        let mut st = self.state.write();
        if let Some(frozen) = &st.frozen {
            return frozen.clone();
        }
        let frozen = Arc::new(Frozen {
            writes: std::mem::take(&mut st.pending),
            applied_rev: st.applied_rev,
            compact_rev: st.pending_compact_rev,
            applied_index: st.applied_index,
            mark: st.mark.clone(),
            alarms: std::mem::take(&mut st.alarms_dirty).then(|| st.alarms.clone()),
        });
        st.frozen = Some(frozen.clone());
        frozen
    }

    /// Writes `frozen` to redb in one durable commit, then forgets it.
    pub(super) fn write_out(&self, frozen: &Frozen) -> Result<u64, StoreError> {
        let mut tx = self.db.read_recursive().begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        // Bytes the records add in redb: a record written again (a retried
        // checkpoint, a replayed log) replaces itself.
        let mut added = 0i64;
        {
            let mut kv = tx.open_table(KV)?;
            for (rev, record) in frozen.writes.records() {
                added += record_bytes(record) as i64;
                if let Some(old) = kv.insert(rev, record)? {
                    added -= record_bytes(old.value()) as i64;
                }
            }
            if let Some(alarms) = &frozen.alarms {
                let mut table = tx.open_table(ALARMS)?;
                table.retain(|_, _| false)?;
                for &alarm in alarms {
                    table.insert(alarm, 0)?;
                }
            }
            let mut rows = tx.open_table(LEASES)?;
            for (id, row) in frozen.writes.lease_rows() {
                match row {
                    Some(row) => rows.insert(id, row)?,
                    None => rows.remove(id)?,
                };
            }
            let mut meta = tx.open_table(META)?;
            meta.insert(META_CURRENT_REV, frozen.applied_rev as u64)?;
            if frozen.compact_rev != NEVER_COMPACTED {
                meta.insert(META_COMPACT_REV, frozen.compact_rev as u64)?;
            }
            meta.insert(META_APPLIED_INDEX, frozen.applied_index)?;
            if let Some(mark) = &frozen.mark {
                tx.open_table(META_BYTES)?.insert(META_MARK, &**mark)?;
            }
        }
        tx.commit()?;
        self.batches.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.write();
        // Counted in redb from the moment the frozen ones no longer are.
        self.stored_bytes.fetch_add(added as u64, Ordering::AcqRel);
        st.frozen = None;
        Ok(frozen.applied_index)
    }
}

#[cfg(test)]
mod tests {
    use roster_proto::etcdserverpb::{CompactionRequest, PutRequest};
    use roster_proto::roster::{command::Kind, Command};

    use super::*;

    fn command(kind: Kind) -> Command {
        Command { kind: Some(kind) }
    }

    /// A cleanup that comes while its records are frozen must not delete
    /// them from redb before the checkpoint puts them there.
    #[test]
    fn compaction_cleanup_waits_for_frozen_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path).unwrap();
        let mut log = Vec::new();
        for i in 0..10u8 {
            let put = PutRequest {
                key: b"a".to_vec(),
                value: vec![i],
                ..Default::default()
            };
            log.push((log.len() as u64 + 1, command(Kind::Put(put))));
        }
        store.apply_logged(&log).unwrap();

        // A checkpoint sets the ten versions aside, and before it writes
        // them out a compaction keeps only the last.
        let one_generation = store.checkpointing.lock();
        let frozen = {
            let _writing = store.writing.lock();
            store.freeze()
        };
        let compact = command(Kind::Compact(CompactionRequest {
            revision: store.revision(),
            physical: false,
        }));
        store.apply_logged(&[(11, compact)]).unwrap();
        store.finish_compaction().unwrap();
        assert_eq!(store.write_out(&frozen).unwrap(), 10);
        drop(one_generation);
        store.finish_compaction().unwrap();

        assert_eq!(store.record_count().unwrap(), 1);
        store.checkpoint().unwrap();
        drop(store);
        // Opening would redo a lost cleanup: there is none left to redo.
        let store = Store::open(&path).unwrap();
        assert_eq!(store.record_count().unwrap(), 1);
    }
}
