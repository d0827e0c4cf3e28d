//! The gateway's error type.
//!
//! Only setting the gateway up can fail: a configuration that does not
//! parse or validate, an address that cannot be bound, a registry endpoint
//! that cannot be used. Once it runs, a request that cannot be served is an
//! HTTP answer (404, 502, 503, 504; see [`crate::reply`]), never an `Error`,
//! and a configuration reload that fails is logged while the old route
//! table stays in force.

use std::path::PathBuf;

/// What setting up or starting the gateway can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid; the message names the field and why.
    #[error("config: {0}")]
    Config(String),
    /// The configuration file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address, as configured.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The registry client could not be built (a bad endpoint).
    #[error("registry: {0}")]
    Registry(#[from] roster_client::Error),
}

/// The gateway's result type.
pub type Result<T> = std::result::Result<T, Error>;
