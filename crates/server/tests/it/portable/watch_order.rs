//! Watch ordering under concurrent load: every watcher sees every change in
//! its range exactly once, in revision order, whatever else is going on.
//!
//! Several writers race puts, deletes and small transactions over one shared
//! set of keys while many watchers, spread over a few gRPC streams, watch
//! overlapping ranges: single keys, prefixes, intervals, from-key, all keys,
//! some with filters or previous values. Some watchers start before the
//! writes, some join midway from revision 2 or from a revision in the
//! middle of history, and one stream is read slowly on purpose, so that its
//! queue on the server fills and its watchers must catch up from storage
//! while live delivery goes on for everyone else.
//!
//! The ground truth is what the writers were told: every acknowledged
//! write's revision and changes (a delete's keys come from its previous
//! pairs, so a delete that found nothing, and took no revision, is known
//! too). Replaying those writes in revision order gives every event with all
//! its fields; filtering that list by a watcher's range, filters and start
//! gives exactly what the watcher must have received, and it must have
//! received exactly that. The server's own history is then checked against
//! the same truth by a fresh watcher from revision 2.
//!
//! A second test stalls one stream outright, never reading it, while another
//! client's watcher must keep receiving promptly; the stalled one must then
//! receive everything, from storage, in order.
//!
//! Set `ROSTER_TEST_AGAINST_ETCD=1` to run both against the real etcd 3.4.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, DeleteOptions, Event, EventType, GetOptions, Txn, TxnOp, TxnOpResponse,
    WatchFilterType, WatchOptions, WatchRequestSender, WatchResponse, WatchResponseStream,
};
use roster_testkit::etcd_api::{connect, revision};
use roster_testkit::Server;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Keys `k/0` to `k/50`, shared by all writers.
const KEYS: u64 = 51;
/// Concurrent writers in the ordering test.
const WRITERS: usize = 4;
/// Operations per writer (a delete that finds nothing writes nothing).
const OPS: usize = 150;
/// Length of every value written: a tag naming the write, then padding.
const VALUE_LEN: usize = 1024;
/// How long the slow stream's reader pauses per response while writers run.
const SLOW_PAUSE: Duration = Duration::from_millis(20);
/// Longest wait for one write.
const OP_WAIT: Duration = Duration::from_secs(10);
/// Longest wait for watchers to receive everything once writes have ended.
const CATCH_UP_WAIT: Duration = Duration::from_secs(30);

fn key(i: u64) -> String {
    format!("k/{i}")
}

/// A value of [`VALUE_LEN`] bytes starting with `tag` and a colon.
fn value(tag: &str) -> String {
    let mut v = format!("{tag}:");
    v.extend(std::iter::repeat_n('.', VALUE_LEN - v.len()));
    v
}

/// The tag of a value written by [`value`] ("" for a deletion's empty one),
/// so that failures print short.
fn tag(v: &[u8]) -> String {
    assert!(
        v.is_empty() || v.len() == VALUE_LEN,
        "value of {} bytes",
        v.len()
    );
    let v = std::str::from_utf8(v).expect("utf-8 value");
    v.split(':').next().unwrap_or_default().to_string()
}

/// xorshift64*: a reproducible write mix without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// One key's change in a write: its new value's tag, or `None` when the
/// key was deleted.
#[derive(Clone, Debug)]
struct Change {
    key: String,
    value: Option<String>,
}

/// One acknowledged write: the revision it made and its changes, in the
/// order etcd gives their events (a txn's operations in order, a range
/// delete's keys in key order).
#[derive(Debug)]
struct Write {
    rev: i64,
    changes: Vec<Change>,
}

/// The keys a delete removed, from its previous pairs.
fn deleted(prev_kvs: &[etcd_client::KeyValue]) -> Vec<Change> {
    prev_kvs
        .iter()
        .map(|kv| Change {
            key: kv.key_str().expect("utf-8 key").to_string(),
            value: None,
        })
        .collect()
}

/// Runs `ops` random writes over the shared keys; returns those that made
/// a revision. `done` counts finished operations, for the test to time
/// watchers that join midway.
async fn writer(
    mut c: Client,
    id: usize,
    ops: usize,
    done: Arc<watch::Sender<usize>>,
) -> Vec<Write> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut writes = Vec::new();
    let prev = || Some(DeleteOptions::new().with_prev_key());
    for n in 0..ops {
        let roll = rng.below(100);
        let op = async {
            if roll < 55 {
                let (k, t) = (key(rng.below(KEYS)), format!("w{id}.{n}"));
                let r = c.put(k.clone(), value(&t), None).await.expect("put");
                let changes = vec![Change {
                    key: k,
                    value: Some(t),
                }];
                (r.header().expect("header").revision(), changes)
            } else if roll < 70 {
                let r = c
                    .delete(key(rng.below(KEYS)), prev())
                    .await
                    .expect("delete");
                (
                    r.header().expect("header").revision(),
                    deleted(r.prev_kvs()),
                )
            } else if roll < 74 {
                // A lexical interval: "k/4".."k/6" also holds k/40 to k/50.
                let from = rng.below(KEYS - 2);
                let end = key(from + 1 + rng.below(2));
                let opts = DeleteOptions::new().with_range(end).with_prev_key();
                let r = c.delete(key(from), Some(opts)).await.expect("delete range");
                (
                    r.header().expect("header").revision(),
                    deleted(r.prev_kvs()),
                )
            } else {
                // Two to four distinct keys, each put or deleted.
                let mut keys: Vec<u64> = Vec::new();
                let want = 2 + rng.below(3) as usize;
                while keys.len() < want {
                    let k = rng.below(KEYS);
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                }
                let mut ops = Vec::new();
                let mut tags = Vec::new();
                for (j, &k) in keys.iter().enumerate() {
                    if rng.below(10) < 7 {
                        let t = format!("w{id}.{n}.{j}");
                        ops.push(TxnOp::put(key(k), value(&t), None));
                        tags.push(Some(t));
                    } else {
                        ops.push(TxnOp::delete(key(k), prev()));
                        tags.push(None);
                    }
                }
                let r = c.txn(Txn::new().and_then(ops)).await.expect("txn");
                let mut changes = Vec::new();
                for ((resp, k), t) in r.op_responses().iter().zip(&keys).zip(tags) {
                    match resp {
                        TxnOpResponse::Put(_) => changes.push(Change {
                            key: key(*k),
                            value: t,
                        }),
                        TxnOpResponse::Delete(d) => changes.extend(deleted(d.prev_kvs())),
                        other => panic!("unexpected txn response {other:?}"),
                    }
                }
                (r.header().expect("header").revision(), changes)
            }
        };
        let (rev, changes) = timeout(OP_WAIT, op).await.expect("write timed out");
        // A write that changed nothing made no revision.
        if !changes.is_empty() {
            writes.push(Write { rev, changes });
        }
        done.send_modify(|n| *n += 1);
    }
    writes
}

/// A live key as (value tag, create revision, mod revision, version).
type Stored = (String, i64, i64, i64);

/// One event as a watcher sees it; values are shown by their tags.
#[derive(Clone, Debug, PartialEq)]
struct Ev {
    rev: i64,
    key: String,
    put: bool,
    value: String,
    create: i64,
    version: i64,
    /// The previous pair.
    prev: Option<Stored>,
}

fn observe(e: &Event) -> Ev {
    let kv = e.kv().expect("event without kv");
    Ev {
        rev: kv.mod_revision(),
        key: kv.key_str().expect("utf-8 key").to_string(),
        put: e.event_type() == EventType::Put,
        value: tag(kv.value()),
        create: kv.create_revision(),
        version: kv.version(),
        prev: e.prev_kv().map(|p| {
            (
                tag(p.value()),
                p.create_revision(),
                p.mod_revision(),
                p.version(),
            )
        }),
    }
}

/// Replays the writes in revision order; returns every event they made,
/// with the fields a watcher must see, and the final state of each key.
fn history(writes: &[Write]) -> (Vec<Ev>, BTreeMap<String, Stored>) {
    let mut state: BTreeMap<String, Stored> = BTreeMap::new();
    let mut events = Vec::new();
    for w in writes {
        for ch in &w.changes {
            let prev = state.get(&ch.key).cloned();
            match &ch.value {
                Some(v) => {
                    let create = prev.as_ref().map_or(w.rev, |p| p.1);
                    let version = prev.as_ref().map_or(1, |p| p.3 + 1);
                    state.insert(ch.key.clone(), (v.clone(), create, w.rev, version));
                    events.push(Ev {
                        rev: w.rev,
                        key: ch.key.clone(),
                        put: true,
                        value: v.clone(),
                        create,
                        version,
                        prev,
                    });
                }
                None => {
                    assert!(
                        prev.is_some(),
                        "rev {}: deleted {} was not there",
                        w.rev,
                        ch.key
                    );
                    state.remove(&ch.key);
                    events.push(Ev {
                        rev: w.rev,
                        key: ch.key.clone(),
                        put: false,
                        value: String::new(),
                        create: 0,
                        version: 0,
                        prev,
                    });
                }
            }
        }
    }
    (events, state)
}

/// The keys a watcher covers.
#[derive(Clone, Copy, Debug)]
enum Range {
    Key(&'static str),
    Prefix(&'static str),
    /// `[from, to)`.
    Between(&'static str, &'static str),
    From(&'static str),
    All,
}

impl Range {
    fn contains(&self, k: &str) -> bool {
        match *self {
            Range::Key(x) => k == x,
            Range::Prefix(p) => k.starts_with(p),
            Range::Between(a, b) => a <= k && k < b,
            Range::From(a) => a <= k,
            Range::All => true,
        }
    }

    /// The key and options that ask a server for this range.
    fn request(&self) -> (&'static str, WatchOptions) {
        let o = WatchOptions::new();
        match *self {
            Range::Key(k) => (k, o),
            Range::Prefix(p) => (p, o.with_prefix()),
            Range::Between(a, b) => (a, o.with_range(b)),
            Range::From(a) => (a, o.with_from_key()),
            Range::All => ("", o.with_all_keys()),
        }
    }
}

/// One watcher's request.
#[derive(Clone, Debug)]
struct Spec {
    range: Range,
    filter: Option<WatchFilterType>,
    prev_kv: bool,
    /// The start revision asked for; `None` is "from now".
    start: Option<i64>,
}

impl Spec {
    fn options(&self) -> (&'static str, WatchOptions) {
        let (k, mut o) = self.range.request();
        if let Some(f) = self.filter {
            o = o.with_filters([f]);
        }
        if self.prev_kv {
            o = o.with_prev_key();
        }
        if let Some(rev) = self.start {
            o = o.with_start_revision(rev);
        }
        (k, o)
    }

    /// What this watcher must receive of `all`, given the header revision
    /// of its creation (a watcher from now starts just after it).
    fn expected(&self, all: &[Ev], created_rev: i64) -> Vec<Ev> {
        let start = self.start.unwrap_or(created_rev + 1);
        all.iter()
            .filter(|e| e.rev >= start && self.range.contains(&e.key))
            .filter(|e| match self.filter {
                Some(WatchFilterType::NoPut) => !e.put,
                Some(WatchFilterType::NoDelete) => e.put,
                None => true,
            })
            .map(|e| Ev {
                prev: if self.prev_kv { e.prev.clone() } else { None },
                ..e.clone()
            })
            .collect()
    }
}

/// The ranges watchers are drawn from: overlapping on purpose.
const RANGES: [Range; 12] = [
    Range::Key("k/0"),
    Range::Key("k/17"),
    Range::Key("k/50"),
    Range::Prefix("k/1"),
    Range::Prefix("k/"),
    Range::Prefix("k/4"),
    Range::Between("k/10", "k/25"),
    Range::Between("k/3", "k/35"),
    Range::From("k/40"),
    Range::All,
    Range::Between("k/2", "k/3"),
    Range::Key("k/9"),
];

/// The `n`-th watcher's spec: ranges in turn, every seventh without puts
/// or without deletes, every other one with previous values.
fn spec(n: usize, start: Option<i64>) -> Spec {
    Spec {
        range: RANGES[n % RANGES.len()],
        filter: match n % 7 {
            3 => Some(WatchFilterType::NoDelete),
            5 => Some(WatchFilterType::NoPut),
            _ => None,
        },
        prev_kv: n.is_multiple_of(2),
        start,
    }
}

/// What a stream's reader has seen.
#[derive(Default)]
struct Seen {
    /// (watch id, header revision) of each created response, in order.
    created: Vec<(i64, i64)>,
    /// Events by watch id.
    events: HashMap<i64, Vec<Ev>>,
    responses: usize,
    /// The most distinct revisions in one response.
    widest: usize,
    /// Anything a correct server never sends here.
    problems: Vec<String>,
}

impl Seen {
    fn record(&mut self, r: &WatchResponse) {
        self.responses += 1;
        if r.canceled() || r.compact_revision() != 0 {
            self.problems.push(format!("{r:?}"));
            return;
        }
        if r.created() {
            let rev = r.header().map_or(-1, |h| h.revision());
            self.created.push((r.watch_id(), rev));
            return;
        }
        let evs: Vec<Ev> = r.events().iter().map(observe).collect();
        let mut revs: Vec<i64> = evs.iter().map(|e| e.rev).collect();
        revs.dedup();
        self.widest = self.widest.max(revs.len());
        let header = r.header().map_or(-1, |h| h.revision());
        if revs.last().is_some_and(|&last| header < last) {
            self.problems.push(format!(
                "header revision {header} below event revision {revs:?}"
            ));
        }
        self.events.entry(r.watch_id()).or_default().extend(evs);
    }
}

/// A watch stream whose responses a background task records.
struct Tap {
    name: &'static str,
    requests: WatchRequestSender,
    seen: watch::Receiver<Seen>,
    specs: Vec<Spec>,
    task: JoinHandle<()>,
}

impl Tap {
    /// Opens a stream with the watchers of `specs` and awaits their
    /// creation. With `slow`, the reader pauses per response until the
    /// flag is set.
    async fn open(
        name: &'static str,
        c: &mut Client,
        specs: Vec<Spec>,
        slow: Option<Arc<AtomicBool>>,
    ) -> Tap {
        let (k, o) = specs[0].options();
        let (mut requests, responses) = c.watch(k, Some(o)).await.expect("watch").split();
        for s in &specs[1..] {
            let (k, o) = s.options();
            requests.watch(k, Some(o)).await.expect("watch request");
        }
        let (tx, seen) = watch::channel(Seen::default());
        let task = tokio::spawn(read(responses, tx, slow));
        let mut tap = Tap {
            name,
            requests,
            seen,
            specs,
            task,
        };
        let n = tap.specs.len();
        timeout(CATCH_UP_WAIT, tap.seen.wait_for(|s| s.created.len() >= n))
            .await
            .unwrap_or_else(|_| panic!("{name}: watchers not created in time"))
            .expect("reader alive");
        tap
    }

    /// Each watcher's expected events, by watch id.
    fn expected(&self, all: &[Ev]) -> Vec<(i64, &Spec, Vec<Ev>)> {
        let seen = self.seen.borrow();
        assert_eq!(seen.created.len(), self.specs.len(), "{}", self.name);
        // Creations are answered in the order they were asked for.
        seen.created
            .iter()
            .zip(&self.specs)
            .map(|(&(id, rev), spec)| (id, spec, spec.expected(all, rev)))
            .collect()
    }

    /// Awaits every watcher's expected number of events (for at most
    /// [`CATCH_UP_WAIT`]), then checks each received exactly its expected
    /// list.
    async fn check(&mut self, all: &[Ev]) {
        let expected: Vec<(i64, Spec, Vec<Ev>)> = self
            .expected(all)
            .into_iter()
            .map(|(id, s, e)| (id, s.clone(), e))
            .collect();
        let counts: Vec<(i64, usize)> = expected.iter().map(|(id, _, e)| (*id, e.len())).collect();
        let enough = |s: &Seen| {
            counts
                .iter()
                .all(|(id, n)| s.events.get(id).map_or(0, Vec::len) >= *n)
        };
        // On a timeout the comparison below says what is missing.
        let arrived = timeout(CATCH_UP_WAIT, self.seen.wait_for(enough))
            .await
            .is_ok_and(|r| r.is_ok());
        let note = if arrived {
            ""
        } else {
            " (gave up waiting for the rest)"
        };
        let seen = self.seen.borrow();
        assert!(
            seen.problems.is_empty(),
            "{}: {:?}",
            self.name,
            seen.problems
        );
        for (id, spec, want) in &expected {
            let got = seen.events.get(id).map_or(&[][..], Vec::as_slice);
            let what = format!("{} watcher {id} {spec:?}{note}", self.name);
            same(&what, got, want);
        }
    }
}

/// Records every response of a stream; with `slow`, pauses per response
/// until the flag is set.
async fn read(mut rs: WatchResponseStream, tx: watch::Sender<Seen>, slow: Option<Arc<AtomicBool>>) {
    while let Ok(Some(r)) = rs.message().await {
        if let Some(done) = &slow {
            if !done.load(Ordering::Relaxed) {
                // Deliberate pacing, not a wait for anything: it keeps this
                // client behind the writers.
                tokio::time::sleep(SLOW_PAUSE).await;
            }
        }
        tx.send_modify(|s| s.record(&r));
    }
}

/// Asserts `got == want`, reporting the first difference briefly.
fn same(what: &str, got: &[Ev], want: &[Ev]) {
    if got == want {
        return;
    }
    let i = got.iter().zip(want).take_while(|(g, w)| g == w).count();
    panic!(
        "{what}: {} events, expected {}; first difference at {i}:\n got: {:?}\nwant: {:?}",
        got.len(),
        want.len(),
        got.get(i..(i + 3).min(got.len())),
        want.get(i..(i + 3).min(want.len())),
    );
}

/// Sorts the writes by revision and checks they are exactly revisions 2 to
/// the last, one each: nothing else wrote, and no write was lost.
fn in_revision_order(mut writes: Vec<Write>) -> Vec<Write> {
    writes.sort_by_key(|w| w.rev);
    for (i, w) in writes.iter().enumerate() {
        assert_eq!(
            w.rev,
            i as i64 + 2,
            "acknowledged revisions are not 2, 3, ..."
        );
    }
    writes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_watcher_sees_its_events_once_in_order_under_concurrent_writes() {
    let began = Instant::now();
    let server = Server::start();
    let mut a = connect(server.endpoint()).await;
    let mut slow_client = connect(server.endpoint()).await;
    let mut late = connect(server.endpoint()).await;

    // Before any write: two streams of ten, and the slow stream with five
    // broad watchers (so that it has much to read) that all want values.
    let first: Vec<Spec> = (0..10).map(|n| spec(n, None)).collect();
    let second: Vec<Spec> = (10..20).map(|n| spec(n, None)).collect();
    let broad = [
        Range::All,
        Range::Prefix("k/"),
        Range::From("k/2"),
        Range::Between("k/1", "k/4"),
        Range::Prefix("k/3"),
    ];
    let slow: Vec<Spec> = broad
        .iter()
        .map(|&range| Spec {
            range,
            filter: None,
            prev_kv: true,
            start: None,
        })
        .collect();
    let writers_done = Arc::new(AtomicBool::new(false));
    let mut taps = vec![
        Tap::open("first", &mut a, first, None).await,
        Tap::open("second", &mut a, second, None).await,
        Tap::open("slow", &mut slow_client, slow, Some(writers_done.clone())).await,
    ];

    let (progress, mut ops_done) = watch::channel(0usize);
    let progress = Arc::new(progress);
    let mut writers = Vec::new();
    for id in 0..WRITERS {
        let c = connect(server.endpoint()).await;
        writers.push(tokio::spawn(writer(c, id, OPS, progress.clone())));
    }

    // A third of the way: ten watchers from revision 2, from the middle of
    // the history so far, and from now.
    let total = WRITERS * OPS;
    timeout(CATCH_UP_WAIT, ops_done.wait_for(|&n| n >= total / 3))
        .await
        .expect("writers stuck")
        .unwrap();
    let now = revision(&mut late).await;
    let starts = [Some(2), Some((now / 2).max(2)), None];
    let joining: Vec<Spec> = (20..30).map(|n| spec(n, starts[n % 3])).collect();
    taps.push(Tap::open("joined at 1/3", &mut late, joining, None).await);

    // Two thirds of the way: ten more, from recent and old revisions and
    // from one the writers have yet to reach.
    timeout(CATCH_UP_WAIT, ops_done.wait_for(|&n| n >= 2 * total / 3))
        .await
        .expect("writers stuck")
        .unwrap();
    let now = revision(&mut late).await;
    let starts = [Some((now - 20).max(2)), Some(2), Some(now + 25), None];
    let joining: Vec<Spec> = (30..40).map(|n| spec(n, starts[n % 4])).collect();
    taps.push(Tap::open("joined at 2/3", &mut late, joining, None).await);

    let mut writes = Vec::new();
    for w in writers {
        writes.extend(w.await.expect("writer panicked"));
    }
    writers_done.store(true, Ordering::Relaxed);
    let wrote = began.elapsed();
    let writes = in_revision_order(writes);
    let last = writes.last().expect("some writes").rev;
    assert_eq!(
        revision(&mut a).await,
        last,
        "a revision nobody acknowledged"
    );
    let (all, state) = history(&writes);

    // The writers' view of the final state is the server's.
    let stored = a
        .get("k/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    let stored: BTreeMap<String, Stored> = stored
        .kvs()
        .iter()
        .map(|kv| {
            let k = kv.key_str().unwrap().to_string();
            (
                k,
                (
                    tag(kv.value()),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                ),
            )
        })
        .collect();
    assert_eq!(stored, state);

    for tap in &mut taps {
        tap.check(&all).await;
    }
    let caught_up = began.elapsed();

    // The server's own history, read by a fresh watcher, is the same.
    let history_spec = Spec {
        range: Range::All,
        filter: None,
        prev_kv: true,
        start: Some(2),
    };
    let mut replay = Tap::open("history", &mut a, vec![history_spec], None).await;
    replay.check(&all).await;

    // Nothing more arrived meanwhile: no duplicate came late.
    for tap in &mut taps {
        tap.check(&all).await;
    }

    let slow = taps[2].seen.borrow();
    eprintln!(
        "{} writes to revision {last} done at {wrote:?}, all watchers caught up at {caught_up:?}; \
         slow stream: {} responses, up to {} revisions in one",
        writes.len(),
        slow.responses,
        slow.widest,
    );
    // Live delivery sends at most one write batch per response, and a batch
    // holds at most one write per writer: anything wider came from storage.
    // Without it this test no longer exercises catch-up, and must write more.
    assert!(
        slow.widest > WRITERS,
        "the slow stream never fell behind into catch-up"
    );
    drop(slow);
    for tap in taps.into_iter().chain([replay]) {
        drop(tap.requests);
        tap.task.abort();
    }
}

/// Puts in the stalled-watcher test.
const STALL_PUTS: usize = 5000;
/// Concurrent writers in the stalled-watcher test.
const STALL_WRITERS: usize = 8;
/// How soon after the last write the live watcher must have everything.
const PROMPT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_does_not_hold_up_others_and_catches_up_later() {
    let server = Server::start();
    let all = || Spec {
        range: Range::Prefix("s/"),
        filter: None,
        prev_kv: false,
        start: None,
    };

    // A watcher whose stream nobody reads until the end.
    let mut stalled_client = connect(server.endpoint()).await;
    let (k, o) = all().options();
    let mut stalled = stalled_client.watch(k, Some(o)).await.expect("watch");
    let r = timeout(OP_WAIT, stalled.message())
        .await
        .expect("no creation")
        .unwrap()
        .unwrap();
    assert!(r.created());
    let stalled_from = r.header().expect("header").revision();

    // Another client's watcher, read all along.
    let mut live_client = connect(server.endpoint()).await;
    let mut live = Tap::open("live", &mut live_client, vec![all()], None).await;

    // 5 MiB of puts, far more than the stalled stream's queue and its
    // transport's buffers hold.
    let began = Instant::now();
    let mut writers = Vec::new();
    for w in 0..STALL_WRITERS {
        let mut c = connect(server.endpoint()).await;
        writers.push(tokio::spawn(async move {
            let mut writes = Vec::new();
            for n in (w..STALL_PUTS).step_by(STALL_WRITERS) {
                let (k, t) = (format!("s/{}", n % 100), format!("p{n}"));
                let put = c.put(k.clone(), value(&t), None);
                let r = timeout(OP_WAIT, put).await.expect("put timed out").unwrap();
                writes.push(Write {
                    rev: r.header().unwrap().revision(),
                    changes: vec![Change {
                        key: k,
                        value: Some(t),
                    }],
                });
            }
            writes
        }));
    }
    let mut writes = Vec::new();
    for w in writers {
        writes.extend(w.await.expect("writer panicked"));
    }
    let wrote = began.elapsed();
    let writes = in_revision_order(writes);
    assert_eq!(writes.len(), STALL_PUTS);
    let (events, _) = history(&writes);

    // The live watcher has everything soon after the last write, while the
    // stalled stream still holds its backlog.
    live.check(&events).await;
    let live_done = began.elapsed();
    assert!(
        live_done - wrote < PROMPT,
        "the live watcher lagged {:?} behind the last write",
        live_done - wrote
    );

    // Now read the stalled stream: every event, in order, once.
    let mut got = Vec::new();
    let mut widest = 0;
    let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
    while got.len() < events.len() {
        let Ok(r) = tokio::time::timeout_at(deadline, stalled.message()).await else {
            // Out of time: the comparison below says what is missing.
            break;
        };
        let r = r.expect("stream failed").expect("stream ended");
        assert!(!r.canceled() && r.compact_revision() == 0, "{r:?}");
        let evs: Vec<Ev> = r.events().iter().map(observe).collect();
        let mut revs: Vec<i64> = evs.iter().map(|e| e.rev).collect();
        revs.dedup();
        widest = widest.max(revs.len());
        got.extend(evs);
    }
    let want = all().expected(&events, stalled_from);
    same("stalled watcher", &got, &want);
    eprintln!(
        "{STALL_PUTS} puts in {wrote:?}; live watcher done at {live_done:?}, stalled one at {:?}, \
         up to {widest} revisions in one response",
        began.elapsed()
    );
    // As in the ordering test: wider than a write batch means storage.
    assert!(
        widest > STALL_WRITERS,
        "the stalled stream never overflowed into catch-up"
    );
    live.task.abort();
}
