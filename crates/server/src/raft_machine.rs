//! Roster's state machine as consensus's [`Machine`].
//!
//! roster-raft's adapter drives this with each committed Raft entry: the
//! entry's commands are decoded and applied through [`StateMachine`]
//! (store, watch hub, lessor alike), and the adapter's mark goes into the
//! store with them (see `Store::apply_marked`), so a restarted member
//! resumes from exactly what its store holds.
//!
//! # Log indexes
//!
//! A Raft entry is a batch of commands at one log index. Every command of
//! the batch is applied under that index: the store's applied index is a
//! maximum, so a batch moves it once, and a checkpoint never splits a
//! batch (it sets pending writes aside only between batches). After a
//! crash the durable mark names the last whole entry the store holds, and
//! openraft re-applies from the next one: nothing twice, nothing skipped.

use std::path::PathBuf;
use std::sync::Arc;

use roster_raft::{Machine, Mark, Outcome as RaftOutcome};
use roster_store::snapshot::SnapshotError;
use roster_store::StoreError;

use crate::state::StateMachine;
use crate::txn_decode::TxnDecodeError;

/// Why the machine could not go on: consensus stops on this member.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// A committed command is not one the server writes.
    #[error("the command {position} of log entry {index} cannot be decoded: {source}")]
    Decode {
        index: u64,
        position: usize,
        source: TxnDecodeError,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A snapshot could not be installed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The received snapshot could not be written down.
    #[error("writing the received snapshot to {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// [`StateMachine`] as consensus sees it. Each [`RaftOutcome`] it returns
/// is a [`crate::state::Outcome`].
pub struct RaftMachine {
    sm: Arc<StateMachine>,
    /// Where a received snapshot is written before it is installed.
    incoming: PathBuf,
}

impl RaftMachine {
    /// Drives `sm`; snapshots received are staged in `scratch`, a
    /// directory on the store's file system.
    pub fn new(sm: Arc<StateMachine>, scratch: PathBuf) -> RaftMachine {
        RaftMachine {
            sm,
            incoming: scratch.join("incoming.snap"),
        }
    }

    /// The state machine driven.
    pub fn state(&self) -> &Arc<StateMachine> {
        &self.sm
    }
}

impl Machine for RaftMachine {
    type Error = MachineError;

    fn apply(
        &mut self,
        index: u64,
        commands: &[Vec<u8>],
        mark: &Mark,
    ) -> Result<Vec<RaftOutcome>, MachineError> {
        let entries = commands
            .iter()
            .enumerate()
            .map(|(position, c)| {
                // Txns may nest deeper than prost decodes (see txn_decode).
                crate::txn_decode::command(c)
                    .map(|cmd| (index, cmd))
                    .map_err(|source| MachineError::Decode {
                        index,
                        position,
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outcomes = self.sm.apply_marked(index, &entries, mark.as_bytes())?;
        Ok(outcomes
            .into_iter()
            .map(|o| Box::new(o) as RaftOutcome)
            .collect())
    }

    fn mark(&self) -> Option<Mark> {
        self.sm.store().mark().map(Mark::from_bytes)
    }

    fn snapshot(&self) -> Result<Vec<u8>, MachineError> {
        let mut out = Vec::new();
        roster_store::snapshot::save(self.sm.store(), &mut out)?;
        Ok(out)
    }

    fn install(&mut self, data: &[u8], mark: &Mark) -> Result<(), MachineError> {
        let path = &self.incoming;
        let io = |source| MachineError::Io {
            path: path.clone(),
            source,
        };
        std::fs::write(path, data).map_err(io)?;
        let installed = self.sm.install_marked(path, Some(mark.as_bytes()));
        let _ = std::fs::remove_file(path);
        installed?;
        Ok(())
    }
}
