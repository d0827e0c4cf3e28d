//! Installing a snapshot: the store becomes what the snapshot holds, in
//! place, while it is shared.
//!
//! A member that has fallen too far behind its leader's log gets the
//! leader's snapshot instead of the entries. The new database is written
//! beside the old one and synced ([`crate::snapshot::restore`]) before
//! anything changes; then, holding every lock a writer or checkpoint
//! takes, it is renamed over the old file, opened, read into a fresh index
//! and lease table, and swapped in. Readers between their steps see either
//! the old state or the new one, never a mix: the state lock is taken once
//! for the swap. A transaction begun on the old database (a snapshot being
//! streamed) keeps reading the old file, which the file system keeps until
//! it ends.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering;

use redb::Durability;

use super::{load, open_db, Store};
use crate::backend::{META_BYTES, META_MARK};
use crate::error::StoreError;
use crate::snapshot::{restore, Restored, SnapshotError};

impl Store {
    /// Replaces everything the store holds with the snapshot in `file`.
    /// The snapshot is checked whole before anything is changed; a refused
    /// one leaves the store as it was. Whoever follows the store (watchers,
    /// a lease clock) must be told: see the server's state machine.
    pub fn install(&self, file: &Path) -> Result<Restored, SnapshotError> {
        self.install_marked(file, None)
    }

    /// [`Store::install`], recording `mark` (consensus's position for the
    /// snapshot) in the new database before it replaces the old one: a
    /// crash leaves the old state with its mark or the new with its own.
    pub fn install_marked(
        &self,
        file: &Path,
        mark: Option<&[u8]>,
    ) -> Result<Restored, SnapshotError> {
        let tmp = self.path.with_extension("installing");
        let _ = std::fs::remove_file(&tmp);
        let restored = restore(file, &tmp)?;
        let failed = |source: StoreError| SnapshotError::Store {
            path: self.path.clone(),
            source,
        };
        if let Some(mark) = mark {
            write_mark(&tmp, mark).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                failed(e)
            })?;
        }

        let _one_generation = self.checkpointing.lock();
        let _writing = self.writing.lock();
        let mut db = self.db.write();
        std::fs::rename(&tmp, &self.path).map_err(|source| SnapshotError::Io {
            what: "renaming into",
            path: self.path.clone(),
            source,
        })?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| SnapshotError::Io {
                    what: "syncing",
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        let fresh = open_db(&self.path).map_err(|e| failed(e.into()))?;
        let loaded = load(&fresh).map_err(failed)?;
        *db = fresh;
        {
            let mut st = self.state.write();
            *st = loaded.state;
            *self.garbage.lock() = loaded.garbage;
            self.stored_bytes
                .store(loaded.stored_bytes, Ordering::Relaxed);
            self.published.store(loaded.revision, Ordering::Release);
        }
        drop(db);
        drop(_writing);
        drop(_one_generation);
        // What the snapshot's compaction passed and its file still holds.
        self.finish_compaction().map_err(failed)?;
        Ok(restored)
    }
}

/// Records `mark` in the database at `path`, durably.
fn write_mark(path: &Path, mark: &[u8]) -> Result<(), StoreError> {
    let db = open_db(path)?;
    let mut tx = db.begin_write()?;
    tx.set_durability(Durability::Immediate)?;
    tx.open_table(META_BYTES)?.insert(META_MARK, mark)?;
    tx.commit()?;
    Ok(())
}
