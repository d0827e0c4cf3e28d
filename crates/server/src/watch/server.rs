//! The Watch service's gRPC endpoint, written out by hand.
//!
//! tonic's generated `WatchServer` encodes `etcdserverpb.WatchResponse`, so
//! each event would be cloned into every watcher's response and encoded
//! again for each. Roster's watch streams yield [`EncodedWatchResponse`]
//! instead: the same bytes on the wire, with every event encoded once (see
//! `proto/roster/watch.proto`). This module is what the generated server
//! would be for that message: it answers `/etcdserverpb.Watch/Watch` with a
//! streaming call over a prost codec for the pair (`WatchRequest` in,
//! `EncodedWatchResponse` out) and anything else with `Unimplemented`.
//! Measured against the generated server: `docs/decisions.md`, entry 18.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use roster_proto::etcdserverpb::WatchRequest;
use roster_proto::roster::EncodedWatchResponse;
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};

use super::stream::{WatchService, WatchStream};

/// The gRPC path of etcd's one Watch method.
const WATCH_PATH: &str = "/etcdserverpb.Watch/Watch";

/// The Watch service as a tower service, ready for a tonic router.
#[derive(Clone)]
pub struct WatchServer {
    inner: Arc<WatchService>,
    max_decoding_message_size: Option<usize>,
}

impl WatchServer {
    /// Serves `service`.
    pub fn new(service: WatchService) -> Self {
        WatchServer {
            inner: Arc::new(service),
            max_decoding_message_size: None,
        }
    }

    /// Refuses requests larger than `limit` bytes, as the generated servers
    /// do.
    pub fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.max_decoding_message_size = Some(limit);
        self
    }
}

impl NamedService for WatchServer {
    const NAME: &'static str = "etcdserverpb.Watch";
}

/// One call of the streaming method.
struct WatchCall(Arc<WatchService>);

impl StreamingService<WatchRequest> for WatchCall {
    type Response = EncodedWatchResponse;
    type ResponseStream = WatchStream;
    type Future = BoxFuture<Response<WatchStream>, Status>;

    fn call(&mut self, request: Request<Streaming<WatchRequest>>) -> Self::Future {
        let stream = self.0.open(request.into_inner());
        Box::pin(async move { Ok(Response::new(stream)) })
    }
}

impl<B> Service<http::Request<B>> for WatchServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != WATCH_PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let call = WatchCall(self.inner.clone());
        let mut grpc = Grpc::new(tonic_prost::ProstCodec::default())
            .apply_max_message_size_config(self.max_decoding_message_size, None);
        Box::pin(async move { Ok(grpc.streaming(call, req).await) })
    }
}
