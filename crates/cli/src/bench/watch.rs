//! `watch`: how fast watchers are created, and how fast and how soon their
//! events arrive.
//!
//! `--mode create` opens `--streams` watch streams and creates `--watchers`
//! watchers over them on keys of the key space, one creation in flight per
//! stream; an operation is one creation, timed from the request to the
//! `created` answer. Each stream's first watcher is created while the
//! stream opens and is not timed.
//!
//! `--mode deliver` (the default) creates `--watchers` watchers over
//! `--streams` streams, all on one key, and then `--clients` putters write
//! that key (`--total` puts, or for `--duration`, at most `--rate` per
//! second). Every put fans out to every watcher, so the run delivers
//! puts × watchers events. Each value starts with the time its put was
//! sent, so each received event yields a put→event latency, measured as
//! etcd's `watch-latency` benchmark measures it: from before the put is
//! sent (so its durable commit is included) to the event's arrival. The
//! rate reported is events delivered per second, from the first put to the
//! last event; events still missing after `--drain` count as errors.
//! Delivery throughput wants unlimited puts; a clean put→event latency
//! wants `--rate` low enough that no queue builds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::Conn;
use clap::Args;
use roster_proto::etcdserverpb::kv_client::KvClient;
use roster_proto::etcdserverpb::watch_client::WatchClient;
use roster_proto::etcdserverpb::watch_request::RequestUnion;
use roster_proto::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest, WatchResponse};
use serde_json::{json, Map};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::driver::{drive, set_up_in_order, status_text, Worker};
use super::keys::{KeyArgs, KeyGen, Rng};
use super::report::{Recorder, Report};
use super::{emit, finish, Common};
use crate::serve::parse_duration;

/// Flags of `roster bench watch`.
#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    keys: KeyArgs,
    /// `create`: watcher creation rate; `deliver`: event delivery rate and
    /// put→event latency.
    #[arg(long, default_value = "deliver", value_parser = ["create", "deliver"])]
    mode: String,
    /// Watchers to create.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Watch streams to spread the watchers over (spread over --conns).
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// How long to wait for the last events after the last put.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain: Duration,
}

/// One open watch stream (also used by `hold-watchers`).
pub(super) struct WatchStream {
    tx: mpsc::Sender<WatchRequest>,
    /// The stream's responses.
    pub(super) rx: Streaming<WatchResponse>,
}

/// A watcher on one key.
fn on_key(key: Vec<u8>) -> WatchCreateRequest {
    WatchCreateRequest {
        key,
        ..Default::default()
    }
}

fn create_request(c: WatchCreateRequest) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(c)),
    }
}

impl WatchStream {
    /// Opens a stream with a first watcher on `key`. The create request is
    /// queued before the response headers are awaited, since etcd sends
    /// them only with its first message.
    pub(super) async fn open(ch: Conn, key: Vec<u8>) -> Result<WatchStream, String> {
        WatchStream::open_with(ch, on_key(key)).await
    }

    /// Opens a stream whose first watcher is `first`.
    pub(super) async fn open_with(
        ch: Conn,
        first: WatchCreateRequest,
    ) -> Result<WatchStream, String> {
        let (tx, reqs) = mpsc::channel(16);
        tx.send(create_request(first))
            .await
            .map_err(|_| "watch channel closed".to_string())?;
        let rx = WatchClient::new(ch)
            .watch(ReceiverStream::new(reqs))
            .await
            .map_err(status_text)?
            .into_inner();
        let mut s = WatchStream { tx, rx };
        s.await_created().await?;
        Ok(s)
    }

    /// Creates a watcher on `key` and waits until the server confirms it.
    pub(super) async fn create(&mut self, key: Vec<u8>) -> Result<(), String> {
        self.create_with(on_key(key)).await
    }

    /// Creates the watcher `c` and waits until the server confirms it.
    pub(super) async fn create_with(&mut self, c: WatchCreateRequest) -> Result<(), String> {
        self.tx
            .send(create_request(c))
            .await
            .map_err(|_| "watch stream closed".to_string())?;
        self.await_created().await
    }

    async fn await_created(&mut self) -> Result<(), String> {
        loop {
            match self.rx.message().await {
                Ok(Some(r)) if r.canceled => {
                    return Err(format!("watch canceled: {}", r.cancel_reason))
                }
                Ok(Some(r)) if r.created => return Ok(()),
                // Events or progress for earlier watchers: not ours.
                Ok(Some(_)) => {}
                Ok(None) => return Err("watch stream ended".into()),
                Err(s) => return Err(status_text(s)),
            }
        }
    }
}

/// Opens `n` streams, round-robin over `chans`, each with the first
/// watcher `first_of` gives from the stream's number.
async fn open_streams(
    chans: &[Conn],
    n: usize,
    first_of: impl Fn(usize) -> WatchCreateRequest,
) -> Result<Vec<WatchStream>, String> {
    set_up_in_order(
        (0..n).map(|i| WatchStream::open_with(chans[i % chans.len()].clone(), first_of(i))),
    )
    .await
}

/// Opens `streams` streams over `chans` and creates `watchers` watchers
/// like `watch` on them (at least one per stream), round-robin, each
/// stream creating its share one at a time. The streams come back in the
/// order they were opened.
pub(super) async fn open_watchers(
    chans: &[Conn],
    streams: usize,
    watchers: usize,
    watch: WatchCreateRequest,
) -> Result<Vec<WatchStream>, String> {
    let opened = open_streams(chans, streams, |_| watch.clone()).await?;
    let mut creating = tokio::task::JoinSet::new();
    for (i, mut s) in opened.into_iter().enumerate() {
        let mine = (streams..watchers).filter(|w| w % streams == i).count();
        let watch = watch.clone();
        creating.spawn(async move {
            for _ in 0..mine {
                s.create_with(watch.clone()).await?;
            }
            Ok::<_, String>((i, s))
        });
    }
    let mut ready = Vec::with_capacity(streams);
    while let Some(r) = creating.join_next().await {
        ready.push(r.map_err(|e| e.to_string())??);
    }
    ready.sort_by_key(|(i, _)| *i);
    Ok(ready.into_iter().map(|(_, s)| s).collect())
}

struct CreateWorker {
    stream: WatchStream,
    keys: KeyGen,
    rng: Rng,
}

impl Worker for CreateWorker {
    async fn op(&mut self, seq: u64) -> Result<(), String> {
        let key = self.keys.key(seq, &mut self.rng);
        self.stream.create(key).await
    }
}

/// `roster bench watch`.
pub async fn run(a: WatchArgs) -> Result<(), String> {
    let streams = a.streams.clamp(1, a.watchers.max(1));
    let mut p = a.common.params();
    a.keys.params(&mut p);
    p.insert("mode".into(), json!(a.mode));
    p.insert("watchers".into(), json!(a.watchers));
    p.insert("streams".into(), json!(streams));
    let chans = a.common.channels().await?;
    if a.mode == "create" {
        // Creation runs one creation at a time per stream, as many as
        // --watchers: the putters' flags do not apply.
        p.remove("clients");
        p.remove("total");
        p.remove("duration_s");
        create(a, chans, streams, p).await
    } else {
        deliver(a, chans, streams, p).await
    }
}

async fn create(
    a: WatchArgs,
    chans: Vec<Conn>,
    streams: usize,
    p: Map<String, serde_json::Value>,
) -> Result<(), String> {
    let keys = a.keys.keygen();
    let opened = open_streams(&chans, streams, |i| on_key(keys.key_at(i as u64 % 1000))).await?;
    let workers = opened
        .into_iter()
        .enumerate()
        .map(|(i, stream)| CreateWorker {
            stream,
            keys: keys.clone(),
            rng: Rng::for_client(i),
        })
        .collect();
    let timed = a.watchers.saturating_sub(streams) as u64;
    let rec = Arc::new(Recorder::new());
    let out = drive(
        "create",
        workers,
        chans.len(),
        super::driver::Stop::Total(timed),
        a.common.rate,
        rec.clone(),
    )
    .await;
    let report = finish("watch-create", p, &out, &rec, Map::new());
    emit(report, a.common.json, out.aborted)
}

/// Nanoseconds from `base` to now.
fn since(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

struct StampedPutWorker {
    kv: KvClient<Conn>,
    key: Vec<u8>,
    val_size: usize,
    base: Instant,
}

impl Worker for StampedPutWorker {
    async fn op(&mut self, _seq: u64) -> Result<(), String> {
        let mut value = since(self.base).to_le_bytes().to_vec();
        value.resize(self.val_size.max(8), b'v');
        let req = PutRequest {
            key: self.key.clone(),
            value,
            ..Default::default()
        };
        self.kv.put(req).await.map(drop).map_err(status_text)
    }
}

/// Reads one stream's events until it ends, recording each one's latency.
async fn receive(
    mut s: WatchStream,
    i: usize,
    base: Instant,
    rec: Arc<Recorder>,
    events: Arc<AtomicU64>,
    last: Arc<AtomicU64>,
) {
    while let Ok(Some(r)) = s.rx.message().await {
        if r.events.is_empty() {
            continue;
        }
        let now = since(base);
        for e in &r.events {
            let Some(kv) = &e.kv else { continue };
            let Some(stamp) = kv.value.get(..8) else {
                continue;
            };
            let sent = u64::from_le_bytes(stamp.try_into().expect("8 bytes"));
            rec.record(i, Duration::from_nanos(now.saturating_sub(sent)));
        }
        events.fetch_add(r.events.len() as u64, Ordering::Relaxed);
        last.fetch_max(now, Ordering::Relaxed);
    }
    drop(s.tx);
}

async fn deliver(
    a: WatchArgs,
    chans: Vec<Conn>,
    streams: usize,
    p: Map<String, serde_json::Value>,
) -> Result<(), String> {
    let key = format!("{}watch", a.keys.key_prefix).into_bytes();
    let ready = open_watchers(&chans, streams, a.watchers, on_key(key.clone())).await?;
    let watchers = a.watchers.max(streams) as u64;

    let base = Instant::now();
    let event_rec = Arc::new(Recorder::new());
    let events = Arc::new(AtomicU64::new(0));
    let last = Arc::new(AtomicU64::new(0));
    let mut receivers = Vec::new();
    for (i, s) in ready.into_iter().enumerate() {
        let (rec, ev, last) = (event_rec.clone(), events.clone(), last.clone());
        receivers.push(tokio::spawn(receive(s, i, base, rec, ev, last)));
    }
    let putters = (0..a.common.clients)
        .map(|i| StampedPutWorker {
            kv: KvClient::new(chans[i % chans.len()].clone()),
            key: key.clone(),
            val_size: a.keys.val_size,
            base,
        })
        .collect();
    let put_rec = Arc::new(Recorder::new());
    let first_put = since(base);
    let out = a
        .common
        .drive("puts", putters, chans.len(), put_rec.clone())
        .await;
    let expected = out.count * watchers;
    let drain_until = Instant::now() + a.drain;
    while events.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for r in &receivers {
        r.abort();
    }
    let got = events.load(Ordering::Relaxed);
    let missing = expected.saturating_sub(got);
    let span = last.load(Ordering::Relaxed).saturating_sub(first_put);
    let puts = finish("puts", Map::new(), &out, &put_rec, Map::new());
    let mut extra = Map::new();
    extra.insert("puts".into(), json!(out.count));
    extra.insert("put_errors".into(), json!(out.errors));
    extra.insert("put_rps".into(), json!(puts.rps()));
    extra.insert("put_p50_ms".into(), json!(puts.pct_ms(50.0)));
    extra.insert("put_p99_ms".into(), json!(puts.pct_ms(99.0)));
    extra.insert("missing_events".into(), json!(missing));
    let report = Report {
        scenario: "watch-deliver".into(),
        params: p,
        count: got,
        errors: out.errors + missing,
        error_samples: out.error_samples.clone(),
        duration: Duration::from_nanos(span),
        latency: event_rec.merged(),
        extra,
    };
    emit(report, a.common.json, out.aborted)
}
