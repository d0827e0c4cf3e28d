//! Single-node consensus: group commit with an inline fast path.
//!
//! A write is durable once its command is in the write-ahead log and the log
//! is synced; the state machine then applies it (to the store in memory:
//! redb gets it at the next checkpoint), and the proposer gets its outcome.
//! Whoever holds the *core* (the log) does this for a batch of commands,
//! numbering them as consecutive log entries: one write and one `fdatasync`
//! per batch.
//!
//! ```text
//! proposer --(write path idle)--> commits its own write ---+
//!    |                                                     |
//!    +--(otherwise)--> queue --> writer thread ------------+
//!                                                          v
//!                  core: append + fdatasync, state machine apply, answer
//!
//! checkpointer: state machine checkpoint, release the log, sweep
//! ```
//!
//! Two kinds of thread take the core:
//!
//! - **The proposer itself**, when nothing is queued and the writer thread
//!   is idle. A lone client then pays for its own sync and nothing else: no
//!   hand-off to another thread and back, which on a virtual machine can
//!   cost more than the sync: waking a thread whose CPU is idle is slow
//!   there. It blocks its tokio worker for that one sync, on purpose:
//!   `block_in_place` would hand the worker's other tasks to a fresh
//!   thread, and the response, written by the connection's task, would
//!   then wait for that thread to wake. The block is bounded: one proposer
//!   at a time holds the core, only while the write path is otherwise
//!   idle, and the other workers take over the blocked one's queued tasks.
//!   A current-thread runtime has no other worker, so there proposals
//!   always queue.
//! - **The writer thread**, for everything else. Proposals that find the
//!   core busy queue up; the writer takes all of them (at most
//!   [`MAX_BATCH`]) as soon as the core is free. While one batch syncs the
//!   next one queues, so under load throughput grows with concurrency
//!   instead of being capped at one sync per write.
//!
//! Every [`CHECKPOINT_EVERY`] while writes flow (sooner once
//! [`CHECKPOINT_RECORDS`] are pending), and that long after the last write,
//! a third thread, the checkpointer, makes the store itself durable and
//! drops the log segments the store no longer needs, so a restart replays
//! at most that much log (see `roster_raft::log`). The first commit after
//! a checkpoint starts that clock. Commits go on while the store writes out
//! (it sets the writes aside first): a checkpoint spends most of its time
//! waiting on the disk, and holding the core through it would hold up
//! every write that came meanwhile. Behind a lone writer it holds the core
//! all the same (see `Shared::checkpoint`). Between checkpoints the same
//! thread has the state machine drop what compactions passed, a piece at a
//! time ([`StateMachine::sweep`]). When the write path closes, the
//! checkpointer waits for the writer to finish what is queued and makes a
//! last checkpoint, so the next start replays nothing.
//!
//! A storage failure on this path is fatal: the in-memory state may be ahead
//! of the disk, so the write path closes, every pending and later proposal
//! gets `server stopped`, and the node's shutdown signal fires.
//!
//! What was measured to shape this, and the variants dropped:
//! `docs/decisions.md`, entries 4–9 (commits and checkpoints) and 16–17
//! (compactions).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use prost::Message;
use roster_raft::{EntryKind, Log, LogError, LogId, Record};
use roster_store::{Command, StoreError};
use tokio::sync::{oneshot, Notify};

use crate::coalesce::{Answer, Backlog};
use crate::consensus::{Consensus, ConsensusStatus, ProposeFuture};
use crate::error::ServerError;
use crate::state::{Outcome, StateMachine, Sweep};

/// Upper bound on commands per batch, so one sync never waits on an
/// unbounded amount of work.
pub const MAX_BATCH: usize = 1024;

/// How often, while writes flow, the store is made durable and the log
/// trimmed: etcd commits its backend every 100 ms too.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Records pending in the store that make a checkpoint due sooner. Commits
/// do not wait for a checkpoint, but its redb commit shares the CPUs and
/// the disk with them, and small ones spread that out (measured against a
/// larger cap: `docs/decisions.md`, entry 7).
pub const CHECKPOINT_RECORDS: usize = 512;

struct Proposal {
    cmd: Command,
    done: oneshot::Sender<Answered>,
}

/// A proposal's outcome, and its place in the [`Backlog`] until the
/// proposer takes it (none when the write path stopped).
type Answered = (Result<Outcome, ServerError>, Option<Answer>);

/// The single-node [`Consensus`].
pub struct Standalone {
    shared: Arc<Shared>,
    /// The writer thread and the checkpointer.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

struct Shared {
    sm: Arc<StateMachine>,
    term: u64,
    member_id: u64,
    applied: AtomicU64,
    /// Log appends made: one `fdatasync` each.
    syncs: AtomicU64,
    /// The last commit was a lone proposer's own (see `Shared::checkpoint`).
    lone: AtomicBool,
    /// Answers not yet taken by their proposers (see `crate::coalesce`).
    backlog: Backlog,
    failed: AtomicBool,
    fatal: Arc<Notify>,
    queue: Mutex<Queue>,
    /// Wakes the writer thread: proposals queued, or the write path closed.
    wake: Condvar,
    /// Wakes the checkpointer: a checkpoint clock started or set back, or
    /// the writer thread finished.
    tick: Condvar,
    /// Lock order: `core` before `queue`; a thread holding `queue` only
    /// ever *tries* to take `core`.
    core: Mutex<Core>,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Proposal>,
    /// No more proposals: stopped or failed.
    closed: bool,
    /// The writer thread is waiting for work: a proposer may commit inline.
    writer_idle: bool,
    /// The writer thread has finished what was queued after the close.
    writer_done: bool,
    /// When the first commit since the last checkpoint was made.
    dirty_since: Option<Instant>,
    /// A compaction passed history that the index or storage still
    /// holds: the checkpointer has the state machine drop it.
    sweep: bool,
}

struct Core {
    log: Log,
    /// Reused buffer for the batch's encoded commands.
    buf: Vec<u8>,
}

/// Who this member is and what it reports, for [`Standalone::open`].
pub struct Member {
    /// The term this run serves in.
    pub term: u64,
    /// This member's id: the leader, always.
    pub id: u64,
    /// Notified if the write path fails and the node must stop.
    pub fatal: Arc<Notify>,
    /// Counts answers given and not yet taken (see `crate::coalesce`).
    pub backlog: Backlog,
}

impl Standalone {
    /// Opens the log in `dir`, replays into `sm` what its store does not
    /// durably hold yet, and starts the write path.
    pub fn open(sm: Arc<StateMachine>, dir: &Path, member: Member) -> Result<Self, RecoverError> {
        let log = recover(&sm, dir)?;
        // Terms in the log never go down, whatever the store remembered.
        let term = member.term.max(log.last_id().map_or(0, |id| id.term));
        let shared = Arc::new(Shared {
            applied: AtomicU64::new(sm.applied_index()),
            sm,
            term,
            member_id: member.id,
            syncs: AtomicU64::new(0),
            lone: AtomicBool::new(false),
            backlog: member.backlog,
            failed: AtomicBool::new(false),
            fatal: member.fatal,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            tick: Condvar::new(),
            core: Mutex::new(Core {
                log,
                buf: Vec::new(),
            }),
        });
        let (s, c) = (shared.clone(), shared.clone());
        let threads = vec![
            std::thread::Builder::new()
                .name("roster-writer".into())
                .spawn(move || s.writer())
                .expect("spawning the writer thread"),
            std::thread::Builder::new()
                .name("roster-checkpoint".into())
                .spawn(move || c.checkpointer())
                .expect("spawning the checkpoint thread"),
        ];
        Ok(Standalone {
            shared,
            threads: Mutex::new(threads),
        })
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        // Without a stop, the threads would wait for work forever.
        self.shared.close();
    }
}

impl Consensus for Standalone {
    fn propose(&self, cmd: Command) -> ProposeFuture {
        let shared = self.shared.clone();
        Box::pin(async move {
            let (done, rx) = oneshot::channel();
            shared.submit(Proposal { cmd, done })?;
            // The answer leaves the backlog as this returns.
            let (outcome, _answer) = rx.await.map_err(|_| ServerError::Stopped)?;
            outcome
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

    fn is_leader(&self) -> bool {
        true
    }

    fn durable_commits(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// Lets the writer finish what is queued, checkpoints the store and
    /// waits for it all.
    fn stop(&self) {
        self.shared.close();
        for h in self.threads.lock().drain(..) {
            let _ = h.join();
        }
    }
}

impl Shared {
    /// Commits `p` on this thread if the write path is idle, or queues it
    /// for the writer thread. Either way `p.done` is answered.
    fn submit(&self, p: Proposal) -> Result<(), ServerError> {
        let mut queue = self.queue.lock();
        if queue.closed {
            return Err(ServerError::Stopped);
        }
        if queue.pending.is_empty() && queue.writer_idle && may_block() {
            if let Some(mut core) = self.core.try_lock() {
                drop(queue);
                self.lone.store(true, Ordering::Relaxed);
                let mut batch = vec![p];
                self.commit(&mut core, &mut batch);
                return Ok(());
            }
        }
        queue.pending.push_back(p);
        let wake = queue.writer_idle;
        drop(queue);
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// The writer thread: commits what queues up.
    fn writer(self: Arc<Self>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let mut queue = self.queue.lock();
            while queue.pending.is_empty() {
                if queue.closed {
                    queue.writer_done = true;
                    self.tick.notify_one();
                    return;
                }
                queue.writer_idle = true;
                self.wake.wait(&mut queue);
                queue.writer_idle = false;
            }
            drop(queue);
            let mut core = self.core.lock();
            let mut queue = self.queue.lock();
            let n = queue.pending.len().min(MAX_BATCH);
            batch.extend(queue.pending.drain(..n));
            drop(queue);
            // An inline committer may have taken them first.
            if !batch.is_empty() {
                self.lone.store(false, Ordering::Relaxed);
                self.commit(&mut core, &mut batch);
            }
        }
    }

    /// The checkpointer: checkpoints when the clock runs out, deletes what
    /// compactions dropped a batch at a time in between, and checkpoints
    /// once more when the writer thread has finished.
    fn checkpointer(self: Arc<Self>) {
        loop {
            let mut queue = self.queue.lock();
            let checkpoint = loop {
                if queue.writer_done {
                    drop(queue);
                    return self.final_checkpoint();
                }
                match queue.dirty_since {
                    Some(since) if since.elapsed() >= CHECKPOINT_EVERY => break true,
                    _ if queue.sweep => break false,
                    Some(since) => {
                        self.tick.wait_until(&mut queue, since + CHECKPOINT_EVERY);
                    }
                    None => self.tick.wait(&mut queue),
                }
            };
            if checkpoint {
                // A commit from now on starts the clock again: what it
                // applied is in this checkpoint or the next.
                queue.dirty_since = None;
            } else {
                // Set again by a compaction from now on, or by this sweep
                // if it leaves some for later.
                queue.sweep = false;
            }
            drop(queue);
            let done = if checkpoint {
                self.checkpoint()
            } else {
                self.sweep()
            };
            if let Err(e) = done {
                return self.fail(&mut Vec::new(), e);
            }
        }
    }

    /// Has the state machine drop a piece of what compactions passed.
    /// Done here rather than on the write path, where every write waited
    /// for it (`docs/decisions.md`, entries 16 and 17). Checkpoints, due
    /// every 100 ms, come between pieces.
    fn sweep(&self) -> Result<(), StoreError> {
        // What is left only because a checkpoint holds it cannot be: this
        // thread makes the checkpoints. Doing nothing, stop rather than
        // spin; the next compaction or the last checkpoint goes on.
        if self.sm.sweep()? == Sweep::More {
            self.queue.lock().sweep = true;
        }
        Ok(())
    }

    /// Makes `batch` durable, has the state machine apply it and answers
    /// its proposers; drains `batch`.
    fn commit(&self, core: &mut MutexGuard<'_, Core>, batch: &mut Vec<Proposal>) {
        if self.failed.load(Ordering::Acquire) {
            return answer_stopped(batch.drain(..));
        }
        let base = self.applied.load(Ordering::Acquire);
        let commands: Vec<(u64, Command)> = batch
            .iter_mut()
            .enumerate()
            .map(|(i, p)| (base + 1 + i as u64, std::mem::take(&mut p.cmd)))
            .collect();
        let logged = append(core, self.term, &commands).inspect(|_| {
            self.syncs.fetch_add(1, Ordering::Relaxed);
        });
        let outcomes = match logged.and_then(|()| self.sm.apply(&commands)) {
            Ok(outcomes) => outcomes,
            Err(e) => return self.fail(batch, e),
        };
        self.applied
            .store(base + commands.len() as u64, Ordering::Release);
        for (p, outcome) in batch.drain(..).zip(outcomes) {
            self.answer(p, outcome);
        }
        let compacted = self.sm.take_sweep_due();
        // Start the checkpoint clock, or make the checkpoint due now when
        // enough is pending; the writer thread keeps the clock.
        let full = self.sm.pending_records() >= CHECKPOINT_RECORDS;
        let mut queue = self.queue.lock();
        let mut tick = compacted;
        queue.sweep |= compacted;
        if queue.dirty_since.is_none() || full {
            let now = Instant::now();
            let since = if full {
                now.checked_sub(CHECKPOINT_EVERY).unwrap_or(now)
            } else {
                now
            };
            queue.dirty_since = Some(since);
            tick = true;
        }
        if tick {
            self.tick.notify_one();
        }
    }

    /// Makes the store durable while commits go on, and drops the log it
    /// no longer needs.
    ///
    /// Behind a lone writer (its last commit was its own) the checkpoint
    /// holds the core anyway. Run beside one client's puts, checkpoints
    /// slowed them: not their commits, but the wake-ups between client and
    /// server, as the scheduler placed the threads anew on the two vCPUs.
    /// The lone writer waits for the checkpoint instead
    /// (`docs/decisions.md`, entry 9).
    fn checkpoint(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let held = self.lone.load(Ordering::Relaxed).then(|| self.core.lock());
        let upto = self.sm.checkpoint()?;
        tracing::debug!(upto, took = ?started.elapsed(), "checkpoint");
        let released = match held {
            Some(mut core) => core.log.release(upto),
            None => self.core.lock().log.release(upto),
        };
        released.map_err(log_failed)
    }

    /// Stopped: leave the store durable so the next start replays nothing.
    fn final_checkpoint(&self) {
        if self.failed.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = self.checkpoint() {
            tracing::error!(error = %e, "final checkpoint failed; the log will be replayed");
        }
        // What compactions dropped would be found and deleted at the next
        // start, but a physical compaction waits for it now.
        if let Err(e) = self.sm.finish_sweep() {
            tracing::error!(error = %e, "deleting compacted revisions failed; redone at the next start");
        }
    }

    /// Answers `p` with what applying it did.
    fn answer(&self, p: Proposal, outcome: Outcome) {
        let _ = p.done.send((Ok(outcome), Some(self.backlog.answer())));
    }

    /// Closes the write path: the writer finishes what is queued and exits.
    fn close(&self) {
        self.queue.lock().closed = true;
        self.wake.notify_one();
    }

    /// Stops the write path after a storage failure: every proposal pending
    /// or queued is told the server stopped.
    fn fail(&self, batch: &mut Vec<Proposal>, e: StoreError) {
        tracing::error!(error = %e, "write path failed; stopping the node");
        self.failed.store(true, Ordering::Release);
        self.fatal.notify_one();
        answer_stopped(batch.drain(..));
        let mut queue = self.queue.lock();
        queue.closed = true;
        let pending: Vec<Proposal> = queue.pending.drain(..).collect();
        drop(queue);
        self.wake.notify_one();
        answer_stopped(pending);
        self.sm.abandon();
    }
}

fn answer_stopped(proposals: impl IntoIterator<Item = Proposal>) {
    for p in proposals {
        let _ = p.done.send((Err(ServerError::Stopped), None));
    }
}

/// Whether this thread may block on the disk for one sync: a worker of a
/// multi-thread runtime may (the other workers carry on), a
/// current-thread runtime's only thread may not.
fn may_block() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Appends `commands` to the log as entries of `term`, durably.
fn append(core: &mut Core, term: u64, commands: &[(u64, Command)]) -> Result<(), StoreError> {
    let Core { log, buf } = core;
    buf.clear();
    let mut ends = Vec::with_capacity(commands.len());
    for (_, cmd) in commands {
        cmd.encode(buf).expect("Vec grows as needed");
        ends.push(buf.len());
    }
    let mut start = 0;
    let records: Vec<Record<'_>> = commands
        .iter()
        .zip(&ends)
        .map(|((index, _), &end)| {
            let payload = &buf[start..end];
            start = end;
            Record {
                id: LogId {
                    term,
                    index: *index,
                },
                kind: EntryKind::Command,
                payload,
            }
        })
        .collect();
    log.append(&records).map_err(log_failed)
}

/// A log failure on the write path: storage failed, the node stops.
fn log_failed(e: LogError) -> StoreError {
    StoreError::Storage(e.to_string())
}

/// Why the write path could not start.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The log is damaged, or does not fit the store: nothing was changed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Replaying the log into the store failed.
    #[error("replaying the log: {0}")]
    Store(#[from] StoreError),
    /// An entry's payload is not a command.
    #[error("log entry {index} does not decode as a command: {reason}")]
    Entry {
        /// The entry's index.
        index: u64,
        /// What the decoder said.
        reason: String,
    },
}

/// Opens the write-ahead log in `dir` and replays into `sm` what its store
/// does not durably hold yet, then checkpoints: the log returned continues
/// exactly where the store is. A log that is damaged, or that lacks what
/// the store needs, is refused and nothing is changed.
fn recover(sm: &StateMachine, dir: &Path) -> Result<Log, RecoverError> {
    let (mut log, replay) = Log::open(dir, sm.applied_index())?;
    if !replay.is_empty() {
        tracing::info!(entries = replay.len(), "replaying the write-ahead log");
        // Every entry is decoded before any is applied: one that does not
        // decode refuses the start with nothing changed.
        let mut commands = Vec::with_capacity(replay.len());
        for e in &replay {
            // A single member writes only commands.
            if e.kind != EntryKind::Command {
                continue;
            }
            // Txns may nest deeper than prost decodes (see txn_decode).
            let cmd =
                crate::txn_decode::command(&e.payload).map_err(|err| RecoverError::Entry {
                    index: e.id.index,
                    reason: err.to_string(),
                })?;
            commands.push((e.id.index, cmd));
        }
        drop(replay);
        for chunk in commands.chunks(MAX_BATCH) {
            sm.apply(chunk)?;
            // As after any batch: a replayed compaction's records go now.
            sm.finish_sweep()?;
        }
        let started = Instant::now();
        let upto = sm.checkpoint()?;
        tracing::debug!(upto, took = ?started.elapsed(), "checkpoint");
        log.release(upto)?;
    }
    Ok(log)
}
