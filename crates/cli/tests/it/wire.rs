//! Byte-level checks shared by the echo backend's tests and the gateway's:
//! an upgraded connection that must echo raw bytes, and a streamed body
//! whose chunks must arrive as they are produced. The same check run
//! against the echo directly and through the gateway shows the gateway
//! adds nothing and buffers nothing.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
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
