//! roster-client: register and discover services on the etcd v3 API.
//!
//! Works against a Roster server and against a real etcd cluster alike.

pub mod balance;
pub mod instance;

pub use instance::Instance;
