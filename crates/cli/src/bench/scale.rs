//! `hold-watchers` and `hold-leases`: what many idle watchers and many
//! kept-alive leases cost a server.
//!
//! Both scenarios build a large standing population, announce on stderr
//! that they hold it (`<scenario>: holding ...`), keep it for `--hold`, and
//! announce the end (`<scenario>: hold over`) before they let go. Between
//! the two lines the client does nothing but what the population needs, so
//! a script can read the server's memory and CPU in /proc over exactly that
//! window (`scripts/bench-scale.sh` does).
//!
//! `hold-watchers` opens `--streams` watch streams over `--conns`
//! connections and creates `--watchers` watchers on them, watcher `i` on
//! key `i` of its own key space, so every watcher is distinct and nothing
//! writes to any of them. Creation is a closed-loop [`drive`], one create
//! in flight per stream; the report's count, rate and latencies are the
//! creations. During the hold every stream is read: a stream that ends or
//! fails counts as an error, and any message at all is reported, since an
//! idle watcher should cost the client no traffic.
//!
//! `hold-leases` opens `--streams` LeaseKeepAlive streams, grants
//! `--leases` leases of `--ttl` seconds with `--clients` concurrent grants
//! (a [`drive`] too), and hands lease `i` to stream `i mod streams`. From
//! the moment it is handed over until the hold ends, each lease is renewed
//! every ttl/3, as etcd's clients do: a stream's leases fall into
//! [`TICK`]-wide slots of that period and each tick sends one slot, so the
//! offered rate is an even `leases × 3 / ttl` keepalives per second with no
//! bursts. Granting is the heavier load, and a server may fall behind on
//! keepalives during it, so the hold starts only once every keepalive sent
//! before the last grant has been answered (waiting at most one TTL; the
//! report says how long it took and whether it caught up). The report's
//! count is the keepalives answered during the hold, its latencies their
//! round trips. A lease answered with TTL 0 is lost (the server let it
//! expire or forgot it): each one is an error, as is a stream that fails
//! and a keepalive still unanswered once the streams are closed. Leases
//! are revoked at the end unless `--no-revoke` is given.
//!
//! etcd (grpc-go) sends a stream's response headers only with its first
//! message, so a keepalive stream's receiver awaits the call in its own
//! task while the stream's sender already sends; neither waits on the
//! other.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::Conn;
use clap::Args;
use parking_lot::Mutex;
use roster_proto::etcdserverpb::lease_client::LeaseClient;
use roster_proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;

use super::driver::{drive, set_up_in_order, status_text, Stop, Worker};
use super::keys::{KeyArgs, KeyGen};
use super::report::{Recorder, Report};
use super::watch::WatchStream;
use super::{emit, finish, Common};
use crate::serve::parse_duration;

/// Width of one keepalive slot: each stream wakes this often and renews
/// the leases of one slot.
const TICK: Duration = Duration::from_millis(100);

/// How long answers to the last keepalives may take once the hold is over.
const DRAIN: Duration = Duration::from_secs(10);

/// Most distinct failure messages kept for the report.
const MAX_SAMPLES: usize = 5;

/// Flags of `roster bench hold-watchers`. Of the common flags only
/// --endpoints, --conns and --json apply.
#[derive(Args, Debug)]
pub struct HoldWatchersArgs {
    #[command(flatten)]
    common: Common,
    /// Watchers to create and hold, each on a key of its own.
    #[arg(long, default_value_t = 100_000)]
    watchers: usize,
    /// Watch streams to spread them over (spread over --conns).
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// How long to hold them once all are created.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    hold: Duration,
    /// Prefix of the watched keys.
    #[arg(long, default_value = "/bench/hold/")]
    key_prefix: String,
}

/// Flags of `roster bench hold-leases`. --clients is the number of
/// concurrent grants; --total, --duration and --rate do not apply.
#[derive(Args, Debug)]
pub struct HoldLeasesArgs {
    #[command(flatten)]
    common: Common,
    /// Leases to grant and keep alive.
    #[arg(long, default_value_t = 100_000)]
    leases: usize,
    /// LeaseKeepAlive streams to spread them over (spread over --conns).
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// TTL of each lease, in seconds; each is renewed every ttl/3.
    #[arg(long, default_value_t = 30)]
    ttl: i64,
    /// How long to keep them alive once all are granted.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    hold: Duration,
    /// Leave the leases to expire instead of revoking them at the end.
    #[arg(long)]
    no_revoke: bool,
}

/// The common parameters that apply to a hold: not the closed-loop ones.
fn hold_params(common: &Common) -> Map<String, Value> {
    let mut p = common.params();
    for k in ["total", "duration_s", "rate"] {
        p.remove(k);
    }
    p
}

/// The fields of a JSON object literal, for report parameters and extras.
fn fields(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// Keeps `msg` among a few distinct failure samples.
fn sample(samples: &Mutex<Vec<String>>, msg: String) {
    let mut s = samples.lock();
    if s.len() < MAX_SAMPLES && !s.contains(&msg) {
        s.push(msg);
    }
}

/// Prints the report as asked. Unlike a throughput run, a hold fails on
/// any error: a lost lease or a dropped stream is what it is there to find.
fn emit_hold(report: Report, json: bool, aborted: bool) -> Result<(), String> {
    let (scenario, errors) = (report.scenario.clone(), report.errors);
    emit(report, json, aborted)?;
    if errors > 0 {
        return Err(format!("{scenario}: {errors} errors (see the report)"));
    }
    Ok(())
}

// ---- hold-watchers ----

/// Reads `stream` until `until`; returns how many messages came. The
/// stream ending before then is an error.
async fn hold(stream: &mut WatchStream, until: Instant) -> Result<u64, String> {
    let mut got = 0;
    loop {
        match tokio::time::timeout_at(until.into(), stream.rx.message()).await {
            Err(_) => return Ok(got),
            Ok(Ok(Some(_))) => got += 1,
            Ok(Ok(None)) => return Err("watch stream ended during the hold".into()),
            Ok(Err(s)) => return Err(status_text(s)),
        }
    }
}

/// Creates watchers on one stream. The stream is shared with the caller,
/// who keeps it open after the driver has dropped its workers.
struct CreateWorker {
    stream: Arc<tokio::sync::Mutex<WatchStream>>,
    keys: KeyGen,
    /// Key index of the first timed creation: the streams' first watchers
    /// took the ones before it.
    base: u64,
}

impl Worker for CreateWorker {
    async fn op(&mut self, seq: u64) -> Result<(), String> {
        let key = self.keys.key_at(self.base + seq);
        self.stream.lock().await.create(key).await
    }
}

/// `roster bench hold-watchers`.
pub async fn hold_watchers(a: HoldWatchersArgs) -> Result<(), String> {
    let streams = a.streams.clamp(1, a.watchers.max(1));
    let keys = KeyArgs {
        key_size: 0,
        val_size: 0,
        key_space: a.watchers as u64,
        sequential: true,
        key_prefix: a.key_prefix.clone(),
    }
    .keygen();
    let chans = a.common.channels().await?;
    let rec = Arc::new(Recorder::new());

    // Each stream opens with its first watcher (keys 0..streams), timed
    // like every other creation; the rest go through the driver.
    let start = Instant::now();
    let opened = set_up_in_order((0..streams).map(|i| {
        let (ch, key, rec) = (
            chans[i % chans.len()].clone(),
            keys.key_at(i as u64),
            rec.clone(),
        );
        async move {
            let t = Instant::now();
            let s = WatchStream::open(ch, key).await?;
            rec.record(i, t.elapsed());
            Ok::<_, String>(Arc::new(tokio::sync::Mutex::new(s)))
        }
    }))
    .await?;
    let open_s = start.elapsed().as_secs_f64();
    let workers = opened
        .iter()
        .map(|s| CreateWorker {
            stream: s.clone(),
            keys: keys.clone(),
            base: streams as u64,
        })
        .collect();
    let rest = a.watchers.saturating_sub(streams) as u64;
    let out = drive(
        "create",
        workers,
        chans.len(),
        Stop::Total(rest),
        0.0,
        rec.clone(),
    )
    .await;
    let created = out.count + streams as u64;
    let creation = start.elapsed();

    eprintln!(
        "hold-watchers: holding {created} watchers for {} s",
        a.hold.as_secs_f64()
    );
    let until = Instant::now() + a.hold;
    let mut holding = JoinSet::new();
    for s in opened {
        holding.spawn(async move { hold(&mut *s.lock().await, until).await });
    }
    let (mut messages, mut hold_errors) = (0u64, 0u64);
    let samples = Mutex::new(out.error_samples.clone());
    while let Some(r) = holding.join_next().await {
        match r.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(n) => messages += n,
            Err(e) => {
                hold_errors += 1;
                sample(&samples, e);
            }
        }
    }
    eprintln!("hold-watchers: hold over");

    let mut p = hold_params(&a.common);
    p.remove("clients");
    p.extend(fields(json!({
        "watchers": a.watchers,
        "streams": streams,
        "hold_s": a.hold.as_secs_f64(),
    })));
    let extra = fields(json!({
        "open_streams_s": open_s,
        "streams_failed_during_hold": hold_errors,
        "messages_during_hold": messages,
    }));
    let report = Report {
        scenario: "hold-watchers".into(),
        params: p,
        count: created,
        errors: out.errors + hold_errors,
        error_samples: samples.into_inner(),
        duration: creation,
        latency: rec.merged(),
        extra,
    };
    emit_hold(report, a.common.json, out.aborted)
}

// ---- hold-leases ----

/// Counters shared by every keepalive stream.
#[derive(Default)]
struct Tally {
    /// Keepalives sent.
    sent: AtomicU64,
    /// Answers with a TTL above 0.
    alive: AtomicU64,
    /// Distinct leases answered with TTL 0.
    lost: AtomicU64,
    /// Streams that failed before the hold was over.
    failed_streams: AtomicU64,
    /// True during the hold: round trips are recorded only then.
    measuring: AtomicBool,
    samples: Mutex<Vec<String>>,
}

/// One stream's keepalives in flight, oldest first, and its leases found
/// lost. A stream's answers come in the order of its requests, so an
/// answer is matched with the oldest keepalive in flight for its lease even
/// when the server lags by more than a renewal period.
#[derive(Default)]
struct InFlight {
    sent: VecDeque<(i64, Instant)>,
    lost: HashSet<i64>,
    /// Set while the caller waits for every keepalive sent before this
    /// instant to be answered; `caught_up` is notified when they are.
    mark: Option<Instant>,
}

impl InFlight {
    /// Takes the send time of the oldest keepalive in flight for `id`.
    fn answered(&mut self, id: i64) -> Option<Instant> {
        let at = self.sent.iter().position(|&(x, _)| x == id)?;
        self.sent.remove(at).map(|(_, t)| t)
    }

    /// True when nothing sent before `mark` is still in flight.
    fn answered_up_to(&self, mark: Instant) -> bool {
        self.sent.front().is_none_or(|&(_, t)| t >= mark)
    }
}

/// What a keepalive stream's sender and receiver share.
#[derive(Clone)]
struct Keeper {
    /// The stream's number, among `streams`.
    index: usize,
    streams: usize,
    flight: Arc<Mutex<InFlight>>,
    caught_up: Arc<Notify>,
    tally: Arc<Tally>,
    stop: watch::Receiver<bool>,
}

impl Keeper {
    /// Renews the leases fed to the stream, slot by slot, until the hold is
    /// over; returns them. Dropping `tx` on return closes the stream's
    /// sending side.
    async fn renew(
        mut self,
        mut feed: mpsc::Receiver<i64>,
        tx: mpsc::Sender<LeaseKeepAliveRequest>,
        slots: usize,
    ) -> Vec<i64> {
        // Streams tick at staggered instants, so the server sees an even
        // rate rather than a burst every tick.
        let offset = TICK.mul_f64(self.index as f64 / self.streams as f64);
        let mut tick = tokio::time::interval_at((Instant::now() + offset).into(), TICK);
        let (mut leases, mut feeding, mut k) = (Vec::new(), true, 0usize);
        loop {
            tokio::select! {
                _ = self.stop.changed() => break,
                id = feed.recv(), if feeding => match id {
                    Some(id) => leases.push(id),
                    None => feeding = false,
                },
                _ = tick.tick() => {
                    let due: Vec<i64> = {
                        let mut f = self.flight.lock();
                        let due: Vec<i64> = leases
                            .iter()
                            .skip(k % slots)
                            .step_by(slots)
                            .filter(|id| !f.lost.contains(id))
                            .copied()
                            .collect();
                        let now = Instant::now();
                        f.sent.extend(due.iter().map(|&id| (id, now)));
                        due
                    };
                    k += 1;
                    self.tally.sent.fetch_add(due.len() as u64, Ordering::Relaxed);
                    for id in due {
                        if tx.send(LeaseKeepAliveRequest { id }).await.is_err() {
                            return leases;
                        }
                    }
                }
            }
        }
        leases
    }

    /// Opens the stream on `ch` with `reqs` as its requests and reads its
    /// answers until the server ends it.
    async fn answers(
        self,
        ch: Conn,
        reqs: mpsc::Receiver<LeaseKeepAliveRequest>,
        rec: Arc<Recorder>,
    ) {
        let fail = |e: String| {
            // Once the hold is over the client closes the streams itself.
            if !*self.stop.borrow() {
                self.tally.failed_streams.fetch_add(1, Ordering::Relaxed);
                sample(&self.tally.samples, e);
            }
        };
        let call = LeaseClient::new(ch)
            .lease_keep_alive(ReceiverStream::new(reqs))
            .await;
        let mut rx = match call {
            Ok(r) => r.into_inner(),
            Err(s) => return fail(status_text(s)),
        };
        loop {
            let r = match rx.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return fail("keepalive stream ended".into()),
                Err(s) => return fail(status_text(s)),
            };
            let sent = {
                let mut f = self.flight.lock();
                if r.ttl <= 0 && f.lost.insert(r.id) {
                    self.tally.lost.fetch_add(1, Ordering::Relaxed);
                    let msg = "lease lost (keepalive answered TTL 0)";
                    sample(&self.tally.samples, msg.into());
                }
                let sent = f.answered(r.id);
                if f.mark.is_some_and(|m| f.answered_up_to(m)) {
                    f.mark = None;
                    self.caught_up.notify_one();
                }
                sent
            };
            if r.ttl > 0 {
                self.tally.alive.fetch_add(1, Ordering::Relaxed);
                let measuring = self.tally.measuring.load(Ordering::Relaxed);
                if let Some(t) = sent.filter(|_| measuring) {
                    rec.record(self.index, t.elapsed());
                }
            }
        }
    }
}

/// Grants leases and hands each to a keepalive stream.
struct GrantWorker {
    lease: LeaseClient<Conn>,
    ttl: i64,
    feeds: Arc<Vec<mpsc::Sender<i64>>>,
}

impl Worker for GrantWorker {
    async fn op(&mut self, seq: u64) -> Result<(), String> {
        let id = self
            .lease
            .lease_grant(LeaseGrantRequest {
                ttl: self.ttl,
                id: 0,
            })
            .await
            .map_err(status_text)?
            .into_inner()
            .id;
        let feed = &self.feeds[seq as usize % self.feeds.len()];
        feed.send(id)
            .await
            .map_err(|_| "keepalive stream gone".to_string())
    }
}

/// Revokes the leases at the end.
struct RevokeWorker {
    lease: LeaseClient<Conn>,
    ids: Arc<Vec<i64>>,
}

impl Worker for RevokeWorker {
    async fn op(&mut self, seq: u64) -> Result<(), String> {
        let id = self.ids[seq as usize];
        self.lease
            .lease_revoke(LeaseRevokeRequest { id })
            .await
            .map(drop)
            .map_err(status_text)
    }
}

/// `roster bench hold-leases`.
pub async fn hold_leases(a: HoldLeasesArgs) -> Result<(), String> {
    if a.ttl < 3 {
        return Err("--ttl must be at least 3 s".into());
    }
    let streams = a.streams.clamp(1, a.leases.max(1));
    // Each lease is renewed once per `slots` ticks: ttl/3, rounded down to
    // whole ticks.
    let slots = ((a.ttl as u128 * 1000 / 3) / TICK.as_millis()).max(1) as usize;
    let period = TICK * slots as u32;
    let chans = a.common.channels().await?;
    let tally = Arc::new(Tally::default());
    let rec = Arc::new(Recorder::new());
    let (stop_tx, stop) = watch::channel(false);
    let (mut feeds, mut renewers, mut readers) = (Vec::new(), JoinSet::new(), JoinSet::new());
    let mut keepers = Vec::new();
    for i in 0..streams {
        let (feed, fed) = mpsc::channel(1024);
        let (tx, reqs) = mpsc::channel(1024);
        let flight = Arc::new(Mutex::new(InFlight::default()));
        let ch = chans[i % chans.len()].clone();
        let keeper = Keeper {
            index: i,
            streams,
            flight,
            caught_up: Arc::new(Notify::new()),
            tally: tally.clone(),
            stop: stop.clone(),
        };
        readers.spawn(keeper.clone().answers(ch, reqs, rec.clone()));
        renewers.spawn(keeper.clone().renew(fed, tx, slots));
        feeds.push(feed);
        keepers.push(keeper);
    }

    let feeds = Arc::new(feeds);
    let granters = (0..a.common.clients)
        .map(|i| GrantWorker {
            lease: LeaseClient::new(chans[i % chans.len()].clone()),
            ttl: a.ttl,
            feeds: feeds.clone(),
        })
        .collect();
    let grant_rec = Arc::new(Recorder::new());
    let grants = drive(
        "grant",
        granters,
        chans.len(),
        Stop::Total(a.leases as u64),
        0.0,
        grant_rec.clone(),
    )
    .await;
    // The renewers stop taking leases once every feed is gone.
    drop(feeds);
    if grants.aborted {
        let _ = stop_tx.send(true);
        return Err(format!(
            "hold-leases: most grants failed: {:?}",
            grants.error_samples
        ));
    }

    // The hold starts once the server has answered every keepalive sent
    // while it was granting: a server still working off a backlog is not
    // in its steady state. At most one TTL is waited for that.
    let granted_at = Instant::now();
    let mut behind = Vec::new();
    for k in &keepers {
        let mut f = k.flight.lock();
        if !f.answered_up_to(granted_at) {
            f.mark = Some(granted_at);
            behind.push(k.caught_up.clone());
        }
    }
    let caught_up = tokio::time::timeout(Duration::from_secs(a.ttl as u64), async {
        for k in behind {
            k.notified().await;
        }
    })
    .await
    .is_ok();
    let settle = granted_at.elapsed();
    let in_flight = |ks: &[Keeper]| ks.iter().map(|k| k.flight.lock().sent.len()).sum::<usize>();
    let backlog = in_flight(&keepers);

    eprintln!(
        "hold-leases: holding {} leases for {} s",
        grants.count,
        a.hold.as_secs_f64()
    );
    let alive0 = tally.alive.load(Ordering::Relaxed);
    tally.measuring.store(true, Ordering::Relaxed);
    let held = Instant::now();
    tokio::time::sleep(a.hold).await;
    tally.measuring.store(false, Ordering::Relaxed);
    let in_hold = tally.alive.load(Ordering::Relaxed) - alive0;
    let hold = held.elapsed();
    eprintln!("hold-leases: hold over");

    // Stop renewing; each stream's sending side closes, the server answers
    // what it has and ends the stream.
    let _ = stop_tx.send(true);
    let mut ids = Vec::with_capacity(a.leases);
    while let Some(r) = renewers.join_next().await {
        ids.extend(r.map_err(|e| e.to_string())?);
    }
    let drained = tokio::time::timeout(DRAIN, async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        readers.abort_all();
        sample(
            &tally.samples,
            format!(
                "keepalive streams not closed {} s after the hold",
                DRAIN.as_secs()
            ),
        );
    }
    let unanswered = in_flight(&keepers);

    let mut extra = Map::new();
    if !a.no_revoke {
        let ids = Arc::new(ids);
        let revokers = (0..a.common.clients)
            .map(|i| RevokeWorker {
                lease: LeaseClient::new(chans[i % chans.len()].clone()),
                ids: ids.clone(),
            })
            .collect();
        let total = Stop::Total(ids.len() as u64);
        let out = drive(
            "revoke",
            revokers,
            chans.len(),
            total,
            0.0,
            Arc::new(Recorder::new()),
        )
        .await;
        extra = fields(json!({
            "revoked": out.count,
            "revoke_errors": out.errors,
            "revoke_s": out.duration.as_secs_f64(),
        }));
    }

    let granted = finish("grant", Map::new(), &grants, &grant_rec, Map::new());
    let (lost, failed) = (
        tally.lost.load(Ordering::Relaxed),
        tally.failed_streams.load(Ordering::Relaxed),
    );
    extra.extend(fields(json!({
        "granted": grants.count,
        "grant_errors": grants.errors,
        "grant_s": grants.duration.as_secs_f64(),
        "grants_per_s": granted.rps(),
        "grant_p99_ms": granted.pct_ms(99.0),
        "offered_keepalives_per_s": grants.count as f64 / period.as_secs_f64(),
        "keepalives_sent": tally.sent.load(Ordering::Relaxed),
        "lost_leases": lost,
        "failed_streams": failed,
        "unanswered": unanswered,
        "settle_s": settle.as_secs_f64(),
        "caught_up_before_hold": caught_up,
        "in_flight_at_hold_start": backlog,
    })));
    for e in grants.error_samples {
        sample(&tally.samples, e);
    }
    let mut p = hold_params(&a.common);
    p.extend(fields(json!({
        "leases": a.leases,
        "streams": streams,
        "ttl": a.ttl,
        "hold_s": a.hold.as_secs_f64(),
    })));
    let report = Report {
        scenario: "hold-leases".into(),
        params: p,
        count: in_hold,
        errors: grants.errors + lost + failed + unanswered as u64,
        error_samples: std::mem::take(&mut *tally.samples.lock()),
        duration: hold,
        latency: rec.merged(),
        extra,
    };
    emit_hold(report, a.common.json, false)
}
