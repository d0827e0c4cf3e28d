//! Unary gRPC calls taken and answered without tonic's codec.
//!
//! tonic's generated servers run a unary call through the machinery of a
//! streaming one: a decoder with its own buffer for the request, an encoder
//! body with another for the answer, boxed futures and bodies, and the
//! answer's status turned into trailers by way of a `Status`. On the put
//! path that machinery was a large share of the server's CPU (measured in
//! docs/decisions.md, entry 26). A unary call is one length-prefixed message each way
//! ([`roster_proto::framing`]), so the hot service here (KV) reads the
//! request's message straight from the body and answers with one data frame
//! and fixed trailers.
//!
//! Errors are grpc-go's, as etcd's clients know them: a message over the
//! limit is `ResourceExhausted`, and is refused from its length prefix,
//! before the rest of it is read.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::Body as _;
use prost::bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use roster_proto::framing::{encode, prefix, PREFIX};
use tonic::body::Body;
use tonic::codegen::http::{self, header, HeaderMap, HeaderValue};
use tonic::Status;

/// Reads and decodes the one message of a unary call's request body.
/// `limit` bounds the message's length.
pub async fn read<M: Message + Default>(body: Body, limit: usize) -> Result<M, Status> {
    M::decode(read_bytes(body, limit).await?).map_err(|e| unmarshal_error(&e))
}

/// grpc-go's answer to a unary request that does not decode.
pub fn unmarshal_error(reason: &dyn std::fmt::Display) -> Status {
    Status::internal(format!("grpc: error unmarshalling request: {reason}"))
}

/// Reads the bytes of the one message of a unary call's request body.
/// `limit` bounds the message's length.
pub async fn read_bytes(mut body: Body, limit: usize) -> Result<Bytes, Status> {
    let mut buf = BytesMut::new();
    let mut want = None;
    let end = loop {
        if want.is_none() {
            if let Some((compressed, len)) = prefix(&buf) {
                if compressed {
                    return Err(Status::unimplemented(
                        "grpc: compressed messages are not supported",
                    ));
                }
                if len > limit {
                    return Err(Status::resource_exhausted(format!(
                        "grpc: received message larger than max ({len} vs. {limit})"
                    )));
                }
                buf.reserve((PREFIX + len).saturating_sub(buf.len()));
                want = Some(PREFIX + len);
            }
        }
        if let Some(end) = want.filter(|&w| buf.len() >= w) {
            break end;
        }
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.put(data);
                }
            }
            Some(Err(status)) => return Err(status),
            None => {
                return Err(Status::internal(
                    "grpc: the request ended before its message did",
                ))
            }
        }
    };
    Ok(buf.freeze().slice(PREFIX..end))
}

/// A successful answer carrying `msg`.
pub fn respond<M: Message>(msg: &M) -> http::Response<Body> {
    let data = encode(msg);
    let mut resp = http::Response::new(Body::new(OneMessage {
        data: Some(data),
        trailers: true,
    }));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    resp
}

/// An answer's body: one data frame, then the OK status as trailers.
struct OneMessage {
    data: Option<Bytes>,
    trailers: bool,
}

impl http_body::Body for OneMessage {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
        }
        if std::mem::take(&mut self.trailers) {
            let mut t = HeaderMap::with_capacity(1);
            t.insert("grpc-status", HeaderValue::from_static("0"));
            return Poll::Ready(Some(Ok(http_body::Frame::trailers(t))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && !self.trailers
    }
}
