//! Endpoint failover: all calls go to one endpoint until it fails.
//!
//! A client given several endpoints keeps one lazily connected gRPC channel
//! per endpoint and sends every call to the *pinned* one. When a call to it
//! fails at the transport level — the connection cannot be made, breaks
//! under a request, or a stream's body ends in an I/O error — the pin moves
//! to the next endpoint, so the calls that follow go elsewhere. Answers
//! from a server, errors included, say nothing about the connection and
//! never move the pin.
//!
//! Why pin instead of spreading calls over all endpoints (what tonic's
//! `Channel::balance_list` does): a balancer keeps picking a dead endpoint
//! for a share of the calls, because a lazily connected channel reports
//! itself ready and fails only when called. Pinning costs one failed call
//! per dead endpoint, after which nothing goes there until the others fail
//! too. Registry traffic is light; spreading it buys nothing.
//!
//! The call that discovers a dead endpoint fails: it cannot be replayed
//! here, since its request body has been handed over and may have reached
//! the server. Whoever made it decides whether retrying is safe; the SDK's
//! own loops (lease renewal, resumable watch, registration, discovery) do,
//! with backoff. A stream broken this way is reopened by its owner and lands
//! on the new pin.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body as HttpBody, Frame};
use tonic::body::Body;
use tonic::transport::Channel;
use tower::Service;

/// The endpoints and which one is pinned, shared by every clone.
struct Endpoints {
    channels: Vec<Channel>,
    pinned: AtomicUsize,
}

impl Endpoints {
    /// Moves the pin off `failed`, unless someone already has.
    fn failed(&self, failed: usize) {
        let next = (failed + 1) % self.channels.len();
        if self
            .pinned
            .compare_exchange(failed, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && next != failed
        {
            tracing::info!(
                from = failed,
                to = next,
                "endpoint failed; moving to the next"
            );
        }
    }
}

/// A gRPC transport over a list of endpoints with failover; the generated
/// clients run on it (`KvClient<Failover>`). Cheap to clone.
pub struct Failover {
    endpoints: Arc<Endpoints>,
    /// The endpoint this handle made ready, and its channel: a call must go
    /// to the channel whose readiness was polled.
    ready: Option<(usize, Channel)>,
}

impl Clone for Failover {
    fn clone(&self) -> Self {
        Failover {
            endpoints: self.endpoints.clone(),
            ready: None,
        }
    }
}

impl Failover {
    /// Pins the first of `channels` (which must not be empty).
    pub(crate) fn new(channels: Vec<Channel>) -> Self {
        assert!(!channels.is_empty(), "at least one endpoint");
        Failover {
            endpoints: Arc::new(Endpoints {
                channels,
                pinned: AtomicUsize::new(0),
            }),
            ready: None,
        }
    }

    /// The index of the endpoint calls go to now.
    pub fn pinned(&self) -> usize {
        self.endpoints.pinned.load(Ordering::Acquire)
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<http::Request<Body>> for Failover {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let endpoints = &self.endpoints;
        let (index, channel) = self.ready.get_or_insert_with(|| {
            let i = endpoints.pinned.load(Ordering::Acquire);
            (i, endpoints.channels[i].clone())
        });
        let index = *index;
        let polled = channel.poll_ready(cx);
        if let Poll::Ready(Err(_)) = &polled {
            self.ready = None;
            self.endpoints.failed(index);
        }
        polled
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (index, mut channel) = self
            .ready
            .take()
            .expect("poll_ready must succeed before call");
        let endpoints = self.endpoints.clone();
        let call = channel.call(request);
        Box::pin(async move {
            match call.await {
                Ok(response) => {
                    let on_error = OnError { endpoints, index };
                    Ok(response.map(|body| Body::new(Watched { body, on_error })))
                }
                Err(e) => {
                    endpoints.failed(index);
                    Err(e)
                }
            }
        })
    }
}

/// Reports a failed endpoint when a response body breaks.
struct OnError {
    endpoints: Arc<Endpoints>,
    index: usize,
}

/// A response body that moves the pin if it ends in an error: that is how
/// a long-lived stream (watch, keepalive) learns its connection died.
struct Watched {
    body: Body,
    on_error: OnError,
}

impl HttpBody for Watched {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            self.on_error.endpoints.failed(self.on_error.index);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
