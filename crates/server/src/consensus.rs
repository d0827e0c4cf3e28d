//! The consensus seam: how a write gets ordered before the store applies it.
//!
//! Every mutation is a [`Command`] handed to [`Consensus::propose`]. An
//! implementation orders commands in a log and feeds them, in order, to the
//! store's deterministic `apply_batch`; the proposer gets the command's
//! outcome once it is durable. Today there is one implementation,
//! [`Standalone`](crate::standalone::Standalone), for a single node; a Raft
//! implementation will order the same commands across nodes and apply them
//! with the same store code, so nothing above this trait changes.

use std::future::Future;
use std::pin::Pin;

use roster_store::{Applied, Command};

use crate::error::ServerError;

/// A boxed future, so the trait stays object-safe.
pub type ProposeFuture = Pin<Box<dyn Future<Output = Result<Applied, ServerError>> + Send>>;

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

/// Orders write commands and applies them.
pub trait Consensus: Send + Sync + 'static {
    /// Proposes a command; resolves once it is applied and durable.
    fn propose(&self, cmd: Command) -> ProposeFuture;
    /// The current consensus state.
    fn status(&self) -> ConsensusStatus;
}
