//! Follows a service's instances and prints every change as it happens.
//!
//! This is what a caller does: it loads the instances once, then keeps a
//! live copy that roster-client updates from a watch. The program prints
//! the instances found at start, then one line per change: `+` an instance
//! registered, `-` one left (deregistered, or its lease expired after a
//! crash), `~` one's record changed. If the registry goes away the last
//! known list is kept, and whatever changed meanwhile is printed once it is
//! back. Ctrl-C quits.
//!
//! With `--balancer NAME` (`round_robin`, `random`, `weighted`, `p2c` or
//! `consistent_hash`) it also makes `--picks` picks (default 10) from the
//! list at start and after every change, and prints which instance each
//! went to, to show how that balancer spreads calls over the live set.
//! Consistent hashing is given the keys `key-0`, `key-1`, ….
//!
//! Run it against a registry on 127.0.0.1:2379 (`roster serve`, or etcd):
//!
//! ```text
//! cargo run -p roster-client --example discover -- --service user.rpc
//! cargo run -p roster-client --example discover -- --service user.rpc \
//!     --balancer weighted --picks 8
//! ```
//!
//! and register instances with the `register` example in other terminals.

use std::collections::BTreeMap;

use clap::Parser;
use roster_client::balance::{self, Balancer};
use roster_client::{Change, Client, Instance, Registry};
use tokio::sync::broadcast::error::RecvError;

/// Prints a service's instances, then every change to them.
#[derive(Parser, Debug)]
struct Args {
    /// Registry endpoints, comma-separated `host:port` or `http://host:port`.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2379")]
    endpoints: Vec<String>,
    /// The service to follow.
    #[arg(long)]
    service: String,
    /// Also pick instances with this balancer after every change.
    #[arg(long)]
    balancer: Option<String>,
    /// How many picks to show each time (with --balancer).
    #[arg(long, default_value_t = 10)]
    picks: usize,
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
    let balancer = match &args.balancer {
        None => None,
        Some(name) => Some(balance::by_name(name).ok_or_else(|| {
            format!(
                "unknown balancer {name:?}; one of {}",
                balance::NAMES.join(", ")
            )
        })?),
    };

    let registry = Registry::new(Client::connect(&args.endpoints)?);
    let discovery = registry.discover(&args.service).await?;
    // Subscribe before reading the list: a change landing in between is
    // then printed (perhaps already reflected in the list) rather than lost.
    let mut changes = discovery.changes();
    let instances = discovery.instances();
    println!("{}: {} instance(s)", args.service, instances.len());
    for i in instances.iter() {
        println!("  {}", describe(i));
    }
    show_picks(balancer.as_deref(), &instances, args.picks);

    loop {
        tokio::select! {
            signal = tokio::signal::ctrl_c() => {
                signal?;
                return Ok(());
            }
            change = changes.recv() => {
                match change {
                    Ok(Change::Added(i)) => println!("+ {}", describe(&i)),
                    Ok(Change::Removed(i)) => println!("- {}", describe(&i)),
                    Ok(Change::Updated { old, new }) => {
                        println!("~ {}\n  was {}", describe(&new), describe(&old))
                    }
                    // Changes were missed; the list below is still current.
                    Err(RecvError::Lagged(n)) => println!("({n} changes missed)"),
                    Err(RecvError::Closed) => return Ok(()),
                }
                let now = discovery.instances();
                println!("  now {}", ids(&now));
                show_picks(balancer.as_deref(), &now, args.picks);
            }
        }
    }
}

/// `id addr weight=W [zone=Z] [version=V] [k=v …]` on one line.
fn describe(i: &Instance) -> String {
    let mut s = format!("{} {} weight={}", i.id, i.addr, i.weight);
    if let Some(zone) = &i.zone {
        s += &format!(" zone={zone}");
    }
    if let Some(version) = &i.version {
        s += &format!(" version={version}");
    }
    for (k, v) in &i.metadata {
        s += &format!(" {k}={v}");
    }
    s
}

/// The ids, space-separated, or `(none)`.
fn ids(instances: &[Instance]) -> String {
    if instances.is_empty() {
        return "(none)".to_string();
    }
    let ids: Vec<&str> = instances.iter().map(|i| i.id.as_str()).collect();
    ids.join(" ")
}

/// Makes `n` picks from `instances` and prints where they went, in order
/// and as a tally per instance id.
fn show_picks(balancer: Option<&dyn Balancer>, instances: &[Instance], n: usize) {
    let Some(balancer) = balancer else { return };
    let mut order = Vec::with_capacity(n);
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for k in 0..n {
        let key = format!("key-{k}");
        let Some(pick) = balancer.pick(instances, Some(key.as_bytes())) else {
            println!("  picks: none (no instances)");
            return;
        };
        let id = pick.instance().id.clone();
        // Nothing is called here; report instant success so that p2c sees
        // equal, healthy instances rather than counting a dropped pick as
        // a failure.
        pick.success();
        *tally.entry(id.clone()).or_insert(0) += 1;
        order.push(id);
    }
    let tally: Vec<String> = tally.iter().map(|(id, c)| format!("{id}={c}")).collect();
    println!("  picks: {}  ({})", order.join(" "), tally.join(" "));
}
