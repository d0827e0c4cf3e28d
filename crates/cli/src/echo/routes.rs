//! The echo backend's answers: what each path does, and the small parts
//! (checksum, stream spec, upgrade echo) they are made of.
//!
//! Every answer is built to be inspected by a test: it names the instance,
//! repeats what arrived, and streams where a proxy's streaming is what is
//! being tested. See [`handle`] for the table of routes.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONNECTION, CONTENT_TYPE, HOST, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Body, State};

/// Routes a request.
///
/// | request | answer |
/// |---------|--------|
/// | `GET /healthz` | 200 `ok`, or 503 `unhealthy` after `POST /admin/unhealthy` |
/// | `POST /admin/unhealthy`, `POST /admin/healthy` | flips `/healthz`; 200 |
/// | `GET /ws` with `Connection: upgrade` and `Upgrade: x` | 101, then echoes raw bytes |
/// | `/stream?chunks=N&delay_ms=M&size=B` | N chunks of B bytes, M ms apart (10, 100, 1024) |
/// | `/status/CODE` | the echo, with status CODE |
/// | `/sleep/MS` | the echo, after MS milliseconds |
/// | anything else | 200 and the echo |
///
/// The echo is JSON: `instance`, `method`, `path` (as received, query
/// included), `host`, `peer`, `headers` (repeated ones joined by `, `), and
/// `bytes` and `fnv1a64` of the request body, which is read as a stream and
/// never held whole.
pub(super) async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let response = match (method, path.as_str()) {
        (Method::GET | Method::HEAD, "/healthz") => {
            if state.healthy.load(Ordering::Relaxed) {
                text(StatusCode::OK, "ok")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
            }
        }
        (Method::POST, "/admin/healthy") => {
            state.healthy.store(true, Ordering::Relaxed);
            text(StatusCode::OK, "healthy")
        }
        (Method::POST, "/admin/unhealthy") => {
            state.healthy.store(false, Ordering::Relaxed);
            text(StatusCode::OK, "unhealthy")
        }
        (Method::GET, "/ws") => upgrade(req),
        (_, "/stream") => match StreamSpec::parse(req.uri().query()) {
            Ok(spec) => stream(spec),
            Err(e) => text(StatusCode::BAD_REQUEST, &e),
        },
        (_, p) if p.starts_with("/status/") => match status(&p["/status/".len()..]) {
            Ok(code) => echo(&state, peer, req, code).await,
            Err(e) => text(StatusCode::BAD_REQUEST, &e),
        },
        (_, p) if p.starts_with("/sleep/") => match p["/sleep/".len()..].parse::<u64>() {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                echo(&state, peer, req, StatusCode::OK).await
            }
            Err(_) => text(
                StatusCode::BAD_REQUEST,
                "/sleep/MS wants a number of milliseconds",
            ),
        },
        _ => echo(&state, peer, req, StatusCode::OK).await,
    };
    Ok(response)
}

/// A plain-text answer.
fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("{body}\n")));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

/// Parses the CODE of `/status/CODE`; informational codes are refused
/// because hyper cannot send them as a final answer.
fn status(code: &str) -> Result<StatusCode, String> {
    match code.parse::<u16>().ok().map(StatusCode::from_u16) {
        Some(Ok(s)) if s.as_u16() >= 200 => Ok(s),
        _ => Err(format!(
            "/status/{code}: want a status code from 200 to 999"
        )),
    }
}

/// Answers with what arrived: see [`handle`].
async fn echo(
    state: &State,
    peer: SocketAddr,
    req: Request<Incoming>,
    status: StatusCode,
) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let host = parts.headers.get(HOST).map(|h| lossy(h.as_bytes()));
    let mut answer = json!({
        "instance": state.id,
        "method": parts.method.as_str(),
        "path": parts.uri.to_string(),
        "host": host,
        "peer": peer.to_string(),
        "headers": headers(&parts.headers),
    });
    let (mut bytes, mut sum) = (0u64, Fnv1a64::new());
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    bytes += data.len() as u64;
                    sum.write(data);
                }
            }
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")),
        }
    }
    answer["bytes"] = json!(bytes);
    answer["fnv1a64"] = json!(format!("{:016x}", sum.finish()));
    // These statuses carry no body; sending one would break the framing.
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        let mut r = Response::new(Empty::new().boxed());
        *r.status_mut() = status;
        return r;
    }
    let mut r = Response::new(full(format!("{answer}\n")));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Headers as a JSON object; repeated ones are joined by `, `, as HTTP
/// allows for all but `Set-Cookie`, which requests do not carry.
fn headers(map: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in map {
        let value = lossy(value.as_bytes());
        out.entry(name.as_str().to_string())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    out
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// FNV-1a, 64-bit: the body checksum. Chosen over a cryptographic hash
/// because it is a few lines, needs no dependency, and a test can compute
/// it the same way; it detects lost, duplicated or reordered bytes, which
/// is all a proxy test needs.
struct Fnv1a64(u64);

impl Fnv1a64 {
    fn new() -> Self {
        Fnv1a64(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// The shape of a `/stream` answer.
#[derive(Debug, PartialEq, Eq)]
struct StreamSpec {
    chunks: u64,
    delay: Duration,
    size: usize,
}

impl StreamSpec {
    /// Reads `chunks`, `delay_ms` and `size` from a query string; other
    /// parameters are ignored so that proxies may add their own.
    fn parse(query: Option<&str>) -> Result<StreamSpec, String> {
        let mut spec = StreamSpec {
            chunks: 10,
            delay: Duration::from_millis(100),
            size: 1024,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("/stream: {key}={value:?} is not a number"))
            };
            match key {
                "chunks" => spec.chunks = number()?,
                "delay_ms" => spec.delay = Duration::from_millis(number()?),
                "size" => {
                    spec.size = usize::try_from(number()?)
                        .map_err(|_| format!("/stream: size={value} is too large"))?
                }
                _ => {}
            }
        }
        Ok(spec)
    }
}

/// A chunked answer produced as it is sent: chunk `i` is `size` copies of
/// the letter `a + i % 26`, so that a reader can tell chunks apart.
fn stream(spec: StreamSpec) -> Response<Body> {
    // Capacity 1: a chunk is produced only once the previous one was taken,
    // so a slow reader slows the producer instead of filling memory.
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tokio::spawn(async move {
        for i in 0..spec.chunks {
            if i > 0 {
                tokio::time::sleep(spec.delay).await;
            }
            let chunk = Bytes::from(vec![b'a' + (i % 26) as u8; spec.size]);
            if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                return; // the client went away
            }
        }
    });
    let mut r = Response::new(StreamBody::new(ReceiverStream::new(rx)).boxed());
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r
}

/// Answers an upgrade request with 101 and then echoes, on the upgraded
/// connection, every byte that arrives until the client closes its side.
fn upgrade(req: Request<Incoming>) -> Response<Body> {
    let Some(protocol) = req.headers().get(UPGRADE).cloned() else {
        return text(
            StatusCode::UPGRADE_REQUIRED,
            "/ws wants Connection: upgrade and an Upgrade header",
        );
    };
    if !connection_has(req.headers(), "upgrade") {
        return text(
            StatusCode::UPGRADE_REQUIRED,
            "/ws wants Connection: upgrade and an Upgrade header",
        );
    }
    let upgrading = hyper::upgrade::on(req);
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        match upgrading.await {
            Ok(upgraded) => {
                let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    let mut r = Response::new(Empty::new().boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    r.headers_mut().insert(UPGRADE, protocol);
    r
}

/// Whether the `Connection` header lists `token`, case-insensitively.
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        for (input, want) in [
            ("", 0xcbf29ce484222325u64),
            ("a", 0xaf63dc4c8601ec8c),
            ("foobar", 0x85944171f73967e8),
        ] {
            let mut h = Fnv1a64::new();
            h.write(input.as_bytes());
            assert_eq!(h.finish(), want, "{input:?}");
        }
    }

    #[test]
    fn stream_query() {
        let ms = Duration::from_millis;
        for (query, want) in [
            (None, Ok((10, ms(100), 1024))),
            (Some("chunks=3&delay_ms=0&size=7"), Ok((3, ms(0), 7))),
            (Some("size=1&other=x&&chunks=2"), Ok((2, ms(100), 1))),
            (Some("chunks=many"), Err(())),
        ] {
            let got = StreamSpec::parse(query)
                .map(|s| (s.chunks, s.delay, s.size))
                .map_err(|_| ());
            assert_eq!(got, want, "{query:?}");
        }
    }

    #[test]
    fn status_codes() {
        for (code, ok) in [("200", true), ("503", true), ("999", true)] {
            assert_eq!(status(code).is_ok(), ok, "{code}");
        }
        for code in ["101", "1000", "x", ""] {
            assert!(status(code).is_err(), "{code}");
        }
    }

    #[test]
    fn connection_tokens() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert!(connection_has(&h, "upgrade"));
        assert!(!connection_has(&h, "close"));
    }
}
