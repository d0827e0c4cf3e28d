//! The consensus side of Roster.
//!
//! Roster is split in two. `roster-store` is the state machine: it applies
//! ordered commands deterministically and says how far it has durably
//! applied. This crate is what puts commands in order and keeps them until
//! the store no longer needs them: a write-ahead log, and on it the
//! storage of a Raft implementation (openraft). It is the only crate that
//! names openraft, so that its API churn stays here.
//!
//! ```text
//!            openraft (RaftLogStorage, RaftStateMachine)
//!               │                          │
//!   storage::LogStore             machine::StateMachine<M>
//!   vote, committed, purge          │
//!   entries kept in memory          ▼
//!               │             machine::Machine (Roster's trait,
//!               ▼              implemented by the server's state machine)
//!          log::Log  (segments, fdatasync per append)
//! ```
//!
//! The log speaks Raft's language: every entry carries a term and an index
//! ([`LogId`]), a kind (blank, command or membership change), and the log
//! can be cut back from an index when a new leader disagrees with what
//! this node holds ([`Log::truncate`]). It keeps its payloads opaque: it
//! does not know what a command is, only that the bytes it hands back are
//! the bytes it was given, or that it refuses to open. Between those two it
//! never chooses silently: the [`log`] module describes the format on disk
//! and when damage is read as the harmless tail of an interrupted append
//! and when as corruption.
//!
//! [`types`] fixes openraft's type config and how its entries sit in the
//! log; [`storage`] is openraft's log storage on the log (vote, committed
//! position, purge, truncate, each durable before it is acknowledged);
//! [`machine`] adapts a [`Machine`] of Roster's own, in plain types, to
//! openraft's state machine. Both pass openraft's storage test suite
//! (`tests/it/suite.rs`), which [`testing`] (the `testing` feature) runs
//! for any [`Machine`], the server's included.

pub mod log;
pub mod machine;
pub mod storage;
#[cfg(feature = "testing")]
pub mod testing;
pub mod types;

pub use log::{Entry, EntryKind, Log, LogError, LogId, Record};
pub use machine::{Machine, Mark, Outcome, StateMachine};
pub use storage::LogStore;
