//! roster-client: register and discover services on the etcd v3 API.
//!
//! Works against a Roster server and against a real etcd cluster alike.

pub mod balance;
pub mod client;
pub mod discover;
pub mod error;
pub mod instance;
pub mod lease;
pub mod register;
pub mod registry;
pub mod tower;
pub mod watch;

pub use self::tower::{balanced_channel, balanced_channel_with, InstanceDiscover};
pub use client::{Backoff, Client, Options};
pub use discover::{Change, Discovery};
pub use error::{Error, Result};
pub use instance::Instance;
pub use lease::KeptLease;
pub use register::{Registration, RegistrationEvent};
pub use registry::Registry;
pub use watch::{WatchSpec, WatchUpdate, Watcher};
