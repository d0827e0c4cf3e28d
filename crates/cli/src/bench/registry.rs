//! Registry scenarios, through roster-client as an application uses it.
//!
//! `register`: each operation registers one instance
//! (`Registry::register(..).ttl(..)`: a lease grant and a put, after which
//! the SDK keeps the lease alive and watches the record). Registrations
//! stay alive until the run ends, so a run of N leaves N live instances,
//! each with its keepalive and its watch, as a real fleet would; their
//! count is the registry's standing load, not part of the timing.
//!
//! `discover`: `--discoverers` clients each follow the service with
//! `Registry::discover`. Then `--clients` registrars register instances,
//! and an operation is timed from the start of the register call until the
//! instance is in the set of every discoverer: the time a new instance
//! takes to become callable everywhere. The latency of each single
//! discoverer's sighting is reported too (`per_discoverer_*`).
//!
//! Clients are spread over `--conns` SDK connections, each its own
//! `Client` and so its own channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use parking_lot::Mutex;
use roster_client::{Change, Client, Registration, Registry};
use serde_json::{json, Map};
use tokio::sync::oneshot;

use super::driver::Worker;
use super::report::{Recorder, Report};
use super::{emit, finish, Common};

/// Flags of `roster bench register`.
#[derive(Args, Debug)]
pub struct RegisterArgs {
    #[command(flatten)]
    common: Common,
    /// Lease TTL of each registration, in seconds.
    #[arg(long, default_value_t = 10)]
    ttl: i64,
    /// Service to register instances of.
    #[arg(long, default_value = "bench.svc")]
    service: String,
}

/// Flags of `roster bench discover`.
#[derive(Args, Debug)]
pub struct DiscoverArgs {
    #[command(flatten)]
    common: Common,
    /// Clients following the service.
    #[arg(long, default_value_t = 10)]
    discoverers: usize,
    /// Lease TTL of each registration, in seconds.
    #[arg(long, default_value_t = 10)]
    ttl: i64,
    /// Service to register and discover.
    #[arg(long, default_value = "bench.svc")]
    service: String,
}

/// One SDK connection per `--conns`.
fn registries(c: &Common) -> Result<Vec<Registry>, String> {
    if c.conns == 0 || c.clients == 0 {
        return Err("--conns and --clients must not be 0".into());
    }
    (0..c.conns)
        .map(|_| Client::connect(&c.endpoints).map(Registry::new))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())
}

/// A unique instance id for operation `seq` of this process.
fn instance_id(seq: u64) -> String {
    format!("bench-{}-{seq}", std::process::id())
}

struct RegisterWorker {
    registry: Registry,
    service: String,
    ttl: i64,
    kept: Arc<Mutex<Vec<Registration>>>,
}

impl Worker for RegisterWorker {
    async fn op(&mut self, seq: u64) -> Result<(), String> {
        let addr = format!("10.0.{}.{}:8080", (seq >> 8) & 0xff, seq & 0xff);
        let r = self
            .registry
            .register(&self.service, &addr)
            .id(instance_id(seq))
            .ttl(self.ttl)
            .await
            .map_err(|e| e.to_string())?;
        self.kept.lock().push(r);
        Ok(())
    }
}

/// Deregisters everything kept, concurrently; returns how long it took.
async fn deregister_all(kept: &Mutex<Vec<Registration>>) -> Duration {
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for r in kept.lock().drain(..) {
        tasks.spawn(r.deregister());
    }
    while tasks.join_next().await.is_some() {}
    t.elapsed()
}

/// `roster bench register`.
pub async fn register(a: RegisterArgs) -> Result<(), String> {
    let regs = registries(&a.common)?;
    let kept = Arc::new(Mutex::new(Vec::new()));
    let workers = (0..a.common.clients)
        .map(|i| RegisterWorker {
            registry: regs[i % regs.len()].clone(),
            service: a.service.clone(),
            ttl: a.ttl,
            kept: kept.clone(),
        })
        .collect();
    let rec = Arc::new(Recorder::new());
    let out = a
        .common
        .drive("register", workers, regs.len(), rec.clone())
        .await;
    let live = kept.lock().len();
    let took = deregister_all(&kept).await;
    let mut p = a.common.params();
    p.insert("ttl".into(), json!(a.ttl));
    let mut extra = Map::new();
    extra.insert("live_instances_at_end".into(), json!(live));
    extra.insert("deregister_all_s".into(), json!(took.as_secs_f64()));
    let report = finish("register", p, &out, &rec, extra);
    emit(report, a.common.json, out.aborted)
}

/// A registration waiting to be seen: when it started, how many
/// discoverers have yet to see it, and who to tell when none are left.
struct Pending {
    started: Instant,
    unseen: usize,
    done: Option<oneshot::Sender<()>>,
}

type PendingMap = Arc<Mutex<HashMap<String, Pending>>>;

struct DiscoverWorker {
    registry: Registry,
    service: String,
    ttl: i64,
    discoverers: usize,
    pending: PendingMap,
    kept: Arc<Mutex<Vec<Registration>>>,
}

/// Longest wait for every discoverer to see one registration.
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(10);

impl Worker for DiscoverWorker {
    async fn op(&mut self, seq: u64) -> Result<(), String> {
        let id = instance_id(seq);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(
            id.clone(),
            Pending {
                started: Instant::now(),
                unseen: self.discoverers,
                done: Some(tx),
            },
        );
        let r = self
            .registry
            .register(&self.service, "10.1.0.1:8080")
            .id(id.clone())
            .ttl(self.ttl)
            .await;
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                self.pending.lock().remove(&id);
                return Err(e.to_string());
            }
        };
        self.kept.lock().push(r);
        match tokio::time::timeout(VISIBLE_TIMEOUT, rx).await {
            Ok(Ok(())) => Ok(()),
            _ => {
                self.pending.lock().remove(&id);
                Err(format!(
                    "not seen by every discoverer within {VISIBLE_TIMEOUT:?}"
                ))
            }
        }
    }
}

/// Follows one discoverer's changes, ticking off the registrations it sees.
async fn watch_changes(
    mut changes: tokio::sync::broadcast::Receiver<Change>,
    i: usize,
    pending: PendingMap,
    seen: Arc<Recorder>,
) {
    while let Ok(c) = changes.recv().await {
        let Change::Added(inst) = c else { continue };
        let mut map = pending.lock();
        let Some(p) = map.get_mut(&inst.id) else {
            continue;
        };
        seen.record(i, p.started.elapsed());
        p.unseen -= 1;
        if p.unseen == 0 {
            if let Some(done) = p.done.take() {
                let _ = done.send(());
            }
            map.remove(&inst.id);
        }
    }
}

/// `roster bench discover`.
pub async fn discover(a: DiscoverArgs) -> Result<(), String> {
    let regs = registries(&a.common)?;
    let mut follows = Vec::new();
    for i in 0..a.discoverers.max(1) {
        let d = regs[i % regs.len()]
            .discover(&a.service)
            .await
            .map_err(|e| format!("discover: {e}"))?;
        follows.push(d);
    }
    let pending: PendingMap = Arc::new(Mutex::new(HashMap::new()));
    let seen = Arc::new(Recorder::new());
    let watchers: Vec<_> = follows
        .iter()
        .enumerate()
        .map(|(i, d)| tokio::spawn(watch_changes(d.changes(), i, pending.clone(), seen.clone())))
        .collect();
    let kept = Arc::new(Mutex::new(Vec::new()));
    let workers = (0..a.common.clients)
        .map(|i| DiscoverWorker {
            registry: regs[i % regs.len()].clone(),
            service: a.service.clone(),
            ttl: a.ttl,
            discoverers: follows.len(),
            pending: pending.clone(),
            kept: kept.clone(),
        })
        .collect();
    let rec = Arc::new(Recorder::new());
    let out = a
        .common
        .drive("discover", workers, regs.len(), rec.clone())
        .await;
    for w in watchers {
        w.abort();
    }
    deregister_all(&kept).await;
    let each = Report {
        latency: seen.merged(),
        ..finish("seen", Map::new(), &out, &Recorder::new(), Map::new())
    };
    let mut p = a.common.params();
    p.insert("discoverers".into(), json!(follows.len()));
    p.insert("ttl".into(), json!(a.ttl));
    let mut extra = Map::new();
    extra.insert("per_discoverer_p50_ms".into(), json!(each.pct_ms(50.0)));
    extra.insert("per_discoverer_p99_ms".into(), json!(each.pct_ms(99.0)));
    let report = finish("discover", p, &out, &rec, extra);
    emit(report, a.common.json, out.aborted)
}
