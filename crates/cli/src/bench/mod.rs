//! `roster bench`: a load generator for any etcd v3 endpoint.
//!
//! Modelled on etcd's own `tools/benchmark`, so that numbers taken with it
//! mean what etcd's documented numbers mean: a fixed number of concurrent
//! requesters (`--clients`), each with one request in flight at a time,
//! spread over a fixed number of gRPC connections (`--conns`), running for
//! a request count (`--total`) or a wall time (`--duration`), reporting
//! throughput, latency percentiles and a histogram.
//!
//! The etcd-API scenarios (`put`, `range`, `txn-put`, `lease-keepalive`,
//! `watch`, `noop`) use the generated tonic clients of roster-proto over
//! bare HTTP/2 connections ([`conn`]) and nothing else, so the client side
//! costs the same whichever server is measured and as little as it can.
//! The registry scenarios (`register`, `discover`) deliberately go through
//! roster-client instead: what they measure is what an application using
//! the SDK sees. Two probes give the machine's ceilings: `noop` against
//! `noop-server` (a tonic unary call that does no work: the most any gRPC
//! server on this machine can answer) and `fsync` (the latency of one
//! durable small append: the floor under any durable write).
//!
//! Errors are counted and reported, not fatal; a run in which more than
//! half of the operations fail stops early and exits non-zero, since its
//! numbers would measure the failure path. The load generator shares the
//! machine with the server it measures; on a small machine its own CPU use
//! is part of every number, identically for each server.
//!
//! Layout: [`driver`] runs closed-loop clients and shows progress,
//! [`report`] records and prints, [`keys`] makes keys and values, and one
//! file per scenario group ([`kv`], [`lease`], [`watch`], [`registry`],
//! [`ceiling`], [`scale`], [`crowd`]).

mod ceiling;
mod conn;
mod crowd;
mod driver;
mod keys;
mod kv;
mod lease;
mod registry;
mod report;
mod scale;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use crate::serve::parse_duration;
use conn::Conn;
use report::{Recorder, Report};

/// Flags of `roster bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Put keys (random in --key-space, or --sequential).
    Put(kv::PutArgs),
    /// Range single keys or prefixes, linearizable or serializable.
    Range(kv::RangeArgs),
    /// Txns that each put --txn-ops keys.
    TxnPut(kv::TxnPutArgs),
    /// Lease keepalives, one stream and one lease per client.
    LeaseKeepalive(lease::KeepaliveArgs),
    /// Watch: creation rate, or event delivery to many watchers with
    /// put-to-event latency.
    Watch(watch::WatchArgs),
    /// Puts under a prefix that many watchers watch, read or not read.
    WatchedPuts(crowd::WatchedPutsArgs),
    /// Register instances with leases through roster-client.
    Register(registry::RegisterArgs),
    /// Time from a registration to its visibility in N discovering clients.
    Discover(registry::DiscoverArgs),
    /// Create N watchers on distinct keys and hold them open.
    HoldWatchers(scale::HoldWatchersArgs),
    /// Grant N leases and keep them all alive with keepalives every ttl/3.
    HoldLeases(scale::HoldLeasesArgs),
    /// Maintenance.Status calls: against `noop-server`, the gRPC ceiling.
    Noop(ceiling::NoopArgs),
    /// Serve a Maintenance.Status that does no work, for `noop`.
    NoopServer(ceiling::NoopServerArgs),
    /// Latency of a small append followed by fdatasync: the disk's ceiling.
    Fsync(ceiling::FsyncArgs),
    /// Wait until an endpoint answers a linearizable Range; print how long.
    Ready(ceiling::ReadyArgs),
}

/// Flags every network scenario takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Comma-separated endpoints (`host:port` or `http://host:port`);
    /// connections are spread over them.
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// gRPC connections (HTTP/2) to open; clients are spread over them.
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Concurrent requesters, each with one request in flight.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Operations to run (ignored when --duration is given).
    #[arg(long, default_value_t = 10_000)]
    pub total: u64,
    /// Run for this long instead of --total operations (e.g. `10s`).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Cap on operations per second over all clients (0: no cap).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

impl Common {
    /// When the measured part stops.
    pub fn stop(&self) -> driver::Stop {
        match self.duration {
            Some(d) => driver::Stop::After(d),
            None => driver::Stop::Total(self.total),
        }
    }

    /// Runs `workers` until the flags' stop, at their rate: [`driver::drive`]
    /// for the measured part of a scenario.
    pub async fn drive<W: driver::Worker>(
        &self,
        label: &str,
        workers: Vec<W>,
        groups: usize,
        recorder: Arc<Recorder>,
    ) -> driver::Outcome {
        driver::drive(label, workers, groups, self.stop(), self.rate, recorder).await
    }

    /// The flags as report parameters.
    pub fn params(&self) -> Map<String, Value> {
        let mut p = Map::new();
        p.insert("endpoints".into(), json!(self.endpoints.join(",")));
        p.insert("conns".into(), json!(self.conns));
        p.insert("clients".into(), json!(self.clients));
        match self.duration {
            Some(d) => p.insert("duration_s".into(), json!(d.as_secs_f64())),
            None => p.insert("total".into(), json!(self.total)),
        };
        if self.rate > 0.0 {
            p.insert("rate".into(), json!(self.rate));
        }
        p
    }

    /// Opens `--conns` connections, round-robin over the endpoints. They
    /// are connected eagerly so that connecting is not measured, and an
    /// endpoint that is down fails the run at once.
    pub async fn channels(&self) -> Result<Vec<Conn>, String> {
        if self.endpoints.is_empty() || self.conns == 0 || self.clients == 0 {
            return Err("--endpoints, --conns and --clients must not be empty or 0".into());
        }
        let mut out = Vec::with_capacity(self.conns);
        for i in 0..self.conns {
            let ep = &self.endpoints[i % self.endpoints.len()];
            let url = if ep.contains("://") {
                ep.clone()
            } else {
                format!("http://{ep}")
            };
            let conn = tokio::time::timeout(Duration::from_secs(5), Conn::connect(&url))
                .await
                .map_err(|_| format!("cannot connect to {ep}: timed out"))??;
            out.push(conn);
        }
        Ok(out)
    }
}

/// Prints a report as asked, and fails the command when the run aborted.
fn emit(report: Report, json: bool, aborted: bool) -> Result<(), String> {
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if aborted || report.errors > report.count {
        return Err(format!(
            "{}: more than half of the operations failed{}",
            report.scenario,
            if aborted { "; stopped early" } else { "" }
        ));
    }
    Ok(())
}

/// Runs one scenario.
pub fn run(args: BenchArgs) -> Result<(), String> {
    // The probes that need no runtime, or run their own, go first.
    match args.scenario {
        Scenario::Fsync(a) => return ceiling::fsync(a),
        Scenario::NoopServer(a) => return ceiling::noop_server(a),
        _ => {}
    }
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("starting runtime: {e}"))?;
    runtime.block_on(async move {
        match args.scenario {
            Scenario::Put(a) => kv::put(a).await,
            Scenario::Range(a) => kv::range(a).await,
            Scenario::TxnPut(a) => kv::txn_put(a).await,
            Scenario::LeaseKeepalive(a) => lease::keepalive(a).await,
            Scenario::Watch(a) => watch::run(a).await,
            Scenario::WatchedPuts(a) => crowd::run(a).await,
            Scenario::Register(a) => registry::register(a).await,
            Scenario::Discover(a) => registry::discover(a).await,
            Scenario::HoldWatchers(a) => scale::hold_watchers(a).await,
            Scenario::HoldLeases(a) => scale::hold_leases(a).await,
            Scenario::Noop(a) => ceiling::noop(a).await,
            Scenario::Ready(a) => ceiling::ready(a).await,
            Scenario::Fsync(_) | Scenario::NoopServer(_) => unreachable!("handled above"),
        }
    })
}

/// Builds the report of a driven run.
fn finish(
    scenario: &str,
    params: Map<String, Value>,
    outcome: &driver::Outcome,
    recorder: &report::Recorder,
    extra: Map<String, Value>,
) -> Report {
    Report {
        scenario: scenario.into(),
        params,
        count: outcome.count,
        errors: outcome.errors,
        error_samples: outcome.error_samples.clone(),
        duration: outcome.duration,
        latency: recorder.merged(),
        extra,
    }
}
