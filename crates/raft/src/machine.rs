//! The state machine seam: openraft's `RaftStateMachine` over a
//! [`Machine`] of Roster's own.
//!
//! Consensus only orders and persists entries; applying them is the
//! state machine's business, and the state machine (the store, the watch
//! hub, the lessor) should not know which consensus library ordered them.
//! So the server implements [`Machine`], a small trait in plain types, and
//! [`StateMachine`] adapts it to openraft. openraft stays inside this
//! crate.
//!
//! # The mark
//!
//! openraft asks a state machine where it stands: the last applied log id
//! and the last membership it applied. Both must survive a restart
//! *together with* the state they describe, or a member would re-apply
//! (or skip) entries. The adapter encodes them as a [`Mark`], opaque bytes
//! that the machine stores atomically with each apply's effects (as etcd
//! keeps its consistent index in the same backend transaction as the
//! data) and hands back unchanged from [`Machine::mark`]. The machine
//! also gets the plain Roster log index of each entry, which is what it
//! needs to release the log behind its durable state.
//!
//! ```text
//!  openraft ──apply(entries)──▶ StateMachine ──apply(index, commands, mark)──▶ Machine
//!            ◀──Vec<Response>──               ◀──Vec<Outcome>──────────────
//! ```
//!
//! Every entry is handed to the machine, blank and membership entries
//! with no commands, so that the mark advances past them too.
//!
//! # Snapshots
//!
//! A snapshot is the machine's state as bytes plus openraft's metadata
//! (the mark's log id and membership). The adapter keeps the last one
//! built or installed in memory. Building one on the store's checkpointer
//! into a file, and keeping it across restarts, is left for the server's
//! implementation.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::types::{BasicNode, RaftEntry, RaftLogId, Response, TypeConfig};

pub use crate::types::Outcome;

/// Where a machine stands in the log, as bytes the machine keeps with its
/// state and returns unchanged; their content is the adapter's business.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark(Vec<u8>);

impl Mark {
    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A mark from bytes the machine stored.
    pub fn from_bytes(bytes: Vec<u8>) -> Mark {
        Mark(bytes)
    }
}

/// A state machine consensus can drive: applies commands in log order and
/// remembers how far it got.
pub trait Machine: Send + Sync + 'static {
    /// A failure to apply, snapshot or install. It stops consensus on this
    /// member: a machine that cannot apply an entry must not go on.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Applies the commands of the entry at `index` (Roster's log
    /// numbering) in order, records `mark` with their effects, and returns
    /// one outcome per command. Blank and membership entries come with no
    /// commands.
    fn apply(
        &mut self,
        index: u64,
        commands: &[Vec<u8>],
        mark: &Mark,
    ) -> Result<Vec<Outcome>, Self::Error>;

    /// The mark recorded by the last apply or install; `None` for a
    /// machine that never applied anything.
    fn mark(&self) -> Option<Mark>;

    /// The machine's whole state, as of its mark.
    fn snapshot(&self) -> Result<Vec<u8>, Self::Error>;

    /// Replaces the whole state with a snapshot's, and records `mark`.
    fn install(&mut self, data: &[u8], mark: &Mark) -> Result<(), Self::Error>;
}

/// What a mark says.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Position {
    applied: Option<RaftLogId>,
    membership: StoredMembership<u64, BasicNode>,
}

impl Position {
    fn mark(&self) -> Mark {
        Mark(serde_json::to_vec(self).expect("a position serializes"))
    }
}

/// openraft's state machine over a [`Machine`].
pub struct StateMachine<M> {
    shared: Arc<Shared<M>>,
}

/// Builds snapshots of a [`StateMachine`]'s machine.
pub struct SnapshotBuilder<M> {
    shared: Arc<Shared<M>>,
}

struct Shared<M> {
    /// The machine and where it stands, changed together.
    machine: Mutex<(M, Position)>,
    /// The last snapshot built or installed.
    current: Mutex<Option<Stored>>,
    /// Snapshots built by this adapter, so that two built at the same log
    /// id still have different ids.
    built: AtomicU64,
}

#[derive(Clone)]
struct Stored {
    meta: SnapshotMeta<u64, BasicNode>,
    data: Vec<u8>,
}

/// Why a machine's mark cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("the machine's mark is not one this crate wrote: {0}")]
pub struct BadMark(serde_json::Error);

impl<M: Machine> StateMachine<M> {
    /// Adapts `machine`, starting from the mark it holds.
    pub fn new(machine: M) -> Result<StateMachine<M>, BadMark> {
        let position = match machine.mark() {
            Some(m) => serde_json::from_slice(m.as_bytes()).map_err(BadMark)?,
            None => Position::default(),
        };
        Ok(StateMachine {
            shared: Arc::new(Shared {
                machine: Mutex::new((machine, position)),
                current: Mutex::new(None),
                built: AtomicU64::new(0),
            }),
        })
    }
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

impl<M: Machine> RaftStateMachine<TypeConfig> for StateMachine<M> {
    type SnapshotBuilder = SnapshotBuilder<M>;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<RaftLogId>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        let guard = self.shared.machine.lock();
        Ok((guard.1.applied, guard.1.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<u64>>
    where
        I: IntoIterator<Item = RaftEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut guard = self.shared.machine.lock();
        let (machine, position) = &mut *guard;
        let mut responses = Vec::new();
        for entry in entries {
            let id = entry.log_id;
            let mut next = position.clone();
            next.applied = Some(id);
            let commands = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Normal(batch) => batch.commands,
                EntryPayload::Membership(m) => {
                    next.membership = StoredMembership::new(Some(id), m);
                    Vec::new()
                }
            };
            let outcomes = machine
                .apply(id.index + 1, &commands, &next.mark())
                .map_err(|e| StorageIOError::apply(id, AnyError::new(&e)))?;
            *position = next;
            responses.push(Response { outcomes });
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder<M> {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let position = Position {
            applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        {
            let mut guard = self.shared.machine.lock();
            guard.0.install(&data, &position.mark()).map_err(sm_err)?;
            guard.1 = position;
        }
        *self.shared.current.lock() = Some(Stored {
            meta: meta.clone(),
            data,
        });
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        Ok(self.shared.current.lock().clone().map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

impl<M: Machine> RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder<M> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let (data, position) = {
            let guard = self.shared.machine.lock();
            let data = guard
                .0
                .snapshot()
                .map_err(|e| StorageIOError::read_state_machine(AnyError::new(&e)))?;
            (data, guard.1.clone())
        };
        let n = self.shared.built.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match position.applied {
            Some(id) => format!(
                "{}-{}-{}-{n}",
                id.leader_id.term, id.leader_id.node_id, id.index
            ),
            None => format!("empty-{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id: position.applied,
            last_membership: position.membership,
            snapshot_id,
        };
        *self.shared.current.lock() = Some(Stored {
            meta: meta.clone(),
            data: data.clone(),
        });
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
