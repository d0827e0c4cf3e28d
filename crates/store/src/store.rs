//! The [`Store`]: opening, batched application, publication and reads.
//!
//! Concurrency rules, which keep readers off the fsync path:
//! - One writer at a time (the `writing` lock) applies a batch. It holds the
//!   state lock while it applies the batch in memory: the index, and the
//!   new records and lease rows as *pending* writes (see [`crate::pending`]).
//!   [`Store::apply_batch`] then writes them to redb with an fsync;
//!   [`Store::apply_logged`] leaves them pending for the next
//!   [`Store::checkpoint`], their durability being the log's. Only then
//!   does it take the lock again to *publish*: readers move to the batch's
//!   final revision.
//! - Readers take the lock in shared mode, open a redb read transaction while
//!   holding it, and read at the published revision, pending records first.
//!   Versions in the index newer than that belong to a batch that is not
//!   yet durable; they are invisible.
//!   A range over a span takes the lock a piece at a time (see [`scan`]).
//! - A checkpoint sets the pending writes aside (holding `writing` only for
//!   that), writes them to redb while batches go on being applied, commits,
//!   and only then takes the lock to forget them: a reader finds each record
//!   in one place or the other, or both (see [`checkpoint`]).
//! - A compaction raises the compacted revision at publication: reads below
//!   it are refused from then on. The history it passed is dropped later,
//!   in [`Store::sweep_compacted`]: from the index a piece at a time, then
//!   from redb, so that neither part holds writes up (measured:
//!   `docs/decisions.md`, entries 16 and 17). Reads at or above the
//!   compacted revision never need what is dropped. A reader that saw the
//!   index before a drop opened its read transaction before it too, so the
//!   records it may ask for are still in its snapshot.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};

mod checkpoint;
mod hash;
mod install;
mod scan;
use checkpoint::Frozen;
pub use hash::{DbHash, KvHash};
use roster_proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmMember, AlarmRequest, AlarmResponse, AlarmType,
    CompactionResponse, DeleteRangeResponse, LeaseCheckpointResponse, LeaseGrantResponse,
    LeaseRevokeResponse, PutResponse, RequestOp, ResponseHeader, TxnRequest, TxnResponse,
};
use roster_proto::mvccpb::{event::EventType, Event, KeyValue};
use roster_proto::roster::{command::Kind, Command};
pub use scan::{RangeScan, TxnScan};

use crate::apply::WriteTxn;
use crate::backend::{
    decode, LazyKv, ALARMS, KV, META, META_APPLIED_INDEX, META_BYTES, META_COMPACT_REV,
    META_CURRENT_REV, META_MARK,
};
use crate::error::StoreError;
use crate::index::{KeyIndex, KeyRange, Revision, Version};
use crate::lease::{Lease, LeaseTable, LEASES};
use crate::pending::{record_bytes, Layered, Pending};
use crate::read::View;

/// The revision of an empty store, as in etcd: the first write makes 2.
const FIRST_REV: i64 = 1;
/// The compacted revision of a store that was never compacted.
const NEVER_COMPACTED: i64 = -1;
/// redb's page cache. redb would cache up to 1 GiB by default, which ends
/// up holding the whole database in the process's own memory after the
/// index rebuild scans it; the kernel's page cache keeps the file at hand
/// anyway, so a small cache for the hot B-tree pages is enough: a cache miss
/// costs a `pread` from memory, not a disk read. Half of it may hold a
/// write transaction's dirty pages; a checkpoint of 512 records dirties a
/// few hundred KiB. Measured against larger caches: `docs/decisions.md`,
/// entry 10.
const CACHE_BYTES: usize = 2 << 20;

/// Compacted records settled per [`Store::finish_compaction`] step, in one
/// redb transaction. The checkpointer takes one step at a time, so a
/// checkpoint never waits long behind them (`docs/decisions.md`, entry 16).
pub const SWEEP_BATCH: usize = 4096;

/// How long [`Store::defragment`] waits for transactions in progress.
pub const DEFRAG_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Most compaction passes one defragment makes.
const DEFRAG_PASSES: usize = 64;

/// Index keys a [`Store::sweep_compacted`] goes over for a compaction per
/// hold of the state lock: a short piece, so that writes waiting for the
/// lock are not held up (`docs/decisions.md`, entry 17).
pub(crate) const PRUNE_CHUNK: usize = 4096;

/// What one [`Store::sweep_compacted`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Index keys gone over to drop the history a compaction passed.
    pub pruned: usize,
    /// Compacted records deleted from storage, or forgotten while pending.
    pub settled: usize,
    /// Compacted records still to settle, including those left for after
    /// a checkpoint in progress.
    pub left: usize,
    /// Whether the index still holds history a compaction passed.
    pub pruning: bool,
}

impl Swept {
    /// Nothing a compaction passed is left, in the index or in storage.
    pub fn done(&self) -> bool {
        !self.pruning && self.left == 0
    }

    /// The sweep did some work, so another may do more.
    pub fn progressed(&self) -> bool {
        self.pruned > 0 || self.settled > 0
    }
}

/// The index's part of a compaction, a piece at a time.
///
/// A newer compaction during a pass raises `at` and keeps the cursor: the
/// keys ahead are pruned at the new revision on this lap, and the pass
/// goes round once more from the first key to where it stood. Starting
/// again from the first key instead would never reach the last ones if
/// compactions came faster than a lap.
struct Pruning {
    /// The newest compacted revision.
    at: i64,
    /// The last key gone over; `None` at the start of a lap.
    after: Option<Vec<u8>>,
    /// Where the pass ends once it has gone round: the cursor when the
    /// newest compaction came, if it came mid-lap; `None` for the end of
    /// the key space.
    stop: Option<Vec<u8>>,
}

/// A successful command's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandResponse {
    /// Answer to a Put.
    Put(PutResponse),
    /// Answer to a DeleteRange.
    DeleteRange(DeleteRangeResponse),
    /// Answer to a Txn.
    Txn(TxnResponse),
    /// Answer to a Compact.
    Compact(CompactionResponse),
    /// Answer to a LeaseGrant.
    LeaseGrant(LeaseGrantResponse),
    /// Answer to a LeaseRevoke.
    LeaseRevoke(LeaseRevokeResponse),
    /// Answer to a LeaseCheckpoint.
    LeaseCheckpoint(LeaseCheckpointResponse),
    /// Answer to an Alarm.
    Alarm(AlarmResponse),
}

/// What applying one command produced.
#[derive(Debug)]
pub struct Applied {
    /// The answer for the client, or why the command was refused.
    pub response: Result<CommandResponse, StoreError>,
    /// The changes the command made, for watchers, in order.
    pub events: Vec<Event>,
}

struct State {
    index: KeyIndex,
    leases: LeaseTable,
    /// Highest revision applied (equal to the published revision between
    /// batches).
    applied_rev: i64,
    /// Reads below this are refused.
    compact_rev: i64,
    /// Compacted revision decided by applied commands, not yet published.
    pending_compact_rev: i64,
    applied_index: u64,
    /// Consensus's mark, set with the batch that brought `applied_index`
    /// here (see [`Store::apply_marked`]).
    mark: Option<Arc<[u8]>>,
    /// Applied records and lease rows the next checkpoint writes to redb.
    pending: Pending,
    /// The writes a checkpoint in progress is putting in redb.
    frozen: Option<Arc<Frozen>>,
    /// A compaction's pass over the index, when one is under way.
    pruning: Option<Pruning>,
    /// Raised alarms: (member id, `AlarmType`).
    alarms: BTreeSet<(u64, i32)>,
    /// The alarms changed since the last checkpoint set writes aside.
    alarms_dirty: bool,
}

/// The MVCC key-value store. Cheap to share behind an `Arc`.
pub struct Store {
    /// The database. Shared by every transaction; taken whole only by
    /// [`Store::defragment`], which needs redb to itself.
    db: RwLock<Database>,
    /// The database file.
    path: PathBuf,
    state: RwLock<State>,
    /// Records dropped from the index, still to be deleted from redb.
    garbage: Mutex<Vec<Revision>>,
    /// Highest revision readers may see: everything up to it is durable.
    /// Written only under the state's write lock, so a reader holding the
    /// read lock sees it agree with the index; read without the lock by
    /// [`Store::revision`], for response headers.
    published: AtomicI64,
    /// Durable commits made by `apply_batch` and `checkpoint`: with group
    /// commit, fewer than the commands applied.
    batches: AtomicU64,
    /// Held by whoever applies a batch, through its publication, and by a
    /// checkpoint while it sets the pending writes aside. A compaction
    /// sweep changes what is pending under the state lock alone.
    writing: Mutex<()>,
    /// Held through a whole checkpoint, and by a durable `apply_batch`: one
    /// generation of writes goes to redb at a time, in revision order.
    /// Taken before `writing`.
    checkpointing: Mutex<()>,
    /// Index entries a long range walks per hold of the state lock (see
    /// `store::scan`); tests make it small.
    scan_chunk: usize,
    /// [`PRUNE_CHUNK`]; tests make it small.
    prune_chunk: usize,
    /// Bytes of the records in redb (see [`crate::pending::record_bytes`]):
    /// with the pending ones, the space in use.
    stored_bytes: AtomicU64,
}

impl Store {
    /// Opens (or creates) the store in the file `path` and rebuilds the index.
    ///
    /// A damaged file is an error, never a store with other data: redb
    /// verifies the checksum of every page of the committed trees before
    /// the open returns (`set_check_integrity_on_open`; a plain open
    /// trusts a file shut down cleanly and reads altered pages as they
    /// are), and every record, lease row and counter read to rebuild the
    /// index is checked against what the store writes. When the newest
    /// commit fails its checksums and the one before it verifies, redb
    /// goes back to that one, as after a crash in a commit: the store is
    /// then as it was at an earlier checkpoint, with its applied index,
    /// and the log above it replays the rest or refuses to start.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = open_db(path)?;
        let loaded = load(&db)?;
        let store = Store {
            db: RwLock::new(db),
            path: path.to_path_buf(),
            state: RwLock::new(loaded.state),
            garbage: Mutex::new(loaded.garbage),
            published: AtomicI64::new(loaded.revision),
            batches: AtomicU64::new(0),
            writing: Mutex::new(()),
            checkpointing: Mutex::new(()),
            scan_chunk: scan::SCAN_CHUNK,
            prune_chunk: PRUNE_CHUNK,
            stored_bytes: AtomicU64::new(loaded.stored_bytes),
        };
        store.finish_compaction()?;
        Ok(store)
    }

    /// The newest durable revision. Lock-free: every response header asks
    /// for it, and must not wait behind a batch being applied.
    pub fn revision(&self) -> i64 {
        self.published.load(Ordering::Acquire)
    }

    /// The revision history has been compacted to; -1 if never compacted.
    pub fn compact_revision(&self) -> i64 {
        self.state.read().compact_rev
    }

    /// Records applied but not yet written to redb (see
    /// [`Store::checkpoint`]).
    pub fn pending_records(&self) -> usize {
        self.state.read().pending.len()
    }

    /// The log index of the last applied command.
    pub fn applied_index(&self) -> u64 {
        self.state.read().applied_index
    }

    /// How many durable commits (`apply_batch` batches and checkpoints) the
    /// store has made since open: one fsync each.
    pub fn batches_committed(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// The database, for snapshots.
    pub(crate) fn database(&self) -> parking_lot::RwLockReadGuard<'_, Database> {
        self.db.read_recursive()
    }

    /// Gives the space of deleted records back to the file system, as
    /// etcd's defragment does: redb's compaction moves the live pages
    /// down and truncates the file. It needs redb to itself, so
    /// transactions begun from now on wait for it, and it waits (up to
    /// `DEFRAG_WAIT`, 10 s) for the ones in progress to end: a snapshot being
    /// streamed holds one, and then defragment fails rather than wait.
    pub fn defragment(&self) -> Result<(), StoreError> {
        let deadline = std::time::Instant::now() + DEFRAG_WAIT;
        let mut db = self.db.write();
        // Each call moves what it can; repeat until nothing moves.
        let mut passes = 0;
        while passes < DEFRAG_PASSES {
            match db.compact() {
                Ok(true) => passes += 1,
                Ok(false) => return Ok(()),
                Err(redb::CompactionError::TransactionInProgress)
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Err(e) => return Err(StoreError::Storage(format!("defragment: {e}"))),
            }
        }
        Ok(())
    }

    /// The size of the database file in bytes (as etcd reports `dbSize`).
    pub fn size_on_disk(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Applies `commands`, numbered by their log index, in order, makes them
    /// durable in one commit, and publishes them to readers.
    ///
    /// Per-command refusals are in each [`Applied`]; an `Err` here means
    /// storage failed and the node must stop: nothing of the batch was
    /// acknowledged, and the in-memory state may be ahead of the disk.
    pub fn apply_batch(&self, commands: &[(u64, Command)]) -> Result<Vec<Applied>, StoreError> {
        self.apply(commands, true, None)
    }

    /// Applies `commands` like [`Store::apply_batch`], for a caller that has
    /// already made them durable in a log (`roster-raft`'s): their
    /// records stay pending in memory, readable, and reach storage (and
    /// survive a crash) only when a later [`Store::checkpoint`] writes them
    /// out. The batch is published to readers at once: its durability is
    /// the log's.
    pub fn apply_logged(&self, commands: &[(u64, Command)]) -> Result<Vec<Applied>, StoreError> {
        self.apply(commands, false, None)
    }

    /// Applies `commands` like [`Store::apply_logged`], all of them from
    /// the log entry at `index` (which may hold none: the applied index
    /// still moves to it), and records `mark` as where consensus stands.
    ///
    /// The mark is set under the same lock as the batch's effects, so any
    /// checkpoint holds both or neither: after a crash, [`Store::mark`]
    /// describes exactly the applied state that survived, and consensus
    /// re-applies from there, never twice.
    pub fn apply_marked(
        &self,
        index: u64,
        commands: &[(u64, Command)],
        mark: &[u8],
    ) -> Result<Vec<Applied>, StoreError> {
        self.apply(commands, false, Some((index, mark)))
    }

    /// The mark recorded by the last [`Store::apply_marked`] or
    /// [`Store::install_marked`]; after a reopen, the one its last
    /// checkpoint held. `None` if none was ever recorded.
    pub fn mark(&self) -> Option<Vec<u8>> {
        self.state.read().mark.as_deref().map(<[u8]>::to_vec)
    }

    fn apply(
        &self,
        commands: &[(u64, Command)],
        durable: bool,
        mark: Option<(u64, &[u8])>,
    ) -> Result<Vec<Applied>, StoreError> {
        let _one_generation = durable.then(|| self.checkpointing.lock());
        let _writing = self.writing.lock();
        // Older records a command reads (a previous value, a txn's range)
        // come from here when they are no longer pending.
        let db = self.db.read_recursive();
        let stored = LazyKv::new(&db);
        let mut out = Vec::with_capacity(commands.len());
        let (rev, compact) = {
            let mut st = self.state.write();
            let st = &mut *st;
            for (log_index, cmd) in commands {
                // Decided from applied state alone, so every member
                // answers alike.
                let early = match &cmd.kind {
                    // The NOSPACE alarm caps the store: what would take
                    // space is refused, as etcd's capped applier does.
                    Some(kind) if takes_space(kind) && has_nospace(&st.alarms) => {
                        Some(Err(StoreError::NoSpace))
                    }
                    Some(Kind::Alarm(a)) => {
                        let (resp, changed) = apply_alarm(&mut st.alarms, a, st.applied_rev);
                        st.alarms_dirty |= changed;
                        Some(Ok(CommandResponse::Alarm(resp)))
                    }
                    _ => None,
                };
                if let Some(response) = early {
                    st.applied_index = st.applied_index.max(*log_index);
                    out.push(Applied {
                        response,
                        events: Vec::new(),
                    });
                    continue;
                }
                let mut w = WriteTxn::new(
                    &mut st.index,
                    st.pending
                        .writer(st.frozen.as_deref().map(Frozen::writes), &stored),
                    &mut st.leases,
                    st.applied_rev,
                    st.pending_compact_rev,
                );
                let response = match &cmd.kind {
                    Some(Kind::Put(p)) => w.put(p).map(CommandResponse::Put),
                    Some(Kind::DeleteRange(d)) => {
                        w.delete_range(d).map(CommandResponse::DeleteRange)
                    }
                    Some(Kind::Txn(t)) => w.txn(t).map(CommandResponse::Txn),
                    Some(Kind::Compact(c)) => w.compact(c).map(CommandResponse::Compact),
                    Some(Kind::LeaseGrant(g)) => w.lease_grant(g).map(CommandResponse::LeaseGrant),
                    Some(Kind::LeaseRevoke(r)) => {
                        w.lease_revoke(r).map(CommandResponse::LeaseRevoke)
                    }
                    Some(Kind::LeaseCheckpoint(c)) => {
                        w.lease_checkpoint(c).map(CommandResponse::LeaseCheckpoint)
                    }
                    Some(Kind::Alarm(_)) => unreachable!("applied above"),
                    None => Err(StoreError::Invalid("empty command")),
                };
                if let Err(e) = &response {
                    if e.is_fatal() {
                        return Err(StoreError::Storage(e.to_string()));
                    }
                }
                st.applied_rev = w.rev();
                st.pending_compact_rev = w.compact_rev();
                st.applied_index = st.applied_index.max(*log_index);
                out.push(Applied {
                    response,
                    events: w.into_events(),
                });
            }
            if let Some((index, mark)) = mark {
                st.applied_index = st.applied_index.max(index);
                st.mark = Some(mark.into());
            }
            (st.applied_rev, st.pending_compact_rev)
        };
        drop(stored);
        if durable {
            // Holding both locks: nothing else is frozen or applied meanwhile.
            self.write_out_pending()?;
        }

        let mut st = self.state.write();
        self.published.store(rev, Ordering::Release);
        if compact > st.compact_rev {
            st.compact_rev = compact;
            match &mut st.pruning {
                // The keys the pass went over may hold more that this one
                // passed: it goes round to them again.
                Some(p) => {
                    p.at = compact;
                    p.stop = p.after.clone();
                }
                None => {
                    st.pruning = Some(Pruning {
                        at: compact,
                        after: None,
                        stop: None,
                    })
                }
            }
        }
        Ok(out)
    }

    /// Drops what compactions passed from the index and from storage.
    /// Safe to call at any time; a no-op when there is nothing to do.
    /// Records frozen for a checkpoint in progress on another thread are
    /// left for a call after it.
    pub fn finish_compaction(&self) -> Result<(), StoreError> {
        loop {
            let swept = self.sweep_compacted(SWEEP_BATCH)?;
            if swept.done() || !swept.progressed() {
                return Ok(());
            }
        }
    }

    /// Goes over the next piece of the index (4096 keys) for a
    /// compaction under way, then settles up to `budget` of the records
    /// that compactions dropped from the index: those still pending are
    /// forgotten, the stored ones are deleted from redb in one
    /// transaction. Holds no lock that writes wait for, but the state lock
    /// for a moment at a time: done on the write path, deleting a large
    /// compaction's records held every write up (`docs/decisions.md`,
    /// entry 16).
    pub fn sweep_compacted(&self, budget: usize) -> Result<Swept, StoreError> {
        let (pruned, pruning) = self.prune();
        let mut garbage = std::mem::take(&mut *self.garbage.lock());
        if garbage.is_empty() {
            return Ok(Swept {
                pruned,
                pruning,
                ..Swept::default()
            });
        }
        let taken = garbage.len();
        let rest = garbage.split_off(garbage.len().min(budget));
        let mut deferred = Vec::new();
        {
            let mut st = self.state.write();
            let st = &mut *st;
            // A frozen record reaches redb with its checkpoint; it is
            // removed from there by a call after the checkpoint's end.
            garbage.retain(|rev| {
                if st.pending.remove_record(*rev) {
                    return false;
                }
                let frozen = st.frozen.as_ref();
                if frozen.is_some_and(|f| f.writes().record(*rev).is_some()) {
                    deferred.push(*rev);
                    return false;
                }
                true
            });
        }
        let settled = taken - rest.len() - deferred.len();
        let left = {
            let mut all = self.garbage.lock();
            all.extend(deferred);
            all.extend(rest);
            all.len()
        };
        if !garbage.is_empty() {
            // Not fsynced on its own: if it is lost in a crash, `open`
            // redoes it.
            let mut tx = self.db.read_recursive().begin_write()?;
            tx.set_durability(Durability::None)?;
            let mut freed = 0;
            {
                let mut kv = tx.open_table(KV)?;
                for rev in garbage {
                    if let Some(old) = kv.remove(rev.to_u128())? {
                        freed += record_bytes(old.value());
                    }
                }
            }
            tx.commit()?;
            self.stored_bytes.fetch_sub(freed, Ordering::AcqRel);
        }
        Ok(Swept {
            pruned,
            settled,
            left,
            pruning,
        })
    }

    /// Goes over the next piece of the index for a compaction under way,
    /// adding what it drops to the garbage; returns how many keys it went
    /// over and whether more are left.
    fn prune(&self) -> (usize, bool) {
        let mut st = self.state.write();
        let st = &mut *st;
        let Some(pruning) = &mut st.pruning else {
            return (0, false);
        };
        // Before the cursor, `stop` is where this lap ends; at or after
        // it, the lap runs to the end of the key space.
        let upto = match (&pruning.stop, &pruning.after) {
            (Some(stop), Some(after)) if stop > after => Some(stop.as_slice()),
            (Some(stop), None) => Some(stop.as_slice()),
            _ => None,
        };
        let mut dropped = Vec::new();
        let (pruned, after) = st.index.compact_piece(
            pruning.after.as_deref(),
            upto,
            pruning.at,
            self.prune_chunk,
            &mut dropped,
        );
        self.garbage.lock().extend(dropped);
        let lap_done = after.is_none();
        pruning.after = after;
        // A lap that ended at the end of the key space with a `stop` set
        // goes round again from the first key (its cursor is now `None`).
        if lap_done && (upto.is_some() || pruning.stop.is_none()) {
            st.pruning = None;
        }
        (pruned, st.pruning.is_some())
    }

    /// Runs `f` against a consistent view at the newest durable revision.
    fn with_view<T>(
        &self,
        f: impl FnOnce(&View<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let st = self.state.read();
        // Opened under the lock: see the module comment on compaction.
        let tx = self.db.read_recursive().begin_read()?;
        let kv = tx.open_table(KV)?;
        let records = Layered {
            pending: &st.pending,
            frozen: st.frozen.as_deref().map(Frozen::writes),
            stored: &kv,
        };
        let view = View {
            index: &st.index,
            rev: self.published.load(Ordering::Acquire),
            compact_rev: st.compact_rev,
            records: &records,
        };
        f(&view)
    }

    /// The lease `id`: granted TTL, checkpointed remaining TTL and keys.
    pub fn lease(&self, id: i64) -> Option<Lease> {
        self.state.read().leases.get(id).cloned()
    }

    /// Every lease: id, granted TTL and checkpointed remaining TTL (-1 if
    /// never checkpointed).
    pub fn leases(&self) -> Vec<(i64, i64, i64)> {
        let st = self.state.read();
        st.leases
            .iter()
            .map(|(id, l)| (id, l.ttl, l.remaining))
            .collect()
    }

    /// The live `KeyValue` of `key` at revision `rev`, if it existed then and
    /// that revision is not compacted. As in etcd, whose watch reads an
    /// event's previous value with a Range at the revision before it, below
    /// the compacted revision there is none, whether or not the index has
    /// dropped that history yet.
    pub fn kv_at(&self, key: &[u8], rev: i64) -> Result<Option<KeyValue>, StoreError> {
        self.with_view(|v| {
            if rev < v.compact_rev {
                return Ok(None);
            }
            let view = View { rev, ..*v };
            view.get(key)
        })
    }

    /// Changes to keys in `range` from revision `from` on, as watch events
    /// in revision order, read from storage.
    ///
    /// Reads whole revisions until at least `limit` events are collected or
    /// at least `max_bytes` of records (of any key) have been read (a
    /// revision is never split), and returns the events with the last
    /// revision covered: the next call should start one above it. Fails
    /// with `Compacted` when `from` is below the compacted revision.
    pub fn events(
        &self,
        from: i64,
        range: &KeyRange,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Event>, i64), StoreError> {
        let st = self.state.read();
        if from < st.compact_rev {
            return Err(StoreError::Compacted);
        }
        let upto = self.published.load(Ordering::Acquire);
        if from > upto {
            // A watcher waiting for a future revision: nothing yet.
            return Ok((Vec::new(), upto));
        }
        let tx = self.db.read_recursive().begin_read()?;
        let start = Revision { main: from, sub: 0 }.to_u128();
        let end = Revision {
            main: upto + 1,
            sub: 0,
        }
        .to_u128();
        // Copies of recent records are made under the state lock, so no
        // more of them than one call can use.
        let (recent, stored_end, copied_to) = st.recent_records(start..end, max_bytes);
        drop(st);
        let kv = tx.open_table(KV)?;
        let limit = limit.max(1);
        let mut events = Vec::new();
        let mut last = upto;
        let mut current = None;
        let mut read = 0;
        // Takes the record at `rev`; false once a limit is reached at a
        // revision's end.
        let mut take = |rev: u128, rec: &[u8]| -> Result<bool, StoreError> {
            let rev = Revision::from_u128(rev);
            if current != Some(rev.main) {
                // A new revision starts: the previous one is complete.
                let full = events.len() >= limit || read >= max_bytes;
                if let (Some(done), true) = (current, full) {
                    last = done;
                    return Ok(false);
                }
                current = Some(rev.main);
            }
            read += rec.len();
            let (kv, tombstone) = decode(rec)?;
            if range.contains(&kv.key) {
                let r#type = if tombstone {
                    EventType::Delete
                } else {
                    EventType::Put
                };
                events.push(Event {
                    r#type: r#type as i32,
                    kv: Some(kv),
                    prev_kv: None,
                });
            }
            Ok(true)
        };
        let mut more = true;
        if start < stored_end {
            for item in kv.range(start..stored_end)? {
                let (rev, rec) = item?;
                if !take(rev.value(), rec.value())? {
                    more = false;
                    break;
                }
            }
        }
        if more {
            for (rev, rec) in &recent {
                if !take(*rev, rec)? {
                    more = false;
                    break;
                }
            }
        }
        // All that was copied was taken, but the copy stopped short.
        if let (true, Some(cut)) = (more, copied_to) {
            last = cut;
        }
        Ok((events, last))
    }

    /// Number of records in storage, tombstones and old versions included.
    pub fn record_count(&self) -> Result<u64, StoreError> {
        // No checkpoint between or during the two counts, so nothing is in
        // both.
        let _one_generation = self.checkpointing.lock();
        let _writing = self.writing.lock();
        let pending = self.state.read().pending.len() as u64;
        let tx = self.db.read_recursive().begin_read()?;
        Ok(tx.open_table(KV)?.len()? + pending)
    }

    /// The raised alarms of type `alarm` (all of them for `NONE`), as
    /// etcd lists them: by member id, then type.
    pub fn alarms(&self, alarm: i32) -> Vec<AlarmMember> {
        let st = self.state.read();
        st.alarms
            .iter()
            .filter(|(_, a)| alarm == AlarmType::None as i32 || *a == alarm)
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }

    /// The bytes of records in use, stored and pending: each record's
    /// revision key and encoded value, without redb's page overhead. What
    /// compactions passed stops counting once swept.
    pub fn used_bytes(&self) -> u64 {
        let st = self.state.read();
        let held = st.pending.bytes() + st.frozen.as_ref().map_or(0, |f| f.writes().bytes());
        self.stored_bytes.load(Ordering::Acquire) + held
    }

    /// Reads a named counter kept beside the data (node identity and such).
    pub fn meta(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let tx = self.db.read_recursive().begin_read()?;
        let meta = tx.open_table(META)?;
        Ok(meta.get(name)?.map(|g| g.value()))
    }

    /// Durably sets a named counter kept beside the data.
    pub fn set_meta(&self, name: &str, value: u64) -> Result<(), StoreError> {
        let tx = self.db.read_recursive().begin_write()?;
        tx.open_table(META)?.insert(name, value)?;
        tx.commit()?;
        Ok(())
    }
}

/// The error for something in the database the store did not write.
fn damaged(what: String) -> StoreError {
    StoreError::Storage(format!("the database is damaged: {what}"))
}

/// Checks a record read back at `rev` against what the store writes
/// there, so that a damaged one is refused rather than indexed.
fn check_record(
    kv: &KeyValue,
    tombstone: bool,
    rev: Revision,
    current: i64,
) -> Result<(), StoreError> {
    let fault = if !(FIRST_REV + 1..=current).contains(&rev.main) || rev.sub < 0 {
        Some(format!("revision outside 2..={current}"))
    } else if kv.mod_revision != rev.main {
        Some(format!("mod revision {}", kv.mod_revision))
    } else if kv.key.is_empty() {
        Some("an empty key".to_string())
    } else if !tombstone
        && (!(FIRST_REV + 1..=rev.main).contains(&kv.create_revision) || kv.version < 1)
    {
        Some(format!(
            "create revision {} and version {}",
            kv.create_revision, kv.version
        ))
    } else {
        None
    };
    match fault {
        Some(what) => Err(damaged(format!("the record at {rev:?} has {what}"))),
        None => Ok(()),
    }
}

/// Whether `kind` would take space: refused while NOSPACE is raised, as
/// etcd's capped applier does (Put, a Txn with a put on either branch,
/// nested ones included, and LeaseGrant).
pub fn takes_space(kind: &Kind) -> bool {
    fn txn_puts(t: &TxnRequest) -> bool {
        t.success.iter().chain(&t.failure).any(op_puts)
    }
    fn op_puts(op: &RequestOp) -> bool {
        use roster_proto::etcdserverpb::request_op::Request;
        match &op.request {
            Some(Request::RequestPut(_)) => true,
            Some(Request::RequestTxn(t)) => txn_puts(t),
            _ => false,
        }
    }
    match kind {
        Kind::Put(_) | Kind::LeaseGrant(_) => true,
        Kind::Txn(t) => txn_puts(t),
        _ => false,
    }
}

fn has_nospace(alarms: &BTreeSet<(u64, i32)>) -> bool {
    alarms.iter().any(|(_, a)| *a == AlarmType::Nospace as i32)
}

/// Applies an alarm command as etcd does: ACTIVATE answers the alarm
/// (raised now or before), DEACTIVATE the one it cleared (none if it was
/// not raised), GET those of the type asked (all for `NONE`). Returns
/// whether the set changed.
fn apply_alarm(
    alarms: &mut BTreeSet<(u64, i32)>,
    a: &AlarmRequest,
    rev: i64,
) -> (AlarmResponse, bool) {
    let member = AlarmMember {
        member_id: a.member_id,
        alarm: a.alarm,
    };
    let (list, changed) = match AlarmAction::try_from(a.action) {
        Ok(AlarmAction::Activate) => {
            let changed = alarms.insert((a.member_id, a.alarm));
            (vec![member], changed)
        }
        Ok(AlarmAction::Deactivate) => {
            if alarms.remove(&(a.member_id, a.alarm)) {
                (vec![member], true)
            } else {
                (vec![], false)
            }
        }
        _ => {
            let list = alarms
                .iter()
                .filter(|(_, t)| a.alarm == AlarmType::None as i32 || *t == a.alarm)
                .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
                .collect();
            (list, false)
        }
    };
    let resp = AlarmResponse {
        header: Some(ResponseHeader {
            revision: rev,
            ..Default::default()
        }),
        alarms: list,
    };
    (resp, changed)
}

impl State {
    /// The records in `range` not yet in redb, copied while the caller
    /// holds the state lock (at most one checkpoint interval of writes,
    /// two while a checkpoint runs), and where in `range` redb's own
    /// records stop counting: from the first frozen or pending record on,
    /// redb's are copies, from a checkpoint that has committed but not yet
    /// forgotten them. The copy stops at the first revision boundary after
    /// `max_bytes`, and then also answers the last revision copied whole.
    fn recent_records(
        &self,
        range: std::ops::Range<u128>,
        max_bytes: usize,
    ) -> (Records, u128, Option<i64>) {
        let frozen = self.frozen.as_deref().map(Frozen::writes);
        let layers = frozen.into_iter().chain([&self.pending]);
        let stored_end = layers
            .clone()
            .filter_map(Pending::first_record)
            .next()
            .map_or(range.end, |first| first.min(range.end));
        let mut recent: Records = Vec::new();
        let mut bytes = 0;
        for (rev, rec) in layers.flat_map(|layer| layer.records_in(range.clone())) {
            if bytes >= max_bytes {
                let main = |r: u128| Revision::from_u128(r).main;
                let prev = recent.last().map(|(p, _)| main(*p));
                if let Some(prev) = prev.filter(|&p| p != main(rev)) {
                    return (recent, stored_end, Some(prev));
                }
            }
            bytes += rec.len();
            recent.push((rev, rec.to_vec()));
        }
        (recent, stored_end, None)
    }
}

/// Records by revision (as `u128`), copied.
type Records = Vec<(u128, Vec<u8>)>;

/// Opens (or creates) the redb file at `path` with the store's cache, every
/// page checksum verified (`docs/decisions.md`, entry 32).
fn open_db(path: &Path) -> Result<Database, redb::DatabaseError> {
    redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .set_check_integrity_on_open(true)
        .create(path)
}

/// What a database holds, read into the shapes the store works with.
struct Loaded {
    state: State,
    garbage: Vec<Revision>,
    revision: i64,
    stored_bytes: u64,
}

/// Reads `db` whole: the key index from every record, the leases with
/// their keys, the counters and the alarms.
fn load(db: &Database) -> Result<Loaded, StoreError> {
    let tx = db.begin_write()?;
    let mut stored_bytes = 0;
    let mut alarms = BTreeSet::new();
    let (index, leases, current, compact, applied_index, mark) = {
        let kv = tx.open_table(KV)?;
        for item in tx.open_table(ALARMS)?.iter()? {
            alarms.insert(item?.0.value());
        }
        let meta = tx.open_table(META)?;
        let lease_rows = tx.open_table(LEASES)?;
        let get =
            |k: &str| -> Result<Option<u64>, StoreError> { Ok(meta.get(k)?.map(|g| g.value())) };
        let current = get(META_CURRENT_REV)?.map_or(Ok(FIRST_REV), |v| {
            i64::try_from(v)
                .ok()
                .filter(|&v| (FIRST_REV..i64::MAX).contains(&v))
                .ok_or_else(|| damaged(format!("current revision {v}")))
        })?;
        // Never compacted: -1, as in etcd, so that compacting to 0 (or to
        // the first revision) is accepted on a fresh store.
        let compact = get(META_COMPACT_REV)?.map_or(Ok(NEVER_COMPACTED), |v| {
            i64::try_from(v)
                .ok()
                .filter(|&v| v <= current)
                .ok_or_else(|| damaged(format!("compacted revision {v} at revision {current}")))
        })?;
        let applied_index = get(META_APPLIED_INDEX)?.unwrap_or(0);
        let mark = tx
            .open_table(META_BYTES)?
            .get(META_MARK)?
            .map(|g| Arc::<[u8]>::from(g.value()));
        let mut index = KeyIndex::default();
        for item in kv.iter()? {
            let (rev, rec) = item?;
            let rev = Revision::from_u128(rev.value());
            stored_bytes += record_bytes(rec.value());
            let (kv, tombstone) =
                decode(rec.value()).map_err(|e| damaged(format!("the record at {rev:?}: {e}")))?;
            check_record(&kv, tombstone, rev, current)?;
            index.push(
                &kv.key,
                Version {
                    rev,
                    create: kv.create_revision,
                    version: kv.version,
                    lease: kv.lease,
                    tombstone,
                },
            );
        }
        let mut leases = LeaseTable::default();
        for item in lease_rows.iter()? {
            let (id, row) = item?;
            let lease = Lease::decode(row.value())
                .ok_or_else(|| damaged(format!("the row of lease {}", id.value())))?;
            leases.insert(id.value(), lease);
        }
        for (key, v) in index.range(&KeyRange::Span(Vec::new(), None), current) {
            leases.reattach(key, 0, v.lease);
        }
        (index, leases, current, compact, applied_index, mark)
    };
    tx.commit()?;
    let mut index = index;
    // A crash may have come between a compaction's commit and the removal
    // of its records: redo the removal, which is idempotent.
    let garbage = index.compact(compact);
    Ok(Loaded {
        state: State {
            index,
            leases,
            applied_rev: current,
            compact_rev: compact,
            pending_compact_rev: compact,
            applied_index,
            mark,
            pending: Pending::default(),
            frozen: None,
            pruning: None,
            alarms,
            alarms_dirty: false,
        },
        garbage,
        revision: current,
        stored_bytes,
    })
}

#[cfg(test)]
mod tests;
