//! The client's error type.

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error status (etcd's code and message).
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// No endpoint was given, or one could not be parsed.
    #[error("bad endpoint {0:?}")]
    Endpoint(String),
    /// The call did not finish in time.
    #[error("timed out")]
    Timeout,
    /// A background task or stream ended.
    #[error("closed")]
    Closed,
    /// A configuration key or value that cannot be used.
    #[error("config: {0}")]
    Config(String),
    /// The lease a lock, leadership or registration was held with is gone.
    #[error("lease lost: {0}")]
    LeaseLost(String),
    /// The server cancelled a watch (its reason).
    #[error("watch canceled: {0}")]
    Canceled(String),
}

/// The client's result type.
pub type Result<T> = std::result::Result<T, Error>;
