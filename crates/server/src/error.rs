//! Every error a client can see, and the one place they become gRPC statuses.
//!
//! Codes and messages are etcd's, word for word, because etcd clients match
//! on them: Go clientv3, for one, turns "etcdserver: mvcc: required revision
//! has been compacted" into `ErrCompacted` and stops a watch on it.

use roster_store::StoreError;
use tonic::{Code, Status};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store refused the command or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A request, a txn op or a compare had an empty key.
    #[error("key is not provided")]
    EmptyKey,
    /// A txn op held no request (etcd answers this with "key not found").
    #[error("empty op")]
    EmptyOp,
    /// `ignore_value` was set together with a value.
    #[error("value is provided")]
    ValueProvided,
    /// `ignore_lease` was set together with a lease.
    #[error("lease is provided")]
    LeaseProvided,
    /// A sort order or target outside the enum.
    #[error("invalid sort option")]
    InvalidSortOption,
    /// A txn with more compares or ops per branch than allowed.
    #[error("too many operations in txn request")]
    TooManyOps,
    /// A txn writing one key twice, or putting a key it also deletes.
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    /// A lease TTL above the maximum.
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    /// A request above the configured size limit.
    #[error("request is too large")]
    RequestTooLarge,
    /// A lock or campaign whose lease (and so its key) vanished while it
    /// waited.
    #[error("session: session is expired")]
    SessionExpired,
    /// Proclaim by a contender that does not lead.
    #[error("election: not leader")]
    ElectionNotLeader,
    /// Leader asked of an election nobody leads.
    #[error("election: no leader")]
    ElectionNoLeader,
    /// The node is shutting down or its write path has failed.
    #[error("server stopped")]
    Stopped,
    /// The RPC exists in etcd's API but this node does not serve it.
    #[error("{0} is not supported by roster")]
    Unsupported(&'static str),
}

impl From<ServerError> for Status {
    fn from(e: ServerError) -> Status {
        use ServerError as E;
        use StoreError as S;
        let (code, msg): (Code, &str) = match &e {
            E::Store(S::Compacted) => (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
            ),
            E::Store(S::FutureRevision) => (
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
            ),
            E::Store(S::NoSpace) => (
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            E::Store(S::KeyNotFound) | E::EmptyOp => {
                (Code::InvalidArgument, "etcdserver: key not found")
            }
            E::Store(S::LeaseNotFound) => (Code::NotFound, "etcdserver: requested lease not found"),
            E::Store(S::LeaseExists) => {
                (Code::FailedPrecondition, "etcdserver: lease already exists")
            }
            E::LeaseTtlTooLarge => (Code::OutOfRange, "etcdserver: too large lease TTL"),
            E::Store(S::Invalid(_)) | E::InvalidSortOption => {
                (Code::InvalidArgument, "etcdserver: invalid sort option")
            }
            E::Store(S::Storage(_)) => (Code::Internal, "etcdserver: storage failure"),
            E::EmptyKey => (Code::InvalidArgument, "etcdserver: key is not provided"),
            E::ValueProvided => (Code::InvalidArgument, "etcdserver: value is provided"),
            E::LeaseProvided => (Code::InvalidArgument, "etcdserver: lease is provided"),
            E::TooManyOps => (
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            E::DuplicateKey => (
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            E::RequestTooLarge => (Code::InvalidArgument, "etcdserver: request is too large"),
            E::Stopped => (Code::Unavailable, "etcdserver: server stopped"),
            E::Unsupported(_) => return Status::unimplemented(e.to_string()),
            // etcd's lock and election services return these as plain errors,
            // which gRPC carries with code Unknown.
            E::SessionExpired | E::ElectionNotLeader | E::ElectionNoLeader => {
                return Status::unknown(e.to_string())
            }
        };
        Status::new(code, msg)
    }
}

/// What prost's decode errors say first, as tonic's codec passes them on.
const PROST_DECODE: &str = "failed to decode Protobuf message: ";

/// The status a stream ends with when reading its next request failed: a
/// request that does not decode gets grpc-go's words for it, which is what
/// etcd answers (code `Internal`; the reason after them is prost's, Go's
/// protobuf words it differently); any other failure is passed on as it is.
pub fn recv_error(status: Status) -> Status {
    match status.message().strip_prefix(PROST_DECODE) {
        Some(reason) if status.code() == Code::Internal => Status::internal(format!(
            "grpc: failed to unmarshal the received message {reason}"
        )),
        _ => status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_request_that_does_not_decode_gets_grpc_go_words() {
        // A varint that never ends, as a stream would have decoded it.
        use prost::Message;
        let prost = roster_proto::etcdserverpb::WatchRequest::decode(&b"\x0a\xff"[..]).unwrap_err();
        let s = recv_error(Status::internal(prost.to_string()));
        assert_eq!(s.code(), Code::Internal);
        assert_eq!(
            s.message(),
            "grpc: failed to unmarshal the received message WatchRequest.request_union: invalid varint"
        );
        let other = recv_error(Status::resource_exhausted("too big"));
        assert_eq!(
            (other.code(), other.message()),
            (Code::ResourceExhausted, "too big")
        );
    }
}
