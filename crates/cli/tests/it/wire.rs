//! Byte-level checks shared by the echo backend's tests and the gateway's:
//! an upgraded connection that must echo raw bytes, and a streamed body
//! whose chunks must arrive as they are produced. The same check run
//! against the echo directly and through the gateway shows the gateway
//! adds nothing and buffers nothing.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::{Bytes, Frame, Incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// The longest wait for any one read.
const WAIT: Duration = Duration::from_secs(15);

/// Reads an HTTP response head byte by byte (so nothing after it is
/// consumed) and returns it lower-cased.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("head in time")
            .expect("read head");
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).to_lowercase()
}

/// Sends each message on an upgraded connection and expects it back
/// unchanged; then half-closes and expects the far side to close too,
/// with nothing more to read.
pub async fn assert_echoes_raw(stream: &mut TcpStream, messages: &[&[u8]]) {
    for &message in messages {
        stream.write_all(message).await.expect("write");
        let mut back = vec![0u8; message.len()];
        timeout(WAIT, stream.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("read echo");
        assert_eq!(back, message);
    }
    stream.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .expect("read to end");
    assert!(rest.is_empty());
}

/// Reads a `/stream` answer (chunk `i` is a run of the letter `a + i`) to
/// its end; returns when each letter was first seen, measured from
/// `since`, and the total number of bytes.
pub async fn chunk_arrivals(mut body: Incoming, since: Instant) -> (Vec<(u8, Duration)>, usize) {
    let mut seen: Vec<(u8, Duration)> = Vec::new();
    let mut total = 0;
    while let Some(frame) = timeout(WAIT, body.frame()).await.expect("a frame in time") {
        let frame = frame.expect("frame");
        let Some(data) = frame.data_ref() else {
            continue;
        };
        total += data.len();
        for &b in data.iter() {
            if seen.last().is_none_or(|&(l, _)| l != b) {
                seen.push((b, since.elapsed()));
            }
        }
    }
    (seen, total)
}

/// One MiB.
pub const MIB: usize = 1 << 20;
/// How many one-MiB chunks [`produce_upload`] sends.
pub const UPLOAD_CHUNKS: usize = 64;

/// Sends a large request body into `tx`: [`UPLOAD_CHUNKS`] chunks of one
/// MiB of a fixed pattern, each made as it is sent, so the test never holds
/// the whole body either. Returns the FNV-1a 64 sum of what was sent, which
/// is how `roster echo` sums a body.
pub fn produce_upload(tx: mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut sum = 0xcbf2_9ce4_8422_2325_u64;
        for i in 0..UPLOAD_CHUNKS {
            let chunk: Vec<u8> = (0..MIB).map(|j| (i * 7 + j * 13) as u8).collect();
            for &b in &chunk {
                sum ^= u64::from(b);
                sum = sum.wrapping_mul(0x0000_0100_0000_01b3);
            }
            if tx.send(Ok(Frame::data(chunk.into()))).await.is_err() {
                break;
            }
        }
        sum
    })
}
