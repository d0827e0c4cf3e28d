//! One HTTP/2 connection to an endpoint, driven directly by the generated
//! tonic clients.
//!
//! The load generator shares the machine with the server it measures, so
//! every microsecond and wake-up it spends is taken from that server. Two
//! layers a general-purpose client has are left out:
//!
//! - `tonic::transport::Channel` puts a buffer task in front of the
//!   connection (it can reconnect and balance): one more task hop per call.
//! - hyper's HTTP/2 client hands a request body that is not empty to a
//!   task of its own, so a unary call's HEADERS frame often leaves in one
//!   write and its DATA frame in another, tens of microseconds later; a
//!   syscall trace of the server showed a quarter of the requests split
//!   that way. gRPC's Go client, which etcd's own benchmark uses, queues
//!   both before its writer flushes.
//!
//! So a call here goes straight to the `h2` crate: the request's headers
//! and whatever of its body is ready (all of it, for a unary call) are
//! queued together before the call returns, and only a body that is still
//! streaming (a watch stream) gets a task that sends the rest; keepalive
//! streams are sent from their clients' task instead ([`RawStream`]).
//! A broken connection fails the calls, which the run counts.
//!
//! The requests queued on a connection since its last write leave in one
//! write (see [`Unvectored`]); the driver runs all the clients of one
//! connection in one task, so those resumed by one read of answers have
//! all queued their next request before the connection's task writes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::uri::{PathAndQuery, Uri};
use http_body::{Body as _, Frame};
use roster_proto::framing;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::body::Body;
use tonic::codegen::Service;

/// Receive windows, as hyper's HTTP/2 client sets them: the protocol's
/// default of 64 KiB would stall watch delivery at hundreds of thousands
/// of events a second.
const STREAM_WINDOW: u32 = 2 << 20;
const CONN_WINDOW: u32 = 5 << 20;

/// A cloneable handle on one HTTP/2 connection; clones share it.
#[derive(Clone)]
pub struct Conn {
    send: SendRequest<Bytes>,
    /// Scheme and authority: tonic gives calls a path only, and HTTP/2
    /// needs both in its pseudo-headers.
    origin: Uri,
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<RecvBody>, h2::Error>> + Send>>;

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
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .enable_push(false)
            .handshake(Unvectored(tcp))
            .await
            .map_err(|e| format!("HTTP/2 handshake with {authority}: {e}"))?;
        tokio::spawn(async move {
            // Ends when every handle is dropped or the peer goes away; the
            // calls in flight then fail and are counted as errors.
            let _ = conn.await;
        });
        Ok(Conn { send, origin })
    }

    /// Opens a bidirectional streaming call of `path` whose messages the
    /// caller encodes and decodes itself (see [`RawStream`]). The response
    /// headers are not awaited: grpc-go sends them with the first answer.
    pub fn open_raw(&self, path: &'static str) -> Result<RawStream, String> {
        let mut parts = self.origin.clone().into_parts();
        parts.path_and_query = Some(PathAndQuery::from_static(path));
        let uri = Uri::from_parts(parts).map_err(|e| e.to_string())?;
        let req = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(())
            .map_err(|e| e.to_string())?;
        let (response, send) = self
            .send
            .clone()
            .send_request(req, false)
            .map_err(|e| format!("opening {path}: {e}"))?;
        Ok(RawStream {
            send,
            response: Some(response),
            recv: None,
            buf: BytesMut::new(),
        })
    }
}

/// A streaming call driven straight on h2 by the client's own task.
///
/// Through tonic, a streaming request's messages go to a task of their own
/// (`pump`), woken once per message, which wakes the connection's task
/// once per message too: the keepalives of the clients of one connection
/// left in one write each. Sent from here, they are queued on the
/// connection while the clients' task runs, and leave together.
pub struct RawStream {
    send: SendStream<Bytes>,
    response: Option<h2::client::ResponseFuture>,
    recv: Option<RecvStream>,
    /// Received bytes not yet decoded.
    buf: BytesMut,
}

impl RawStream {
    /// Queues one message.
    pub fn send<M: prost::Message>(&mut self, msg: &M) -> Result<(), String> {
        self.send
            .send_data(framing::encode(msg), false)
            .map_err(|e| format!("sending: {e}"))
    }

    /// The next message, or the call's status if the stream ended.
    pub async fn recv<M: prost::Message + Default>(&mut self) -> Result<M, String> {
        if let Some(response) = self.response.take() {
            let response = response.await.map_err(|e| format!("response: {e}"))?;
            if let Some(status) = grpc_status(response.headers()) {
                return Err(status);
            }
            self.recv = Some(response.into_body());
        }
        let recv = self.recv.as_mut().ok_or("stream ended")?;
        loop {
            if let Some((_, len)) = framing::prefix(&self.buf) {
                let end = framing::PREFIX + len;
                if self.buf.len() >= end {
                    let msg = self.buf.split_to(end);
                    return M::decode(&msg[framing::PREFIX..])
                        .map_err(|e| format!("decoding: {e}"));
                }
            }
            match std::future::poll_fn(|cx| recv.poll_data(cx)).await {
                Some(Ok(data)) => {
                    let _ = recv.flow_control().release_capacity(data.len());
                    self.buf.extend_from_slice(&data);
                }
                Some(Err(e)) => return Err(format!("receiving: {e}")),
                None => {
                    let trailers = std::future::poll_fn(|cx| recv.poll_trailers(cx))
                        .await
                        .map_err(|e| format!("trailers: {e}"))?;
                    let status = trailers.as_ref().and_then(grpc_status);
                    return Err(status.unwrap_or_else(|| "stream ended".into()));
                }
            }
        }
    }
}

/// A failed call's status from its headers or trailers, as text; `None`
/// when they carry none or an OK one.
fn grpc_status(h: &http::HeaderMap) -> Option<String> {
    let code = h.get("grpc-status")?.to_str().unwrap_or("?");
    if code == "0" {
        return None;
    }
    let msg = h
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or("");
    Some(format!("grpc-status {code}: {msg}"))
}

impl Service<http::Request<Body>> for Conn {
    type Response = http::Response<RecvBody>;
    type Error = h2::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let (mut head, mut body) = req.into_parts();
        let path = head
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = self.origin.clone().into_parts();
        parts.path_and_query = Some(path);
        if let Ok(uri) = Uri::from_parts(parts) {
            head.uri = uri;
        }
        let (response, mut stream) = match self
            .send
            .send_request(http::Request::from_parts(head, ()), false)
        {
            Ok(sent) => sent,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        // Queue what the body has ready now, so that it leaves with the
        // headers; a unary call's body is one message, ready at once. The
        // last data frame is held back to carry END_STREAM.
        let mut cx = Context::from_waker(Waker::noop());
        let mut held: Option<Bytes> = None;
        let streaming = loop {
            let sent = match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => match held.replace(data) {
                        Some(prev) => stream.send_data(prev, false),
                        None => Ok(()),
                    },
                    Err(frame) => {
                        flush(&mut stream, &mut held).and_then(|()| send_frame(&mut stream, frame))
                    }
                },
                Poll::Ready(None) => {
                    let last = held.take().unwrap_or_default();
                    match stream.send_data(last, true) {
                        Ok(()) => break false,
                        Err(e) => Err(e),
                    }
                }
                // The call fails with the stream's reset, seen below.
                Poll::Ready(Some(Err(_))) => {
                    stream.send_reset(h2::Reason::CANCEL);
                    break false;
                }
                Poll::Pending => match flush(&mut stream, &mut held) {
                    Ok(()) => break true,
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = sent {
                return Box::pin(std::future::ready(Err(e)));
            }
        };
        if streaming {
            tokio::spawn(pump(body, stream));
        }
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|recv| RecvBody {
                recv,
                data_done: false,
                done: false,
            }))
        })
    }
}

/// Sends the data frame held back, if any.
fn flush(stream: &mut SendStream<Bytes>, held: &mut Option<Bytes>) -> Result<(), h2::Error> {
    match held.take() {
        Some(data) => stream.send_data(data, false),
        None => Ok(()),
    }
}

/// Sends one frame of a request body.
fn send_frame(stream: &mut SendStream<Bytes>, frame: Frame<Bytes>) -> Result<(), h2::Error> {
    match frame.into_data() {
        Ok(data) => stream.send_data(data, false),
        Err(frame) => match frame.into_trailers() {
            Ok(trailers) => stream.send_trailers(trailers),
            Err(_) => Ok(()),
        },
    }
}

/// Sends the rest of a streaming request body as it comes. Requests here
/// are small and paced by their answers, so the data is handed to h2
/// without waiting for flow-control capacity: h2 queues it.
async fn pump(mut body: Body, mut stream: SendStream<Bytes>) {
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        let sent = match frame {
            Some(Ok(frame)) => send_frame(&mut stream, frame),
            Some(Err(_)) => {
                stream.send_reset(h2::Reason::CANCEL);
                return;
            }
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

/// A response body: the stream's data, then its trailers (where gRPC puts
/// the call's status).
pub struct RecvBody {
    recv: RecvStream,
    data_done: bool,
    done: bool,
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Read means consumed: let the server send more.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => self.data_done = true,
            }
        }
        self.done = true;
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// A socket that tells h2 it cannot write vectored.
///
/// h2 keeps a DATA frame's payload apart from its write buffer (to write
/// the two together with `writev`) when the payload is 256 bytes or more
/// and the socket writes vectored, and it cannot buffer another frame until
/// that payload is written. A put of a 256-byte value is such a payload, so
/// every request left in a write of its own, however many were queued.
/// Without vectored writes h2 copies payloads under 1 KiB into the buffer,
/// and the requests queued since the last write leave in one. (A larger
/// payload then takes two writes, its frame header and itself.)
pub struct Unvectored<T>(T);

impl<T: AsyncRead + Unpin> AsyncRead for Unvectored<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Unvectored<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
