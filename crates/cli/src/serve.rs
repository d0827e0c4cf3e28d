//! `roster serve`: run a registry node with etcd-style flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use roster_server::config::{DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_TXN_OPS};
use roster_server::{Config, Node, Stopped};
use tokio::net::TcpListener;

/// Flags of `roster serve`, named as etcd names them.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Human-readable name of this member.
    #[arg(long, default_value = "default")]
    name: String,
    /// Directory for the node's data.
    #[arg(long, default_value = "./roster.data")]
    data_dir: PathBuf,
    /// Comma-separated URLs to listen on for client traffic (port 0 picks a
    /// free port; the chosen one is printed).
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    listen_client_urls: Vec<String>,
    /// Comma-separated client URLs to advertise (default: the listened ones).
    #[arg(long, value_delimiter = ',')]
    advertise_client_urls: Vec<String>,
    /// Comma-separated peer URLs to advertise for this member.
    #[arg(long, default_value = "http://localhost:2380", value_delimiter = ',')]
    initial_advertise_peer_urls: Vec<String>,
    /// Largest request accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// Most compares, or operations per branch, in one txn.
    #[arg(long, default_value_t = DEFAULT_MAX_TXN_OPS)]
    max_txn_ops: usize,
    /// Space the store may use before writes that take more are refused
    /// and the NOSPACE alarm is raised, in bytes; 0 means the default,
    /// 2 GiB.
    #[arg(long, default_value_t = 0)]
    quota_backend_bytes: u64,
    /// How often idle watchers that asked for progress notices get one
    /// (e.g. `10m`, `30s`, `500ms`).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    experimental_watch_progress_notify_interval: Duration,
}

/// Parses durations written as a number and a unit: `ms`, `s`, `m` or `h`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10m, 30s or 500ms"))?;
    let ms = match unit {
        "ms" => 1,
        "s" | "" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Ok(Duration::from_millis(n.saturating_mul(ms)))
}

/// Turns `http://host:port` (or bare `host:port`) into socket addresses.
fn parse_url(url: &str) -> Result<Vec<SocketAddr>, String> {
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "{url}: scheme {scheme} is not supported (use http)"
            ))
        }
        None => url,
    };
    let hostport = rest.trim_end_matches('/');
    std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .map(|a| a.collect())
        .map_err(|e| format!("{url}: {e}"))
}

/// Runs the node until SIGINT or SIGTERM.
pub fn run(args: ServeArgs) -> Result<(), String> {
    raise_fd_limit();
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("starting runtime: {e}"))?;
    runtime.block_on(async move {
        let mut listeners = Vec::new();
        for url in &args.listen_client_urls {
            for addr in parse_url(url)? {
                let l = listen(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
                listeners.push(l);
            }
        }
        let mut config = Config::new(&args.data_dir);
        config.name = args.name;
        config.advertise_client_urls = args.advertise_client_urls;
        config.advertise_peer_urls = args.initial_advertise_peer_urls;
        config.max_request_bytes = args.max_request_bytes;
        config.max_txn_ops = args.max_txn_ops;
        config.quota_backend_bytes = args.quota_backend_bytes;
        config.watch_progress_notify_interval = args.experimental_watch_progress_notify_interval;
        let node = Node::open(config).map_err(|e| e.to_string())?;
        for l in &listeners {
            if let Ok(a) = l.local_addr() {
                // Tests and scripts wait for this exact line.
                eprintln!("roster: ready to serve client requests on http://{a}");
            }
        }
        let stopped = roster_server::serve(node, listeners, shutdown_signal())
            .await
            .map_err(|e| format!("serving: {e}"))?;
        match stopped {
            Stopped::Requested => {
                tracing::info!("stopped");
                Ok(())
            }
            Stopped::Fatal => Err("stopped after a storage failure; see the log above".into()),
        }
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Raises the soft limit on open files to the hard one, as etcd does at
/// start: every client connection and watch stream holds a descriptor,
/// and the usual soft limit of 1024 is reached by 1000 clients, after
/// which the next log segment cannot be created either. Logs both limits.
/// Connections a listener queues before they are accepted. The kernel caps
/// it at `net.core.somaxconn` (4096 on current Linux), which is what Go,
/// and so etcd, asks for; tokio's default of 1024 overflowed when 2,000
/// clients connected at once, and an overflowing queue leaves clients
/// retrying their handshake for seconds.
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr`, with address reuse as `TcpListener::bind` sets it
/// and [`LISTEN_BACKLOG`].
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let show = |v: Option<u64>| v.map_or("unlimited".to_string(), |n| n.to_string());
    if limit.current == limit.maximum {
        tracing::info!(limit = %show(limit.current), "open file limit");
        return;
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(
            from = %show(limit.current),
            to = %show(limit.maximum),
            "raised the open file limit to its hard limit"
        ),
        Err(e) => tracing::warn!(
            soft = %show(limit.current),
            hard = %show(limit.maximum),
            error = %e,
            "could not raise the open file limit"
        ),
    }
}
