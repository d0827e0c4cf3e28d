//! The consensus side of Roster.
//!
//! Roster is split in two. `roster-store` is the state machine: it applies
//! ordered commands deterministically and says how far it has durably
//! applied. This crate is what puts commands in order and keeps them until
//! the store no longer needs them. Today that is a single node's
//! write-ahead log; later it becomes the storage under a Raft
//! implementation (openraft), which is why the log already speaks Raft's
//! language: every entry carries a term and an index ([`LogId`]), a kind
//! (blank, command or membership change), and the log can be cut back from
//! an index when a new leader disagrees with what this node holds
//! ([`Log::truncate`]).
//!
//! The log keeps its payloads opaque: it does not know what a command is,
//! only that the bytes it hands back are the bytes it was given, or that
//! it refuses to open. Between those two it never chooses silently: the
//! [`log`] module describes the format on disk and when damage is read as
//! the harmless tail of an interrupted append and when as corruption.

pub mod log;
pub mod types;

pub use log::{Entry, EntryKind, Log, LogError, LogId, Record};
