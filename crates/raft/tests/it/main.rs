//! roster-raft's integration tests, one binary.

mod reopen;
mod suite;
