//! The state machine: what a committed command does to a node.
//!
//! Consensus decides the order of commands and when they are durable; this
//! is where they take effect, and the only caller of the store's apply.
//! [`StateMachine::apply`] takes a run of committed log entries and, for
//! each batch, in order:
//!
//! 1. applies them to the store (which publishes the new revision to
//!    readers);
//! 2. hands their events to the watch hub, so that a watcher created
//!    before a write always hears of it before the writer is answered;
//! 3. updates the lessor's table from the lease commands that took effect
//!    (a grant starts a clock, a revoke drops one, a checkpoint records a
//!    remaining TTL): on every member alike, whoever proposed them;
//! 4. returns one [`Outcome`] per entry, which consensus hands back to the
//!    proposer as it is.
//!
//! A physical compaction is answered only once storage no longer holds
//! what it passed. Its outcome carries a receiver that the state machine
//! resolves when a [`StateMachine::sweep`] finishes the job, so consensus
//! never looks inside a command.
//!
//! Besides `apply`, consensus drives the state machine's housekeeping from
//! its own threads, because when it runs shapes write latency (see
//! `crate::standalone`): [`StateMachine::checkpoint`] makes the store
//! durable up to a log index (so the log below it may go), and
//! [`StateMachine::sweep`] deletes what compactions passed, a batch at a
//! time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use roster_proto::mvccpb::Event;
use roster_store::snapshot::SnapshotError;
use roster_store::{Command, CommandKind, CommandResponse, Store, StoreError, SWEEP_BATCH};
use tokio::sync::oneshot;

use crate::lessor::Lessor;
use crate::watch::hub::Hub;

/// What applying one command produced, for its proposer.
#[derive(Debug)]
pub struct Outcome {
    /// The answer for the client, or why the command was refused.
    pub response: Result<CommandResponse, StoreError>,
    /// For a physical compaction: resolves once storage no longer holds
    /// the history it passed. Dropped unresolved if the node stops first.
    pub settled: Option<oneshot::Receiver<()>>,
}

/// How far a [`StateMachine::sweep`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// Nothing compacted is left; waiting compactions were answered.
    Done,
    /// It deleted some and more is left.
    More,
    /// What is left is held by a checkpoint in progress or pending writes:
    /// the next checkpoint lets it go.
    Stalled,
}

/// The store, and everything that follows what is applied to it.
pub struct StateMachine {
    store: Arc<Store>,
    hub: Arc<Hub>,
    lessor: Arc<Lessor>,
    /// Physical compactions waiting for the sweep to finish.
    settling: Mutex<Vec<oneshot::Sender<()>>>,
    /// A compaction was applied since the last [`StateMachine::take_sweep_due`].
    sweep_due: AtomicBool,
}

impl StateMachine {
    /// A state machine over `store`, publishing to `hub` and keeping
    /// `lessor`'s table.
    pub fn new(store: Arc<Store>, hub: Arc<Hub>, lessor: Arc<Lessor>) -> StateMachine {
        StateMachine {
            store,
            hub,
            lessor,
            settling: Mutex::new(Vec::new()),
            sweep_due: AtomicBool::new(false),
        }
    }

    /// The store, for reads.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The log index of the last entry applied.
    pub fn applied_index(&self) -> u64 {
        self.store.applied_index()
    }

    /// Applies committed `entries` (log index, command), in order, after
    /// the log made them durable. An `Err` means storage failed: the node
    /// must stop, as its memory may be ahead of its disk.
    pub fn apply(&self, entries: &[(u64, Command)]) -> Result<Vec<Outcome>, StoreError> {
        let applied = self.store.apply_logged(entries)?;
        Ok(self.follow(entries, applied))
    }

    /// Applies the commands of the log entry at `index` (none for a blank
    /// or membership entry) like [`StateMachine::apply`], and records
    /// consensus's `mark` with them (see [`Store::apply_marked`]).
    pub fn apply_marked(
        &self,
        index: u64,
        entries: &[(u64, Command)],
        mark: &[u8],
    ) -> Result<Vec<Outcome>, StoreError> {
        let applied = self.store.apply_marked(index, entries, mark)?;
        Ok(self.follow(entries, applied))
    }

    /// Publishes what `entries` did and keeps the lessor's table.
    fn follow(
        &self,
        entries: &[(u64, Command)],
        applied: Vec<roster_store::Applied>,
    ) -> Vec<Outcome> {
        let events: Vec<&Event> = applied.iter().flat_map(|a| a.events.iter()).collect();
        self.hub.publish(&events, self.store.revision());
        let mut outcomes = Vec::with_capacity(applied.len());
        for ((_, cmd), a) in entries.iter().zip(applied) {
            let mut settled = None;
            if let (Some(kind), Ok(_)) = (&cmd.kind, &a.response) {
                match kind {
                    CommandKind::LeaseGrant(g) => self.lessor.granted(g.id, g.ttl),
                    CommandKind::LeaseRevoke(r) => self.lessor.revoked(r.id),
                    CommandKind::LeaseCheckpoint(c) => {
                        for cp in &c.checkpoints {
                            self.lessor.checkpointed(cp.id, cp.remaining_ttl);
                        }
                    }
                    CommandKind::Compact(c) => {
                        self.sweep_due.store(true, Ordering::Release);
                        if c.physical {
                            let (tx, rx) = oneshot::channel();
                            self.settling.lock().push(tx);
                            settled = Some(rx);
                        }
                    }
                    _ => {}
                }
            }
            if let (Some(CommandKind::LeaseRevoke(r)), Err(StoreError::LeaseNotFound)) =
                (&cmd.kind, &a.response)
            {
                // Revoked meanwhile: the lessor must not keep its clock.
                self.lessor.revoked(r.id);
            }
            outcomes.push(Outcome {
                response: a.response,
                settled,
            });
        }
        outcomes
    }

    /// Replaces the whole state with the snapshot in `file` (a member too
    /// far behind its leader's log): the store swaps its database, the
    /// lessor takes the snapshot's leases, and every watcher catches up
    /// from the new storage. A refused snapshot changes nothing. The
    /// caller (consensus) holds back `apply` meanwhile.
    pub fn install(&self, file: &std::path::Path) -> Result<i64, SnapshotError> {
        self.install_marked(file, None)
    }

    /// [`StateMachine::install`], recording consensus's `mark` with the
    /// new state (see [`Store::install_marked`]).
    pub fn install_marked(
        &self,
        file: &std::path::Path,
        mark: Option<&[u8]>,
    ) -> Result<i64, SnapshotError> {
        let restored = self.store.install_marked(file, mark)?;
        self.abandon();
        self.lessor.reset(&self.store.leases());
        self.hub.resync(self.store.revision());
        Ok(restored.revision)
    }

    /// Whether a compaction was applied since the last call: history is
    /// waiting for [`StateMachine::sweep`].
    pub fn take_sweep_due(&self) -> bool {
        self.sweep_due.swap(false, Ordering::AcqRel)
    }

    /// Records applied and not yet durable in the store.
    pub fn pending_records(&self) -> usize {
        self.store.pending_records()
    }

    /// Makes the store durable; returns the log index it now holds, below
    /// which the log may be released.
    pub fn checkpoint(&self) -> Result<u64, StoreError> {
        self.store.checkpoint()
    }

    /// Drops a piece of what compactions passed from the index and a batch
    /// of their records from storage; once none is left, answers the
    /// physical compactions that waited.
    pub fn sweep(&self) -> Result<Sweep, StoreError> {
        // Their compactions were all applied before they were queued here,
        // so when this sweep finds nothing left, it is gone for them too.
        let waiting = std::mem::take(&mut *self.settling.lock());
        let swept = match self.store.sweep_compacted(SWEEP_BATCH) {
            Ok(swept) => swept,
            Err(e) => {
                self.settling.lock().extend(waiting);
                return Err(e);
            }
        };
        if swept.done() {
            for w in waiting {
                let _ = w.send(());
            }
            return Ok(Sweep::Done);
        }
        self.settling.lock().extend(waiting);
        Ok(if swept.progressed() {
            Sweep::More
        } else {
            Sweep::Stalled
        })
    }

    /// Deletes everything compactions passed at once and answers the
    /// compactions that waited: after replaying a log, and at a stop.
    pub fn finish_sweep(&self) -> Result<(), StoreError> {
        let waiting = std::mem::take(&mut *self.settling.lock());
        self.store.finish_compaction()?;
        for w in waiting {
            let _ = w.send(());
        }
        Ok(())
    }

    /// The write path stopped: compactions waiting for the sweep will not
    /// see it (their proposers hear the server stopped).
    pub fn abandon(&self) {
        self.settling.lock().clear();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use roster_proto::etcdserverpb::{
        CompactionRequest, LeaseCheckpoint, LeaseCheckpointRequest, LeaseGrantRequest,
        LeaseRevokeRequest, PutRequest,
    };

    use super::*;

    fn machine(dir: &std::path::Path) -> (StateMachine, Arc<Lessor>) {
        let (sm, lessor, _) = machine_and_hub(dir);
        (sm, lessor)
    }

    pub(crate) fn machine_and_hub(dir: &std::path::Path) -> (StateMachine, Arc<Lessor>, Arc<Hub>) {
        std::fs::create_dir_all(dir).unwrap();
        let store = Arc::new(Store::open(&dir.join("db")).unwrap());
        let hub = Arc::new(Hub::new(store.clone(), 1, 1, 1));
        let lessor = Arc::new(Lessor::recover(&[]));
        let sm = StateMachine::new(store, hub.clone(), lessor.clone());
        (sm, lessor, hub)
    }

    pub(crate) fn cmd(kind: CommandKind) -> Command {
        Command { kind: Some(kind) }
    }

    /// The lessor hears of leases from applied commands alone, as a member
    /// that proposed none of them would.
    #[tokio::test(start_paused = true)]
    async fn lease_commands_reach_the_lessor() {
        let dir = tempfile::tempdir().unwrap();
        let (sm, lessor) = machine(dir.path());
        let grant = |id| cmd(CommandKind::LeaseGrant(LeaseGrantRequest { ttl: 30, id }));
        let out = sm.apply(&[(1, grant(7)), (2, grant(8))]).unwrap();
        assert!(out.iter().all(|o| o.response.is_ok()));
        assert_eq!(lessor.remaining(7), Some((30, 30)));

        // A refused grant (the id is taken) changes nothing.
        tokio::time::advance(std::time::Duration::from_secs(10)).await;
        let out = sm.apply(&[(3, grant(7))]).unwrap();
        assert!(out[0].response.is_err());
        assert_eq!(lessor.remaining(7), Some((20, 30)));

        let checkpoint = CommandKind::LeaseCheckpoint(LeaseCheckpointRequest {
            checkpoints: vec![LeaseCheckpoint {
                id: 8,
                remaining_ttl: 5,
            }],
        });
        let revoke = CommandKind::LeaseRevoke(LeaseRevokeRequest { id: 7 });
        sm.apply(&[(4, cmd(checkpoint)), (5, cmd(revoke))]).unwrap();
        assert_eq!(lessor.remaining(7), None, "revoked");
        assert_eq!(
            lessor.remaining(8),
            Some((20, 30)),
            "a checkpoint keeps the clock"
        );
        lessor.start_clocks();
        assert_eq!(
            lessor.remaining(8),
            Some((5, 30)),
            "and says where it restarts"
        );
    }

    /// A physical compaction's outcome settles once a sweep has removed
    /// what it passed, and not before.
    #[tokio::test]
    async fn a_physical_compaction_settles_after_the_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let (sm, _) = machine(dir.path());
        let put = |v: &str| {
            cmd(CommandKind::Put(PutRequest {
                key: b"k".to_vec(),
                value: v.as_bytes().to_vec(),
                ..Default::default()
            }))
        };
        sm.apply(&[(1, put("a")), (2, put("b"))]).unwrap();
        sm.checkpoint().unwrap();
        let compact = CommandKind::Compact(CompactionRequest {
            revision: 3,
            physical: true,
        });
        let mut out = sm.apply(&[(3, cmd(compact))]).unwrap();
        assert!(sm.take_sweep_due());
        let mut settled = out[0].settled.take().expect("a physical compaction waits");
        assert!(settled.try_recv().is_err(), "settled before any sweep");
        // A checkpoint lets go of what pending writes held.
        let mut done = false;
        for _ in 0..100 {
            sm.checkpoint().unwrap();
            if sm.sweep().unwrap() == Sweep::Done {
                done = true;
                break;
            }
        }
        assert!(done, "the sweep never finished");
        settled.await.expect("settled by the sweep");
        assert_eq!(sm.store().record_count().unwrap(), 1);
    }

    /// A member installs another's snapshot: its store, its lessor and its
    /// watchers all follow; a damaged snapshot changes none of them.
    #[tokio::test(start_paused = true)]
    async fn installing_a_snapshot_replaces_store_leases_and_resyncs_watchers() {
        let dir = tempfile::tempdir().unwrap();
        let (leader, _) = machine(&dir.path().join("a"));
        let grant = cmd(CommandKind::LeaseGrant(LeaseGrantRequest {
            ttl: 40,
            id: 3,
        }));
        let mut entries = vec![(1, grant)];
        for i in 0..20u64 {
            let put = CommandKind::Put(PutRequest {
                key: format!("svc/{i}").into_bytes(),
                value: b"up".to_vec(),
                lease: if i % 2 == 0 { 3 } else { 0 },
                ..Default::default()
            });
            entries.push((i + 2, cmd(put)));
        }
        leader.apply(&entries).unwrap();
        let file = dir.path().join("snap");
        roster_store::snapshot::save(leader.store(), &mut std::fs::File::create(&file).unwrap())
            .unwrap();

        let (member, lessor, hub) = machine_and_hub(&dir.path().join("b"));
        let own = cmd(CommandKind::LeaseGrant(LeaseGrantRequest {
            ttl: 10,
            id: 7,
        }));
        member.apply(&[(1, own)]).unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel(4);
        let wake = Arc::new(tokio::sync::Notify::new());
        let stream = hub.open_stream(tx, Arc::default(), wake.clone());
        let selector = crate::watch::hub::Selector {
            range: roster_store::index::KeyRange::new(b"svc/", b"svc0"),
            prev_kv: false,
            no_put: false,
            no_delete: false,
            fragment: false,
        };
        let watcher = crate::watch::hub::Watcher::new(selector, false, 2);
        {
            let mut st = hub.state.lock();
            assert!(st.add_watcher(stream, 1, watcher).is_ok() && st.sync(stream, 1));
        }

        // A damaged snapshot is refused whole.
        let bad = dir.path().join("bad");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[40] ^= 1;
        std::fs::write(&bad, &bytes).unwrap();
        assert!(member.install(&bad).is_err());
        assert_eq!(member.store().revision(), 1);
        assert!(lessor.remaining(7).is_some());

        let rev = member.install(&file).unwrap();
        assert_eq!(rev, leader.store().revision());
        assert_eq!(member.store().revision(), rev);
        assert_eq!(member.store().record_count().unwrap(), 20);
        assert_eq!(lessor.remaining(7), None, "the member's own lease is gone");
        assert_eq!(
            lessor.remaining(3),
            Some((40, 40)),
            "the snapshot's lease runs"
        );
        {
            let st = hub.state.lock();
            assert_eq!(st.last_rev, rev);
            let synced = st.streams[&stream].watchers[&1].synced();
            assert!(!synced, "the watcher catches up");
        }
        tokio::time::timeout(std::time::Duration::from_secs(1), wake.notified())
            .await
            .expect("the stream was woken");
        // And it goes on applying after the snapshot.
        let next = CommandKind::Put(PutRequest {
            key: b"svc/new".to_vec(),
            value: b"up".to_vec(),
            ..Default::default()
        });
        member.apply(&[(100, cmd(next))]).unwrap();
        assert_eq!(member.store().revision(), rev + 1);
    }
}
