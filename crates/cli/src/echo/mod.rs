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

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use http_body_util::combinators::BoxBody;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use roster_client::{Client, Registration, Registry};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

mod routes;

use routes::handle;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
