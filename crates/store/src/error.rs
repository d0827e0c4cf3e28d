//! The store's one error type.
//!
//! Variants above `Storage` are caused by the request: they are returned to the
//! client and change nothing. `Storage` means the disk failed under us; on the
//! apply path the node must stop rather than let replicas diverge.

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The requested revision was removed by a compaction.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is newer than the store's current revision.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// `ignore_value` or `ignore_lease` was set on a key that does not exist.
    #[error("key not found")]
    KeyNotFound,
    /// A write referred to a lease that does not exist.
    #[error("requested lease not found")]
    LeaseNotFound,
    /// A lease with the requested id already exists.
    #[error("lease already exists")]
    LeaseExists,
    /// A write that would take space while the NOSPACE alarm is raised,
    /// or that the quota refused before it was proposed.
    #[error("mvcc: database space exceeded")]
    NoSpace,
    /// The request was malformed in a way validation should have caught.
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// The storage engine failed; the node cannot continue safely.
    #[error("storage failure: {0}")]
    Storage(String),
}

impl StoreError {
    /// True when the error means the node's storage is broken rather than the
    /// request being wrong.
    pub fn is_fatal(&self) -> bool {
        matches!(self, StoreError::Storage(_))
    }
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Storage(e.to_string())
            }
        }
    )*};
}

storage_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    prost::DecodeError
);
