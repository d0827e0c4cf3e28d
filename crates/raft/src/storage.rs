//! openraft's log storage on Roster's write-ahead log.
//!
//! In a cluster the Raft log *is* the write-ahead log: an entry is written
//! once, with one `fdatasync`, and that is what makes a write durable on
//! this member. [`LogStore`] implements openraft's `RaftLogStorage` over
//! [`Log`], and keeps beside it the few facts Raft needs that are not
//! entries:
//!
//! ```text
//! DIR/raft-state.json   vote, committed, last purged, log generation
//! DIR/log-GEN/          the log's segments (see the log module)
//! ```
//!
//! # The state file
//!
//! The vote must be durable before `save_vote` returns, or a member could
//! vote twice in one term after a crash. It is small and rare (once per
//! election), so it lives in a file of its own, written whole: to
//! `raft-state.json.tmp`, `fsync`ed, renamed over the old one, and the
//! directory `fsync`ed. A crash leaves the old file or the new one, never
//! a mix. The alternative, a vote record kind inside the log, would tie
//! the vote to segments that purge deletes and truncate cuts; a file keeps
//! the log about entries only. The committed position and the last purged
//! id ride in the same file.
//!
//! - **Committed** is recorded so that a restarted member re-applies what
//!   it knows was committed before serving reads. It is clamped to the
//!   last entry held: the log is durable at every append's return, so no
//!   committed position can point at an entry this member lacks.
//! - **Purge** writes the new last purged id *before* any segment is
//!   deleted: a crash in between leaves segments the state file says are
//!   gone, which opening skips, never a state file pointing at entries
//!   already deleted.
//! - **Generation**: Roster's log never has a hole, but openraft may purge
//!   past the last entry (a snapshot installed from a leader far ahead), or
//!   start a log at an index above 0 (its storage suite even appends at
//!   or below what it purged: the last purged id then moves back to just
//!   before the append). The log then starts over in a fresh
//!   directory `log-GEN+1`, created empty at the new position; one write of
//!   the state file switches to it, and the old directory is deleted after
//!   (or at the next open, if a crash came first).
//!
//! # Entries in memory
//!
//! Roster's log is read in full at open and appended to; it has no
//! random-access read. Raft reads entries by index (replication to
//! followers, re-applying after a restart), so every entry not yet purged
//! is kept in memory beside the log, as etcd's raft keeps its
//! `MemoryStorage` beside its WAL. The purge policy bounds it: openraft
//! purges what a snapshot covers, keeping `max_in_snapshot_log_to_keep`
//! entries (1000 by default) after it.
//!
//! # Caveats
//!
//! Writes run inline on the caller's task and hold the store's lock for
//! their `fdatasync`; `append` reports completion before it returns. A
//! dedicated writer thread (group commit across `append` calls, reads not
//! waiting on an `fsync`) is the next step for throughput, not for
//! correctness. So is the cost of `save_committed`, which rewrites and
//! syncs the state file each time the commit index moves: one more
//! `fsync` per commit until it is batched with appends or left to a
//! lazier write (a committed position that lags is safe; one ahead of
//! the log is not).

use std::collections::VecDeque;
use std::fmt::Debug;
use std::fs::File;
use std::io::Write;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, EntryPayload, OptionalSend, RaftLogReader, StorageError, StorageIOError};
use openraft::{LogId, Vote};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::log::{Log, LogError, Record};
use crate::types::{decode, encode, RaftEntry, RaftLogId, TypeConfig};

/// Name of the state file in the storage directory.
const STATE: &str = "raft-state.json";
/// Name the state file is written under before its rename.
const STATE_TMP: &str = "raft-state.json.tmp";
/// Payload bytes above which `limited_get_log_entries` stops adding
/// entries (it always returns at least one), so that an AppendEntries
/// fits gRPC's default 4 MiB message limit with room to spare.
pub const MAX_READ_BYTES: usize = 2 << 20;

type Result<T> = std::result::Result<T, StorageError<u64>>;

/// What the state file holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct State {
    vote: Option<Vote<u64>>,
    committed: Option<RaftLogId>,
    last_purged: Option<RaftLogId>,
    /// The log directory in use is `log-{generation}`.
    generation: u64,
    /// Roster index after which the current log directory starts.
    start: u64,
}

/// openraft's log storage: Roster's write-ahead log plus the state file.
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

/// A reader of the entries a [`LogStore`] holds, for replication tasks.
#[derive(Clone)]
pub struct LogReader {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    dir: PathBuf,
    state: State,
    log: Log,
    /// Every entry not purged, in order.
    entries: VecDeque<RaftEntry>,
    /// Reused encoding buffers.
    bufs: Vec<Vec<u8>>,
}

/// Why a storage directory cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The write-ahead log refused to open.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The state file or the directory could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The state file or a log entry is not what this crate writes.
    #[error("{} is damaged: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> OpenError {
    let path = path.to_path_buf();
    move |source| OpenError::Io { what, path, source }
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

impl LogStore {
    /// Opens (creating) the storage in `dir`, reading every entry not
    /// purged back into memory.
    pub fn open(dir: &Path) -> std::result::Result<LogStore, OpenError> {
        if !dir.is_dir() {
            std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
            // The directory's own name must be durable before the state
            // file inside it is.
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
            let parent = parent.unwrap_or(Path::new("."));
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io_err("syncing", parent))?;
        }
        let path = dir.join(STATE);
        let state: State = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| OpenError::Damaged {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        // Leftovers of a state write or a restart cut short by a crash.
        let current = log_dir_name(state.generation);
        for entry in std::fs::read_dir(dir).map_err(io_err("listing", dir))? {
            let entry = entry.map_err(io_err("listing", dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name == STATE_TMP {
                std::fs::remove_file(entry.path()).map_err(io_err("removing", &entry.path()))?;
            } else if name.starts_with("log-") && name != current {
                std::fs::remove_dir_all(entry.path()).map_err(io_err("removing", &entry.path()))?;
            }
        }
        let after = state
            .last_purged
            .map_or(0, |p| p.index + 1)
            .max(state.start);
        let log_dir = dir.join(&current);
        let (log, read) = Log::open(&log_dir, after)?;
        let mut entries = VecDeque::with_capacity(read.len());
        for e in &read {
            entries.push_back(decode(e).map_err(|e| OpenError::Damaged {
                path: log_dir.clone(),
                reason: e.to_string(),
            })?);
        }
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            state,
            log,
            entries,
            bufs: Vec::new(),
        };
        // A committed position past the log (written by an older version,
        // or a log cut by hand) would make openraft apply what is not here.
        inner.state.committed = inner.clamp(inner.state.committed);
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
        })
    }
}

fn log_dir_name(generation: u64) -> String {
    format!("log-{generation}")
}

impl Inner {
    fn last_log_id(&self) -> Option<RaftLogId> {
        self.entries
            .back()
            .map(|e| e.log_id)
            .or(self.state.last_purged)
    }

    /// `committed`, but no further than the last entry held.
    fn clamp(&self, committed: Option<RaftLogId>) -> Option<RaftLogId> {
        let c = committed?;
        match self.last_log_id() {
            Some(last) if last.index < c.index => Some(last),
            Some(_) => Some(c),
            None => None,
        }
    }

    /// Writes the state file durably: temporary name, `fsync`, rename,
    /// directory `fsync`.
    fn save_state(&self, state: &State) -> std::result::Result<(), std::io::Error> {
        let tmp = self.dir.join(STATE_TMP);
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(state).expect("the state serializes"))?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(STATE))?;
        File::open(&self.dir)?.sync_all()
    }

    /// Starts the log over, empty, so that the next entry is Roster index
    /// `after + 1`; `state` is written with the switch.
    fn restart(&mut self, after: u64, mut state: State) -> std::result::Result<(), LogError> {
        let io = |what: &str, path: &Path| {
            let (what, path) = (what.to_string(), path.to_path_buf());
            move |source| LogError::Io { what, path, source }
        };
        let old = self.dir.join(log_dir_name(self.state.generation));
        state.generation = self.state.generation + 1;
        state.start = after;
        let new = self.dir.join(log_dir_name(state.generation));
        if new.exists() {
            std::fs::remove_dir_all(&new).map_err(io("removing", &new))?;
        }
        let (log, _) = Log::open(&new, after)?;
        self.save_state(&state)
            .map_err(io("writing", &self.dir.join(STATE)))?;
        self.state = state;
        self.log = log;
        self.entries.clear();
        // The switch is durable; a failure here leaves a directory the next
        // open deletes.
        if let Err(e) = std::fs::remove_dir_all(&old) {
            tracing::warn!(dir = %old.display(), error = %e, "could not delete an old log");
        }
        Ok(())
    }

    fn range(&self, range: impl RangeBounds<u64>) -> impl Iterator<Item = &RaftEntry> {
        let first = self.entries.front().map_or(0, |e| e.log_id.index);
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        let from = start.saturating_sub(first) as usize;
        let to = end.saturating_sub(first).min(self.entries.len() as u64) as usize;
        self.entries.range(from.min(to)..to)
    }
}

/// Payload bytes of an entry, as `limited_get_log_entries` counts them.
fn size(e: &RaftEntry) -> usize {
    match &e.payload {
        EntryPayload::Normal(b) => b.commands.iter().map(|c| c.len() + 4).sum(),
        _ => 64,
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<RaftEntry>> {
        Ok(self.inner.lock().range(range).cloned().collect())
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<RaftEntry>> {
        let inner = self.inner.lock();
        let mut bytes = 0;
        let mut out = Vec::new();
        for e in inner.range(start..end) {
            bytes += size(e);
            if !out.is_empty() && bytes > MAX_READ_BYTES {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<RaftEntry>> {
        Ok(self.inner.lock().range(range).cloned().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let inner = self.inner.lock();
        Ok(LogState {
            last_purged_log_id: inner.state.last_purged,
            last_log_id: inner.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            inner: self.inner.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<()> {
        let mut inner = self.inner.lock();
        let mut state = inner.state.clone();
        state.vote = Some(*vote);
        inner
            .save_state(&state)
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?;
        inner.state = state;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>> {
        Ok(self.inner.lock().state.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<()> {
        let mut inner = self.inner.lock();
        let committed = inner.clamp(committed);
        if committed == inner.state.committed {
            return Ok(());
        }
        let mut state = inner.state.clone();
        state.committed = committed;
        inner.save_state(&state).map_err(write_err)?;
        inner.state = state;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>> {
        Ok(self.inner.lock().state.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = RaftEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<RaftEntry> = entries.into_iter().collect();
        let mut inner = self.inner.lock();
        let Some(first) = entries.first() else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        // Roster numbers from 1, openraft from 0.
        let expected = inner.log.next_index() - 1;
        if first.log_id.index != expected {
            if !inner.entries.is_empty() {
                return Err(write_err(LogError::Rejected(format!(
                    "append at entry {} but the log ends before {expected}",
                    first.log_id.index
                ))));
            }
            // Nothing held: the log starts over at the new position.
            let mut state = inner.state.clone();
            if state
                .last_purged
                .is_some_and(|p| p.index >= first.log_id.index)
            {
                // At or below what was purged: openraft never does this,
                // but its storage suite does. The entries held must stay
                // exactly those after the last purged id, so that id moves
                // back to just before the append.
                state.last_purged = first
                    .log_id
                    .index
                    .checked_sub(1)
                    .map(|i| LogId::new(first.log_id.leader_id, i));
            }
            inner
                .restart(first.log_id.index, state)
                .map_err(write_err)?;
        }
        let inner = &mut *inner;
        inner.bufs.resize_with(entries.len(), Vec::new);
        let kinds: Vec<_> = entries
            .iter()
            .zip(inner.bufs.iter_mut())
            .map(|(e, buf)| encode(e, buf))
            .collect();
        let records: Vec<Record<'_>> = entries
            .iter()
            .zip(&kinds)
            .zip(&inner.bufs)
            .map(|((e, &kind), buf)| Record {
                id: crate::types::to_log(&e.log_id),
                kind,
                payload: buf,
            })
            .collect();
        inner.log.append(&records).map_err(write_err)?;
        inner.entries.extend(entries);
        // `Log::append` returned after its `fdatasync`: durable now.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<()> {
        let mut inner = self.inner.lock();
        inner.log.truncate(log_id.index + 1).map_err(write_err)?;
        while inner
            .entries
            .back()
            .is_some_and(|e| e.log_id.index >= log_id.index)
        {
            inner.entries.pop_back();
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<()> {
        let mut inner = self.inner.lock();
        if inner
            .state
            .last_purged
            .is_some_and(|p| p.index >= log_id.index)
        {
            return Ok(());
        }
        let mut state = inner.state.clone();
        state.last_purged = Some(log_id);
        let upto = log_id.index + 1;
        if upto >= inner.log.next_index() {
            // Past the last entry: start over after it, in one switch.
            return inner.restart(upto, state).map_err(write_err);
        }
        // Recorded before any segment is deleted.
        inner.save_state(&state).map_err(write_err)?;
        inner.state = state;
        while inner
            .entries
            .front()
            .is_some_and(|e| e.log_id.index <= log_id.index)
        {
            inner.entries.pop_front();
        }
        inner.log.release(upto).map_err(write_err)
    }
}
