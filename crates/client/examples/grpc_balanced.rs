//! A tonic client balanced over every registered instance of a gRPC service.
//!
//! The program plays both sides. It starts `--servers` greeter servers in
//! this process, each on a port chosen by the OS, and registers each with
//! the registry under `--service`. Then it discovers the service and makes
//! `--calls` calls through one tonic `Channel` that follows the discovered
//! instances (`roster_client::balanced_channel`), printing which instance
//! answered each call, and a tally at the end. Finally it deregisters its
//! servers.
//!
//! The channel balances over whatever is registered under the service, so
//! greeters registered by another run of this program show up too: start
//! one run with many `--calls` and a larger `--interval-ms`, and a second
//! one meanwhile, and watch the first run's calls spread to the newcomers
//! and back when they leave.
//!
//! Run it against a registry on 127.0.0.1:2379 (`roster serve`, or etcd):
//!
//! ```text
//! cargo run -p roster-client --example grpc_balanced -- \
//!     --endpoints 127.0.0.1:2379 --servers 3 --calls 30
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser;
use roster_client::{balanced_channel, Client, Registry};
use roster_greeter::{Greeter, GreeterClient, HelloRequest};

/// Serves and registers greeters, then calls them through a balanced channel.
#[derive(Parser, Debug)]
struct Args {
    /// Registry endpoints, comma-separated `host:port` or `http://host:port`.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// The service name to register the greeters under.
    #[arg(long, default_value = "greeter")]
    service: String,
    /// How many greeter servers to start.
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// How many calls to make.
    #[arg(long, default_value_t = 30)]
    calls: usize,
    /// Pause between calls, in milliseconds.
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// Lease TTL of each registration, in seconds.
    #[arg(long, default_value_t = 10)]
    ttl: i64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let registry = Registry::new(Client::connect(&args.endpoints)?);

    // The servers. Ids carry the process id so that two runs side by side
    // do not overwrite each other's records.
    let mut registrations = Vec::new();
    for n in 1..=args.servers {
        let id = format!("{}-{n}", std::process::id());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let server = roster_greeter::serve(listener, Greeter::new(&id), std::future::pending());
        tokio::spawn(server);
        let registration = registry
            .register(&args.service, &addr)
            .id(&id)
            .ttl(args.ttl)
            .await?;
        println!("serving   {id} on {addr}");
        registrations.push(registration);
    }

    // The client: wait until discovery has seen every server started here,
    // so the first calls already spread over all of them.
    let discovery = registry.discover(&args.service).await?;
    let ours: Vec<String> = registrations
        .iter()
        .map(|r| r.instance().id.clone())
        .collect();
    let mut updates = discovery.updates();
    let all_seen = updates.wait_for(|set| ours.iter().all(|id| set.iter().any(|i| &i.id == id)));
    tokio::time::timeout(Duration::from_secs(10), all_seen).await??;
    let found = discovery.instances();
    println!("discovered {} instance(s) of {}", found.len(), args.service);

    let mut client = GreeterClient::new(balanced_channel(&discovery));
    let mut tally = BTreeMap::<String, usize>::new();
    for n in 1..=args.calls {
        let request = HelloRequest {
            name: format!("call {n}"),
        };
        match client.say_hello(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                println!("call {n:>4} -> {} ({})", reply.instance, reply.message);
                *tally.entry(reply.instance).or_default() += 1;
            }
            Err(status) => println!("call {n:>4} failed: {status}"),
        }
        if args.interval_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
    }
    for (instance, calls) in &tally {
        println!("{instance}: {calls} call(s)");
    }

    for r in registrations {
        r.deregister().await?;
    }
    Ok(())
}
