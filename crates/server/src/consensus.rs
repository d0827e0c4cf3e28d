//! The consensus seam: how a write gets ordered before it takes effect.
//!
//! Every mutation is a [`Command`] handed to [`Consensus::propose`]. An
//! implementation orders commands in its log, makes them durable, and
//! hands the committed ones, in order, to the node's
//! [`StateMachine`](crate::state::StateMachine); the proposer gets back the
//! [`Outcome`] the state machine produced. The consensus knows nothing of
//! what a command means, and recovering its own log at start is its own
//! business. Today there is one implementation,
//! [`Standalone`](crate::standalone::Standalone), for a single node; a Raft
//! implementation will order the same commands across members and apply
//! them through the same state machine, so nothing above this trait
//! changes.

use std::future::Future;
use std::pin::Pin;

use roster_store::Command;

use crate::error::ServerError;
use crate::state::Outcome;

/// A boxed future, so the trait stays object-safe.
pub type ProposeFuture = Pin<Box<dyn Future<Output = Result<Outcome, ServerError>> + Send>>;

/// A point-in-time picture of the consensus state, for headers and Status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsensusStatus {
    /// The current term (raft_term in etcd's headers).
    pub term: u64,
    /// The member id of the current leader, 0 if none is known.
    pub leader: u64,
    /// Index of the last log entry known to be committed.
    pub commit_index: u64,
    /// Index of the last log entry applied to the store.
    pub applied_index: u64,
}

/// Orders write commands and has them applied.
pub trait Consensus: Send + Sync + 'static {
    /// Proposes a command; resolves once it is durable and applied.
    fn propose(&self, cmd: Command) -> ProposeFuture;
    /// The current consensus state.
    fn status(&self) -> ConsensusStatus;
    /// Whether this member leads, and so decides what time decides (lease
    /// expiry).
    fn is_leader(&self) -> bool;
    /// Durable appends to the log so far (one `fdatasync` each): with group
    /// commit, fewer than the writes.
    fn durable_commits(&self) -> u64;
    /// Stops accepting proposals, finishes what was accepted and leaves the
    /// state durable. Blocks; call it from a thread that may.
    fn stop(&self);
}
