//! Hashes of the store, for telling whether members hold the same data:
//! etcd's `HashKV` (the MVCC history up to a revision) and `Hash` (all
//! that is persisted). Both are CRC-32C, as etcd's.
//!
//! `HashKV` must agree between members with the same history whatever
//! their housekeeping did, so it hashes what the history *means*, not
//! what storage happens to hold: every record at or below the revision,
//! except those at or below the compacted revision that a compaction
//! drops. A compaction keeps, of each key, its latest version as of the
//! compacted revision unless that is a tombstone; those are hashed, the
//! rest are skipped whether or not the sweep has deleted them yet. And
//! records are hashed wherever they are, in redb or still pending.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use redb::{ReadOnlyTable, ReadableDatabase, ReadableTable};

use super::Store;
use crate::backend::{decode, ALARMS, KV, META, META_CURRENT_REV};
use crate::crc32c::Crc32c;
use crate::error::StoreError;
use crate::index::Revision;
use crate::lease::LEASES;

/// What [`Store::hash_kv`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    /// CRC-32C of the history up to the revision asked for.
    pub hash: u32,
    /// The compacted revision (-1 if never compacted).
    pub compact_revision: i64,
    /// The store's current revision, for the response header.
    pub revision: i64,
}

/// What [`Store::hash`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbHash {
    /// CRC-32C of the stored records, lease rows and alarms.
    pub hash: u32,
    /// The revision the hashed state is at.
    pub revision: i64,
}

impl Store {
    /// Hashes the history up to `rev` (0 for the current revision), as
    /// etcd's HashKV: see the module comment for what counts. Refuses a
    /// revision at or below the compacted one, and a future one.
    ///
    /// A checkpoint first puts what is pending in redb, so that little is
    /// left to copy under the state lock; the scan itself reads a redb
    /// snapshot with no lock held.
    pub fn hash_kv(&self, rev: i64) -> Result<KvHash, StoreError> {
        self.checkpoint()?;
        let st = self.state.read();
        let current = self.published.load(Ordering::Acquire);
        let compact = st.compact_rev;
        if rev > 0 && rev <= compact {
            return Err(StoreError::Compacted);
        }
        if rev > current {
            return Err(StoreError::FutureRevision);
        }
        let rev = if rev <= 0 { current } else { rev };
        // Opened under the lock: whatever a sweep deleted from this
        // snapshot belongs to a compaction at or below `compact`.
        let tx = self.db.read_recursive().begin_read()?;
        let end = Revision {
            main: rev + 1,
            sub: 0,
        }
        .to_u128();
        // As in `events`: records still in memory are copied, and redb's
        // from the first of them on are copies of theirs.
        let (recent, stored_end, _) = st.recent_records(0..end, usize::MAX);
        drop(st);
        let kv = tx.open_table(KV)?;
        // Records below this one are at or below the compacted revision.
        let lower = Revision {
            main: compact.max(0) + 1,
            sub: 0,
        }
        .to_u128();

        // Of each key, its latest record at or below the compacted
        // revision, and whether it is a tombstone.
        let mut latest: HashMap<Vec<u8>, (u128, bool)> = HashMap::new();
        if compact > 0 {
            each_record(&kv, stored_end.min(lower), &recent, lower, |rev, rec| {
                let (kv, tombstone) = decode(rec)?;
                latest.insert(kv.key, (rev, tombstone));
                Ok(())
            })?;
        }
        let mut crc = Crc32c::new();
        each_record(&kv, stored_end, &recent, end, |rev, rec| {
            if rev < lower {
                let (kv, _) = decode(rec)?;
                if latest.get(&kv.key) != Some(&(rev, false)) {
                    return Ok(());
                }
            }
            crc.update(&rev.to_be_bytes());
            crc.update(rec);
            Ok(())
        })?;
        Ok(KvHash {
            hash: crc.finish(),
            compact_revision: compact,
            revision: current,
        })
    }

    /// Hashes everything persisted, after a checkpoint, as etcd's Hash:
    /// every stored record (compacted ones the sweep has not deleted yet
    /// included), lease row and alarm, read in one redb snapshot. Returns
    /// it with the revision that snapshot holds.
    pub fn hash(&self) -> Result<DbHash, StoreError> {
        self.checkpoint()?;
        let tx = self.db.read_recursive().begin_read()?;
        let mut crc = Crc32c::new();
        crc.update(b"kv");
        for item in tx.open_table(KV)?.iter()? {
            let (rev, rec) = item?;
            crc.update(&rev.value().to_be_bytes());
            crc.update(rec.value());
        }
        crc.update(b"leases");
        for item in tx.open_table(LEASES)?.iter()? {
            let (id, row) = item?;
            crc.update(&id.value().to_be_bytes());
            crc.update(row.value());
        }
        crc.update(b"alarms");
        for item in tx.open_table(ALARMS)?.iter()? {
            let (key, _) = item?;
            let (member, alarm) = key.value();
            crc.update(&member.to_be_bytes());
            crc.update(&alarm.to_be_bytes());
        }
        let revision = tx
            .open_table(META)?
            .get(META_CURRENT_REV)?
            .map_or(super::FIRST_REV, |v| v.value() as i64);
        Ok(DbHash {
            hash: crc.finish(),
            revision,
        })
    }
}

/// Calls `f` on every record below `end` in revision order: redb's below
/// `stored_end`, then the copies of those in memory.
fn each_record(
    kv: &ReadOnlyTable<u128, &'static [u8]>,
    stored_end: u128,
    recent: &[(u128, Vec<u8>)],
    end: u128,
    mut f: impl FnMut(u128, &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let stored_end = stored_end.min(end);
    if stored_end > 0 {
        for item in kv.range(0..stored_end)? {
            let (rev, rec) = item?;
            f(rev.value(), rec.value())?;
        }
    }
    for (rev, rec) in recent.iter().filter(|(rev, _)| *rev < end) {
        f(*rev, rec)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use roster_proto::etcdserverpb::{
        alarm_request::AlarmAction, AlarmRequest, AlarmType, CompactionRequest, DeleteRangeRequest,
        LeaseGrantRequest, PutRequest,
    };
    use roster_proto::roster::{command::Kind, Command};

    use super::*;
    use crate::CommandResponse;

    fn put(key: &str, value: &str) -> Kind {
        Kind::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
    }

    fn delete(key: &str) -> Kind {
        Kind::DeleteRange(DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        })
    }

    fn compact(revision: i64) -> Kind {
        Kind::Compact(CompactionRequest {
            revision,
            physical: false,
        })
    }

    /// Applies `kinds` one command per batch, numbering them from `first`.
    fn apply(
        store: &Store,
        first: u64,
        kinds: Vec<Kind>,
    ) -> Vec<Result<CommandResponse, StoreError>> {
        kinds
            .into_iter()
            .enumerate()
            .map(|(i, kind)| {
                let cmd = Command { kind: Some(kind) };
                let mut out = store.apply_logged(&[(first + i as u64, cmd)]).unwrap();
                out.remove(0).response
            })
            .collect()
    }

    /// a, b and c with history: b is deleted before the compaction (its
    /// tombstone is the latest as of it), a has old versions on both sides.
    fn history() -> Vec<Kind> {
        vec![
            put("a", "1"), // 2
            put("b", "1"), // 3
            put("a", "2"), // 4
            delete("b"),   // 5
            put("c", "1"), // 6
            put("a", "3"), // 7
            compact(6),
            put("c", "2"), // 8
        ]
    }

    /// The keep rule: the hash is the same before the sweep deletes what
    /// the compaction passed and after, wherever the records are (pending
    /// or in redb), and it is not the hash of the uncompacted history.
    #[test]
    fn hash_kv_is_the_same_before_and_after_the_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let swept = Store::open(&dir.path().join("swept")).unwrap();
        let lazy = Store::open(&dir.path().join("lazy")).unwrap();
        let plain = Store::open(&dir.path().join("plain")).unwrap();
        for r in apply(&swept, 1, history()) {
            r.unwrap();
        }
        // The same history, without its sweep, and with records left
        // pending at the moment of the hash.
        let mut h = history();
        let last = h.pop().unwrap();
        apply(&lazy, 1, h);
        let before = lazy.record_count().unwrap();
        swept.checkpoint().unwrap();
        swept.finish_compaction().unwrap();
        assert!(swept.record_count().unwrap() < before, "the sweep deleted");
        apply(&lazy, 8, vec![last]);
        assert!(lazy.pending_records() > 0);
        let a = swept.hash_kv(0).unwrap();
        let b = lazy.hash_kv(0).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.compact_revision, 6);
        assert_eq!(a.revision, 8);
        // At the revision asked for, not the current one.
        assert_eq!(swept.hash_kv(7).unwrap().revision, 8);
        assert_ne!(swept.hash_kv(7).unwrap().hash, a.hash);
        assert_eq!(swept.hash_kv(7).unwrap(), lazy.hash_kv(7).unwrap());

        // Without the compaction, the history hashes differently.
        let mut h = history();
        h.remove(6);
        apply(&plain, 1, h);
        assert_eq!(plain.hash_kv(0).unwrap().compact_revision, -1);
        assert_ne!(plain.hash_kv(0).unwrap().hash, a.hash);

        // A different write, a different hash.
        apply(&swept, 9, vec![put("d", "1")]);
        apply(&lazy, 9, vec![put("d", "2")]);
        assert_ne!(swept.hash_kv(0).unwrap(), lazy.hash_kv(0).unwrap());
        // And a reopened store hashes as before.
        let kept = swept.hash_kv(0).unwrap();
        swept.checkpoint().unwrap();
        drop(swept);
        let swept = Store::open(&dir.path().join("swept")).unwrap();
        assert_eq!(swept.hash_kv(0).unwrap(), kept);
        assert_eq!(swept.hash().unwrap().revision, 9);
    }

    #[test]
    fn hash_kv_refuses_compacted_and_future_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        apply(&store, 1, history());
        assert!(matches!(store.hash_kv(6), Err(StoreError::Compacted)));
        assert!(matches!(store.hash_kv(2), Err(StoreError::Compacted)));
        assert!(matches!(store.hash_kv(9), Err(StoreError::FutureRevision)));
        store.hash_kv(7).unwrap();
        store.hash_kv(8).unwrap();
    }

    fn alarm(action: AlarmAction, member_id: u64, alarm: AlarmType) -> Kind {
        Kind::Alarm(AlarmRequest {
            action: action as i32,
            member_id,
            alarm: alarm as i32,
        })
    }

    /// NOSPACE refuses what takes space, on apply, until it is cleared;
    /// alarms survive a restart.
    #[test]
    fn nospace_caps_the_store_until_deactivated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path).unwrap();
        apply(&store, 1, vec![put("a", "1")]);
        let out = apply(
            &store,
            2,
            vec![
                alarm(AlarmAction::Activate, 7, AlarmType::Nospace),
                alarm(AlarmAction::Activate, 7, AlarmType::Nospace),
                alarm(AlarmAction::Activate, 9, AlarmType::Corrupt),
            ],
        );
        for r in out {
            let Ok(CommandResponse::Alarm(a)) = r else {
                panic!("{r:?}")
            };
            assert_eq!(a.alarms.len(), 1, "the alarm raised, or already up");
        }
        assert_eq!(store.alarms(AlarmType::None as i32).len(), 2);
        assert_eq!(store.alarms(AlarmType::Nospace as i32)[0].member_id, 7);
        let grant = Kind::LeaseGrant(LeaseGrantRequest { ttl: 10, id: 5 });
        let out = apply(&store, 5, vec![put("b", "1"), grant.clone(), delete("a")]);
        assert!(matches!(out[0], Err(StoreError::NoSpace)));
        assert!(matches!(out[1], Err(StoreError::NoSpace)));
        assert!(out[2].is_ok(), "a delete frees space");
        assert_eq!(store.revision(), 3);

        store.checkpoint().unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.alarms(AlarmType::None as i32).len(), 2);
        let out = apply(
            &store,
            8,
            vec![
                alarm(AlarmAction::Deactivate, 7, AlarmType::Nospace),
                alarm(AlarmAction::Deactivate, 7, AlarmType::Nospace),
                put("b", "1"),
                grant,
            ],
        );
        let Ok(CommandResponse::Alarm(a)) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(a.alarms.len(), 1);
        let Ok(CommandResponse::Alarm(a)) = &out[1] else {
            panic!("{out:?}")
        };
        assert!(a.alarms.is_empty(), "nothing left to clear");
        assert!(out[2].is_ok() && out[3].is_ok(), "{out:?}");
        // CORRUPT is listed, and caps nothing.
        assert_eq!(store.alarms(AlarmType::None as i32).len(), 1);
    }

    /// The space in use counts records wherever they are, and what a
    /// compaction's sweep deleted stops counting.
    #[test]
    fn used_bytes_follow_writes_and_sweeps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.used_bytes(), 0);
        let big = "x".repeat(1000);
        apply(&store, 1, (0..10).map(|_| put("a", &big)).collect());
        let pending = store.used_bytes();
        assert!(pending > 10_000, "{pending}");
        store.checkpoint().unwrap();
        assert_eq!(store.used_bytes(), pending);
        apply(&store, 11, vec![compact(11)]);
        store.checkpoint().unwrap();
        store.finish_compaction().unwrap();
        let swept = store.used_bytes();
        assert!(swept < 1100 && swept > 1000, "{swept}");
        drop(store);
        assert_eq!(Store::open(&path).unwrap().used_bytes(), swept);
    }
}
