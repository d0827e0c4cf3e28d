//! A Roster node: the etcd v3 gRPC API over the MVCC store.
//!
//! The ladder, top to bottom, each rung knowing only the one below:
//! - [`mod@serve`]: listeners and graceful shutdown; `accept` takes
//!   connections without letting clients take the node's last descriptors;
//!   [`coalesce`] lets the answers of one commit leave a connection in one
//!   write.
//! - [`service`]: one thin gRPC service per etcd service — validate
//!   ([`validate`]), call the node, map errors once ([`error`]), fill headers.
//!   The KV endpoint reads and answers its unary calls itself (`unary`).
//! - [`node`]: the node identity, the consensus, and the store for reads.
//! - [`consensus`]: the seam where writes are ordered. [`standalone`] is the
//!   single-node implementation with group commit; Raft will be another.
//! - [`state`]: the state machine consensus feeds: the only caller of the
//!   store's apply; it publishes events to the watch hub, keeps the
//!   [`lessor`]'s table and answers proposers.
//! - `roster-store`: the deterministic MVCC store.
//!
//! Reads go straight to the store's published state; writes become
//! [`roster_store::Command`]s proposed to consensus and are answered once
//! durable.

mod accept;
pub mod coalesce;
pub mod config;
pub mod consensus;
mod contain;
pub mod error;
pub mod lessor;
pub mod node;
pub mod raft_machine;
pub mod serve;
pub mod service;
pub mod standalone;
pub mod state;
mod txn_decode;
mod unary;
pub mod validate;
pub mod watch;

pub use config::Config;
pub use error::ServerError;
pub use node::{Node, OpenError};
pub use serve::{serve, Stopped};
