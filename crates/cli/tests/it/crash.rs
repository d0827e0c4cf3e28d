//! Crash test: acknowledged writes survive `kill -9`, revisions are never
//! reused, and history stays continuous across restarts.
//!
//! One data directory lives through [`CYCLES`] crashes. In each cycle the
//! server starts on it, the state left by the previous crash is checked
//! against a model of what was acknowledged, and then [`WRITERS`] concurrent
//! clients put, txn-put and delete their own keys until the server is killed
//! with SIGKILL in the middle of their traffic. Group commit answers a client
//! only once its batch is fsynced, so everything a client saw acknowledged
//! must be there after the restart, at the revision it was acknowledged with.
//!
//! A write that was in flight at the kill is *unacknowledged*: it may or may
//! not have reached the disk, and both are fine. The model keeps such writes
//! as "maybe" and settles them at the first restart that looks: from then on
//! what was seen is what must stay (a write seen after a restart was read
//! from disk, so losing it later would be data loss too). Keys are never
//! written twice, so a key's `mod_revision` names the one write that made it.
//!
//! Revision checks: no two writes that changed something share a revision
//! (a txn's two puts share one); each client sees its revisions strictly
//! increase across all cycles; every known revision lies in `2..=current`;
//! a put right after a restart gets `current + 1`; and reads at the revision
//! of a sample of acknowledged writes (and the one before) show the history
//! as it was. Whether some revision in `2..=current` belongs to no write at
//! all is not checked directly (that would need a read of every revision);
//! instead the number of known revisions must fit in `2..=current`.
//!
//! Caveat: SIGKILL ends the process, not the machine, so the kernel's page
//! cache survives. The test catches acknowledging before the commit, state
//! that lives only in memory (a revision counter, say) and recovery bugs,
//! but not a missing fsync; that would need power-loss simulation.
//!
//! The run is seeded: the seed is printed, and `ROSTER_CRASH_SEED=<seed>`
//! replays the same choices (the kill point still depends on timing).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::roster::Roster;
use etcd_client::{Client, GetOptions, Txn, TxnOp};
use tokio::sync::{watch, Notify};

/// Crash-and-restart cycles; the data directory is checked once more after
/// the last one.
const CYCLES: usize = 16;
/// Concurrent clients per cycle, each on its own connection.
const WRITERS: usize = 8;
/// Acknowledged writes per cycle before the kill is armed: at least the
/// first, at most the second.
const ACKS_BEFORE_KILL: (usize, usize) = (1, 800);
/// Extra delay after the ack target is reached, in milliseconds (0..=max).
const MAX_KILL_DELAY_MS: u64 = 50;
/// Acknowledged writes whose history is read back after each restart.
const HISTORY_SAMPLES: usize = 40;
/// How long a single request, connect or wait may take before the test
/// gives up.
const TIMEOUT: Duration = Duration::from_secs(20);
/// How long requests in flight at the kill get to finish on their own
/// before their writer stops waiting for them.
const GRACE: Duration = Duration::from_millis(300);
/// Hard bound on one writer's requests in one cycle.
const MAX_OPS_PER_CYCLE: usize = 100_000;

/// A small deterministic generator (xorshift64*), so the test needs no extra
/// dependency and a seed replays a run.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Spread small seeds over the state; xorshift must not start at 0.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`; `n` must be positive.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One write a client attempted.
#[derive(Clone, Debug)]
enum Op {
    /// A put of one key, or a txn that puts two keys at once.
    Put(Vec<(String, String)>),
    /// A delete of a key the same client put and saw acknowledged at
    /// `put_rev` with `value`.
    Delete {
        key: String,
        value: String,
        put_rev: i64,
    },
}

/// A write and how it ended.
#[derive(Clone, Debug)]
struct Attempt {
    op: Op,
    /// The revision from the acknowledgement, or `None` if the request
    /// failed or was still in flight at the kill.
    rev: Option<i64>,
}

/// An attempted write, numbered across the whole run.
#[derive(Debug)]
struct Write {
    writer: usize,
    cycle: usize,
    attempt: Attempt,
}

impl Write {
    /// The write in one line, for failure messages.
    fn describe(&self) -> String {
        let who = match self.writer {
            usize::MAX => "probe".to_string(),
            w => format!("w{w}"),
        };
        let outcome = match self.attempt.rev {
            Some(rev) => format!("acknowledged at {rev}"),
            None => "unacknowledged".to_string(),
        };
        format!(
            "[{who}, cycle {}, {outcome}: {:?}]",
            self.cycle, self.attempt.op
        )
    }
}

/// What the model knows about one key.
#[derive(Clone, Debug)]
enum KeyState {
    /// Must be present with this value, written by `write` at `rev`.
    Present {
        value: String,
        rev: i64,
        write: usize,
    },
    /// An unacknowledged put not yet looked at: present with this value, or
    /// absent.
    MaybePut { value: String, write: usize },
    /// An unacknowledged delete of a key that was present at `rev`: still
    /// so, or absent.
    MaybeDeleted {
        value: String,
        rev: i64,
        write: usize,
    },
    /// Must be absent.
    Gone,
}

/// What one client carries from cycle to cycle.
#[derive(Default)]
struct WriterState {
    /// Next sequence number for a key name; keys are never reused.
    seq: u64,
    /// Own keys acknowledged as put and not yet targeted by a delete, with
    /// their value and revision.
    live: Vec<(String, String, i64)>,
}

/// Ack counting shared by the writers and the killer.
struct Progress {
    acks: AtomicUsize,
    notify: Notify,
}

/// What a writer hands back at the end of a cycle.
struct WriterReport {
    state: WriterState,
    attempts: Vec<Attempt>,
    /// Behaviour that is wrong whatever the timing: an error before the kill,
    /// a txn that did not succeed, a delete that deleted nothing.
    anomalies: Vec<String>,
}

/// The value written under `key` in `cycle`: it names the key, so any
/// present key can be checked even when its write was not acknowledged.
fn value_for(key: &str, cycle: usize) -> String {
    format!("{key}@c{cycle}")
}

fn key_for(writer: usize, seq: u64) -> String {
    format!("w{writer}/{seq:07}")
}

/// Waits for `fut` for at most [`TIMEOUT`], panicking with `what` otherwise.
async fn bounded<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {TIMEOUT:?}"),
    }
}

async fn connect(url: &str) -> Client {
    bounded("connect", Client::connect([url], None))
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// One client's traffic for one cycle: random puts, two-key txns and deletes
/// of its own earlier keys, one at a time, until a request fails or the
/// server has been killed.
async fn run_writer(
    writer: usize,
    cycle: usize,
    url: String,
    mut state: WriterState,
    mut rng: Rng,
    progress: Arc<Progress>,
    mut killed: watch::Receiver<bool>,
) -> WriterReport {
    let mut attempts = Vec::new();
    let mut anomalies = Vec::new();
    let mut client = match tokio::time::timeout(TIMEOUT, Client::connect([&url], None)).await {
        Ok(Ok(c)) => c,
        other => {
            let other = other.map(|r| r.map(|_| ()));
            if !*killed.borrow() {
                anomalies.push(format!(
                    "w{writer}: connect failed before the kill: {other:?}"
                ));
            }
            return WriterReport {
                state,
                attempts,
                anomalies,
            };
        }
    };
    for _ in 0..MAX_OPS_PER_CYCLE {
        let dice = rng.below(100);
        let op = if dice < 15 && !state.live.is_empty() {
            let i = rng.below(state.live.len() as u64) as usize;
            // Whatever the outcome, this key is no longer certainly present,
            // so it is never targeted again.
            let (key, value, put_rev) = state.live.swap_remove(i);
            Op::Delete {
                key,
                value,
                put_rev,
            }
        } else {
            let n = if dice >= 85 { 2 } else { 1 };
            let kvs = (0..n)
                .map(|_| {
                    let key = key_for(writer, state.seq);
                    state.seq += 1;
                    let value = value_for(&key, cycle);
                    (key, value)
                })
                .collect();
            Op::Put(kvs)
        };
        let request = async {
            match &op {
                Op::Put(kvs) if kvs.len() == 1 => {
                    let (k, v) = &kvs[0];
                    client
                        .put(k.as_str(), v.as_str(), None)
                        .await
                        .map(|r| (r.header().map(|h| h.revision()), None))
                }
                Op::Put(kvs) => {
                    let ops: Vec<TxnOp> = kvs
                        .iter()
                        .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
                        .collect();
                    client.txn(Txn::new().and_then(ops)).await.map(|r| {
                        let bad = (!r.succeeded()).then(|| "txn did not succeed".to_string());
                        (r.header().map(|h| h.revision()), bad)
                    })
                }
                Op::Delete { key, .. } => client.delete(key.as_str(), None).await.map(|r| {
                    let bad = (r.deleted() != 1)
                        .then(|| format!("delete of {key} deleted {}", r.deleted()));
                    (r.header().map(|h| h.revision()), bad)
                }),
            }
        };
        let abandon = async {
            let _ = killed.wait_for(|k| *k).await;
            tokio::time::sleep(GRACE).await;
        };
        let outcome = tokio::select! {
            r = request => Some(r),
            _ = abandon => None,
            _ = tokio::time::sleep(TIMEOUT) => None,
        };
        let before_kill = !*killed.borrow();
        match outcome {
            Some(Ok((Some(rev), bad))) => {
                if let Some(bad) = bad {
                    anomalies.push(format!("w{writer}: {bad} (revision {rev})"));
                }
                if let Op::Put(kvs) = &op {
                    for (k, v) in kvs {
                        state.live.push((k.clone(), v.clone(), rev));
                    }
                }
                attempts.push(Attempt { op, rev: Some(rev) });
                progress.acks.fetch_add(1, Ordering::SeqCst);
                progress.notify.notify_one();
            }
            Some(Ok((None, _))) => {
                anomalies.push(format!("w{writer}: response without a header for {op:?}"));
                attempts.push(Attempt { op, rev: None });
                break;
            }
            Some(Err(e)) => {
                if before_kill {
                    anomalies.push(format!("w{writer}: {op:?} failed before the kill: {e}"));
                }
                attempts.push(Attempt { op, rev: None });
                break;
            }
            None => {
                if before_kill {
                    anomalies.push(format!("w{writer}: {op:?} timed out before the kill"));
                }
                attempts.push(Attempt { op, rev: None });
                break;
            }
        }
    }
    WriterReport {
        state,
        attempts,
        anomalies,
    }
}

/// The test's model of the store: every attempted write and what each key
/// must (or may) look like.
#[derive(Default)]
struct Model {
    writes: Vec<Write>,
    keys: BTreeMap<String, KeyState>,
    /// Every revision known to belong to a write (acknowledged, or seen after
    /// a restart), and that write.
    revs: BTreeMap<i64, usize>,
    /// Writes acknowledged with a revision, in the order they were recorded.
    acked: Vec<usize>,
    /// The last acknowledged revision of each writer, across cycles.
    last_rev: HashMap<usize, i64>,
    /// Unacknowledged writes found applied, and found not applied, after a
    /// restart: both should occur over a run, or the kill timing is too tame.
    settled_applied: usize,
    settled_lost: usize,
    violations: Vec<String>,
}

impl Model {
    fn violation(&mut self, msg: String) {
        self.violations.push(msg);
    }

    /// Claims `rev` for write `id`; a revision claimed by two different
    /// writes means revision reuse.
    fn claim(&mut self, rev: i64, id: usize) {
        match self.revs.get(&rev) {
            Some(&other) if other != id => {
                let msg = format!(
                    "revision {rev} reused: {} and {}",
                    self.writes[other].describe(),
                    self.writes[id].describe()
                );
                self.violation(msg);
            }
            Some(_) => {}
            None => {
                self.revs.insert(rev, id);
            }
        }
    }

    /// Records one attempted write and moves its keys to their new state.
    fn record(&mut self, writer: usize, cycle: usize, attempt: Attempt) {
        let id = self.writes.len();
        self.writes.push(Write {
            writer,
            cycle,
            attempt: attempt.clone(),
        });
        if let Some(rev) = attempt.rev {
            self.claim(rev, id);
            self.acked.push(id);
            let last = self.last_rev.insert(writer, rev).unwrap_or(0);
            if rev <= last {
                self.violation(format!(
                    "writer {writer} saw revision {rev} after {last} (cycle {cycle})"
                ));
            }
        }
        match attempt.op {
            Op::Put(kvs) => {
                for (key, value) in kvs {
                    let state = match attempt.rev {
                        Some(rev) => KeyState::Present {
                            value,
                            rev,
                            write: id,
                        },
                        None => KeyState::MaybePut { value, write: id },
                    };
                    if self.keys.insert(key.clone(), state).is_some() {
                        self.violation(format!("test bug: key {key} written twice"));
                    }
                }
            }
            Op::Delete {
                key,
                value,
                put_rev,
            } => {
                let state = match attempt.rev {
                    Some(_) => KeyState::Gone,
                    None => {
                        let write = match self.keys.get(&key) {
                            Some(KeyState::Present { write, .. }) => *write,
                            other => {
                                let msg = format!("test bug: delete of {key} in state {other:?}");
                                self.violation(msg);
                                usize::MAX
                            }
                        };
                        KeyState::MaybeDeleted {
                            value,
                            rev: put_rev,
                            write,
                        }
                    }
                };
                self.keys.insert(key, state);
            }
        }
    }

    /// Panics with every violation found so far, if any.
    fn assert_clean(&self, seed: u64, when: &str) {
        if self.violations.is_empty() {
            return;
        }
        let shown: Vec<&str> = self
            .violations
            .iter()
            .take(50)
            .map(String::as_str)
            .collect();
        panic!(
            "{} violation(s) {when} (seed {seed}):\n  {}",
            self.violations.len(),
            shown.join("\n  ")
        );
    }
}

/// Compares the restarted store with the model, settles the model's "maybe"
/// keys, reads back the history of a sample of acknowledged writes and
/// returns the store's current revision.
async fn verify(client: &mut Client, model: &mut Model, rng: &mut Rng, cycle: usize) -> i64 {
    let scan = bounded(
        "scan",
        client.get("", Some(GetOptions::new().with_all_keys())),
    )
    .await
    .expect("scan all keys");
    let current = scan.header().expect("header").revision();
    let mut found: HashMap<String, (String, i64, i64, i64)> = HashMap::new();
    for kv in scan.kvs() {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let value = String::from_utf8_lossy(kv.value()).into_owned();
        found.insert(
            key,
            (value, kv.mod_revision(), kv.create_revision(), kv.version()),
        );
    }

    // Every key the model knows: settle uncertainty, insist on certainty.
    let keys: Vec<(String, KeyState)> = model
        .keys
        .iter()
        .map(|(k, s)| (k.clone(), s.clone()))
        .collect();
    let mut settled: HashMap<usize, Vec<Option<i64>>> = HashMap::new();
    for (key, state) in keys {
        let seen = found.remove(&key);
        let next = match (state, seen) {
            (KeyState::Present { value, rev, write }, Some((v, m, c, ver))) => {
                if v != value || m != rev || c != rev || ver != 1 {
                    model.violation(format!(
                        "{key}: expected {value:?} at revision {rev} (version 1), found {v:?} \
                         mod {m} create {c} version {ver}: {}",
                        model.writes[write].describe()
                    ));
                }
                KeyState::Present { value, rev, write }
            }
            (KeyState::Present { value, rev, write }, None) => {
                model.violation(format!(
                    "LOST: {key} ({value:?} at revision {rev}) is missing: {}",
                    model.writes[write].describe()
                ));
                KeyState::Present { value, rev, write }
            }
            (KeyState::MaybePut { value, write }, Some((v, m, c, ver))) => {
                if v != value || m != c || ver != 1 {
                    model.violation(format!(
                        "{key}: unacknowledged put of {value:?} shows as {v:?} mod {m} create {c} \
                         version {ver}"
                    ));
                }
                model.claim(m, write);
                settled.entry(write).or_default().push(Some(m));
                KeyState::Present {
                    value,
                    rev: m,
                    write,
                }
            }
            (KeyState::MaybePut { write, .. }, None) => {
                settled.entry(write).or_default().push(None);
                KeyState::Gone
            }
            (KeyState::MaybeDeleted { value, rev, write }, Some((v, m, _, _))) => {
                if v != value || m != rev {
                    model.violation(format!(
                        "{key}: expected {value:?} at revision {rev} or nothing, found {v:?} at {m}"
                    ));
                }
                model.settled_lost += 1;
                KeyState::Present { value, rev, write }
            }
            (KeyState::MaybeDeleted { .. }, None) => {
                model.settled_applied += 1;
                KeyState::Gone
            }
            (KeyState::Gone, Some((v, m, _, _))) => {
                model.violation(format!(
                    "{key} should be absent, found {v:?} at revision {m}"
                ));
                KeyState::Gone
            }
            (KeyState::Gone, None) => KeyState::Gone,
        };
        model.keys.insert(key, next);
    }
    for (key, (v, m, _, _)) in found {
        model.violation(format!(
            "unexpected key {key} = {v:?} at revision {m}, never written"
        ));
    }
    // An unacknowledged txn is all or nothing, at one revision.
    for (write, seen) in settled {
        if seen[0].is_some() {
            model.settled_applied += 1;
        } else {
            model.settled_lost += 1;
        }
        if seen.windows(2).any(|p| p[0] != p[1]) {
            model.violation(format!(
                "txn applied partly: {seen:?} for {}",
                model.writes[write].describe()
            ));
        }
    }

    // Revisions: all known ones fit in 2..=current.
    if let (Some((&lo, _)), Some((&hi, _))) =
        (model.revs.first_key_value(), model.revs.last_key_value())
    {
        if lo < 2 || hi > current {
            model.violation(format!(
                "known revisions span {lo}..={hi} but the store is at {current} after restart \
                 {cycle}"
            ));
        }
    }
    if model.revs.len() as i64 > current - 1 {
        model.violation(format!(
            "{} distinct known revisions cannot fit in 2..={current}",
            model.revs.len()
        ));
    }

    // History: a sample of acknowledged writes, read at their revision and
    // the one before.
    for _ in 0..HISTORY_SAMPLES.min(model.acked.len()) {
        let id = model.acked[rng.below(model.acked.len() as u64) as usize];
        let rev = model.writes[id].attempt.rev.expect("acknowledged");
        let op = model.writes[id].attempt.op.clone();
        match op {
            Op::Put(kvs) => {
                for (key, value) in kvs {
                    let at = read_at(client, &key, rev).await;
                    let before = read_at(client, &key, rev - 1).await;
                    if at != Ok(Some((value.clone(), rev))) || before != Ok(None) {
                        model.violation(format!(
                            "history of {key}: at {rev} {at:?}, at {} {before:?}; expected \
                             {value:?} created at {rev}",
                            rev - 1
                        ));
                    }
                }
            }
            Op::Delete {
                key,
                value,
                put_rev,
            } => {
                let at = read_at(client, &key, rev).await;
                let before = read_at(client, &key, rev - 1).await;
                if at != Ok(None) || before != Ok(Some((value.clone(), put_rev))) {
                    model.violation(format!(
                        "history of {key}: at {rev} {at:?}, at {} {before:?}; expected deleted at \
                         {rev}, {value:?} from {put_rev} before",
                        rev - 1
                    ));
                }
            }
        }
    }
    current
}

/// `key`'s value and mod revision as of `rev`; an error (a revision the
/// store does not have, say) is part of what gets reported.
async fn read_at(
    client: &mut Client,
    key: &str,
    rev: i64,
) -> Result<Option<(String, i64)>, String> {
    let r = bounded(
        "read at revision",
        client.get(key, Some(GetOptions::new().with_revision(rev))),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(r.kvs().first().map(|kv| {
        (
            String::from_utf8_lossy(kv.value()).into_owned(),
            kv.mod_revision(),
        )
    }))
}

/// After a restart at `current`, one put must get exactly `current + 1`.
async fn probe(client: &mut Client, model: &mut Model, cycle: usize, current: i64) {
    let key = format!("probe/{cycle:03}");
    let value = value_for(&key, cycle);
    let r = bounded("probe put", client.put(key.as_str(), value.as_str(), None))
        .await
        .expect("probe put");
    let rev = r.header().expect("header").revision();
    if rev != current + 1 {
        model.violation(format!(
            "first put after restart {cycle} got revision {rev}, expected {}",
            current + 1
        ));
    }
    model.record(
        usize::MAX,
        cycle,
        Attempt {
            op: Op::Put(vec![(key, value)]),
            rev: Some(rev),
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let started = Instant::now();
    let seed = std::env::var("ROSTER_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64
        });
    eprintln!("crash test seed {seed} (replay with ROSTER_CRASH_SEED={seed})");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut model = Model::default();
    let mut states: Vec<WriterState> = (0..WRITERS).map(|_| WriterState::default()).collect();

    for cycle in 0..=CYCLES {
        let mut server = tokio::task::block_in_place(|| Roster::start_in(dir.path(), &[]));
        let mut client = connect(&server.url()).await;
        let current = verify(&mut client, &mut model, &mut rng, cycle).await;
        model.assert_clean(seed, &format!("after restart {cycle}"));
        probe(&mut client, &mut model, cycle, current).await;
        model.assert_clean(seed, &format!("after restart {cycle}"));
        if cycle == CYCLES {
            eprintln!(
                "final: revision {}, {} writes attempted, {} acknowledged, {} keys; unacknowledged \
                 writes found applied {}, not applied {}; {:?}",
                current + 1,
                model.writes.len(),
                model.acked.len(),
                model.keys.len(),
                model.settled_applied,
                model.settled_lost,
                started.elapsed()
            );
            assert!(
                server.terminate().await.success(),
                "clean shutdown at the end"
            );
            break;
        }

        // Traffic, then a kill in the middle of it.
        let progress = Arc::new(Progress {
            acks: AtomicUsize::new(0),
            notify: Notify::new(),
        });
        let (kill_tx, kill_rx) = watch::channel(false);
        let handles: Vec<_> = states
            .drain(..)
            .enumerate()
            .map(|(w, state)| {
                let writer_rng = Rng::new(rng.next() ^ w as u64);
                tokio::spawn(run_writer(
                    w,
                    cycle,
                    server.url(),
                    state,
                    writer_rng,
                    progress.clone(),
                    kill_rx.clone(),
                ))
            })
            .collect();
        let (lo, hi) = ACKS_BEFORE_KILL;
        let target = lo + rng.below((hi - lo + 1) as u64) as usize;
        let deadline = Instant::now() + TIMEOUT;
        while progress.acks.load(Ordering::SeqCst) < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, progress.notify.notified())
                .await
                .is_err()
            {
                panic!(
                    "cycle {cycle}: only {} of {target} writes acknowledged within {TIMEOUT:?} \
                     (seed {seed})",
                    progress.acks.load(Ordering::SeqCst)
                );
            }
        }
        let delay = rng.below(MAX_KILL_DELAY_MS + 1);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let acks_at_kill = progress.acks.load(Ordering::SeqCst);
        let _ = kill_tx.send(true);
        tokio::task::block_in_place(|| server.kill());

        let mut anomalies = Vec::new();
        let mut acked = 0;
        let mut unacked = 0;
        for (w, h) in handles.into_iter().enumerate() {
            let report = bounded("writer after the kill", h)
                .await
                .expect("writer task panicked");
            anomalies.extend(report.anomalies);
            for attempt in report.attempts {
                if let Some(rev) = attempt.rev {
                    acked += 1;
                    // The probe took current + 1; this cycle's writes follow.
                    if rev <= current + 1 {
                        anomalies.push(format!(
                            "w{w}: revision {rev} acknowledged in cycle {cycle}, which started \
                             at {current}"
                        ));
                    }
                } else {
                    unacked += 1;
                }
                model.record(w, cycle, attempt);
            }
            states.push(report.state);
        }
        eprintln!(
            "cycle {cycle}: killed after {acks_at_kill} acks (+{delay} ms); {acked} acknowledged, \
             {unacked} in flight; {:?}",
            started.elapsed()
        );
        model.violations.extend(anomalies);
        model.assert_clean(seed, &format!("in cycle {cycle}"));
    }
}
