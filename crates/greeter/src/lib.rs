//! roster-greeter: a tiny gRPC service to register, discover and balance in
//! Roster's tests and examples.
//!
//! Balancing tests need a real gRPC server whose answers say *which*
//! instance answered, so that a test can tell where the balancer sent each
//! call. [`Greeter`] is that server: `SayHello` answers with a greeting and
//! the instance id the server was built with. [`serve`] runs it on a bound
//! listener until a shutdown future resolves.
//!
//! The crate is test support, not part of the product: only the
//! `[dev-dependencies]` of roster-client and of the `roster` binary use it,
//! and it is never published. Its `.proto` is compiled by `protox`, like
//! roster-proto's, so no system `protoc` is needed.

use std::future::Future;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// The code generated from `proto/greeter.proto` (package `roster.greeter`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("roster.greeter");
}

pub use pb::greeter_client::GreeterClient;
pub use pb::greeter_server::GreeterServer;
pub use pb::{HelloReply, HelloRequest};

/// A Greeter server that signs every reply with its own instance id.
#[derive(Debug, Clone)]
pub struct Greeter {
    instance: String,
}

impl Greeter {
    /// A server whose replies carry `instance` as the answering instance.
    pub fn new(instance: impl Into<String>) -> Self {
        Greeter {
            instance: instance.into(),
        }
    }

    /// The instance id this server answers with.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The server wrapped as a tonic service, ready to add to a router.
    pub fn into_service(self) -> GreeterServer<Greeter> {
        GreeterServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::greeter_server::Greeter for Greeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(HelloReply {
            message: format!("hello, {name}"),
            instance: self.instance.clone(),
        }))
    }
}

/// Serves `greeter` on `listener` until `shutdown` resolves; then stops
/// accepting, lets calls in flight finish, and returns.
pub async fn serve(
    listener: TcpListener,
    greeter: Greeter,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(greeter.into_service())
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
