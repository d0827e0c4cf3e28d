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

/// [`read`] against a model of gRPC's framing: any body, split anywhere
/// into frames, gives the message it frames or the status grpc-go gives
/// (a compressed flag, a length over the limit, a body cut short, bytes
/// that do not decode), always with a message.
#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;
    use proptest::prelude::*;
    use roster_proto::etcdserverpb::PutRequest;
    use tonic::Code;

    /// What [`read`] must make of `body`, read whole.
    fn model(body: &[u8], limit: usize) -> Result<PutRequest, Code> {
        let (compressed, len) = prefix(body).ok_or(Code::Internal)?;
        if compressed {
            return Err(Code::Unimplemented);
        }
        if len > limit {
            return Err(Code::ResourceExhausted);
        }
        let msg = body.get(PREFIX..PREFIX + len).ok_or(Code::Internal)?;
        PutRequest::decode(msg).map_err(|_| Code::Internal)
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        let put =
            (any::<Vec<u8>>(), any::<Vec<u8>>(), any::<i64>()).prop_map(|(key, value, lease)| {
                encode(&PutRequest {
                    key,
                    value,
                    lease,
                    ..Default::default()
                })
                .to_vec()
            });
        let damaged = (
            put.clone(),
            any::<u8>(),
            any::<prop::sample::Index>(),
            any::<Vec<u8>>(),
        )
            .prop_map(|(mut b, flag, cut, extra)| {
                match flag % 4 {
                    0 => b[0] = flag,
                    1 => b.truncate(cut.index(b.len())),
                    2 => b.extend(extra),
                    _ => b[1..5].copy_from_slice(&u32::from(flag).to_be_bytes()),
                }
                b
            });
        prop_oneof![put, damaged, any::<Vec<u8>>()]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn read_follows_the_framing(
            body in body(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
            small in any::<bool>(),
        ) {
            let limit = if small { 24 } else { 1 << 20 };
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
            at.push(0);
            at.push(body.len());
            at.sort();
            let frames: Vec<Result<http_body::Frame<Bytes>, Status>> = at
                .windows(2)
                .map(|w| Ok(http_body::Frame::data(Bytes::copy_from_slice(&body[w[0]..w[1]]))))
                .collect();
            let stream = Body::new(StreamBody::new(tokio_stream::iter(frames)));
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let got = rt.block_on(read::<PutRequest>(stream, limit));
            match (got, model(&body, limit)) {
                (Ok(got), Ok(want)) => prop_assert_eq!(got, want),
                (Err(status), Err(code)) => {
                    prop_assert_eq!(status.code(), code);
                    prop_assert!(!status.message().is_empty());
                }
                (got, want) => prop_assert!(false, "read {:?}, the model {:?}", got, want),
            }
        }
    }
}
