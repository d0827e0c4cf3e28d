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

impl Error {
    /// Whether the call failed for want of a working connection (refused,
    /// broken, timed out) rather than by the server's decision, so the same
    /// request may succeed on a retry once the network is back.
    pub fn is_transport(&self) -> bool {
        match self {
            Error::Timeout => true,
            Error::Status(s) => is_transport_status(s),
            _ => false,
        }
    }
}

/// Whether a gRPC call failed for want of a working connection rather than
/// by the server's decision: the test for retrying an idempotent call, on
/// the registry or on a [`balanced_channel`](crate::balanced_channel).
///
/// That is `Unavailable` (refused, reset), `Cancelled` (tonic's word for a
/// request queued on a connection that closed before it was written, which
/// is what a call to a `kill -9`ed instance may get), and `Unknown` with a
/// transport error as its source (a connection broken under a request).
pub fn is_transport_status(s: &tonic::Status) -> bool {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::Cancelled => true,
        tonic::Code::Unknown => {
            let mut source = std::error::Error::source(s);
            while let Some(e) = source {
                if e.is::<tonic::transport::Error>() {
                    return true;
                }
                source = e.source();
            }
            false
        }
        _ => false,
    }
}
