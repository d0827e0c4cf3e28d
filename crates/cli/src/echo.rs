//! `roster echo`: a small HTTP backend that registers itself in Roster.
//!
//! The gateway's tests, its demo and its benchmark need real backends:
//! separate processes that can be killed with `kill -9`, that take part in
//! the registry like any service would, and that answer in ways a test can
//! inspect. `roster echo --service NAME` is that backend. It binds its
//! listen address, registers the bound (or advertised) address with
//! roster-client, and only then prints its one line,
//! `roster: echo <id> serving <service> on http://ADDR`, so a test that has
//! read the line knows the instance is both reachable and discoverable.
//!
//! Every answer says which instance gave it and what arrived, so a test can
//! tell where the gateway routed a request, whether it stripped a prefix and
//! which forwarding headers it added. The routes (see [`handle`]) cover what
//! a reverse proxy must get right: status codes, slow answers, streamed
//! responses, streamed uploads, protocol upgrades and health checks whose
//! outcome can be flipped at run time.
//!
//! Shutdown is ordered the way a well-behaved service leaves a pool. On
//! SIGTERM or SIGINT the instance first deregisters, so routers stop sending
//! to it; it then optionally keeps accepting for `--drain-delay-ms`, because
//! routers learn of the removal through a watch and may still be sending;
//! finally it stops accepting, lets each connection finish the request in
//! flight (idle keep-alive connections close at once) and exits 0, waiting
//! at most [`DRAIN_TIMEOUT`]. Upgraded connections are not waited for: they
//! are cut at exit. SIGKILL leaves the record in place until its lease
//! expires, which is what crash tests want to observe.
//!
//! The process never reads stdin, so it runs the same under a test harness,
//! a shell script or a terminal.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONNECTION, CONTENT_TYPE, HOST, UPGRADE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use roster_client::{Client, Registration, Registry};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

/// The longest wait, after the listener closes, for requests in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest wait for registering at start-up; past it the registry is
/// taken to be unreachable.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest wait for the lease revocation at shutdown; past it the
/// record is left to expire with its lease.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(3);

/// Flags of `roster echo`.
#[derive(Args, Debug)]
pub struct EchoArgs {
    /// Service to register under.
    #[arg(long, required_unless_present = "no_register")]
    service: Option<String>,
    /// Instance id (default: the advertised address, unique among live
    /// instances by construction).
    #[arg(long)]
    id: Option<String>,
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Address to register (default: the bound address, with an
    /// unspecified IP such as 0.0.0.0 replaced by loopback).
    #[arg(long)]
    advertise: Option<String>,
    /// Comma-separated registry endpoints, `host:port` or `http://host:port`.
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Lease TTL of the registration, in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i64).range(1..))]
    ttl: i64,
    /// Weight of the instance for weighted balancers.
    #[arg(long, default_value_t = 1)]
    weight: u32,
    /// Serve without registering (a backend reached directly).
    #[arg(long)]
    no_register: bool,
    /// After deregistering on SIGTERM/SIGINT, keep accepting for this many
    /// milliseconds so that routers notice the removal before the port
    /// closes.
    #[arg(long, default_value_t = 0)]
    drain_delay_ms: u64,
}

/// What every request handler may look at or change.
struct State {
    /// The instance id, reported in every answer.
    id: String,
    /// What `/healthz` answers; flipped by `/admin/{healthy,unhealthy}`.
    healthy: AtomicBool,
}

/// The response body type of every route: buffered or streamed.
type Body = BoxBody<Bytes, Infallible>;

/// Runs the backend until SIGINT or SIGTERM.
pub fn run(args: EchoArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("starting runtime: {e}"))?;
    runtime.block_on(serve(args))
}

async fn serve(args: EchoArgs) -> Result<(), String> {
    // Installed before the ready line: a test may signal right after it.
    let mut signals = Signals::new()?;
    let listener = bind(&args.listen).await?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("listening on {}: {e}", args.listen))?;
    let advertised = args
        .advertise
        .clone()
        .unwrap_or_else(|| reachable(bound).to_string());
    let id = args.id.clone().unwrap_or_else(|| advertised.clone());
    let registration = match (&args.service, args.no_register) {
        (Some(service), false) => Some(register(&args, service, &id, &advertised).await?),
        _ => None,
    };
    let state = Arc::new(State {
        id: id.clone(),
        healthy: AtomicBool::new(true),
    });
    let service = args.service.as_deref().unwrap_or("-");
    // Tests and scripts wait for this exact line.
    eprintln!("roster: echo {id} serving {service} on http://{bound}");

    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a clone of `guard`; `drained` reports
    // `None` once the last of them has ended.
    let (guard, mut drained) = mpsc::channel::<()>(1);
    let conns = Conns {
        state,
        stop: stop_rx,
        guard,
    };
    accept_until(&listener, &conns, signals.recv()).await;

    if let Some(r) = registration {
        match tokio::time::timeout(DEREGISTER_TIMEOUT, r.deregister()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "deregistering failed; the lease will expire"),
            Err(_) => tracing::warn!("deregistering timed out; the lease will expire"),
        }
    }
    if args.drain_delay_ms > 0 {
        let delay = tokio::time::sleep(Duration::from_millis(args.drain_delay_ms));
        accept_until(&listener, &conns, delay).await;
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(conns);
    if tokio::time::timeout(DRAIN_TIMEOUT, drained.recv())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; exiting anyway");
    }
    Ok(())
}

/// Binds the first address `listen` resolves to.
async fn bind(listen: &str) -> Result<TcpListener, String> {
    let addr = tokio::net::lookup_host(listen)
        .await
        .map_err(|e| format!("{listen}: {e}"))?
        .next()
        .ok_or_else(|| format!("{listen}: resolves to no address"))?;
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// The address peers can dial for a socket bound to `bound`: a wildcard
/// bind accepts on loopback too, and the wildcard itself is not dialable.
fn reachable(bound: SocketAddr) -> SocketAddr {
    match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, bound.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, bound.port()).into(),
        _ => bound,
    }
}

/// Registers `addr` for `service` under `id`, kept alive in the background.
async fn register(
    args: &EchoArgs,
    service: &str,
    id: &str,
    addr: &str,
) -> Result<Registration, String> {
    let registry = args.endpoints.join(",");
    let client =
        Client::connect(&args.endpoints).map_err(|e| format!("registry {registry}: {e}"))?;
    let pending = Registry::new(client)
        .register(service, addr)
        .id(id)
        .ttl(args.ttl)
        .weight(args.weight);
    match tokio::time::timeout(REGISTER_TIMEOUT, pending).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(format!("registering {service} at {registry}: {e}")),
        Err(_) => Err(format!(
            "registering {service} at {registry}: no answer within {REGISTER_TIMEOUT:?}"
        )),
    }
}

/// SIGINT and SIGTERM, both caught from the moment this is created.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, String> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let catch = |kind| signal(kind).map_err(|e| format!("catching signals: {e}"));
            Ok(Signals {
                term: catch(SignalKind::terminate())?,
                int: catch(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Resolves at the next SIGINT or SIGTERM.
    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// What a connection task is started with.
struct Conns {
    state: Arc<State>,
    /// Turns true when connections are to finish their request and close.
    stop: watch::Receiver<bool>,
    /// Held by each connection task for as long as it runs.
    guard: mpsc::Sender<()>,
}

/// Accepts connections, each served by its own task, until `until` resolves.
async fn accept_until(listener: &TcpListener, conns: &Conns, until: impl Future<Output = ()>) {
    tokio::pin!(until);
    loop {
        tokio::select! {
            _ = &mut until => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (state, stop) = (conns.state.clone(), conns.stop.clone());
                    tokio::spawn(connection(stream, peer, state, stop, conns.guard.clone()));
                }
                Err(e) => {
                    // Out of descriptors, most likely: give connections in
                    // flight a moment to close rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Serves one HTTP/1.1 connection until it closes, or until `stop` turns
/// true and the request in flight, if any, is answered.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
    _guard: mpsc::Sender<()>,
) {
    // Streamed chunks must leave as they are produced, not when a segment fills.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| handle(state.clone(), peer, req));
    let conn = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        // The guard `wait_for` returns must not be held across the await.
        _ = async { drop(stop.wait_for(|s| *s).await) } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

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
async fn handle(
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
    fn wildcard_binds_advertise_loopback() {
        let cases = [
            ("0.0.0.0:80", "127.0.0.1:80"),
            ("[::]:80", "[::1]:80"),
            ("10.1.2.3:80", "10.1.2.3:80"),
        ];
        for (bound, want) in cases {
            assert_eq!(reachable(bound.parse().unwrap()).to_string(), want);
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
