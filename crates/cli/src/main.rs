//! `roster`: the registry server and its tools in one binary.

mod bench;
mod echo;
mod gateway;
mod serve;
mod snapshot;

use clap::{Parser, Subcommand};

/// mimalloc rather than glibc's malloc: a put is decoded on one thread,
/// logged and applied on another and answered on a third, and glibc's
/// arenas take a lock (often a futex call) when memory is freed by a thread
/// other than the one that allocated it. `.cargo/config.toml` builds it to
/// commit memory as it is used, which keeps the resident set near glibc's.
/// Measured: `docs/decisions.md`, entry 27.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Roster: a service registry that speaks the etcd v3 API.
#[derive(Parser)]
#[command(name = "roster", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a registry node.
    Serve(serve::ServeArgs),
    /// Run a small HTTP backend that registers itself (for tests and demos).
    Echo(echo::EchoArgs),
    /// Run the HTTP gateway: route path prefixes to discovered services.
    Gateway(gateway::GatewayArgs),
    /// Load-test any etcd v3 endpoint (put, range, watch, leases, registry).
    Bench(bench::BenchArgs),
    /// Make a data directory from a snapshot (`snapshot restore`).
    Snapshot(snapshot::SnapshotArgs),
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only help a person at a terminal; in a log file or
        // a test's captured output they are noise.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Echo(args) => echo::run(args),
        Command::Gateway(args) => gateway::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Snapshot(args) => snapshot::run(args),
    };
    if let Err(e) = result {
        eprintln!("roster: error: {e}");
        std::process::exit(1);
    }
}
