//! The etcd v3 API as etcd answers it: every test here starts its server
//! with [`roster_testkit::Server`] and runs unchanged against etcd.

mod enums;
mod kv;
mod kv_errors;
mod lease;
mod lock_election;
mod maintenance;
mod metadata;
pub mod nesting;
mod streams;
mod watch;
mod watch_order;
pub mod wire;
