//! The gRPC services. Each is thin, as etcd's are: validate the request,
//! call the node, map the error once, fill the response header.

pub mod cluster;
pub mod coord;
pub mod election;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;

use tonic::Status;

use crate::error::ServerError;

/// The result type of every handler.
pub type Reply<T> = Result<tonic::Response<T>, Status>;

/// Wraps a handler's outcome into a gRPC reply.
pub fn reply<T>(r: Result<T, ServerError>) -> Reply<T> {
    r.map(tonic::Response::new).map_err(Status::from)
}
