//! gRPC by hand over one HTTP/2 connection, for what a generated client
//! never does: half-close a stream and keep reading, send bytes that are
//! not the message they claim to be, send headers of any size.
//!
//! A [`Call`] is one HTTP/2 stream: messages go out with
//! [`Call::send`] (framed) or [`Call::send_raw`], [`Call::half_close`]
//! ends the request side, and [`Call::next`] reads the answer one message
//! at a time until its status.

use std::convert::Infallible;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use roster_testkit::{Server, WAIT};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;

type Out = mpsc::Sender<Result<Frame<Bytes>, Infallible>>;
type Body = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

/// One HTTP/2 connection to a server.
pub struct Conn {
    send: hyper::client::conn::http2::SendRequest<Body>,
    url: String,
    /// Resolves when the connection ends (a GOAWAY, or an error).
    closed: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

/// What a call ended with: its gRPC status code and message.
#[derive(Debug, PartialEq, Eq)]
pub struct Status {
    pub code: u32,
    pub message: String,
}

/// One item of an answer: a message, or the status that ends it.
#[derive(Debug)]
pub enum Item {
    Message(Bytes),
    End(Status),
}

type Head = tokio::task::JoinHandle<Result<hyper::Response<Incoming>, hyper::Error>>;

/// One call in flight.
pub struct Call {
    out: Option<Out>,
    /// The answer's headers, until they come (a unary server may read the
    /// whole request before it answers), then its body.
    head: Option<Head>,
    body: Option<Incoming>,
    /// Status from the response headers (a trailers-only answer).
    head_status: Option<Status>,
    /// The answer's HTTP status.
    http: u16,
    buf: BytesMut,
}

/// gRPC's INTERNAL code.
pub const INTERNAL: u32 = 13;

/// A frame holding `msg` as one uncompressed gRPC message.
pub fn framed(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

fn status_of(h: &hyper::HeaderMap) -> Option<Status> {
    let code = h.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let raw = h
        .get("grpc-message")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    Some(Status {
        code,
        message: percent_decode(&raw),
    })
}

/// grpc-message is percent-encoded (gRPC's HTTP/2 protocol spec).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Conn {
    /// Connects to `server`.
    pub async fn open(server: &Server) -> Conn {
        let tcp = tokio::net::TcpStream::connect(server.endpoint())
            .await
            .expect("connect");
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            // Headers as large as the tests send (hyper's own default is
            // 16 KiB, which is what is being tested on the server).
            .max_header_list_size(16 << 20)
            .handshake(TokioIo::new(tcp))
            .await
            .expect("HTTP/2 handshake");
        let closed = tokio::spawn(conn);
        Conn {
            send,
            url: server.url(),
            closed,
        }
    }

    /// Starts a call of `path` (`/package.Service/Method`) with `metadata`
    /// as extra headers.
    pub async fn call(&mut self, path: &str, metadata: &[(String, String)]) -> Call {
        let (tx, rx) = mpsc::channel(8);
        let mut req = hyper::Request::post(format!("{}{path}", self.url))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in metadata {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(StreamBody::new(ReceiverStream::new(rx))).unwrap();
        timeout(WAIT, self.send.ready())
            .await
            .expect("connection ready in time")
            .expect("connection open");
        let head = tokio::spawn(self.send.send_request(req));
        Call {
            out: Some(tx),
            head: Some(head),
            body: None,
            head_status: None,
            http: 0,
            buf: BytesMut::new(),
        }
    }

    /// True once the connection has ended (the server sent GOAWAY or broke
    /// it).
    pub fn is_closed(&self) -> bool {
        self.closed.is_finished()
    }
}

impl Call {
    /// Sends `msg` as one gRPC message.
    pub async fn send(&self, msg: &impl Message) {
        self.send_raw(framed(&msg.encode_to_vec())).await;
    }

    /// Sends `bytes` as they are, in one DATA frame.
    pub async fn send_raw(&self, bytes: Bytes) {
        let out = self.out.as_ref().expect("request side still open");
        out.send(Ok(Frame::data(bytes))).await.expect("body open");
    }

    /// Ends the request side (END_STREAM); the answer can still come.
    pub fn half_close(&mut self) {
        self.out = None;
    }

    /// The next message or the final status, within [`WAIT`].
    pub async fn next(&mut self) -> Item {
        timeout(WAIT, self.next_unbounded())
            .await
            .expect("an answer in time")
    }

    /// Awaits the answer's headers; the error is what took the stream or
    /// the connection instead.
    pub async fn answered(&mut self) -> Result<(), hyper::Error> {
        if let Some(head) = self.head.take() {
            let resp = timeout(WAIT, head)
                .await
                .expect("answer headers in time")
                .unwrap()?;
            self.head_status = status_of(resp.headers());
            self.http = resp.status().as_u16();
            self.body = Some(resp.into_body());
        }
        Ok(())
    }

    async fn next_unbounded(&mut self) -> Item {
        self.answered().await.expect("the call was answered");
        if let Some(s) = self.head_status.take() {
            return Item::End(s);
        }
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    return Item::Message(self.buf.split_to(len).freeze());
                }
            }
            let body = self.body.as_mut().expect("answered");
            match body.frame().await {
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => self.buf.put(d),
                    Err(f) => {
                        let t = f.into_trailers().expect("data or trailers");
                        return Item::End(status_of(&t).expect("grpc-status in trailers"));
                    }
                },
                Some(Err(e)) => panic!("the answer broke: {e}"),
                None => panic!("the answer ended without a status (HTTP {})", self.http),
            }
        }
    }

    /// The next message, decoded as `M`; panics on the end of the answer.
    pub async fn message<M: Message + Default>(&mut self) -> M {
        match self.next().await {
            Item::Message(b) => M::decode(b).expect("a well-formed answer"),
            Item::End(s) => panic!("the call ended: {s:?}"),
        }
    }

    /// The status the answer ends with, skipping any message before it.
    pub async fn status(&mut self) -> Status {
        loop {
            if let Item::End(s) = self.next().await {
                return s;
            }
        }
    }
}
