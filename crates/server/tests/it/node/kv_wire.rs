//! The KV endpoint at the gRPC framing level. Roster reads a unary call's
//! message out of the HTTP/2 body itself (`roster_server::unary`), so what
//! a generated client never sends is tried here by hand: a message split
//! over frames, a compressed one, one cut short, one that is not protobuf,
//! an unknown method, and a length prefix over the limit, which must be
//! refused without waiting for the rest. None of them may change the store.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use roster_proto::etcdserverpb::{PutRequest, PutResponse, RangeRequest, RangeResponse};
use roster_testkit::TestNode;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

type Frames = mpsc::Sender<Result<Frame<Bytes>, std::convert::Infallible>>;
type Sender = hyper::client::conn::http2::SendRequest<
    StreamBody<ReceiverStream<Result<Frame<Bytes>, std::convert::Infallible>>>,
>;

/// What a call came back with: its gRPC status code and message, and the
/// bytes of its data frames.
struct Answer {
    code: String,
    message: String,
    data: Bytes,
}

async fn connect(roster: &TestNode) -> Sender {
    let tcp = tokio::net::TcpStream::connect(roster.addr()).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// Starts a call of `method`; its body is what is sent on the returned
/// sender, and it ends when the sender is dropped.
async fn start(
    send: &mut Sender,
    roster: &TestNode,
    method: &str,
) -> (Frames, tokio::task::JoinHandle<Answer>) {
    let (tx, rx) = mpsc::channel(8);
    let req = hyper::Request::post(format!("{}/etcdserverpb.KV/{method}", roster.url()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(StreamBody::new(ReceiverStream::new(rx)))
        .unwrap();
    let call = send.send_request(req);
    let answer = tokio::spawn(async move {
        let resp = call.await.unwrap();
        let head = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap();
        let trailers = body.trailers().cloned().unwrap_or_default();
        let field = |name: &str| {
            head.get(name)
                .or_else(|| trailers.get(name))
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        Answer {
            code: field("grpc-status"),
            message: field("grpc-message"),
            data: body.to_bytes(),
        }
    });
    (tx, answer)
}

/// One gRPC message: flag, length, bytes.
fn framed(compressed: bool, msg: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(u8::from(compressed));
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

async fn send(tx: &Frames, bytes: Bytes) {
    tx.send(Ok(Frame::data(bytes))).await.unwrap();
}

/// Sends `chunks` as the whole body of a call of `method`.
async fn call(send_req: &mut Sender, roster: &TestNode, method: &str, chunks: &[Bytes]) -> Answer {
    let (tx, answer) = start(send_req, roster, method).await;
    for c in chunks {
        send(&tx, c.clone()).await;
    }
    drop(tx);
    tokio::time::timeout(Duration::from_secs(15), answer)
        .await
        .expect("answered in time")
        .unwrap()
}

/// The store's revision, by a well-formed Range.
async fn revision(send_req: &mut Sender, roster: &TestNode) -> i64 {
    let req = RangeRequest {
        key: b"k".to_vec(),
        ..Default::default()
    };
    let a = call(
        send_req,
        roster,
        "Range",
        &[framed(false, &req.encode_to_vec())],
    )
    .await;
    assert_eq!(a.code, "0", "{}", a.message);
    RangeResponse::decode(&a.data[5..])
        .unwrap()
        .header
        .unwrap()
        .revision
}

#[tokio::test]
async fn kv_calls_are_framed_and_refused_as_grpc_does() {
    let roster = TestNode::start();
    let mut c = connect(&roster).await;
    let put = PutRequest {
        key: b"k".to_vec(),
        value: b"v".repeat(300),
        ..Default::default()
    }
    .encode_to_vec();

    // A message split over three data frames, the prefix itself cut in two.
    let whole = framed(false, &put);
    let parts = [whole.slice(..3), whole.slice(3..40), whole.slice(40..)];
    let a = call(&mut c, &roster, "Put", &parts).await;
    assert_eq!(a.code, "0", "{}", a.message);
    let resp = PutResponse::decode(&a.data[5..]).unwrap();
    let rev = resp.header.unwrap().revision;
    assert_eq!(rev, 2);
    assert_eq!(revision(&mut c, &roster).await, rev);

    // Refused, and nothing written.
    let refusals = [
        ("Put", vec![framed(true, &put)], "12"),
        ("Put", vec![whole.slice(..whole.len() - 1)], "13"),
        ("Put", vec![framed(false, b"\xff\xff\xff")], "13"),
        ("Put", vec![], "13"),
        ("Nope", vec![whole.clone()], "12"),
    ];
    for (method, body, code) in refusals {
        let a = call(&mut c, &roster, method, &body).await;
        assert_eq!(a.code, code, "{method} {body:?}: {}", a.message);
    }
    assert_eq!(revision(&mut c, &roster).await, rev);

    // A prefix announcing more than the limit is refused at once: the body
    // stays open and nothing more is sent.
    let (tx, answer) = start(&mut c, &roster, "Put").await;
    let mut prefix = BytesMut::new();
    prefix.put_u8(0);
    prefix.put_u32(64 << 20);
    send(&tx, prefix.freeze()).await;
    let a = tokio::time::timeout(Duration::from_secs(15), answer)
        .await
        .expect("refused without the rest of the message")
        .unwrap();
    assert_eq!(a.code, "8", "{}", a.message);
    // grpc-message is percent-encoded.
    assert!(
        a.message.replace("%20", " ").contains("larger than max"),
        "{}",
        a.message
    );
    drop(tx);
    assert_eq!(revision(&mut c, &roster).await, rev);
}
