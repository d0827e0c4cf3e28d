//! Single-node consensus: a queue in front of one writer thread.
//!
//! Proposals go into a channel. The writer thread takes whatever has queued
//! up (at least one command, at most [`MAX_BATCH`]), numbers the commands as
//! consecutive log entries, appends them to the write-ahead log (one write,
//! one `fdatasync`), applies them to the store with a non-durable commit, and
//! only then answers any proposer in the batch. While one batch is being
//! synced the next one queues, so throughput grows with concurrency instead
//! of being capped at one fsync per write (group commit).
//!
//! Every [`CHECKPOINT_EVERY`] of writing, and that long after the last write,
//! the writer makes the store itself durable and drops the log segments the
//! store no longer needs, so a restart replays at most that much log (see
//! `roster_store::wal`).
//!
//! A storage failure on this path is fatal: the in-memory state may be ahead
//! of the disk, so the writer stops, every pending and later proposal gets
//! `server stopped`, and the node's shutdown signal fires.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use roster_proto::roster::command::Kind;
use roster_store::wal::Wal;
use roster_store::{Applied, Command, Store, StoreError};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::consensus::{Consensus, ConsensusStatus, ProposeFuture};
use crate::error::ServerError;

/// Upper bound on commands per batch, so one fsync never waits on an
/// unbounded amount of work.
pub const MAX_BATCH: usize = 1024;

/// Capacity of the proposal queue; proposers wait when it is full.
const QUEUE: usize = 16 * 1024;

/// How often, while writes flow, the store is made durable and the log
/// trimmed: etcd commits its backend every 100 ms too.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

struct Proposal {
    cmd: Command,
    done: oneshot::Sender<Result<Applied, ServerError>>,
}

/// The single-node [`Consensus`].
pub struct Standalone {
    /// `None` once stopped: the writer exits when the last sender is gone.
    tx: parking_lot::RwLock<Option<mpsc::Sender<Proposal>>>,
    shared: Arc<Shared>,
    writer: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

/// Called by the writer after each durable batch, before any proposer of
/// the batch is answered, with the batch's outcomes and the revision the
/// store has published.
pub type OnCommit = Box<dyn Fn(&[Applied], i64) + Send>;

struct Shared {
    store: Arc<Store>,
    term: u64,
    member_id: u64,
    applied: AtomicU64,
    /// Log appends made: one `fdatasync` each.
    syncs: AtomicU64,
    failed: AtomicBool,
    fatal: Arc<Notify>,
}

impl Standalone {
    /// Starts the writer thread over `store`, logging to `wal`, which must
    /// continue where the store is (see [`recover`]). `fatal` is
    /// notified if the write path fails and the node must stop.
    pub fn start(
        store: Arc<Store>,
        wal: Wal,
        term: u64,
        member_id: u64,
        fatal: Arc<Notify>,
        on_commit: OnCommit,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            applied: AtomicU64::new(store.applied_index()),
            store,
            term,
            member_id,
            syncs: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            fatal,
        });
        let s = shared.clone();
        let writer = std::thread::Builder::new()
            .name("roster-writer".into())
            .spawn(move || writer(s, wal, rx, on_commit))
            .expect("spawning the writer thread");
        Standalone {
            tx: parking_lot::RwLock::new(Some(tx)),
            shared,
            writer: parking_lot::Mutex::new(Some(writer)),
        }
    }

    /// Number of log appends so far: durable commits, one `fdatasync` each.
    pub fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// Stops accepting proposals, lets the writer finish what is queued,
    /// checkpoints the store and waits for it all.
    /// Call it from a thread that may block.
    pub fn stop(&self) {
        self.tx.write().take();
        if let Some(h) = self.writer.lock().take() {
            let _ = h.join();
        }
    }
}

impl Consensus for Standalone {
    fn propose(&self, cmd: Command) -> ProposeFuture {
        let tx = self.tx.read().clone();
        let failed = self.shared.failed.load(Ordering::Acquire);
        Box::pin(async move {
            let Some(tx) = tx.filter(|_| !failed) else {
                return Err(ServerError::Stopped);
            };
            let (done, rx) = oneshot::channel();
            tx.send(Proposal { cmd, done })
                .await
                .map_err(|_| ServerError::Stopped)?;
            rx.await.map_err(|_| ServerError::Stopped)?
        })
    }

    fn status(&self) -> ConsensusStatus {
        let applied = self.shared.applied.load(Ordering::Acquire);
        ConsensusStatus {
            term: self.shared.term,
            leader: self.shared.member_id,
            commit_index: applied,
            applied_index: applied,
        }
    }
}

fn writer(
    shared: Arc<Shared>,
    mut wal: Wal,
    mut rx: mpsc::Receiver<Proposal>,
    on_commit: OnCommit,
) {
    let mut batch: Vec<Proposal> = Vec::with_capacity(MAX_BATCH);
    let mut checkpoints = Checkpoints {
        last: Instant::now(),
        dirty: false,
    };
    // A clock to wait for the next proposal with a deadline, so that a
    // burst of writes followed by silence is checkpointed too and a restart
    // after it replays nothing. Without one, checkpoints wait for writes.
    let clock = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .ok();
    loop {
        let next = match (&clock, checkpoints.dirty) {
            (Some(clock), true) => {
                let left = CHECKPOINT_EVERY.saturating_sub(checkpoints.last.elapsed());
                // The timer is made inside the clock's context: it needs one.
                match clock.block_on(async { tokio::time::timeout(left, rx.recv()).await }) {
                    Ok(next) => next,
                    Err(_idle) => {
                        if let Err(e) = checkpoints.run(&shared.store, &mut wal) {
                            return fail(&shared, &mut rx, Vec::new(), e);
                        }
                        continue;
                    }
                }
            }
            _ => rx.blocking_recv(),
        };
        let Some(first) = next else { break };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let base = shared.applied.load(Ordering::Acquire);
        let commands: Vec<(u64, Command)> = batch
            .iter_mut()
            .enumerate()
            .map(|(i, p)| (base + 1 + i as u64, std::mem::take(&mut p.cmd)))
            .collect();
        let logged = wal.append(&commands).inspect(|_| {
            shared.syncs.fetch_add(1, Ordering::Relaxed);
        });
        match logged.and_then(|()| shared.store.apply_logged(&commands)) {
            Ok(results) => {
                shared
                    .applied
                    .store(base + commands.len() as u64, Ordering::Release);
                // Watchers hear of a write before its writer is answered, so
                // a watch created before a put always sees the put.
                on_commit(&results, shared.store.revision());
                // Physical compactions answer only once storage is cleaned.
                let mut after_cleanup = Vec::new();
                for ((p, applied), (_, cmd)) in batch.drain(..).zip(results).zip(&commands) {
                    match &cmd.kind {
                        Some(Kind::Compact(c)) if c.physical && applied.response.is_ok() => {
                            after_cleanup.push((p, applied))
                        }
                        _ => {
                            let _ = p.done.send(Ok(applied));
                        }
                    }
                }
                if let Err(e) = shared.store.finish_compaction() {
                    tracing::error!(error = %e, "removing compacted revisions failed");
                }
                for (p, applied) in after_cleanup {
                    let _ = p.done.send(Ok(applied));
                }
                checkpoints.dirty = true;
                if checkpoints.last.elapsed() >= CHECKPOINT_EVERY {
                    if let Err(e) = checkpoints.run(&shared.store, &mut wal) {
                        return fail(&shared, &mut rx, Vec::new(), e);
                    }
                }
            }
            Err(e) => return fail(&shared, &mut rx, std::mem::take(&mut batch), e),
        }
    }
    // Stopped: leave the store durable so the next start replays nothing.
    if let Err(e) = checkpoint(&shared.store, &mut wal) {
        tracing::error!(error = %e, "final checkpoint failed; the log will be replayed");
    }
}

/// When the writer last checkpointed, and whether it has applied batches
/// since.
struct Checkpoints {
    last: Instant,
    dirty: bool,
}

impl Checkpoints {
    fn run(&mut self, store: &Store, wal: &mut Wal) -> Result<(), StoreError> {
        checkpoint(store, wal)?;
        self.last = Instant::now();
        self.dirty = false;
        Ok(())
    }
}

/// Opens the write-ahead log in `dir` and replays onto `store` what the
/// store does not durably hold yet, then checkpoints: the log returned
/// continues exactly where the store is, as [`Standalone::start`] needs.
pub fn recover(store: &Store, dir: &Path) -> Result<Wal, StoreError> {
    let (mut wal, replay) = Wal::open(dir, store.applied_index())?;
    if !replay.is_empty() {
        tracing::info!(entries = replay.len(), "replaying the write-ahead log");
        for chunk in replay.chunks(MAX_BATCH) {
            store.apply_logged(chunk)?;
        }
        checkpoint(store, &mut wal)?;
    }
    Ok(wal)
}

/// Makes the store durable and drops the log it no longer needs.
fn checkpoint(store: &Store, wal: &mut Wal) -> Result<(), StoreError> {
    let upto = store.checkpoint()?;
    wal.release(upto)
}

/// Stops the write path after a storage failure: every proposal pending or
/// still queued is told the server stopped.
fn fail(shared: &Shared, rx: &mut mpsc::Receiver<Proposal>, batch: Vec<Proposal>, e: StoreError) {
    tracing::error!(error = %e, "write path failed; stopping the node");
    shared.failed.store(true, Ordering::Release);
    shared.fatal.notify_one();
    rx.close();
    for p in batch {
        let _ = p.done.send(Err(ServerError::Stopped));
    }
    while let Ok(p) = rx.try_recv() {
        let _ = p.done.send(Err(ServerError::Stopped));
    }
}
