//! A bare gRPC client over one HTTP/2 connection: any bytes as any
//! method's message, and the answer as it came, so a test sees what a
//! generated client would hide (a reset stream, an empty status message).

use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use roster_testkit::TestNode;

type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// How long a unary call may take before the test calls it hung.
const UNARY: Duration = Duration::from_secs(15);
/// How long a streaming call is given to send its first message by
/// default; one that waits longer (a Lock queued behind another, an
/// Observe of a name with no leader) is waiting as it should, and is
/// cancelled.
pub const STREAM: Option<Duration> = Some(Duration::from_millis(100));

/// What a call came back with.
#[derive(Debug)]
pub enum Answer {
    /// A gRPC status other than OK.
    Status { code: u32, message: String },
    /// OK, and the (first) message.
    Message(Bytes),
    /// A stream that had sent nothing yet when it was cancelled.
    Waiting,
    /// A stream that ended, OK, without a message.
    Ended,
}

/// One connection to a node, used for every call of a test: a call that
/// broke it would fail every call after.
pub struct Wire {
    send: Sender,
    url: String,
}

impl Wire {
    pub async fn connect(node: &TestNode) -> Wire {
        let tcp = tokio::net::TcpStream::connect(node.addr()).await.unwrap();
        // A request's headers and body are two small writes: without this
        // the second waits for the delayed ACK of the first (40 ms).
        tcp.set_nodelay(true).unwrap();
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        Wire {
            send,
            url: node.url(),
        }
    }

    /// Sends `body` (already framed, or not) as the whole request of
    /// `path` (`/pkg.Service/Method`) and returns the answer. `stream` is
    /// how long a streaming call may wait for its first message, `None`
    /// for a unary call. Panics if the stream or connection was reset, or
    /// a unary call hung.
    pub async fn raw(&mut self, path: &str, body: Bytes, stream: Option<Duration>) -> Answer {
        let streaming = stream.is_some();
        let req = hyper::Request::post(format!("{}{path}", self.url))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(body))
            .unwrap();
        self.send.ready().await.expect("the connection is still up");
        let call = async {
            let resp = self.send.send_request(req).await;
            let resp = resp.unwrap_or_else(|e| panic!("{path}: no answer: {e}"));
            let (head, mut body) = resp.into_parts();
            if let Some(answer) = status(&head.headers) {
                return answer;
            }
            let mut data = bytes::BytesMut::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.unwrap_or_else(|e| panic!("{path}: stream broken: {e}"));
                match frame.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(frame) => {
                        let trailers = frame.into_trailers().unwrap_or_default();
                        return match status(&trailers) {
                            Some(Answer::Status { code: 0, .. })
                                if streaming && data.is_empty() =>
                            {
                                Answer::Ended
                            }
                            Some(Answer::Status { code: 0, .. }) => message(path, data.freeze()),
                            Some(answer) => answer,
                            None => panic!("{path}: trailers without grpc-status"),
                        };
                    }
                }
                if streaming && whole(&data) {
                    return message(path, data.freeze());
                }
            }
            panic!("{path}: the answer ended without a status");
        };
        match tokio::time::timeout(stream.unwrap_or(UNARY), call).await {
            Ok(answer) => answer,
            Err(_) if streaming => Answer::Waiting,
            Err(_) => panic!("{path}: no answer in {UNARY:?}"),
        }
    }

    /// Sends `msg` to `path`; an OK answer must decode as `R`.
    pub async fn call<R: Message + Default>(
        &mut self,
        path: &str,
        msg: &impl Message,
        streaming: bool,
    ) -> Answer {
        let answer = self
            .raw(
                path,
                roster_proto::framing::encode(msg),
                if streaming { STREAM } else { None },
            )
            .await;
        if let Answer::Message(m) = &answer {
            if let Err(e) = R::decode(m.clone()) {
                panic!("{path}: the answer does not decode: {e}");
            }
        }
        answer
    }
}

/// The status a header map carries, if any.
fn status(h: &hyper::header::HeaderMap) -> Option<Answer> {
    let code = h.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = h
        .get("grpc-message")
        .map(|v| v.to_str().unwrap_or("?").to_string())
        .unwrap_or_default();
    Some(Answer::Status { code, message })
}

/// Whether `data` starts with a whole length-prefixed message.
fn whole(data: &[u8]) -> bool {
    roster_proto::framing::prefix(data)
        .is_some_and(|(_, len)| data.len() >= roster_proto::framing::PREFIX + len)
}

/// The first message of the framed `data`.
fn message(path: &str, mut data: Bytes) -> Answer {
    let Some((compressed, len)) = roster_proto::framing::prefix(&data) else {
        panic!("{path}: OK without a message");
    };
    assert!(!compressed, "{path}: a compressed answer");
    data.advance(roster_proto::framing::PREFIX);
    Answer::Message(data.slice(..len))
}

/// Asserts that `answer` is a reply or a status with a message saying
/// why; a stream may also still be waiting when `waiting_ok`.
pub fn sane(path: &str, answer: &Answer, waiting_ok: bool) {
    match answer {
        Answer::Message(_) => {}
        Answer::Status { code, message } => {
            assert!(!message.is_empty(), "{path}: status {code} with no message");
            // A hostile request is the client's fault, never the disk's.
            assert!(
                !message.contains("storage%20failure"),
                "{path}: status {code}: {message}"
            );
        }
        Answer::Waiting | Answer::Ended => {
            assert!(waiting_ok, "{path}: {answer:?} for a unary call")
        }
    }
}
