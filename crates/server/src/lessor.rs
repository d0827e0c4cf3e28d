//! The lessor: when leases expire, decided by this node's clock.
//!
//! The store knows which leases exist and which keys hang on them; it has no
//! clock. The lessor keeps each lease's deadline in memory. A keepalive moves
//! the deadline and touches nothing else — it is not logged and costs no
//! disk write. A background loop ([`run`]) proposes a revoke for each lease
//! whose deadline has passed, through the same write path as a client's
//! revoke, so the keys are deleted at one revision on every replica.
//!
//! ## Restarts: the remaining-TTL rule
//!
//! etcd once handed every lease a fresh full TTL on restart (its issue
//! #9395): a node restarting more often than the TTL kept dead owners' keys
//! forever. Its fix, checkpointing (#9924), records remaining TTLs in the log.
//! Roster does the same, with this rule:
//!
//! - Every [`CHECKPOINT_INTERVAL`] the loop proposes `LeaseCheckpoint`
//!   commands (of at most [`CHECKPOINT_BATCH`] leases each) holding the
//!   remaining TTL of every lease whose TTL is longer than the interval
//!   (shorter ones would gain little from it).
//! - On start, a lease's deadline is *now + its last checkpointed remaining
//!   TTL*, or *now + its full TTL* if it was never checkpointed (granted less
//!   than one interval before the stop, or short).
//! - Time does not run for a lease while the node is down, as in etcd.
//!
//! So a dead owner's lease outlives its true deadline by at most one
//! checkpoint interval plus the downtime — never a fresh TTL per restart.
//! A live owner keeps its lease: it renews every TTL/3, so any checkpoint
//! records at least about 2/3 of the TTL for it, and that much time after
//! the restart is enough for its next keepalive to arrive.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use roster_proto::etcdserverpb::{LeaseCheckpoint, LeaseCheckpointRequest, LeaseRevokeRequest};
use roster_store::{Command, CommandKind, StoreError};
use tokio::time::Instant;

use crate::consensus::Consensus;
use crate::error::ServerError;

/// The shortest TTL granted, in seconds; shorter requests are raised to it.
/// etcd derives the same 2 s from its default election timeout.
pub const MIN_TTL: i64 = 2;
/// The longest TTL accepted, in seconds (etcd's limit).
pub const MAX_TTL: i64 = 9_000_000_000;
/// Most leases recorded by one `LeaseCheckpoint` command (etcd's batch size
/// too), so that applying one stays short.
pub const CHECKPOINT_BATCH: usize = 1000;

/// How often remaining TTLs are checkpointed.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);
/// How often expiry is checked: expired leases are revoked within this much
/// of their deadline, plus the time of one write.
pub const EXPIRY_TICK: Duration = Duration::from_millis(100);

struct Entry {
    ttl: i64,
    /// The last checkpointed remaining TTL, -1 if none: where the clock
    /// starts again after a restart.
    remaining: i64,
    deadline: Instant,
}

#[derive(Default)]
struct Inner {
    leases: HashMap<i64, Entry>,
    /// Deadlines in order, for finding the expired ones cheaply.
    queue: BTreeSet<(Instant, i64)>,
}

/// Lease deadlines.
///
/// Its table follows applied commands (see `crate::state`): grants,
/// revokes and checkpoints reach it from the thread that applies them,
/// which may be outside the node's runtime. Deadlines are read on the
/// runtime's clock all the same (`Lessor::now`), so that a test pausing
/// that clock pauses lease time too.
pub struct Lessor {
    inner: Mutex<Inner>,
    /// The runtime the node was opened in, whose clock deadlines follow.
    clock: Option<tokio::runtime::Handle>,
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.clamp(0, MAX_TTL) as u64)
}

impl Lessor {
    /// A lessor for the leases in the store, by the rule above:
    /// `(id, granted ttl, checkpointed remaining or -1)`. Their clocks
    /// start now, and again at [`Lessor::start_clocks`].
    pub fn recover(leases: &[(i64, i64, i64)]) -> Lessor {
        let lessor = Lessor {
            inner: Mutex::new(Inner::default()),
            clock: tokio::runtime::Handle::try_current().ok(),
        };
        lessor.reset(leases);
        lessor
    }

    /// Forgets every lease and takes `leases` instead (same form as
    /// [`Lessor::recover`]): the store installed a snapshot. Their clocks
    /// start now.
    pub fn reset(&self, leases: &[(i64, i64, i64)]) {
        {
            let mut inner = self.inner.lock();
            *inner = Inner::default();
            let now = self.now();
            for &(id, ttl, remaining) in leases {
                let entry = Entry {
                    ttl,
                    remaining,
                    deadline: now,
                };
                inner.leases.insert(id, entry);
            }
        }
        self.start_clocks();
    }

    /// Now, on the clock of the node's runtime.
    fn now(&self) -> Instant {
        match &self.clock {
            Some(h) => {
                let _in = h.enter();
                Instant::now()
            }
            None => Instant::now(),
        }
    }

    /// Sets every deadline to now plus the lease's checkpointed remaining
    /// TTL, or its full TTL if it was never checkpointed: what a node does
    /// once it has replayed its log at start.
    pub fn start_clocks(&self) {
        let now = self.now();
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        inner.queue.clear();
        for (&id, e) in inner.leases.iter_mut() {
            let left = if e.remaining > 0 {
                e.remaining.min(e.ttl)
            } else {
                e.ttl
            };
            e.deadline = now + secs(left);
            inner.queue.insert((e.deadline, id));
        }
    }

    fn set(inner: &mut Inner, id: i64, ttl: i64, deadline: Instant) {
        let remaining = inner.leases.get(&id).map_or(-1, |e| e.remaining);
        let entry = Entry {
            ttl,
            remaining,
            deadline,
        };
        if let Some(old) = inner.leases.insert(id, entry) {
            inner.queue.remove(&(old.deadline, id));
        }
        inner.queue.insert((deadline, id));
    }

    /// A lease was granted: its clock starts now.
    pub fn granted(&self, id: i64, ttl: i64) {
        let deadline = self.now() + secs(ttl);
        let mut inner = self.inner.lock();
        // A grant reuses no checkpoint, even of a lease by the same id.
        if let Some(old) = inner.leases.remove(&id) {
            inner.queue.remove(&(old.deadline, id));
        }
        Self::set(&mut inner, id, ttl, deadline);
    }

    /// A lease was revoked (by a client or by expiry).
    pub fn revoked(&self, id: i64) {
        let mut inner = self.inner.lock();
        if let Some(old) = inner.leases.remove(&id) {
            inner.queue.remove(&(old.deadline, id));
        }
    }

    /// A lease's remaining TTL was checkpointed. Its deadline stays: the
    /// checkpoint only says where the clock starts after a restart.
    pub fn checkpointed(&self, id: i64, remaining: i64) {
        if let Some(e) = self.inner.lock().leases.get_mut(&id) {
            e.remaining = remaining;
        }
    }

    /// Renews a lease; returns its TTL, or `None` if it does not exist or
    /// has already expired (it is then being revoked).
    pub fn renew(&self, id: i64) -> Option<i64> {
        let now = self.now();
        let mut inner = self.inner.lock();
        let e = inner.leases.get(&id)?;
        if e.deadline <= now {
            return None;
        }
        let ttl = e.ttl;
        Self::set(&mut inner, id, ttl, now + secs(ttl));
        Some(ttl)
    }

    /// Whole seconds left and the granted TTL of a lease.
    pub fn remaining(&self, id: i64) -> Option<(i64, i64)> {
        let now = self.now();
        let inner = self.inner.lock();
        let e = inner.leases.get(&id)?;
        let left = e.deadline.saturating_duration_since(now).as_secs() as i64;
        Some((left, e.ttl))
    }

    /// Sorts lease ids by deadline, soonest first, as etcd lists leases;
    /// ids the lessor does not know go last.
    pub fn sort_by_expiry(&self, ids: &mut [i64]) {
        let inner = self.inner.lock();
        ids.sort_by_key(|id| {
            let deadline = inner.leases.get(id).map(|e| e.deadline);
            (deadline.is_none(), deadline, *id)
        });
    }

    /// Leases whose deadline has passed and that are not yet being revoked.
    /// They leave the queue (so they are proposed once) but stay known, so
    /// renewing them fails until the revoke lands.
    pub fn take_expired(&self, now: Instant) -> Vec<i64> {
        let mut inner = self.inner.lock();
        let mut out = Vec::new();
        while let Some(&(deadline, id)) = inner.queue.first() {
            if deadline > now {
                break;
            }
            inner.queue.pop_first();
            out.push(id);
        }
        out
    }

    /// Puts an expired lease back in the queue after a failed revoke, so
    /// it is tried again.
    pub fn retry(&self, id: i64) {
        let mut inner = self.inner.lock();
        if let Some(e) = inner.leases.get(&id) {
            let key = (e.deadline, id);
            inner.queue.insert(key);
        }
    }

    /// Remaining TTLs worth recording (see the module notes), in lease id
    /// order: a command of consecutive ids updates a few neighbouring pages
    /// of the store's lease table, where ids at random would copy nearly
    /// every page of it once per command (`docs/decisions.md`, entry 23).
    pub fn checkpoints(&self) -> Vec<LeaseCheckpoint> {
        let now = self.now();
        let inner = self.inner.lock();
        let mut out: Vec<LeaseCheckpoint> = inner
            .leases
            .iter()
            .filter(|(_, e)| secs(e.ttl) > CHECKPOINT_INTERVAL && e.deadline > now)
            .map(|(&id, e)| LeaseCheckpoint {
                id,
                // Round up: a checkpoint must not shorten a lease.
                remaining_ttl: e.deadline.duration_since(now).as_secs_f64().ceil() as i64,
            })
            .collect();
        out.sort_unstable_by_key(|c| c.id);
        out
    }
}

/// Revokes expired leases and checkpoints remaining TTLs until `stop`
/// resolves. Only while `consensus` says this member leads: a follower's
/// table follows the leader's commands and decides nothing.
pub async fn run(
    lessor: Arc<Lessor>,
    consensus: Arc<dyn Consensus>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut expiry = tokio::time::interval(EXPIRY_TICK);
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checkpoint =
        tokio::time::interval_at(Instant::now() + CHECKPOINT_INTERVAL, CHECKPOINT_INTERVAL);
    let propose = |kind| {
        let consensus = consensus.clone();
        async move {
            let outcome = consensus.propose(Command { kind: Some(kind) }).await?;
            outcome.response.map_err(ServerError::Store)
        }
    };
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = expiry.tick(), if consensus.is_leader() => {
                let expired = lessor.take_expired(Instant::now());
                let revokes = expired.into_iter().map(|id| {
                    let (lessor, revoke) = (lessor.clone(), propose(CommandKind::LeaseRevoke(LeaseRevokeRequest { id })));
                    async move {
                        // Applying the revoke drops the lease from the
                        // table; a failed one is tried again.
                        match revoke.await {
                            Ok(_) | Err(ServerError::Store(StoreError::LeaseNotFound)) => {}
                            Err(e) => {
                                tracing::warn!(lease = id, error = %e, "revoking an expired lease failed");
                                lessor.retry(id);
                            }
                        }
                    }
                });
                futures_join_all(revokes).await;
            }
            _ = checkpoint.tick(), if consensus.is_leader() => {
                // In commands of at most CHECKPOINT_BATCH leases, one after
                // another: one command for every lease held the store's
                // lock long enough to stall every read and keepalive
                // (docs/decisions.md, entry 22).
                let checkpoints = lessor.checkpoints();
                for chunk in checkpoints.chunks(CHECKPOINT_BATCH) {
                    let checkpoints = chunk.to_vec();
                    let cmd = CommandKind::LeaseCheckpoint(LeaseCheckpointRequest { checkpoints });
                    if let Err(e) = propose(cmd).await {
                        tracing::warn!(error = %e, "lease checkpoint failed");
                        break;
                    }
                }
            }
        }
    }
}

/// Runs futures concurrently and waits for all, without another dependency.
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) {
    let mut set = tokio::task::JoinSet::new();
    for f in futs {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advance(d: Duration) -> impl std::future::Future<Output = ()> {
        tokio::time::advance(d)
    }

    #[tokio::test(start_paused = true)]
    async fn restart_uses_the_checkpoint_or_the_full_ttl() {
        // (id, ttl, checkpointed remaining)
        let l = Lessor::recover(&[(1, 60, 20), (2, 60, -1), (3, 10, 99)]);
        assert_eq!(l.remaining(1), Some((20, 60)));
        assert_eq!(l.remaining(2), Some((60, 60)));
        // A checkpoint never grants more than the TTL.
        assert_eq!(l.remaining(3), Some((10, 10)));
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_is_reported_once_and_blocks_renewal() {
        let l = Lessor::recover(&[]);
        l.granted(7, 2);
        l.granted(8, 5);
        advance(Duration::from_millis(1500)).await;
        assert_eq!(l.renew(7), Some(2), "renewed before its deadline");
        advance(Duration::from_millis(1900)).await;
        assert!(
            l.take_expired(Instant::now()).is_empty(),
            "7 was renewed at 1.5 s"
        );
        advance(Duration::from_millis(200)).await;
        assert_eq!(l.take_expired(Instant::now()), vec![7]);
        assert!(l.take_expired(Instant::now()).is_empty(), "reported once");
        assert_eq!(l.renew(7), None, "an expired lease cannot be renewed");
        l.retry(7);
        assert_eq!(
            l.take_expired(Instant::now()),
            vec![7],
            "a failed revoke is retried"
        );
        l.revoked(7);
        assert_eq!(l.remaining(7), None);
        assert_eq!(l.renew(8), Some(5));
    }

    #[tokio::test(start_paused = true)]
    async fn checkpoints_cover_long_leases_and_round_up() {
        let l = Lessor::recover(&[]);
        l.granted(1, 60);
        l.granted(2, 3);
        advance(Duration::from_millis(10_400)).await;
        let cps = l.checkpoints();
        assert_eq!(
            cps.len(),
            1,
            "a 3 s lease is shorter than the interval: {cps:?}"
        );
        assert_eq!((cps[0].id, cps[0].remaining_ttl), (1, 50));
    }
}
