//! The SDK's tests: one binary, against real registries.
//!
//! Every scenario is one function run twice, by a test against a Roster
//! node started in-process and by a test against the real etcd: the SDK
//! promises to work with either, unchanged. Faults are made for real — a
//! registry restarted, a network path cut by [`proxy`], a greeter process
//! killed with `kill -9` — never mocked.

mod balance;
mod coord;
mod discovery;
mod faults;
mod greeter;
mod proxy;
mod registry;
mod tonic_balanced;
