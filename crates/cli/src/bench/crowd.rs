//! `watched-puts`: writes to a prefix that a crowd of watchers watches.
//!
//! A popular service has many callers, and each watches the service's
//! prefix for its instances. When the instances change, every one of those
//! watchers is owed the change; some read it at once, some are slow or
//! stuck. What must not happen is that the writes themselves slow down
//! with the number of watchers that cannot take their events: a registry
//! whose writes stall because its readers stall fails every service at
//! once.
//!
//! The scenario opens `--streams` watch streams over `--conns` connections
//! and creates `--watchers` watchers on `--key-prefix` over them. Then
//! `--clients` putters write keys under the prefix (values of `--val-size`
//! bytes) for `--duration` or `--total` puts. With `--read` every stream
//! is read as fast as this process can; without it no stream is read after
//! its watchers are created, so HTTP/2 flow control soon stops the server
//! from sending and every watcher falls behind. An operation is one put;
//! the report is the putters' rate and latency, and for `--read` how many
//! events arrived while the putters ran.
//!
//! The putters use connections of their own, one each, as the instances
//! that register are other processes than the callers that watch.
//!
//! On stderr it prints `holding` when the puts start and `hold over` when
//! they end, the marks `scripts/bench-scale.sh` samples the server between.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use clap::Args;
use roster_proto::etcdserverpb::kv_client::KvClient;
use roster_proto::etcdserverpb::WatchCreateRequest;
use roster_proto::prefix_end;
use serde_json::{json, Map};

use super::keys::{KeyArgs, Rng};
use super::kv::PutWorker;
use super::report::Recorder;
use super::watch::open_watchers;
use super::{emit, finish, Common};

/// Flags of `roster bench watched-puts`.
#[derive(Args, Debug)]
pub struct WatchedPutsArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    keys: KeyArgs,
    /// Watchers on the written prefix.
    #[arg(long, default_value_t = 100_000)]
    watchers: usize,
    /// Watch streams to spread them over (spread over --conns).
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Read every stream; without it, no stream is read once its watchers
    /// are created.
    #[arg(long)]
    read: bool,
}

/// `roster bench watched-puts`.
pub async fn run(a: WatchedPutsArgs) -> Result<(), String> {
    let chans = a.common.channels().await?;
    let started = std::time::Instant::now();
    let prefix = a.keys.key_prefix.as_bytes().to_vec();
    let watch = WatchCreateRequest {
        range_end: prefix_end(&prefix),
        key: prefix,
        ..Default::default()
    };
    let streams = a.streams.clamp(1, a.watchers.max(1));
    let streams = open_watchers(&chans, streams, a.watchers, watch).await?;
    let setup_s = started.elapsed().as_secs_f64();
    let events = Arc::new(AtomicU64::new(0));
    // Idle streams stay here, unread, until the end of the run.
    let mut idle = Vec::new();
    let mut readers = tokio::task::JoinSet::new();
    for mut s in streams {
        if a.read {
            let events = events.clone();
            readers.spawn(async move {
                while let Ok(Some(r)) = s.rx.message().await {
                    events.fetch_add(r.events.len() as u64, Ordering::Relaxed);
                }
            });
        } else {
            idle.push(s);
        }
    }
    // The putters have connections of their own: on a connection shared
    // with unread streams, HTTP/2's connection window, which only reading
    // frees, would soon hold their answers back too.
    let put_chans = Common {
        conns: a.common.clients,
        ..a.common.clone()
    }
    .channels()
    .await?;
    let putters = (0..a.common.clients)
        .map(|i| PutWorker {
            kv: KvClient::new(put_chans[i].clone()),
            keys: a.keys.keygen(),
            rng: Rng::for_client(i),
            value: a.keys.value(),
        })
        .collect();
    let rec = Arc::new(Recorder::new());
    eprintln!(
        "watched-puts: holding {} watchers ({}), putting",
        a.watchers,
        if a.read { "read" } else { "not read" }
    );
    let before = events.load(Ordering::Relaxed);
    let out = a
        .common
        .drive("put", putters, put_chans.len(), rec.clone())
        .await;
    let delivered = events.load(Ordering::Relaxed) - before;
    eprintln!("watched-puts: hold over");
    readers.abort_all();
    drop(idle);

    let mut p = a.common.params();
    a.keys.params(&mut p);
    p.insert("watchers".into(), json!(a.watchers));
    p.insert("streams".into(), json!(a.streams));
    p.insert("read".into(), json!(a.read));
    let mut extra = Map::new();
    extra.insert("setup_s".into(), json!(setup_s));
    if a.read {
        extra.insert("events_delivered".into(), json!(delivered));
        let secs = out.duration.as_secs_f64();
        if secs > 0.0 {
            extra.insert("events_per_s".into(), json!(delivered as f64 / secs));
        }
    }
    let report = finish("watched-puts", p, &out, &rec, extra);
    emit(report, a.common.json, out.aborted)
}
