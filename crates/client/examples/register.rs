//! Registers one address for a service and keeps it registered until Ctrl-C.
//!
//! This is what a service process does at start-up: it hands its address to
//! the registry under a lease and lets roster-client keep the lease alive,
//! register again if the lease is lost, and put the record back if someone
//! deletes it. Each of those happenings is printed as it occurs. Ctrl-C
//! (SIGINT) deregisters cleanly: the lease is revoked, so the record leaves
//! the registry at once instead of lingering until its TTL runs out. A
//! `kill -9` gives no such chance, and the record then disappears only when
//! the lease expires, `--ttl` seconds later.
//!
//! Run it against a registry on 127.0.0.1:2379 (`roster serve`, or etcd):
//!
//! ```text
//! cargo run -p roster-client --example register -- \
//!     --service user.rpc --addr 10.0.0.7:8080 --id a --ttl 5 --weight 3 \
//!     --metadata proto=grpc
//! ```
//!
//! `--endpoints 127.0.0.1:2379,127.0.0.1:22379` takes several endpoints,
//! comma-separated; `RUST_LOG=roster_client=debug` shows the SDK's own log.
//! Watch the effect with the `discover` example.

use clap::Parser;
use roster_client::{Client, RegistrationEvent, Registry};
use tokio::sync::broadcast::error::RecvError;

/// Keeps an address registered for a service until Ctrl-C.
#[derive(Parser, Debug)]
struct Args {
    /// Registry endpoints, comma-separated `host:port` or `http://host:port`.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// The service to register under.
    #[arg(long)]
    service: String,
    /// The address callers should use, usually `host:port`.
    #[arg(long)]
    addr: String,
    /// Instance id, unique within the service (default: random).
    #[arg(long)]
    id: Option<String>,
    /// Lease TTL in seconds: how long the record outlives a crashed process.
    #[arg(long, default_value_t = 10)]
    ttl: i64,
    /// Relative share of traffic for weighted balancers.
    #[arg(long, default_value_t = 1)]
    weight: u32,
    /// A metadata label `key=value`; may be repeated.
    #[arg(long, value_parser = parse_label)]
    metadata: Vec<(String, String)>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();

    let registry = Registry::new(Client::connect(&args.endpoints)?);
    let mut builder = registry
        .register(&args.service, &args.addr)
        .ttl(args.ttl)
        .weight(args.weight);
    if let Some(id) = &args.id {
        builder = builder.id(id);
    }
    for (k, v) in &args.metadata {
        builder = builder.metadata(k, v);
    }
    let registration = builder.await?;
    // The first Registered event is sent before anyone can subscribe, so
    // the registration itself is reported here.
    println!(
        "registered {} -> {} (lease {:016x}, ttl {}s)",
        registration.key(),
        registration.instance().addr,
        registration.lease_id(),
        args.ttl
    );

    let mut events = registration.events();
    loop {
        tokio::select! {
            signal = tokio::signal::ctrl_c() => {
                signal?;
                break;
            }
            event = events.recv() => match event {
                Ok(event) => println!("{}", describe(&event)),
                // Only a stalled terminal could fall 64 events behind; say
                // so rather than pretend nothing happened.
                Err(RecvError::Lagged(n)) => println!("({n} events missed)"),
                Err(RecvError::Closed) => break,
            },
        }
    }

    let key = registration.key().to_string();
    registration.deregister().await?;
    println!("deregistered {key}");
    Ok(())
}

/// One line per event, with lease ids in hex as etcdctl prints them.
fn describe(event: &RegistrationEvent) -> String {
    match event {
        RegistrationEvent::Registered { lease } => format!("registered (lease {lease:016x})"),
        RegistrationEvent::Lost { reason } => format!("lost: {reason}; registering again"),
        RegistrationEvent::Reregistered { lease } => {
            format!("registered again (lease {lease:016x})")
        }
        RegistrationEvent::Restored => "record was deleted; written back".to_string(),
    }
}
