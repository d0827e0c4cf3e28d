//! Roster's state machine: an MVCC key-value store, persisted in redb.
//!
//! The store follows etcd's model. One global *revision* counts write
//! transactions: every Put, every DeleteRange that deletes something and every
//! Txn that writes anything bumps it by exactly one, and all changes made by
//! one transaction share that main revision (told apart by a sub-revision).
//! Every key carries `create_revision`, `mod_revision`, `version` and `lease`;
//! a delete writes a tombstone, so history stays readable at old revisions
//! until a compaction drops it.
//!
//! The shape is chosen for a replicated log. [`Store::apply_batch`] takes
//! ordered [`Command`]s and applies them deterministically: no clock, no
//! randomness, no thread-local state, so the same log applied to the same state
//! yields the same state and the same responses on every node. A batch is
//! applied in memory (the key index, and its records as pending writes) and
//! made durable either by the store itself, one redb commit and fsync per
//! batch ([`Store::apply_batch`]), or by a log in front of it, in which case
//! redb receives the pending writes at the next checkpoint
//! ([`Store::apply_logged`], [`Store::checkpoint`]); readers see a revision
//! only once the batch holding it is durable. Reads ([`Store::range`], [`Store::txn_read`])
//! never wait for an fsync. They hold the index lock while they read, a
//! piece at a time when they read spans (`store::scan`).
//!
//! What lives where:
//! - [`index`]: the in-memory key index, key → list of versions, rebuilt from
//!   redb on open.
//! - [`backend`]: the redb tables and their encoding.
//! - `pending`: applied records and lease rows not yet written to redb.
//! - [`lease`]: leases and the keys attached to them.
//! - [`read`]: evaluation of ranges and compares against a view of the index.
//! - [`apply`]: the write commands.
//! - [`snapshot`]: the durable state as one stream of bytes, and a new
//!   database made from one.
//! - `store`: the [`Store`] that ties them together and guards concurrency;
//!   `store::checkpoint` writes the pending writes out beside new batches.
//!
//! Why these parts are shaped as they are, and what was measured to
//! decide it, is in `docs/decisions.md`.

pub mod apply;
pub mod backend;
pub mod crc32c;
pub mod error;
pub mod index;
pub mod lease;
mod pending;
pub mod read;
pub mod snapshot;
mod store;

pub use error::StoreError;
pub use index::Revision;
pub use roster_proto::roster::{command::Kind as CommandKind, Command};
pub use store::{
    takes_space, Applied, CommandResponse, DbHash, KvHash, RangeScan, Store, Swept, TxnScan,
    SWEEP_BATCH,
};
