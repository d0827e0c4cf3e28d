//! The `roster` binary's tests: what needs the process itself.
//!
//! Everything else is tested in the crate it belongs to, on a node started
//! in-process (`roster-server`, `roster-client`). Here: the process's
//! flags and errors ([`cli_errors`]), its open-file limit ([`fd_limit`]), its signals and graceful stop
//! ([`smoke`]), `kill -9` and what survives it ([`crash`],
//! [`lease_crash`]), a data directory damaged after `kill -9` refused or
//! served whole ([`damage`]), snapshots saved by etcdctl, restored and served
//! ([`snapshot`]), the echo backend and the gateway run end to end as
//! an operator runs them ([`echo`], [`gateway`], [`gateway_errors`],
//! [`gateway_features`]), etcdctl's own output diffed against the real
//! etcd's ([`etcdctl_conformance`]), and `roster bench` ([`bench_smoke`]).
//!
//! Processes are started through [`roster_testkit::Proc`]: [`roster`] for
//! `roster serve`, [`procs`] for `roster echo` and `roster gateway`.

mod bench_smoke;
mod cli_errors;
mod crash;
mod damage;
mod echo;
mod etcdctl_conformance;
mod fd_limit;
mod gateway;
mod gateway_errors;
mod gateway_features;
mod lease_crash;
mod procs;
mod roster;
mod smoke;
mod snapshot;
mod wire;
