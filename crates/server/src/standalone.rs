//! Single-node consensus: a queue in front of one writer thread.
//!
//! Proposals go into a channel. The writer thread takes whatever has queued
//! up (at least one command, at most [`MAX_BATCH`]), numbers the commands as
//! consecutive log entries, and hands them to the store as one batch: one redb
//! transaction and one fsync. Only then is any proposer in the batch answered.
//! While one batch is being fsynced the next one queues, so throughput grows
//! with concurrency instead of being capped at one fsync per write (group
//! commit).
//!
//! A storage failure on this path is fatal: the in-memory state may be ahead
//! of the disk, so the writer stops, every pending and later proposal gets
//! `server stopped`, and the node's shutdown signal fires.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use roster_proto::roster::command::Kind;
use roster_store::{Applied, Command, Store};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::consensus::{Consensus, ConsensusStatus, ProposeFuture};
use crate::error::ServerError;

/// Upper bound on commands per batch, so one fsync never waits on an
/// unbounded amount of work.
pub const MAX_BATCH: usize = 1024;

/// Capacity of the proposal queue; proposers wait when it is full.
const QUEUE: usize = 16 * 1024;

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
    failed: AtomicBool,
    fatal: Arc<Notify>,
}

impl Standalone {
    /// Starts the writer thread over `store`. `fatal` is notified if the
    /// write path fails and the node must stop.
    pub fn start(
        store: Arc<Store>,
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
            failed: AtomicBool::new(false),
            fatal,
        });
        let s = shared.clone();
        let writer = std::thread::Builder::new()
            .name("roster-writer".into())
            .spawn(move || writer(s, rx, on_commit))
            .expect("spawning the writer thread");
        Standalone {
            tx: parking_lot::RwLock::new(Some(tx)),
            shared,
            writer: parking_lot::Mutex::new(Some(writer)),
        }
    }

    /// Stops accepting proposals, lets the writer finish what is queued and
    /// waits for it.
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

fn writer(shared: Arc<Shared>, mut rx: mpsc::Receiver<Proposal>, on_commit: OnCommit) {
    let mut batch: Vec<Proposal> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
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
        match shared.store.apply_batch(&commands) {
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
            }
            Err(e) => {
                tracing::error!(error = %e, "write path failed; stopping the node");
                shared.failed.store(true, Ordering::Release);
                shared.fatal.notify_one();
                rx.close();
                for p in batch.drain(..) {
                    let _ = p.done.send(Err(ServerError::Stopped));
                }
                while let Ok(p) = rx.try_recv() {
                    let _ = p.done.send(Err(ServerError::Stopped));
                }
                return;
            }
        }
    }
}
