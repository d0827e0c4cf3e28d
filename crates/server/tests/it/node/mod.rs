//! Roster's own machinery, tested on a node opened in the test.

mod accept;
mod coalesce;
mod compaction;
mod group_commit;
mod kv_wire;
mod log_replay;
mod nesting;
mod raft_suite;
