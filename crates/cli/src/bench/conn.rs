//! One HTTP/2 connection to an endpoint, driven directly by the generated
//! tonic clients.
//!
//! `tonic::transport::Channel` puts a buffer task in front of the
//! connection (it can reconnect and balance), so each call hops through one
//! more task, and on a small machine the load generator's extra wake-ups
//! and CPU are taken from whichever server it measures. A benchmark
//! connection needs none of that: a call goes straight to hyper's HTTP/2
//! client, and a broken connection fails the calls, which the run counts.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::uri::{PathAndQuery, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::body::Body;
use tonic::codegen::Service;

/// A cloneable handle on one HTTP/2 connection; clones share it.
#[derive(Clone)]
pub struct Conn {
    send: SendRequest<Body>,
    /// Scheme and authority: tonic gives calls a path only, and HTTP/2
    /// needs both in its pseudo-headers.
    origin: Uri,
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Incoming>, hyper::Error>> + Send>>;

impl Conn {
    /// Connects to `url` (`http://host:port`) and starts the connection's
    /// task.
    pub async fn connect(url: &str) -> Result<Conn, String> {
        let origin: Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let authority = origin
            .authority()
            .ok_or_else(|| format!("{url}: no host:port"))?
            .to_string();
        let tcp = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
        tcp.set_nodelay(true)
            .map_err(|e| format!("{authority}: setting TCP_NODELAY: {e}"))?;
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP/2 handshake with {authority}: {e}"))?;
        tokio::spawn(async move {
            // Ends when every handle is dropped or the peer goes away; the
            // calls in flight then fail and are counted as errors.
            let _ = conn.await;
        });
        Ok(Conn { send, origin })
    }
}

impl Service<http::Request<Body>> for Conn {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = self.origin.clone().into_parts();
        parts.path_and_query = Some(path);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        Box::pin(self.send.send_request(req))
    }
}
