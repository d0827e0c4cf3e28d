//! What Roster's tests stand on: real servers and honest waits.
//!
//! A test here talks to real things over loopback, never to a mock:
//!
//! - [`TestNode`]: a Roster node running in-process, on a port the OS
//!   picks, with its own runtime on its own thread. Several can run side by
//!   side. It can be killed (connections cut, data kept) and started again
//!   on the same port and data, and its clock can be paused so that TTL
//!   tests move time instead of sleeping.
//! - [`Etcd`]: the real etcd from Debian's `etcd-server`, for the tests that
//!   claim compatibility.
//! - [`Server`]: one of the two, picked by `ROSTER_TEST_AGAINST_ETCD`, so
//!   the same test body checks Roster and, in CI's second pass, etcd.
//! - [`Proc`]: any child process (the `roster` binary, etcd, a test's own
//!   helper process), started and watched until it prints its ready line,
//!   its output drained and kept for the failure report, killed on drop.
//! - [`etcd_api`]: what the compatibility tests do with the `etcd-client`
//!   crate again and again (connect, read an error's code, grant a lease).
//! - [`wait`]: bounded waits for what a test expects to happen
//!   ([`within`], [`joined`], [`until`]), so a test awaits events instead
//!   of sleeping for a guessed time.
//!
//! ```text
//!   test body ── Server ─┬─ TestNode: Node + serve() on its own thread
//!                        └─ Etcd: Proc running /usr/bin/etcd
//! ```

mod etcd;
pub mod etcd_api;
mod node;
mod process;
mod server;
pub mod wait;

pub use etcd::{etcdctl_binary, free_port, Etcd};
pub use node::{Builder, TestNode};
pub use process::Proc;
pub use server::{Server, Setting};
pub use wait::{joined, until, within, WAIT};
