//! The server's tests: one binary, real nodes in-process.
//!
//! - [`portable`]: the etcd v3 API as a client sees it — KV, watch, lease,
//!   lock and election — through the `etcd-client` crate, against a
//!   [`Server`](roster_testkit::Server). They run against Roster by
//!   default and against the real etcd with `ROSTER_TEST_AGAINST_ETCD=1`
//!   (`scripts/test.sh` runs both), so what they expect is etcd's answer.
//! - [`node`]: Roster's own machinery, which etcd does not share: group
//!   commit, the write coalescing, compaction in pieces, log replay, the
//!   hand-written KV endpoint's framing, the accept loop out of descriptors.
//! - [`robust`]: hostile and arbitrary input to every RPC: answered, never
//!   a panic or a dropped connection.

mod node;
pub mod portable;
mod robust;
