//! roster-client: register and discover services on the etcd v3 API.
//!
//! The SDK a Rust service links in to take part in a registry. It speaks
//! only the etcd v3 gRPC API, so it works against a Roster server and
//! against a real etcd cluster alike.
//!
//! # Quick start
//!
//! ```no_run
//! use roster_client::{balance::{Balancer, P2c}, Client, Registry};
//!
//! # async fn run() -> roster_client::Result<()> {
//! let registry = Registry::new(Client::connect(["127.0.0.1:2379"])?);
//! // This process serves user.rpc: keep it registered while it runs.
//! let me = registry.register("user.rpc", "10.0.0.7:8080").ttl(10).await?;
//! // A caller: follow the instances and pick one per call.
//! let users = registry.discover("user.rpc").await?;
//! let p2c = P2c::new();
//! if let Some(pick) = p2c.pick(&users.instances(), None) {
//!     println!("calling {}", pick.instance().addr);
//!     pick.success();
//! }
//! me.deregister().await?;
//! # Ok(()) }
//! ```
//!
//! # What is here
//!
//! | need | API |
//! |------|-----|
//! | connection with endpoint failover, timeouts, backoff | [`Client`], [`failover`] |
//! | register an instance, keep it alive, re-register after loss | [`Registry::register`], [`Registration`] |
//! | the live instance list of a service, and its changes | [`Registry::discover`], [`Discovery`] |
//! | choose an instance per call | [`balance`]: round-robin, random, weighted, p2c, consistent hash |
//! | a tonic `Channel` or tower balancer that follows a service | [`tower`] |
//! | a lease kept alive, reporting its loss | [`Client::grant_kept`], [`KeptLease`] |
//! | a watch that resumes after reconnects | [`Client::watch_resumable`], [`Watcher`] |
//! | distributed lock, leader election | [`Client::lock`], [`Client::campaign`], [`Client::observe`] |
//! | typed configuration from a key (JSON, YAML, TOML) | [`config::watch`] |
//!
//! Runnable programs are in `crates/client/examples/`: `register`,
//! `discover` and `grpc_balanced`.

pub mod balance;
pub mod client;
pub mod config;
pub mod discover;
pub mod election;
pub mod error;
pub mod failover;
pub mod instance;
pub mod lease;
pub mod lock;
pub mod register;
pub mod registry;
pub mod tower;
pub mod watch;

pub use self::tower::{balanced_channel, balanced_channel_with, InstanceDiscover};
pub use client::{Backoff, Client, Options};
pub use discover::{Change, Discovery};
pub use election::{Leadership, Observer};
pub use error::{is_transport_status, Error, Result};
pub use instance::Instance;
pub use lease::KeptLease;
pub use lock::LockGuard;
pub use register::{Registration, RegistrationEvent};
pub use registry::Registry;
pub use watch::{WatchSpec, WatchUpdate, Watcher};
